//! Test harness: each test gets its own database, queue and S3 prefix, an API on a free port
//! and (optionally) workers, in-process or as real child processes — all against the real
//! Postgres, RabbitMQ, S3 server and Vulkan device that `scripts/dev test` starts.

use gpuq_shared::S3Uri;
use gpuq_shared::config::{Lifecycle, Settings};
use gpuq_shared::storage::Storage;
use serde_json::Value;
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use reqwest::StatusCode;

pub struct TestApp {
    pub url: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub settings: Settings,
    pub storage: Storage,
    shutdown: CancellationToken,
    abort: CancellationToken,
    children: Vec<Child>,
    concurrency: usize,
}

/// How a test wants its service set up.
pub struct Options {
    /// Workers running inside the test process.
    pub workers: usize,
    /// Jobs each in-process worker runs at once.
    pub concurrency: usize,
    pub lifecycle: Lifecycle,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 1,
            concurrency: 4,
            lifecycle: Lifecycle {
                lease: Duration::from_secs(3),
                republish_after: Duration::from_secs(3),
                reaper_interval: Duration::from_millis(500),
                max_attempts: 3,
            },
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(opts: Options) -> Self {
        gpuq_shared::telemetry::init();
        let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
        let base = env_or(
            "GPUQ_TEST_DATABASE_URL",
            "postgres://postgres:postgres@127.0.0.1:5432",
        );
        let admin = gpuq_shared::db::connect(&format!("{base}/postgres"), 1)
            .await
            .expect("Postgres is running");
        let db_name = format!("gpuq_t_{tag}");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let settings = Settings {
            database_url: format!("{base}/{db_name}"),
            amqp_url: env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            queue: format!("gpuq.test.{tag}"),
            bucket: env_or("GPUQ_TEST_BUCKET", "gpuq-test"),
            s3_prefix: format!("t-{tag}"),
            lifecycle: opts.lifecycle,
        };
        let shutdown = CancellationToken::new();
        let api_settings = gpuq_api::ApiSettings {
            shared: settings.clone(),
            addr: "127.0.0.1:0".into(),
            max_body_bytes: 1024 * 1024,
            reaper: true,
        };
        let app = gpuq_api::Application::build(api_settings, &shutdown)
            .await
            .expect("API starts");
        let url = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let pool = gpuq_shared::db::connect(&settings.database_url, 4)
            .await
            .unwrap();
        let storage = Storage::from_env().await;
        storage
            .ensure_bucket(&settings.bucket)
            .await
            .expect("S3 server is running");
        let mut me = Self {
            url,
            client: reqwest::Client::new(),
            pool,
            settings,
            storage,
            shutdown,
            abort: CancellationToken::new(),
            concurrency: opts.concurrency,
            children: Vec::new(),
        };
        for _ in 0..opts.workers {
            me.spawn_worker_in_process();
        }
        me
    }

    pub fn spawn_worker_in_process(&mut self) {
        let settings = gpuq_worker::WorkerSettings {
            shared: self.settings.clone(),
            concurrency: self.concurrency,
            drain: Duration::from_secs(1),
        };
        let (stop, abort) = (self.shutdown.clone(), self.abort.clone());
        tokio::spawn(async move {
            if let Err(e) = gpuq_worker::run_with_abort(settings, stop, abort).await {
                panic!("in-process worker failed: {e:#}");
            }
        });
    }

    /// Starts a real `gpuq-worker` process on this test's database, queue and prefix.
    pub fn spawn_worker_process(&mut self) -> u32 {
        let s = &self.settings;
        let child = Command::new(worker_binary())
            .env("DATABASE_URL", &s.database_url)
            .env("AMQP_URL", &s.amqp_url)
            .env("GPUQ_QUEUE", &s.queue)
            .env("GPUQ_BUCKET", &s.bucket)
            .env("GPUQ_S3_PREFIX", &s.s3_prefix)
            .env(
                "GPUQ_LEASE_SECONDS",
                s.lifecycle.lease.as_secs_f64().to_string(),
            )
            .env(
                "GPUQ_REPUBLISH_AFTER_SECONDS",
                s.lifecycle.republish_after.as_secs_f64().to_string(),
            )
            .env(
                "GPUQ_REAPER_INTERVAL_SECONDS",
                s.lifecycle.reaper_interval.as_secs_f64().to_string(),
            )
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the gpuq-worker binary runs (scripts/dev test builds it)");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Stores `bytes` under this test's prefix and returns its URI.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        let uri = S3Uri::new(&self.settings.bucket, self.settings.object_key(name));
        self.storage.put(&uri, bytes, "text/csv").await.unwrap();
        uri.to_string()
    }

    pub async fn get_object(&self, uri: &str) -> Vec<u8> {
        self.storage.get_bytes(&uri.parse().unwrap()).await.unwrap()
    }

    /// Sends a request and returns its status and JSON body (`null` when the body is not JSON).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = request.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.client.post(format!("{}{path}", self.url)).json(body))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let request = self.client.post(format!("{}{path}", self.url));
        self.send(
            request
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(format!("{}{path}", self.url)))
            .await
    }

    /// Submits and expects `202`; returns the job.
    pub async fn submit(&self, body: Value) -> Value {
        let (status, job) = self.post("/v1/jobs", &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "submit answered {job}");
        job
    }

    /// Submits and waits for the job to finish (at most four minutes).
    pub async fn run(&self, body: Value) -> Value {
        let job = self.submit(body).await;
        self.wait(&job, Duration::from_secs(240)).await
    }

    /// Waits (long-polling) until the job is terminal, at most `limit`.
    pub async fn wait(&self, job: &Value, limit: Duration) -> Value {
        let id = job["id"].as_str().expect("a job id");
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (status, job) = self.get(&format!("/v1/jobs/{id}?wait=10")).await;
            assert_eq!(status, StatusCode::OK, "{job}");
            let status: gpuq_shared::JobStatus = job["status"].as_str().unwrap().parse().unwrap();
            if status.is_terminal() {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} still {} after {limit:?}",
                job["status"]
            );
        }
    }

    /// Polls until the job reports training progress (an `epoch …` message); returns the job.
    pub async fn wait_for_training(&self, id: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (_, j) = self.get(&format!("/v1/jobs/{id}")).await;
            if j["progress"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("epoch"))
            {
                return j;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no training progress: {j}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn model_rows_for(&self, job_id: &str) -> i64 {
        gpuq_shared::db::models_for_job(&self.pool, job_id.parse().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // The runtime waits for blocking (GPU) tasks when the test ends: stop them now.
        self.abort.cancel();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `target/<profile>/gpuq-worker`, beside the directory of the running test binary.
pub fn worker_binary() -> PathBuf {
    if let Ok(p) = std::env::var("GPUQ_WORKER_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("gpuq-worker")
}

/// The digits data set (scikit-learn's `load_digits`, 75/25 split) shipped in `tests/data`.
pub fn digits(split: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("data/digits_{split}.csv")),
    )
    .unwrap()
}

/// A file under `tests/data` (data sets) or `tests/reference` (independently computed results).
pub fn data(path: &str) -> Vec<u8> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// A JSON file of reference results under `tests/reference`.
pub fn reference(name: &str) -> serde_json::Value {
    serde_json::from_slice(&data(&format!("reference/{name}"))).unwrap()
}
