//! The completion fence, tested straight against Postgres: once another attempt holds a job (its
//! lease expired and the reaper handed it on) or the job was canceled, a stale attempt's lease
//! renewal, success and failure change nothing — not one column of the job, and no model row.
//! The same holds for the one-step `queued → succeeded` write of jobs run unclaimed in a batch:
//! a cancel, a claim or another worker's write first leaves it nothing to change.

use gpuq_shared::config::Backoff;
use gpuq_shared::db::{self, HeldLease, NewModel};
use gpuq_shared::{ErrorCode, JobError, JobId, ModelId};
use gpuq_tests::{Options, TestApp};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The whole row, every column, to compare before and after.
async fn row(app: &TestApp, id: JobId) -> Value {
    sqlx::query_scalar("SELECT to_jsonb(j) FROM jobs j WHERE id = $1")
        .bind(id.0)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn spec() -> Value {
    json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 5}, "max_attempts": 5,
        "input": {"rows": [[0.0], [1.0]], "labels": [0, 1]}})
}

const LONG_LEASE: Duration = Duration::from_secs(600);
const NO_BACKOFF: Backoff = Backoff {
    base: Duration::ZERO,
    max: Duration::ZERO,
};

fn held(id: JobId, attempt: i32) -> HeldLease {
    HeldLease {
        id,
        attempt,
        progress: None,
    }
}

