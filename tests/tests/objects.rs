//! What attempts leave in S3: each writes under keys of its own, a stale attempt that finishes
//! after the winner neither overwrites the winner's objects nor leaves its own, and the orphan
//! sweep deletes what nothing records (old enough) and keeps everything else. The attempts run
//! on a worker context of the test's own, so which attempt is stale is decided, not raced.

use gpuq_shared::config::Backoff;
use gpuq_shared::db::{self, JobRecord};
use gpuq_shared::queue::Publisher;
use gpuq_shared::{JobId, JobStatus, ModelId, S3Uri, objects, orphans};
use gpuq_tests::{Options, TestApp};
use gpuq_worker::gpu::Gpu;
use gpuq_worker::job::WorkerContext;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const LONG_LEASE: Duration = Duration::from_secs(600);
const NO_BACKOFF: Backoff = Backoff {
    base: Duration::ZERO,
    max: Duration::ZERO,
};

/// A worker's context on the test's database and prefix, run by the test rather than fed by
/// the queue.
async fn worker(app: &TestApp) -> Arc<WorkerContext> {
    let gpu = tokio::task::spawn_blocking(Gpu::new)
        .await
        .unwrap()
        .expect("a GPU");
    let s = &app.settings;
    Arc::new(WorkerContext::new(
        app.pool.clone(),
        app.storage.clone(),
        Arc::new(Publisher::lazy(s.amqp_url.expose(), &s.queue)),
        Arc::new(gpu),
        &app.worker_settings(),
        "objects-test".into(),
        CancellationToken::new(),
    ))
}

fn train_spec() -> Value {
    json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 5}, "max_attempts": 5,
        "input": {"rows": [[0.0], [1.0], [0.1], [0.9]], "labels": [0, 1, 0, 1]}})
}

