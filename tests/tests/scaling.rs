//! The worker pool sized by `gpuq-scaler`: local worker processes grown from zero by a burst
//! and shrunk back after the idle time with no job interrupted; an ECS service (on
//! `moto_server`) sized from the backlog; a worker's ECS task protection and its row in
//! `workers`.

use gpuq_tests::{Options, Scaler, TestApp, digits, signal, wait_all};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(240);

fn n(line: &Value, field: &str) -> u64 {
    line[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {line}"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "several GPU worker processes at once: run by scripts/dev test in its serial phase"]
async fn a_burst_grows_the_local_pool_from_zero_and_it_shrinks_back_after_the_idle_time() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        concurrency: 8,
        ..Options::default()
    })
    .await;
    let train = app.put("digits/train.csv", digits("train")).await;
    let args: Vec<&str> = concat!(
        "--backend local --min 0 --max 4 --target-backlog 8 --idle-seconds 3 ",
        "--step-seconds 0.5 --interval-seconds 0.25 ",
    )
    .split_whitespace()
    .collect();
    // A generous drain: should a job be claimed by a worker just told to stop, it finishes.
    let mut scaler = Scaler::spawn(app.scaler_command(&args, &[("GPUQ_DRAIN_SECONDS", "120")]));
    let first = scaler.wait_for(LIMIT, |_| true).await;
    assert_eq!(
        (n(&first, "current"), n(&first, "desired")),
        (0, 0),
        "{first}"
    );

    let mut ids = Vec::new();
    for _ in 0..24 {
        let job = app
            .submit(
                json!({"type": "train", "algorithm": "logreg", "input": {"uri": train},
                           "params": {"epochs": 10}}),
            )
            .await;
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    let (succeeded, failed) = wait_all(&app, &ids, LIMIT).await;
    assert_eq!((succeeded, failed.len()), (24, 0), "{failed:?}");

    // Back to zero once idle: the scaler says so and every worker it started has exited.
    let (grown, _) = scaler
        .wait_for_after(0, LIMIT, |l| l["reason"] == "scale_out")
        .await;
    scaler
        .wait_for_after(grown, Duration::from_secs(60), |l| {
            n(l, "current") == 0 && n(l, "desired") == 0 && n(l, "draining") == 0
        })
        .await;
    let lines = scaler.lines();
    let peak = lines.iter().map(|l| n(l, "current")).max().unwrap();
    assert!(peak >= 2, "the pool grew to {peak}: {lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l["reason"] == "scale_out" && n(l, "desired") == 3),
        "24 jobs / 8 → 3 workers at once"
    );
    for pair in lines.windows(2) {
        let (a, b) = (n(&pair[0], "current"), n(&pair[1], "current"));
        assert!(
            b + 1 >= a,
            "one scale-in step at a time: {} then {}",
            pair[0],
            pair[1]
        );
    }
    assert!(
        lines.iter().all(|l| n(l, "current") <= 4),
        "never past --max"
    );

    // No job interrupted: each ran once, on one of at least two workers.
    let rows: Vec<(i32, Value, Option<String>)> = sqlx::query_as(
        "SELECT attempt, attempt_errors, worker_id FROM jobs WHERE id = ANY($1::uuid[])",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for (attempt, errors, _) in &rows {
        assert_eq!(*attempt, 1, "ran once");
        assert_eq!(errors, &json!([]), "no attempt was cut short");
    }
    let mut workers: Vec<_> = rows.iter().filter_map(|r| r.2.clone()).collect();
    workers.sort();
    workers.dedup();
    assert!(workers.len() >= 2, "jobs ran on {workers:?}");

    // Every worker registered its adapter and recorded its stop.
    let reported: Vec<(String, String, String, Value, bool)> = sqlx::query_as(
        "SELECT id, adapter, backend, limits, stopped_at IS NOT NULL FROM workers ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(reported.len() as u64 >= peak, "{reported:?}");
    for (id, adapter, backend, limits, stopped) in &reported {
        assert!(id.starts_with("local-"), "{id}");
        assert!(
            !adapter.is_empty() && backend == "vulkan",
            "{adapter} {backend}"
        );
        assert!(limits["max_buffer_size"].as_u64().unwrap() > 0, "{limits}");
        assert!(stopped, "{id} recorded its stop");
    }
    assert!(scaler.stop(), "the scaler exits cleanly on SIGTERM");
}

/// A stand-in for the ECS agent's task-protection endpoint: records each PUT (with the time it
/// came); refuses the first one as ECS may, to show the worker tries again.
async fn agent_stand_in() -> (
    String,
    Arc<Mutex<Vec<(chrono::DateTime<chrono::Utc>, Value)>>>,
) {
    use axum::{Json, Router, routing::put};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().route(
        "/task-protection/v1/state",
        put(move |Json(body): Json<Value>| {
            let record = record.clone();
            async move {
                let mut seen = record.lock().unwrap();
                seen.push((chrono::Utc::now(), body.clone()));
                if seen.len() == 1 {
                    return Json(json!({"failure": {"Arn": "arn:aws:ecs:task/x",
                        "Reason": "ThrottlingException", "Detail": null}}));
                }
                Json(
                    json!({"protection": {"ProtectionEnabled": body["ProtectionEnabled"],
                    "TaskArn": "arn:aws:ecs:us-east-1:000000000000:task/gpuq/x"}}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_on_ecs_is_protected_from_scale_in_exactly_while_it_holds_a_job() {
    let mut app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let (agent, seen) = agent_stand_in().await;
    let train = app.put("digits/train.csv", digits("train")).await;
    let pid = app.spawn_worker_process_with(&[("ECS_AGENT_URI", &agent)]);

    let job = app
        .submit(
            json!({"type": "train", "algorithm": "logreg", "input": {"uri": train},
                       "params": {"epochs": 300}}),
        )
        .await;
    let done = app.wait(&job, LIMIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let row = app.job_row(done["id"].as_str().unwrap()).await;
    let (started, finished) = (row.started_at.unwrap(), row.finished_at.unwrap());

    // Protection is dropped within a couple of seconds of the job's end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !seen
        .lock()
        .unwrap()
        .iter()
        .any(|(_, b)| b["ProtectionEnabled"] == false)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "protection never dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let enables: Vec<_> = seen
        .iter()
        .filter(|(_, b)| b["ProtectionEnabled"] == true)
        .collect();
    assert!(
        enables.len() >= 2,
        "the refused first request was tried again: {seen:?}"
    );
    assert!(enables[0].0 <= started, "asked for before the claim");
    assert!(enables[1].0 <= finished, "in place while the job ran");
    assert!(
        enables
            .iter()
            .all(|(_, b)| b["ExpiresInMinutes"].as_u64() >= Some(1))
    );
    let dropped = seen
        .iter()
        .find(|(_, b)| b["ProtectionEnabled"] == false)
        .unwrap();
    assert!(
        dropped.0 >= finished,
        "dropped only after the job finished: {seen:?}"
    );

    // The worker's row: its adapter, limits and concurrency; stopped after SIGTERM.
    let (adapter, concurrency, limits): (String, i32, Value) =
        sqlx::query_as("SELECT adapter, concurrency, limits FROM workers")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(!adapter.is_empty());
    assert_eq!(concurrency, 4);
    assert!(limits["max_storage_buffer_binding_size"].as_u64().unwrap() > 0);
    // Operators see it with `gpuq-api workers`.
    let listed = std::process::Command::new(gpuq_tests::sibling_binary("gpuq-api"))
        .arg("workers")
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(listed.status.success());
    let listed: Vec<Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0]["alive"], &listed[0]["adapter"]),
        (&json!(true), &json!(adapter))
    );
    signal(pid, "TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !app.worker_exited(pid) {
        assert!(std::time::Instant::now() < deadline, "worker did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped: bool = sqlx::query_scalar("SELECT stopped_at IS NOT NULL FROM workers")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(stopped);
}

/// `moto_server` on a free port: from `GPUQ_MOTO_SERVER`, the venv `scripts/dev` installs it
/// in, or `PATH`.
struct Moto {
    process: std::process::Child,
    url: String,
}

impl Moto {
    async fn start() -> Self {
        let bin = std::env::var("GPUQ_MOTO_SERVER").unwrap_or_else(|_| {
            let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.dev/py-moto/bin/moto_server");
            if venv.exists() {
                venv.to_string_lossy().into_owned()
            } else {
                "moto_server".into()
            }
        });
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let process = std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin} runs (scripts/dev test installs moto[server]): {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not open {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { process, url }
    }

    async fn config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ecs::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_35_sets_the_ecs_service_to_4_tasks_and_an_idle_queue_to_0() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let moto = Moto::start().await;
    let aws = moto.config().await;
    let ecs = aws_sdk_ecs::Client::new(&aws);
    let args: Vec<&str> = concat!(
        "--backend ecs --cluster gpuq --service gpuq-workers --min 0 --max 8 ",
        "--target-backlog 10 --idle-seconds 2 --step-seconds 0.3 --interval-seconds 0.25 ",
        "--cloudwatch-namespace gpuq-test ",
    )
    .split_whitespace()
    .collect();
    let env = [
        ("AWS_ENDPOINT_URL", moto.url.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ];
    // 35 jobs queued (no worker takes them here).
    let mut ids = Vec::new();
    for _ in 0..35 {
        let id = app
            .record_unpublished(&json!({"type": "train", "params": {"epochs": 2},
                "input": {"rows": [[0.0], [1.0]], "labels": [0, 1]}}))
            .await
            .unwrap();
        ids.push(id.to_string());
    }
    // Started before the service exists: its errors are retried, never fatal.
    let mut scaler = Scaler::spawn(app.scaler_command(&args, &env));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        scaler.process.try_wait().unwrap().is_none(),
        "the scaler rides out errors"
    );
    assert!(scaler.lines().is_empty(), "no decision without the service");

    ecs.create_cluster()
        .cluster_name("gpuq")
        .send()
        .await
        .unwrap();
    let container = aws_sdk_ecs::types::ContainerDefinition::builder()
        .name("worker")
        .image("gpuq-worker:latest")
        .memory(4096)
        .build();
    ecs.register_task_definition()
        .family("gpuq-worker")
        .container_definitions(container)
        .send()
        .await
        .unwrap();
    ecs.create_service()
        .cluster("gpuq")
        .service_name("gpuq-workers")
        .task_definition("gpuq-worker")
        .desired_count(0)
        .send()
        .await
        .unwrap();
    let desired = || async {
        ecs.describe_services()
            .cluster("gpuq")
            .services("gpuq-workers")
            .send()
            .await
            .unwrap()
            .services()[0]
            .desired_count()
    };

    let line = scaler.wait_for(LIMIT, |_| true).await;
    assert_eq!(
        (n(&line, "queued"), n(&line, "current"), n(&line, "desired")),
        (35, 0, 4),
        "ceil(35 / 10) in one step: {line}"
    );
    assert_eq!(line["reason"], "scale_out");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while desired().await != 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "desiredCount never became 4"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Held at 4 while the backlog stays.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(desired().await, 4);

    // The backlog drains; after the idle time the service steps down to 0, one task at a time.
    sqlx::query(
        "UPDATE jobs SET status = 'succeeded', finished_at = now() WHERE id = ANY($1::uuid[])",
    )
    .bind(&ids)
    .execute(&app.pool)
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while desired().await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "desiredCount never returned to 0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = scaler.lines();
    let steps: Vec<u64> = lines
        .iter()
        .filter(|l| l["reason"] == "scale_in")
        .map(|l| n(l, "desired"))
        .collect();
    assert_eq!(steps, [3, 2, 1, 0], "{lines:#?}");
    assert!(lines.iter().all(|l| n(l, "desired") <= 4));

    // BacklogPerWorker went to CloudWatch: 35 jobs over no running task counts as 35.
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&aws);
    let metrics = cloudwatch
        .list_metrics()
        .namespace("gpuq-test")
        .metric_name("BacklogPerWorker")
        .send()
        .await
        .unwrap();
    let metric = &metrics.metrics()[0];
    let dims: Vec<_> = metric
        .dimensions()
        .iter()
        .map(|d| (d.name().unwrap(), d.value().unwrap()))
        .collect();
    assert!(dims.contains(&("ServiceName", "gpuq-workers")), "{dims:?}");
    let now = aws_sdk_cloudwatch::primitives::DateTime::from(std::time::SystemTime::now());
    let hour_ago = aws_sdk_cloudwatch::primitives::DateTime::from_secs(now.secs() - 3600);
    let stats = cloudwatch
        .get_metric_statistics()
        .namespace("gpuq-test")
        .metric_name("BacklogPerWorker")
        .set_dimensions(Some(metric.dimensions().to_vec()))
        .start_time(hour_ago)
        .end_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
            now.secs() + 60,
        ))
        .period(60)
        .statistics(aws_sdk_cloudwatch::types::Statistic::Maximum)
        .send()
        .await
        .unwrap();
    let max = stats
        .datapoints()
        .iter()
        .filter_map(|d| d.maximum())
        .fold(0.0, f64::max);
    assert_eq!(max, 35.0, "{stats:?}");
    assert!(scaler.stop());
}
