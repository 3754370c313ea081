//! Maintenance: a deep backlog keeps one message per queued job (or per shared message) however
//! long it waits, a message the broker lost is published again, and one elected process sweeps
//! at a time. No workers run,
//! so jobs stay queued.

use futures_util::StreamExt;
use gpuq_shared::maintenance::Maintenance;
use gpuq_shared::queue::Publisher;
use gpuq_tests::{Options, TestApp};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// No workers; republish after 1 s and sweep four times a second, so a few seconds stand for
/// many minutes of the defaults (30 s and 5 s).
fn quick_reaper() -> Options {
    let mut opts = Options {
        workers: 0,
        ..Options::default()
    };
    opts.lifecycle.republish_after = Duration::from_secs(1);
    opts.lifecycle.reaper_interval = Duration::from_millis(250);
    opts
}

fn small_job() -> serde_json::Value {
    json!({"type": "train", "algorithm": "logreg", "input": {"rows": [[0.0], [1.0]], "labels": [0, 1]}})
}

async fn queued_jobs(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'queued'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Polls the queue until it holds at least `n` messages; panics after `limit`.
async fn wait_for_depth(app: &TestApp, n: u32, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let depth = app.queue_depth().await;
        if depth >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{depth} of {n} messages after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deep_backlog_holds_at_most_one_message_per_queued_job_however_long_it_waits() {
    let app = TestApp::spawn_with(quick_reaper()).await;
    // 20,000 jobs recorded straight in Postgres (what an API that died before publishing leaves,
    // in bulk) for the reaper to publish, and 500 through the API, which publishes its own.
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, type, algorithm, params, input, timeout_s)
         SELECT gen_random_uuid(), $1, 'train', 'logreg', '{}',
                '{\"rows\": [[0.0], [1.0]], \"labels\": [0, 1]}', 600
         FROM generate_series(1, 20000)",
    )
    .bind(&app.tenant)
    .execute(&app.pool)
    .await
    .unwrap();
    let submitted = futures_util::stream::iter(0..500)
        .map(|_| app.submit(small_job()))
        .buffer_unordered(32)
        .count()
        .await;
    assert_eq!(submitted, 500);
    let total = 20_500;
    wait_for_depth(&app, total, Duration::from_secs(120)).await;

    // Twelve seconds: twelve times `republish_after`, about fifty sweeps.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let depth = app.queue_depth().await;
    let queued = queued_jobs(&app).await;
    let unmarked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status = 'queued' AND published_at IS NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    eprintln!("backlog: {queued} queued jobs, {depth} messages in the queue");
    assert_eq!(queued, i64::from(total));
    assert_eq!(unmarked, 0, "every job is marked published");
    assert!(
        f64::from(depth) <= 1.01 * queued as f64,
        "{depth} messages for {queued} queued jobs"
    );
    assert!(
        i64::from(depth) >= queued,
        "every queued job has a message: {depth} for {queued}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_the_broker_lost_are_published_again_once() {
    let app = TestApp::spawn_with(quick_reaper()).await;
    for _ in 0..50 {
        app.submit(small_job()).await;
    }
    wait_for_depth(&app, 50, Duration::from_secs(20)).await;
    assert_eq!(app.purge_queue().await, 50);
    // The queue now holds fewer messages than there are published jobs: the reaper publishes
    // the missing ones again once they are older than `republish_after`.
    wait_for_depth(&app, 50, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.queue_depth().await, 50, "one message per job, no more");
}

/// A model row for inference jobs that no worker will run (the API checks only that it exists).
async fn a_model(app: &TestApp) -> uuid::Uuid {
    let job: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO jobs (id, tenant_id, type, algorithm, params, input, timeout_s, status)
         VALUES (gen_random_uuid(), $1, 'train', 'logreg', '{}', '{}', 600, 'succeeded')
         RETURNING id",
    )
    .bind(&app.tenant)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    sqlx::query_scalar(
        "INSERT INTO models (id, algorithm, job_id, n_features, n_classes, params, metrics,
                             artifact_uri, tenant_id)
         VALUES (gen_random_uuid(), 'logreg', $1, 1, 2, '{}', '{}', 's3://gpuq-test/none', $2)
         RETURNING id",
    )
    .bind(job)
    .bind(&app.tenant)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn small_inference_jobs_recorded_together_share_a_message_and_a_lost_one_is_published_again_per_job()
 {
    let app = TestApp::spawn_with(quick_reaper()).await;
    let model = a_model(&app).await;
    let jobs: Vec<_> = (0..50)
        .map(|i| json!({"type": "infer", "model_id": model, "input": {"rows": [[i as f64]]}}))
        .collect();
    let (status, body) = app.post("/v1/jobs/batch", &json!({ "jobs": jobs })).await;
    assert_eq!(status, 200, "{body}");
    // 50 jobs, one message: the reaper counts it once and adds nothing.
    wait_for_depth(&app, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.queue_depth().await, 1, "one message for the batch");
    let shared: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT message_id) FROM jobs WHERE type = 'infer' AND message_id IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(shared, 1);
    // The message is lost: the reaper publishes each of its jobs again, once.
    assert_eq!(app.purge_queue().await, 1);
    wait_for_depth(&app, 50, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.queue_depth().await, 50, "one message per job, no more");
    let still_shared: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE message_id IS NOT NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        still_shared, 0,
        "published again, each job has a message of its own"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submitted_job_is_recorded_as_published_and_its_message_is_in_the_queue() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        api_maintenance: false,
        ..Options::default()
    })
    .await;
    let job = app.submit(small_job()).await;
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let published: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT published_at FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        published.is_some(),
        "no reaper runs: the API recorded it published"
    );
    assert_eq!(app.queue_depth().await, 1);
}