/// Claims the job as `worker`, retrying while it waits out a backoff.
async fn claim(app: &TestApp, id: JobId, worker: &str, lease: Duration) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(job) = db::job_set_running(&app.pool, id, worker, lease)
            .await
            .unwrap()
        {
            return job;
        }
        assert!(Instant::now() < deadline, "{worker} could not claim {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Attempt 1 claims the job and freezes: its lease runs out, the reaper hands the job on, and
/// attempt 2 claims it. Returns both claims.
async fn stale_and_current(app: &TestApp, id: JobId) -> (JobRecord, JobRecord) {
    let stale = claim(app, id, "frozen", Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.job_row(&id.to_string()).await.status != JobStatus::Queued {
        db::jobs_requeue_expired(&app.pool, NO_BACKOFF)
            .await
            .unwrap();
        assert!(Instant::now() < deadline, "the lease was not reaped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let current = claim(app, id, "next", LONG_LEASE).await;
    assert_eq!((stale.attempt, current.attempt), (1, 2));
    (stale, current)
}

/// Every object under the test tenant's `folder`, by key, with its modification time.
async fn listed(app: &TestApp, folder: &str) -> BTreeMap<String, chrono::DateTime<chrono::Utc>> {
    let prefix = format!("{}{folder}", app.settings.tenant_prefix(&app.tenant));
    let (page, next) = app
        .storage
        .list_page(&app.settings.bucket, &prefix, None)
        .await
        .unwrap();
    assert!(next.is_none());
    page.into_iter()
        .map(|o| (o.uri.to_string(), o.last_modified))
        .collect()
}

async fn exists(app: &TestApp, uri: &S3Uri) -> bool {
    app.storage.get_bytes(uri).await.is_ok()
}

/// Runs a claim to its end and returns the job's row afterwards.
async fn run(app: &TestApp, worker: &Arc<WorkerContext>, claim: JobRecord) -> JobRecord {
    let id = claim.id.to_string();
    worker.run(claim).await;
    app.job_row(&id).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_attempt_finishing_after_the_winner_neither_overwrites_its_objects_nor_leaves_any()
{
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let worker = worker(&app).await;

    // Training: attempt 2 wins, then the stale attempt 1 finishes its own model.
    let train = app.record_unpublished(&train_spec()).await.unwrap();
    let (stale, current) = stale_and_current(&app, train).await;
    let won = run(&app, &worker, current).await;
    assert_eq!(won.status, JobStatus::Succeeded, "{won:?}");
    let artifact: String = sqlx::query_scalar("SELECT artifact_uri FROM models WHERE job_id = $1")
        .bind(train.0)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let models = listed(&app, "models/").await;
    assert_eq!(models.keys().collect::<Vec<_>>(), [&artifact]);
    let after = run(&app, &worker, stale).await;
    assert_eq!(
        (after.status, after.attempt, &after.result),
        (JobStatus::Succeeded, 2, &won.result),
        "the stale attempt changed the job"
    );
    assert_eq!(
        listed(&app, "models/").await,
        models,
        "the stale attempt left a model file"
    );
    assert_eq!(app.model_rows_for(&train.to_string()).await, 1);

    // Inference with its output in S3: the same, and the winner's output stays as it was.
    let input = app.put("rows.csv", b"x\n0.05\n0.95\n0.2\n".to_vec()).await;
    let spec = json!({"type": "infer", "model_id": won.result.as_ref().unwrap()["model_id"],
        "max_attempts": 5, "input": {"uri": input}});
    let infer = app.record_unpublished(&spec).await.unwrap();
    let (stale, current) = stale_and_current(&app, infer).await;
    let won = run(&app, &worker, current).await;
    assert_eq!(won.status, JobStatus::Succeeded, "{won:?}");
    let output = won.result.as_ref().unwrap()["output_uri"]
        .as_str()
        .unwrap()
        .to_string();
    let outputs = listed(&app, "outputs/").await;
    assert_eq!(outputs.keys().collect::<Vec<_>>(), [&output]);
    let bytes = app.get_object(&output).await;
    // Modification times may have a resolution of a second: let one pass, so an overwrite shows.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = run(&app, &worker, stale).await;
    assert_eq!(
        (after.status, after.attempt, &after.result),
        (JobStatus::Succeeded, 2, &won.result),
        "the stale attempt changed the job"
    );
    assert_eq!(
        listed(&app, "outputs/").await,
        outputs,
        "the stale attempt overwrote the winner's output or left one of its own"
    );
    assert_eq!(app.get_object(&output).await, bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_deletes_old_unrecorded_objects_and_keeps_recorded_young_in_flight_and_foreign_ones()
 {
    let app = &TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let worker = worker(app).await;
    let (s, tenant) = (&app.settings, app.tenant.as_str());
    let put = |uri: S3Uri| async move {
        app.put_at(&uri.key, b"x".to_vec()).await;
        uri
    };

    // Recorded: a trained model's file and an inference's output.
    let train = app.record_unpublished(&train_spec()).await.unwrap();
    let trained = run(app, &worker, claim(app, train, "w", LONG_LEASE).await).await;
    let artifact: S3Uri =
        sqlx::query_scalar::<_, String>("SELECT artifact_uri FROM models WHERE job_id = $1")
            .bind(train.0)
            .fetch_one(&app.pool)
            .await
            .unwrap()
            .parse()
            .unwrap();
    let input = app.put("rows.csv", b"x\n0.05\n0.95\n".to_vec()).await;
    let spec = json!({"type": "infer", "model_id": trained.result.as_ref().unwrap()["model_id"],
        "input": {"uri": input}});
    let infer = app.record_unpublished(&spec).await.unwrap();
    let inferred = run(app, &worker, claim(app, infer, "w", LONG_LEASE).await).await;
    let output: S3Uri = inferred.result.as_ref().unwrap()["output_uri"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // In flight: written by an attempt that still holds its job and may yet record it.
    let busy = app.record_unpublished(&train_spec()).await.unwrap();
    let attempt = claim(app, busy, "busy", LONG_LEASE).await.attempt;
    let in_flight = put(objects::output_uri(s, tenant, busy, attempt)).await;
    // Orphans: attempts that lost their jobs, and a file of a job the other tenant no longer has.
    let lost_output = put(objects::output_uri(s, tenant, infer, 7)).await;
    let lost_model = put(objects::model_uri(s, tenant, train, 9, ModelId::new())).await;
    app.client_for("other").await;
    let gone = put(objects::model_uri(
        s,
        "other",
        JobId::new(),
        1,
        ModelId::new(),
    ))
    .await;
    // Not a key gpuq writes: never touched.
    let foreign = put(S3Uri::new(
        &s.bucket,
        format!("{}outputs/notes.txt", s.tenant_prefix(tenant)),
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Young: an orphan as well, but within the grace period.
    let young = put(objects::output_uri(s, tenant, infer, 8)).await;

    let swept = orphans::sweep(&app.pool, &app.storage, s, Duration::from_secs(2))
        .await
        .unwrap();
    let mut deleted = swept.deleted.clone();
    deleted.sort_by_key(S3Uri::to_string);
    let mut expected = vec![lost_output, lost_model, gone];
    expected.sort_by_key(S3Uri::to_string);
    assert_eq!(deleted, expected, "{swept:?}");
    for uri in &expected {
        assert!(!exists(app, uri).await, "{uri} is still there");
    }
    for uri in [&artifact, &output, &in_flight, &foreign, &young] {
        assert!(exists(app, uri).await, "{uri} was deleted");
    }

    // Past its grace, the young orphan goes too; the rest stays.
    let swept = orphans::sweep(&app.pool, &app.storage, s, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(swept.deleted, [young], "{swept:?}");
    for uri in [&artifact, &output, &in_flight, &foreign] {
        assert!(exists(app, uri).await, "{uri} was deleted");
    }
}
