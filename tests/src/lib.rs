//! Test harness: each test gets its own database, queue and S3 prefix, an API on a free port
//! and (optionally) workers, in-process or as real child processes — all against the real
//! Postgres, RabbitMQ, S3 server and Vulkan device that `scripts/dev test` starts.

use gpuq_shared::S3Uri;
use gpuq_shared::config::{
    Backoff, DatabaseSettings, Lifecycle, Limits, Retention, Secret, Settings,
};
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
    /// Sends this test's tenant's API key with every request.
    pub client: reqwest::Client,
    /// The tenant `client` acts for.
    pub tenant: String,
    /// Its API key.
    pub key: String,
    pub pool: PgPool,
    pub settings: Settings,
    /// This test's database, as a URL for the processes it starts.
    pub database_url: String,
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
    pub limits: Limits,
    /// Each tenant's requests per second (and burst) at the API.
    pub rate_limit: (f64, u32),
    /// Each client address's failed authentication attempts per second (and burst).
    pub auth_failure_limit: (f64, u32),
    /// Requests one tenant may have waiting on jobs at once.
    pub max_waiters_per_tenant: usize,
    pub retention: Retention,
    /// Whether the API contends to run maintenance (the reaper, retention).
    pub api_maintenance: bool,
    /// How long presigned URLs last.
    pub presign: Duration,
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
                backoff: Backoff {
                    base: Duration::from_millis(200),
                    max: Duration::from_secs(2),
                },
                default_timeout_s: 600,
                orphan_sweep_interval: Duration::from_secs(600),
                orphan_grace: Duration::from_secs(3600),
            },
            limits: Limits::default(),
            rate_limit: (10_000.0, 10_000),
            auth_failure_limit: (10_000.0, 10_000),
            max_waiters_per_tenant: 1000,
            retention: Retention::default(),
            api_maintenance: true,
            presign: Duration::from_secs(900),
        }
    }
}