/// Claims the job as `worker`, retrying while it waits out a backoff; returns its attempt.
async fn claim(app: &TestApp, id: JobId, worker: &str, lease: Duration) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(job) = db::job_set_running(&app.pool, id, worker, lease)
            .await
            .unwrap()
        {
            return job.attempt;
        }
        assert!(Instant::now() < deadline, "{worker} could not claim {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every write a stale attempt can try, each of which must be refused and change nothing.
async fn stale_writes_change_nothing(app: &TestApp, id: JobId, stale: i32) {
    let before = row(app, id).await;
    let renewed = db::jobs_renew_leases(
        &app.pool,
        &[HeldLease {
            id,
            attempt: stale,
            progress: Some(json!({"fraction": 0.5, "message": "stale"})),
        }],
        LONG_LEASE,
    )
    .await
    .unwrap();
    let renewed = !renewed.is_empty();
    assert!(!renewed, "a stale attempt renewed its lease");
    assert_eq!(
        row(app, id).await,
        before,
        "a stale renewal changed the job"
    );

    let result = json!({"stale": true});
    let done = db::job_set_succeeded(&app.pool, id, stale, &result)
        .await
        .unwrap();
    assert!(!done, "a stale attempt recorded a success");
    assert_eq!(
        row(app, id).await,
        before,
        "a stale success changed the job"
    );

    let model = NewModel {
        id: ModelId::new(),
        tenant: &app.tenant,
        algorithm: gpuq_shared::Algorithm::Logreg,
        n_features: 1,
        n_classes: 2,
        params: &json!({}),
        metrics: &json!({}),
        artifact_uri: "s3://nowhere/stale.safetensors",
        fleet: None,
    };
    let done = db::job_set_succeeded_with_model(&app.pool, id, stale, &result, &model)
        .await
        .unwrap();
    assert!(!done, "a stale attempt recorded a success with a model");
    assert_eq!(
        row(app, id).await,
        before,
        "a stale success changed the job"
    );
    assert_eq!(
        app.model_rows_for(&id.to_string()).await,
        0,
        "a stale attempt left a model row"
    );

    for error in [
        JobError::new(ErrorCode::GpuError, "stale and retryable"),
        JobError::new(ErrorCode::InvalidInput, "stale and fatal"),
    ] {
        let went = db::job_set_failed_or_retry(&app.pool, id, stale, &error, NO_BACKOFF)
            .await
            .unwrap();
        assert_eq!(
            went, None,
            "a stale failure ({:?}) moved the job",
            error.code
        );
        assert_eq!(
            row(app, id).await,
            before,
            "a stale failure ({:?}) changed the job",
            error.code
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_attempt_can_neither_renew_nor_succeed_nor_fail_once_another_attempt_holds_the_job()
{
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let id = app.record_unpublished(&spec()).await.unwrap();
    // Attempt 1 freezes: its lease runs out and the reaper hands the job on.
    let stale = claim(&app, id, "frozen", Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while row(&app, id).await["status"] != "queued" {
        db::jobs_requeue_expired(&app.pool, NO_BACKOFF)
            .await
            .unwrap();
        assert!(
            Instant::now() < deadline,
            "the expired lease was not reaped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let current = claim(&app, id, "next", LONG_LEASE).await;
    assert_eq!((stale, current), (1, 2));

    stale_writes_change_nothing(&app, id, stale).await;

    // The fence lets the holder through: the refusals above were the attempt number's doing.
    assert!(
        db::jobs_renew_leases(&app.pool, &[held(id, current)], LONG_LEASE)
            .await
            .unwrap()
            == [id]
    );
    let result = json!({"by": "attempt 2"});
    assert!(
        db::job_set_succeeded(&app.pool, id, current, &result)
            .await
            .unwrap()
    );
    let finished = row(&app, id).await;
    assert_eq!(finished["status"], "succeeded");
    assert_eq!(finished["result"], result);

    // Once the job is finished, the stale attempt still changes nothing.
    stale_writes_change_nothing(&app, id, stale).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_attempt_of_a_canceled_job_can_neither_renew_nor_succeed_nor_fail() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let id = app.record_unpublished(&spec()).await.unwrap();
    let attempt = claim(&app, id, "running", LONG_LEASE).await;
    let (job, canceled) = db::job_set_canceled(&app.pool, &app.tenant, id)
        .await
        .unwrap()
        .expect("the job exists");
    assert!(canceled, "{job:?}");

    stale_writes_change_nothing(&app, id, attempt).await;
    assert_eq!(row(&app, id).await["status"], "canceled");
}

/// `worker` writes each `(job, attempt it read)` as succeeded with `{"value": value}`, unclaimed;
/// returns the ids written.
async fn write_unclaimed(
    app: &TestApp,
    worker: &str,
    jobs: &[(JobId, i32)],
    value: i32,
) -> Vec<JobId> {
    let done: Vec<db::Succeeded> = jobs
        .iter()
        .map(|&(id, attempt)| db::Succeeded {
            id,
            attempt,
            result: json!({ "value": value }),
        })
        .collect();
    db::jobs_set_succeeded_unclaimed(&app.pool, worker, chrono::Utc::now(), &done)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_run_unclaimed_is_written_once_and_not_after_a_cancel_or_a_claim() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    // Two workers ran the same job (a duplicate delivery): the first write wins, whole.
    let id = app.record_unpublished(&spec()).await.unwrap();
    let read = db::jobs_get_runnable(&app.pool, &[id]).await.unwrap();
    assert_eq!(read.len(), 1);
    let attempt = read[0].attempt;
    let first = write_unclaimed(&app, "first", &[(id, attempt)], 1).await;
    assert_eq!(first, vec![id]);
    let after_first = row(&app, id).await;
    assert_eq!(after_first["status"], "succeeded");
    assert_eq!(
        after_first["attempt"],
        attempt + 1,
        "the attempt is counted"
    );
    assert_eq!(after_first["worker_id"], "first");
    assert_eq!(after_first["result"], json!({"value": 1}));
    let second = write_unclaimed(&app, "second", &[(id, attempt)], 2).await;
    assert!(second.is_empty());
    assert_eq!(
        row(&app, id).await,
        after_first,
        "the second write changed nothing"
    );
    assert!(
        db::jobs_get_runnable(&app.pool, &[id])
            .await
            .unwrap()
            .is_empty(),
        "a finished job is not runnable"
    );

    // Canceled, or claimed by the claimed path, after it was read: nothing is written.
    let canceled = app.record_unpublished(&spec()).await.unwrap();
    let claimed = app.record_unpublished(&spec()).await.unwrap();
    let read = db::jobs_get_runnable(&app.pool, &[canceled, claimed])
        .await
        .unwrap();
    assert_eq!(read.len(), 2);
    db::job_set_canceled(&app.pool, &app.tenant, canceled)
        .await
        .unwrap()
        .expect("the job exists");
    claim(&app, claimed, "claimer", LONG_LEASE).await;
    let before = (row(&app, canceled).await, row(&app, claimed).await);
    let late = [(canceled, read[0].attempt), (claimed, read[1].attempt)];
    let written = write_unclaimed(&app, "late", &late, 3).await;
    assert!(written.is_empty(), "{written:?}");
    assert_eq!(
        (row(&app, canceled).await, row(&app, claimed).await),
        before
    );
}