/// A maintenance loop over the test's database, broker and bucket, with a stop of its own.
fn contender(app: &TestApp) -> (Arc<Maintenance>, CancellationToken) {
    let s = &app.settings;
    let m = Maintenance::new(
        app.pool.clone(),
        Arc::new(Publisher::lazy(s.amqp_url.expose(), &s.queue)),
        app.storage.clone(),
        s.clone(),
    );
    (Arc::new(m), CancellationToken::new())
}

fn start(m: &Arc<Maintenance>, stop: &CancellationToken) -> tokio::task::JoinHandle<()> {
    let (m, stop) = (m.clone(), stop.clone());
    tokio::spawn(async move { m.run(stop).await })
}

/// Sweeps each loop does over `window`.
async fn sweeps_over(loops: [&Maintenance; 2], window: Duration) -> [u64; 2] {
    let before = loops.map(|m| m.sweeps());
    tokio::time::sleep(window).await;
    let after = loops.map(|m| m.sweeps());
    [after[0] - before[0], after[1] - before[1]]
}

#[tokio::test(flavor = "multi_thread")]
async fn two_maintenance_loops_over_one_database_elect_one_and_the_other_takes_over() {
    let mut opts = quick_reaper();
    opts.api_maintenance = false;
    let app = TestApp::spawn_with(opts).await;
    let (first, stop_first) = contender(&app);
    let (second, stop_second) = contender(&app);
    let first_task = start(&first, &stop_first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second_task = start(&second, &stop_second);
    let window = Duration::from_secs(2);

    let [a, b] = sweeps_over([&first, &second], window).await;
    assert!(a > 0, "the first leads and sweeps");
    assert_eq!(
        (b, second.sweeps()),
        (0, 0),
        "the second never sweeps while the first lives"
    );

    // The leader's connection dropped (what a network cut does): the lock is released, and one
    // loop (either) leads again once it notices; then again only one sweeps.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(killed, 1, "one connection held the lock");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let [a, b] = sweeps_over([&first, &second], window).await;
    assert!(
        (a > 0) != (b > 0),
        "exactly one leads after the lock's connection dropped: {a} and {b} sweeps"
    );
    let (leader, stop_leader, leader_task, other) = if a > 0 {
        (&first, stop_first, first_task, &second)
    } else {
        (&second, stop_second, second_task, &first)
    };

    // The leader stops: it gives the lock up and the other takes over at once.
    stop_leader.cancel();
    leader_task.await.unwrap();
    let [a, b] = sweeps_over([leader, other], window).await;
    assert_eq!(a, 0, "a stopped loop does nothing");
    assert!(b > 0, "the other took over");
}
