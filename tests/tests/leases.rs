//! Leases: a worker renews the leases of all the jobs it holds with one statement per third of
//! the lease, and a cancel reaches it through NOTIFY within a second, however long the lease —
//! also after its listener's connection was cut.

use gpuq_tests::{Options, TestApp, digits};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

/// A logreg job on digits that trains for far longer than any of these tests waits.
fn long_training(uri: &str) -> Value {
    json!({"type": "train", "algorithm": "logreg", "input": {"uri": uri},
        "params": {"epochs": 20000}})
}

/// Waits until the job has been claimed (it may have finished since); returns its row.
async fn wait_started(app: &TestApp, id: &str) -> gpuq_shared::db::JobRecord {
    let deadline = Instant::now() + LIMIT;
    loop {
        let row = app.job_row(id).await;
        if row.started_at.is_some() {
            return row;
        }
        assert!(Instant::now() < deadline, "{id} never ran: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cancels `running`, then waits for `next` (queued behind it on a one-slot worker) to start:
/// the time from the cancel to the next claim is how long the worker took to stop the job and
/// let go of it, both read from Postgres's clock.
async fn cancel_and_time_until_the_slot_is_free(
    app: &TestApp,
    running: &str,
    next: &str,
) -> Duration {
    let (s, j) = app
        .post(&format!("/v1/jobs/{running}/cancel"), &json!({}))
        .await;
    assert_eq!((s.as_u16(), j["status"].as_str()), (200, Some("canceled")));
    let canceled_at = app.job_row(running).await.finished_at.expect("finished");
    let started_at = wait_started(app, next).await.started_at.expect("started");
    (started_at - canceled_at).to_std().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_statement_per_third_of_the_lease_renews_every_job_a_worker_holds() {
    const JOBS: usize = 4;
    // Lease 3 s: a renewal every second.
    let app = TestApp::spawn_with(Options {
        concurrency: JOBS,
        ..Options::default()
    })
    .await;
    let train = app.put("digits/train.csv", digits("train")).await;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let job = app.submit(long_training(&train)).await;
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        wait_started(&app, id).await;
    }

    // From now on, every UPDATE statement on jobs is counted with the rows it changed.
    for statement in [
        "CREATE TABLE job_updates (at timestamptz NOT NULL DEFAULT clock_timestamp(), rows int)",
        "CREATE FUNCTION count_job_updates() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO job_updates (rows) SELECT count(*) FROM changed; RETURN NULL; END $$",
        "CREATE TRIGGER count_job_updates AFTER UPDATE ON jobs REFERENCING NEW TABLE AS changed
         FOR EACH STATEMENT EXECUTE FUNCTION count_job_updates()",
    ] {
        sqlx::query(statement).execute(&app.pool).await.unwrap();
    }
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    // Statements that changed nothing (the reaper finding nothing to do) are not renewals.
    let renewals: Vec<i64> =
        sqlx::query_scalar("SELECT rows::int8 FROM job_updates WHERE rows > 0 ORDER BY at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let progress: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT progress->>'message' FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for id in &ids {
        app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    }

    println!(
        "{} statements renewed {JOBS} jobs in {window:?}; rows each: {renewals:?}",
        renewals.len()
    );
    assert!(
        renewals.iter().all(|&rows| rows == JOBS as i64),
        "each renewal covers all {JOBS} jobs: {renewals:?}"
    );
    // One a second, give or take a tick at either end of the window.
    assert!(
        (3..=6).contains(&renewals.len()),
        "{} renewal statements in {window:?}: {renewals:?}",
        renewals.len()
    );
    // Progress rides along with the renewals.
    assert!(
        progress
            .iter()
            .all(|m| m.as_deref().is_some_and(|m| m.starts_with("epoch"))),
        "{progress:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_stops_a_running_job_within_a_second_even_with_a_30_s_lease() {
    // One job at a time, so the next one starts only once the canceled one has let go; and a
    // lease of 30 s, so renewals alone would notice a cancel only after up to 10 s.
    let mut opts = Options {
        concurrency: 1,
        ..Options::default()
    };
    opts.lifecycle.lease = Duration::from_secs(30);
    let app = TestApp::spawn_with(opts).await;
    let train = app.put("digits/train.csv", digits("train")).await;
    let first = app.submit(long_training(&train)).await;
    let second = app.submit(long_training(&train)).await;
    let (first, second) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    wait_started(&app, first).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let freed = cancel_and_time_until_the_slot_is_free(&app, first, second).await;
    println!("the worker let go of the canceled job {freed:?} after the cancel");
    assert!(freed < Duration::from_millis(1500), "{freed:?}");

    // Cut the worker's listener off: it reconnects, and the next cancel is as quick.
    let listening = "SELECT pid FROM pg_stat_activity
                     WHERE datname = current_database()
                       AND query LIKE 'LISTEN %' AND query LIKE '%gpuq_job_canceled%'";
    let cut: Vec<i32> = sqlx::query_scalar(listening)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(cut.len(), 1, "one worker, one listener: {cut:?}");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(cut[0])
        .execute(&app.pool)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: Vec<i32> = sqlx::query_scalar(listening)
            .fetch_all(&app.pool)
            .await
            .unwrap();
        if now.len() == 1 && now[0] != cut[0] {
            break;
        }
        assert!(Instant::now() < deadline, "the listener did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let third = app
        .submit(json!({"type": "train", "algorithm": "logreg",
            "input": {"rows": [[0], [1]], "labels": [0, 1]}, "params": {"epochs": 1}}))
        .await;
    let third = third["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let freed = cancel_and_time_until_the_slot_is_free(&app, second, third).await;
    println!("after a reconnect, the worker let go {freed:?} after the cancel");
    assert!(freed < Duration::from_millis(1500), "{freed:?}");
    assert_eq!(
        app.wait(&json!({"id": third}), LIMIT).await["status"],
        "succeeded"
    );
    for id in [first, second] {
        assert_eq!(
            app.job_row(id).await.status,
            gpuq_shared::JobStatus::Canceled
        );
        assert_eq!(app.model_rows_for(id).await, 0);
    }
}