/// Connect options for a test database's URL.
pub fn database(url: &str) -> DatabaseSettings {
    DatabaseSettings::from_url(url).expect("a valid Postgres URL")
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
        let admin = gpuq_shared::db::connect(&database(&format!("{base}/postgres")), 1)
            .await
            .expect("Postgres is running");
        let db_name = format!("gpuq_t_{tag}");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let database_url = format!("{base}/{db_name}");
        let settings = Settings {
            database: database(&database_url),
            amqp_url: Secret::new(env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")),
            queue: format!("gpuq.test.{tag}"),
            bucket: env_or("GPUQ_TEST_BUCKET", "gpuq-test"),
            s3_prefix: format!("t-{tag}"),
            lifecycle: opts.lifecycle,
            limits: opts.limits,
            retention: opts.retention,
        };
        let shutdown = CancellationToken::new();
        let api_settings = gpuq_api::ApiSettings {
            shared: settings.clone(),
            addr: "127.0.0.1:0".into(),
            max_body_bytes: 1024 * 1024,
            max_batch_jobs: 50,
            reaper: opts.api_maintenance,
            rate_per_second: opts.rate_limit.0,
            rate_burst: opts.rate_limit.1,
            auth_failures_per_second: opts.auth_failure_limit.0,
            auth_failures_burst: opts.auth_failure_limit.1,
            trusted_proxy_hops: 0,
            max_waiters_per_tenant: opts.max_waiters_per_tenant,
            header_timeout: Duration::from_secs(2),
            db_connections: 6,
            presign: opts.presign,
        };
        let app = gpuq_api::Application::build(api_settings, &shutdown)
            .await
            .expect("API starts");
        let url = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let pool = gpuq_shared::db::connect(&settings.database, 4)
            .await
            .unwrap();
        let storage = Storage::from_env().await;
        storage
            .ensure_bucket(&settings.bucket)
            .await
            .expect("S3 server is running");
        let tenant = "acme".to_string();
        let key = gpuq_api::create_key(&pool, &tenant).await.unwrap().token;
        let mut me = Self {
            url,
            client: client_with_key(&key),
            tenant,
            key,
            pool,
            settings,
            database_url,
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

    /// The settings an in-process worker of this test runs with.
    pub fn worker_settings(&self) -> gpuq_worker::WorkerSettings {
        gpuq_worker::WorkerSettings {
            shared: self.settings.clone(),
            concurrency: self.concurrency,
            prefetch: self.concurrency.max(64),
            drain: Duration::from_secs(1),
            worker_id: None,
            hostname: "test".into(),
            ecs_agent_uri: None,
            budgets: gpuq_worker::Budgets::default(),
            // In-process workers share one process's lavapipe with the other tests' jobs, and
            // a warm-up queued behind their training could hold a claim back for minutes; the
            // worker processes (and the bench) warm up as deployed.
            warm_up: false,
        }
    }

    pub fn spawn_worker_in_process(&mut self) {
        let settings = self.worker_settings();
        let (stop, abort) = (self.shutdown.clone(), self.abort.clone());
        tokio::spawn(async move {
            if let Err(e) = gpuq_worker::run_with_abort(settings, stop, abort).await {
                panic!("in-process worker failed: {e:#}");
            }
        });
    }

    /// Starts a real `gpuq-worker` process on this test's database, queue and prefix.
    pub fn spawn_worker_process(&mut self) -> u32 {
        self.spawn_worker_process_with(&[])
    }

    /// As [`spawn_worker_process`](Self::spawn_worker_process), with extra environment.
    pub fn spawn_worker_process_with(&mut self, env: &[(&str, &str)]) -> u32 {
        let child = self
            .worker_command(env)
            .spawn()
            .expect("the gpuq-worker binary runs (scripts/dev test builds it)");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// The command that starts a `gpuq-worker` process for this test, for callers that manage
    /// the child themselves.
    pub fn worker_command(&self, env: &[(&str, &str)]) -> Command {
        let s = &self.settings;
        let mut command = Command::new(worker_binary());
        command
            .env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", s.amqp_url.expose())
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
            .env(
                "GPUQ_RETRY_BASE_SECONDS",
                s.lifecycle.backoff.base.as_secs_f64().to_string(),
            )
            .env(
                "GPUQ_RETRY_MAX_SECONDS",
                s.lifecycle.backoff.max.as_secs_f64().to_string(),
            )
            .env(
                "GPUQ_ORPHAN_SWEEP_INTERVAL_SECONDS",
                s.lifecycle.orphan_sweep_interval.as_secs_f64().to_string(),
            )
            .env(
                "GPUQ_ORPHAN_GRACE_SECONDS",
                s.lifecycle.orphan_grace.as_secs_f64().to_string(),
            )
            .env("RUST_LOG", "info")
            // Few slots, so few connections: many tests share one Postgres (100 connections).
            .env("GPUQ_WORKER_CONCURRENCY", self.concurrency.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        command
    }

    /// The command that starts `gpuq-scaler` with `args` on this test's database, with the
    /// environment a worker of this test gets (the local backend's children inherit it).
    pub fn scaler_command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let worker = self.worker_command(env);
        let mut command = Command::new(sibling_binary("gpuq-scaler"));
        for (k, v) in worker.get_envs() {
            if let Some(v) = v {
                command.env(k, v);
            }
        }
        command
            .args(args)
            .arg("--worker-bin")
            .arg(worker_binary())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        command
    }

    /// Stores `bytes` under this test's tenant's prefix and returns its URI.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        let prefix = self.settings.tenant_prefix(&self.tenant);
        self.put_at(&format!("{prefix}{name}"), bytes).await
    }

    /// Stores `bytes` under `key` of the test bucket (anywhere) and returns its URI.
    pub async fn put_at(&self, key: &str, bytes: Vec<u8>) -> String {
        let uri = S3Uri::new(&self.settings.bucket, key);
        self.storage.put(&uri, bytes, "text/csv").await.unwrap();
        uri.to_string()
    }

    /// A client acting for another tenant (created if new), with a fresh key of its own.
    pub async fn client_for(&self, tenant: &str) -> reqwest::Client {
        let key = gpuq_api::create_key(&self.pool, tenant).await.unwrap();
        client_with_key(&key.token)
    }

    /// Whether the object exists (`false` once deleted).
    pub async fn object_exists(&self, uri: &str) -> bool {
        match self.storage.get_bytes(&uri.parse().unwrap()).await {
            Ok(_) => true,
            Err(e) if e.code == gpuq_shared::ErrorCode::InputNotFound => false,
            Err(e) => panic!("reading {uri}: {e}"),
        }
    }

    /// Messages ready in this test's job queues.
    pub async fn queue_depth(&self) -> u32 {
        let s = &self.settings;
        gpuq_shared::queue::Publisher::lazy(s.amqp_url.expose(), &s.queue)
            .ready_messages()
            .await
            .unwrap()
    }

    /// Empties this test's job queues, as a broker that lost its messages would.
    pub async fn purge_queue(&self) -> u32 {
        let conn = gpuq_shared::queue::connect(self.settings.amqp_url.expose())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let mut purged = 0;
        for queue in [
            self.settings.queue.clone(),
            gpuq_shared::queue::batch_queue(&self.settings.queue),
        ] {
            purged += channel
                .queue_purge(queue.as_str().into(), Default::default())
                .await
                .unwrap();
        }
        let _ = conn.close(200, "purged".into()).await;
        purged
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

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.delete(format!("{}{path}", self.url)))
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
            if status == StatusCode::SERVICE_UNAVAILABLE {
                // What a client does with a 503: try again shortly.
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
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

    /// Shuts the API (and any in-process workers) down, as SIGTERM would: no new connections,
    /// in-flight requests finish.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }

    /// Records a job straight in Postgres for this test's tenant without publishing it: what an
    /// API that died between its insert and its publish leaves behind, or a row that never came
    /// through the API. `spec` reads like a submit body (`type`, `algorithm`, `model_id`,
    /// `params`, `input`, `max_attempts`), unvalidated.
    pub async fn record_unpublished(
        &self,
        spec: &Value,
    ) -> Result<gpuq_shared::JobId, sqlx::Error> {
        let id = gpuq_shared::JobId::new();
        let model_id: Option<Uuid> = spec["model_id"].as_str().map(|m| m.parse().unwrap());
        sqlx::query(
            "INSERT INTO jobs (id, tenant_id, type, algorithm, model_id, max_attempts, params,
                               input, timeout_s)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 600)",
        )
        .bind(id.0)
        .bind(&self.tenant)
        .bind(spec["type"].as_str().unwrap_or("train"))
        .bind(spec["algorithm"].as_str().unwrap_or("logreg"))
        .bind(model_id)
        .bind(spec["max_attempts"].as_i64().unwrap_or(3) as i32)
        .bind(spec.get("params").unwrap_or(&serde_json::json!({})))
        .bind(&spec["input"])
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Messages waiting in this test's queue, by a passive declare (which changes nothing).
    pub async fn queued_messages(&self) -> u32 {
        self.queue_depth().await
    }

    /// Whether the worker process `pid` has exited (and been reaped).
    pub fn worker_exited(&mut self, pid: u32) -> bool {
        self.children
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_some_and(|c| c.try_wait().unwrap().is_some())
    }

    /// The job as stored, straight from Postgres.
    pub async fn job_row(&self, id: &str) -> gpuq_shared::db::JobRecord {
        gpuq_shared::db::job_get(&self.pool, id.parse().unwrap())
            .await
            .unwrap()
            .expect("the job exists")
    }

    pub async fn model_rows_for(&self, job_id: &str) -> i64 {
        let job: uuid::Uuid = job_id.parse().unwrap();
        sqlx::query_scalar("SELECT count(*) FROM models WHERE job_id = $1")
            .bind(job)
            .fetch_one(&self.pool)
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

/// Stops or starts the shared RabbitMQ (`stop_app`, `start_app`). Only the serial fault suite
/// may call this: every other test talks to the same broker.
pub fn rabbitmq(action: &str) {
    let done = Command::new("rabbitmqctl")
        .args(["-q", action])
        .status()
        .unwrap();
    assert!(done.success(), "rabbitmqctl {action}");
}

/// Evaluates an Erlang expression on the shared broker (for its settings); returns the output.
pub fn rabbitmq_eval(expr: &str) -> String {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "eval", expr])
        .output()
        .unwrap();
    assert!(out.status.success(), "rabbitmqctl eval {expr}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Stops, starts or restarts the shared PostgreSQL cluster. Only the serial fault suite may
/// call this.
pub fn postgres(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .expect("a PostgreSQL cluster under /etc/postgresql");
    let done = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version.to_string(),
            "main",
            action,
        ])
        .args(if action == "start" {
            vec![]
        } else {
            vec!["-m", "fast"]
        })
        .status()
        .unwrap();
    assert!(done.success(), "pg_ctlcluster {action}");
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid}");
}

/// A client that sends `Authorization: Bearer <key>` with every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    // The test API closes a connection idle for its 2 s header timeout; a client that reused
    // one at that instant would meet a reset, so it lets idle connections go sooner.
    reqwest::Client::builder()
        .default_headers(headers)
        .pool_idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// `target/<profile>/gpuq-worker`, beside the directory of the running test binary.
pub fn worker_binary() -> PathBuf {
    if let Ok(p) = std::env::var("GPUQ_WORKER_BIN") {
        return p.into();
    }
    sibling_binary("gpuq-worker")
}

/// `target/<profile>/<name>`, beside the directory of the running test binary.
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().join(name)
}

/// A running `gpuq-scaler` and the decision lines it has printed so far.
pub struct Scaler {
    pub process: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Scaler {
    pub fn spawn(mut command: Command) -> Self {
        let mut process = command
            .spawn()
            .expect("the gpuq-scaler binary runs (scripts/dev test builds it)");
        let stdout = process.stdout.take().expect("stdout is piped");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("a decision line is JSON ({e}): {line}"));
                eprintln!("decision: {line}");
                sink.lock().unwrap().push(value);
            }
        });
        Self { process, lines }
    }

    /// Every decision line so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a decision line that satisfies `what`; panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_after(0, limit, what).await.1
    }

    /// Waits for a decision line, at index `from` or later, that satisfies `what`; returns its
    /// index and the line. Panics after `limit`.
    pub async fn wait_for_after(
        &self,
        from: usize,
        limit: Duration,
        what: impl Fn(&Value) -> bool,
    ) -> (usize, Value) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let found = self
                .lines()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| what(l));
            if let Some(found) = found {
                return found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no such decision within {limit:?}; lines: {:#?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits for the exit; true when it exited with success.
    pub fn stop(&mut self) -> bool {
        signal(self.process.id(), "TERM");
        self.process.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Scaler {
    fn drop(&mut self) {
        if self.process.try_wait().ok().flatten().is_none() {
            // Its local workers drain on SIGTERM too (they die with it).
            let _ = Command::new("kill")
                .args(["-TERM", &self.process.id().to_string()])
                .status();
            let _ = self.process.wait();
        }
    }
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

/// Submits like a careful client: the same `Idempotency-Key` on every try, trying again on
/// `503`, `429` and dropped connections. Returns the job id.
pub async fn submit_retrying(
    app: &TestApp,
    body: &Value,
    key: &str,
    unavailable: &std::sync::atomic::AtomicUsize,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let sent = app
            .client
            .post(format!("{}/v1/jobs", app.url))
            .header("idempotency-key", key)
            .json(body)
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::ACCEPTED => {
                return r.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
            }
            Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                let wait = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                let b: Value = r.json().await.unwrap();
                assert_eq!(b["error"]["code"], "unavailable", "{b}");
                unavailable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(r) => panic!(
                "submit answered {}: {}",
                r.status(),
                r.text().await.unwrap()
            ),
            Err(_) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "could not submit {key} for 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// As [`submit_retrying`] for a batch (`POST /v1/jobs/batch` under the idempotency key `key`):
/// returns the ids of its jobs in order, and panics if any item was refused.
pub async fn submit_batch_retrying(
    app: &TestApp,
    bodies: &[Value],
    key: &str,
    unavailable: &std::sync::atomic::AtomicUsize,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let sent = app
            .client
            .post(format!("{}/v1/jobs/batch", app.url))
            .header("idempotency-key", key)
            .json(&serde_json::json!({ "jobs": bodies }))
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::OK => {
                let b: Value = r.json().await.unwrap();
                return b["jobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|j| {
                        j["id"]
                            .as_str()
                            .unwrap_or_else(|| panic!("refused: {j}"))
                            .to_string()
                    })
                    .collect();
            }
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                let b: Value = r.json().await.unwrap();
                assert_eq!(b["error"]["code"], "unavailable", "{b}");
                unavailable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(r) => panic!("batch answered {}: {}", r.status(), r.text().await.unwrap()),
            Err(_) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "could not submit batch {key} for 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where a set of jobs stands once [`wait_terminal`] stops waiting.
#[derive(Debug, Default)]
pub struct Terminal {
    /// Jobs that succeeded.
    pub succeeded: usize,
    /// Jobs failed or canceled, each as `status: error`.
    pub failed: Vec<String>,
    /// Jobs not terminal when the wait ended (or not found), each as `id: status`: lost.
    pub not_terminal: Vec<String>,
}

/// Waits until every job is terminal or `limit` has passed (reading Postgres, riding out its
/// restarts), and says where each stands; never panics on the time limit, so a caller can count
/// the jobs that never finished. Ids are counted once each.
pub async fn wait_terminal(app: &TestApp, ids: &[String], limit: Duration) -> Terminal {
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    let deadline = std::time::Instant::now() + limit;
    let mut last: Option<Vec<(String, String, Option<Value>)>> = None;
    loop {
        let rows: Result<Vec<(String, String, Option<Value>)>, _> =
            sqlx::query_as("SELECT id::text, status, error FROM jobs WHERE id = ANY($1::uuid[])")
                .bind(ids)
                .fetch_all(&app.pool)
                .await;
        if let Ok(rows) = rows {
            last = Some(rows);
        }
        if let Some(rows) = &last {
            let terminal = |s: &str| ["succeeded", "failed", "canceled"].contains(&s);
            let done = rows.iter().filter(|(_, s, _)| terminal(s)).count();
            if done == unique.len() || std::time::Instant::now() >= deadline {
                let mut seen = std::collections::HashMap::new();
                let mut out = Terminal::default();
                for (id, status, error) in rows {
                    seen.insert(id.as_str(), status.as_str());
                    match status.as_str() {
                        "succeeded" => out.succeeded += 1,
                        s if terminal(s) => out.failed.push(format!("{s}: {error:?}")),
                        s => out.not_terminal.push(format!("{id}: {s}")),
                    }
                }
                out.not_terminal.extend(
                    unique
                        .iter()
                        .filter(|id| !seen.contains_key(id.as_str()))
                        .map(|id| format!("{id}: not in the database")),
                );
                return out;
            }
        } else if std::time::Instant::now() >= deadline {
            // Postgres never answered: nothing is known to have finished.
            return Terminal {
                not_terminal: unique
                    .iter()
                    .map(|id| format!("{id}: unknown (Postgres unreachable)"))
                    .collect(),
                ..Terminal::default()
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until every job is terminal (reading Postgres, riding out its restarts); returns
/// (succeeded, failed ids with their errors). Panics if some are not terminal after `limit`.
pub async fn wait_all(app: &TestApp, ids: &[String], limit: Duration) -> (usize, Vec<String>) {
    let t = wait_terminal(app, ids, limit).await;
    assert!(
        t.not_terminal.is_empty(),
        "{} of {} not terminal after {limit:?}: {:?}",
        t.not_terminal.len(),
        ids.len(),
        &t.not_terminal[..t.not_terminal.len().min(10)]
    );
    (t.succeeded, t.failed)
}
