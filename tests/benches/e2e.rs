//! End-to-end benchmark of the job path, everything on this machine (clients, API, worker,
//! Postgres, RabbitMQ, S3), the release `gpuq-api` and `gpuq-worker` processes at their default
//! log level with their logs written to `.dev/logs/bench-*.log`, as a user runs them. Each job is
//! small inference: one 64-feature row through a 10-class logistic regression model.
//!
//! Phases, each beside a baseline measured in the same run on the same Postgres (a bare
//! `INSERT` then `UPDATE` of one row per job from as many clients), as a ratio:
//! - closed loop: single submits from `GPUQ_BENCH_CONCURRENCY` (64) clients, each waiting for
//!   its job (`Prefer: wait=10`) — jobs/s, p50, p99 per request;
//! - open loop: jobs sent at fixed rates (`GPUQ_BENCH_RATES`, 1000,2500,5000 a second, for
//!   `GPUQ_BENCH_OPEN_SECONDS`, 20, each) without waiting — the achieved rate and the time from
//!   sending each job to its `finished_at`: p50, p99, p99.9, max, and how many took over 1 s;
//! - batches: `GPUQ_BENCH_BATCH_CLIENTS` (16) clients sending batches of `GPUQ_BENCH_BATCH_SIZE`
//!   (100) jobs to `POST /v1/jobs/batch`, each waiting for its batch — jobs/s.
//!
//! With each phase, the CPU each process used (percent of one core; the machine's cores × 100
//! is all of it). `GPUQ_BENCH_ONLY=closed|open|batch` runs one phase; `GPUQ_BENCH_SECONDS` (10)
//! is how long the closed-loop and batch phases run; `GPUQ_BENCH_LOG` is the services' `RUST_LOG`
//! (default `info`, as a user runs them); `GPUQ_BENCH_WORKERS` (1) worker processes.
//! Run with `scripts/dev bench e2e`.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Children(Vec<Child>);
impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time (user + system, in clock ticks) used so far by each kind of process on the machine.
fn cpu_ticks() -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) else {
            continue;
        };
        let ticks = u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0);
        let kind = match comm {
            _ if name == me => "bench clients",
            "gpuq-api" => "gpuq-api",
            "gpuq-worker" => "gpuq-worker",
            "postgres" => "postgres",
            "beam.smp" | "erl_child_setup" | "epmd" | "inet_gethost" => "rabbitmq",
            "s3s-fs" => "s3s-fs",
            _ => continue,
        };
        *out.entry(kind.to_string()).or_default() += ticks;
    }
    out
}

/// The CPU each kind of process used between two readings, as percent of one core.
fn cpu_line(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    elapsed: Duration,
) -> String {
    let hz = 100.0; // USER_HZ on Linux
    let mut parts = Vec::new();
    for kind in [
        "bench clients",
        "gpuq-api",
        "gpuq-worker",
        "postgres",
        "rabbitmq",
        "s3s-fs",
    ] {
        let used = after
            .get(kind)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(kind).copied().unwrap_or(0));
        parts.push(format!(
            "{kind} {:.0}%",
            used as f64 / hz / elapsed.as_secs_f64() * 100.0
        ));
    }
    format!("CPU (% of one core): {}", parts.join(", "))
}

/// Bare Postgres: `clients` clients each inserting then updating one row per job, for `secs`.
async fn baseline(db_url: &str, clients: usize, secs: f64) -> anyhow::Result<f64> {
    // As many connections as the API's and the worker's pools together, well inside Postgres'
    // 100, with all the clients sharing them.
    let pool = gpuq_shared::db::connect(&gpuq_tests::database(db_url), 32).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_baseline (id uuid PRIMARY KEY, status text NOT NULL, result jsonb)",
    )
    .execute(&pool)
    .await?;
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (pool, done) = (pool.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let id = Uuid::now_v7();
                    sqlx::query("INSERT INTO bench_baseline (id, status) VALUES ($1, 'queued')")
                        .bind(id)
                        .execute(&pool)
                        .await
                        .unwrap();
                    sqlx::query(
                        "UPDATE bench_baseline SET status = 'succeeded', result = '{}' WHERE id = $1",
                    )
                    .bind(id)
                    .execute(&pool)
                    .await
                    .unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    pool.close().await;
    Ok(rate)
}

struct Bench {
    client: reqwest::Client,
    url: String,
    /// The submit bodies, sent in turn (one for the logreg phases; sampled logins for fleets).
    bodies: Bodies,
    pool: sqlx::PgPool,
}

/// Submit bodies taken in turn by every client.
#[derive(Clone)]
struct Bodies {
    all: Arc<Vec<Value>>,
    next: Arc<AtomicUsize>,
}

impl Bodies {
    fn new(all: Vec<Value>) -> Self {
        Self {
            all: Arc::new(all),
            next: Arc::default(),
        }
    }

    fn take(&self) -> &Value {
        &self.all[self.next.fetch_add(1, Ordering::Relaxed) % self.all.len()]
    }
}

impl Bench {
    /// Closed loop: `clients` clients, each submitting with `Prefer: wait=10` and waiting, for
    /// `secs`. Returns (jobs/s, sorted latencies, failures, each job's id with when it was sent
    /// and answered).
    async fn closed(&self, clients: usize, secs: f64) -> (f64, Vec<Duration>, usize, Vec<Sent>) {
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (client, url, bodies) =
                    (self.client.clone(), self.url.clone(), self.bodies.clone());
                tokio::spawn(async move {
                    let (mut lat, mut failed, mut sent) = (Vec::new(), 0usize, Vec::new());
                    while Instant::now() < until {
                        let (t, at) = (Instant::now(), chrono::Utc::now());
                        let r = client
                            .post(format!("{url}/v1/jobs"))
                            .header("Prefer", "wait=10")
                            .json(bodies.take())
                            .send()
                            .await;
                        let job = match r {
                            Ok(r) => r.json::<Value>().await.ok(),
                            Err(_) => None,
                        };
                        match job.filter(|j| j["status"] == "succeeded") {
                            Some(j) => {
                                lat.push(t.elapsed());
                                if let Some(id) = j["id"].as_str().and_then(|s| s.parse().ok()) {
                                    sent.push(Sent {
                                        id,
                                        at,
                                        answered: chrono::Utc::now(),
                                    });
                                }
                            }
                            None => failed += 1,
                        }
                    }
                    (lat, failed, sent)
                })
            })
            .collect();
        let (mut lat, mut failed, mut sent) = (Vec::new(), 0, Vec::new());
        for t in tasks {
            let (l, f, s) = t.await.unwrap();
            lat.extend(l);
            failed += f;
            sent.extend(s);
        }
        let elapsed = start.elapsed();
        lat.sort();
        (lat.len() as f64 / elapsed.as_secs_f64(), lat, failed, sent)
    }

    /// Where a closed-loop job's time went, from the client's clock and the job's own
    /// timestamps (one clock: everything runs on this machine): the median of each stage.
    async fn stages(&self, sent: &[Sent]) -> Vec<(&'static str, Duration)> {
        type Times = (
            Uuid,
            chrono::DateTime<chrono::Utc>,
            Option<chrono::DateTime<chrono::Utc>>,
            Option<chrono::DateTime<chrono::Utc>>,
        );
        let ids: Vec<Uuid> = sent.iter().map(|s| s.id).collect();
        let rows: Vec<Times> = sqlx::query_as(
            "SELECT id, created_at, started_at, finished_at FROM jobs WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let rows: HashMap<Uuid, Times> = rows.into_iter().map(|r| (r.0, r)).collect();
        let mut stages: [Vec<Duration>; 4] = Default::default();
        let gap = |a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>| {
            (b - a).to_std().unwrap_or_default()
        };
        for s in sent {
            let Some(&(_, created, Some(started), Some(finished))) = rows.get(&s.id) else {
                continue;
            };
            stages[0].push(gap(s.at, created));
            stages[1].push(gap(created, started));
            stages[2].push(gap(started, finished));
            stages[3].push(gap(finished, s.answered));
        }
        let names = [
            "HTTP request, auth, validation, waiting for a group (send → INSERT's transaction)",
            "INSERT commit, publish + confirm, delivery, the worker's read or claim (INSERT → started_at)",
            "compute and completion UPDATE (started_at → finished_at)",
            "wake-up, re-read, HTTP response (finished_at → answer received)",
        ];
        names
            .into_iter()
            .zip(stages)
            .map(|(n, mut v)| {
                v.sort();
                (n, percentile(&v, 0.5))
            })
            .collect()
    }

    /// Open loop: one job sent every 1/`rate` s for `secs`, none waited for; then, once they
    /// have finished, the time from each send to its job's `finished_at`.
    async fn open(&self, rate: f64, secs: f64) -> OpenResult {
        let n = (rate * secs) as usize;
        let sent: SentLog = Arc::default();
        let refused = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(tokio::sync::Semaphore::new(2048));
        let late = Arc::new(AtomicUsize::new(0));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at).await;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                // More requests outstanding than the client allows: this one is sent late.
                late.fetch_add(1, Ordering::Relaxed);
                let permit = in_flight.clone().acquire_owned().await.unwrap();
                tasks.push(self.send_one(permit, sent.clone(), refused.clone()));
                continue;
            };
            tasks.push(self.send_one(permit, sent.clone(), refused.clone()));
        }
        let sending = start.elapsed();
        for t in tasks {
            let _ = t.await;
        }
        let intake = sending.max(start.elapsed());
        let sent = std::mem::take(&mut *sent.lock().unwrap());
        let ids: Vec<Uuid> = sent.iter().map(|(id, _)| *id).collect();
        // Wait (at most a minute) for them all to finish.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE id = ANY($1) AND finished_at IS NULL",
            )
            .bind(&ids)
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if open == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let finished: HashMap<Uuid, Option<chrono::DateTime<chrono::Utc>>> =
            sqlx::query_as("SELECT id, finished_at FROM jobs WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let mut lat = Vec::with_capacity(sent.len());
        let mut unfinished = 0;
        let mut last_finish = None;
        for (id, at) in &sent {
            match finished.get(id).copied().flatten() {
                Some(done) => {
                    lat.push((done - *at).to_std().unwrap_or_default());
                    last_finish = last_finish.max(Some(done));
                }
                None => unfinished += 1,
            }
        }
        lat.sort();
        OpenResult {
            offered: rate,
            accepted: sent.len(),
            intake_rate: sent.len() as f64 / intake.as_secs_f64(),
            refused: refused.load(Ordering::Relaxed),
            late: late.load(Ordering::Relaxed),
            unfinished,
            lat,
        }
    }

    fn send_one(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        sent: SentLog,
        refused: Arc<AtomicUsize>,
    ) -> tokio::task::JoinHandle<()> {
        let (client, url, bodies) = (self.client.clone(), self.url.clone(), self.bodies.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let at = chrono::Utc::now();
            let r = client
                .post(format!("{url}/v1/jobs"))
                .json(bodies.take())
                .send()
                .await;
            let id = match r {
                Ok(r) if r.status() == 202 => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|j| j["id"].as_str().and_then(|s| s.parse().ok())),
                _ => None,
            };
            match id {
                Some(id) => sent.lock().unwrap().push((id, at)),
                None => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    }

    /// `clients` clients sending batches of `size` jobs with `Prefer: wait=10`, for `secs`.
    /// Returns (jobs/s, failed jobs, each job's id with when its batch was sent and answered).
    async fn batches(&self, clients: usize, size: usize, secs: f64) -> (f64, usize, Vec<Sent>) {
        let batch = Arc::new(json!({ "jobs": vec![self.bodies.take().clone(); size] }));
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (client, url, batch) = (self.client.clone(), self.url.clone(), batch.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failed, mut sent) = (0usize, 0usize, Vec::new());
                    while Instant::now() < until {
                        let at = chrono::Utc::now();
                        let r = client
                            .post(format!("{url}/v1/jobs/batch"))
                            .header("Prefer", "wait=10")
                            .json(&*batch)
                            .send()
                            .await;
                        let jobs = match r {
                            Ok(r) => r.json::<Value>().await.ok(),
                            Err(_) => None,
                        };
                        let answered = chrono::Utc::now();
                        match jobs.as_ref().and_then(|j| j["jobs"].as_array()) {
                            Some(jobs) => {
                                for job in jobs {
                                    if job["status"] != "succeeded" {
                                        failed += 1;
                                        continue;
                                    }
                                    ok += 1;
                                    if let Some(id) =
                                        job["id"].as_str().and_then(|s| s.parse().ok())
                                    {
                                        sent.push(Sent { id, at, answered });
                                    }
                                }
                            }
                            None => failed += size,
                        }
                    }
                    (ok, failed, sent)
                })
            })
            .collect();
        let (mut ok, mut failed, mut sent) = (0, 0, Vec::new());
        for t in tasks {
            let (o, f, s) = t.await.unwrap();
            ok += o;
            failed += f;
            sent.extend(s);
        }
        (ok as f64 / start.elapsed().as_secs_f64(), failed, sent)
    }
}

/// A `.npy` (version 1.0, little-endian f32, C order) of `rows × cols` values.
fn npy_f32(data: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// Fleet scoring (`GPUQ_BENCH_ONLY=fleet`): a fleet of `GPUQ_BENCH_FLEET_USERS` (100,000)
/// keystroke detectors trained through the API from `GPUQ_BENCH_FLEET_ROWS` (20) synthetic rows
/// each, then verification jobs (one login row each, named by `fleet_id` + `group`, half of them
/// typed by another user) for users drawn uniformly and by Zipf (s = 1.1): a closed loop of
/// `clients`, and an open loop at half the closed loop's rate.
async fn fleet_phase(
    bench: &Bench,
    tag: &str,
    clients: usize,
    secs: f64,
    open_secs: f64,
    base_rate: f64,
    logs: &std::path::Path,
) -> anyhow::Result<()> {
    use gpuq_worker::synthetic::{FEATURES, Rng, Users, Zipf};
    let n_users: usize = knob("GPUQ_BENCH_FLEET_USERS", 100_000);
    let rows_per: usize = knob("GPUQ_BENCH_FLEET_ROWS", 20);
    let mut rng = Rng(0x5eed);
    let users = Users::new(n_users, &mut rng);
    let cols = FEATURES + 1;
    let mut data = Vec::with_capacity(n_users * rows_per * cols);
    let mut row = Vec::with_capacity(FEATURES);
    for u in 0..n_users {
        for _ in 0..rows_per {
            row.clear();
            users.row(u, &mut rng, &mut row);
            data.push(u as f32);
            data.extend_from_slice(&row);
        }
    }
    let npy = npy_f32(&data, n_users * rows_per, cols);
    drop(data);
    let storage = gpuq_shared::storage::Storage::from_env().await;
    let bucket = std::env::var("GPUQ_TEST_BUCKET").unwrap_or("gpuq-test".into());
    let uri = gpuq_shared::S3Uri::new(&bucket, format!("bench-{tag}/tenants/bench/fleet.npy"));
    let npy_bytes = npy.len();
    storage
        .put(&uri, npy, "application/octet-stream")
        .await
        .map_err(|e| anyhow::anyhow!("uploading the fleet's input: {e}"))?;
    let t = Instant::now();
    let mut job: Value = bench
        .client
        .post(format!("{}/v1/jobs", bench.url))
        .json(
            &json!({"type": "train", "algorithm": "anomaly", "input": {"uri": uri.to_string()},
                      "params": {"group_column": "0", "method": "scaled_manhattan"},
                      "timeout_s": 3600}),
        )
        .send()
        .await?
        .json()
        .await?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    while !matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "canceled")
    ) {
        job = bench
            .client
            .get(format!("{}/v1/jobs/{id}?wait=10", bench.url))
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(!id.is_empty(), "the fleet's train job was refused: {job}");
    }
    anyhow::ensure!(
        job["status"] == "succeeded",
        "the fleet did not train: {job}"
    );
    let fleet_id = job["result"]["fleet_id"].as_str().unwrap().to_string();
    println!(
        "fleet: {n_users} users × {rows_per} rows × {FEATURES} features ({:.0} MB .npy) trained through the API in {:.1} s (submit → succeeded)",
        npy_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let worker_log = logs.join("bench-gpuq-worker-0.log");
    let loads = || {
        std::fs::read_to_string(&worker_log)
            .map(|l| l.matches("model loaded").count())
            .unwrap_or(0)
    };
    let zipf = Zipf::new(n_users, 1.1);
    for (name, skewed) in [("uniform", false), ("Zipf s=1.1", true)] {
        let bodies: Vec<Value> = (0..100_000)
            .map(|i| {
                let u = if skewed {
                    zipf.sample(&mut rng)
                } else {
                    rng.below(n_users)
                };
                let typist = if i % 2 == 0 { u } else { rng.below(n_users) };
                row.clear();
                users.row(typist, &mut rng, &mut row);
                json!({"type": "infer", "fleet_id": fleet_id, "group": u.to_string(),
                       "input": {"rows": [row]}})
            })
            .collect();
        let b = Bench {
            client: bench.client.clone(),
            url: bench.url.clone(),
            bodies: Bodies::new(bodies),
            pool: bench.pool.clone(),
        };
        b.closed(clients, 2.0).await; // warm-up: the fleet onto the device
        let (loads_before, cpu) = (loads(), cpu_ticks());
        let (rate, lat, failed, _) = b.closed(clients, secs).await;
        println!(
            "fleet verifications, users {name}, closed loop, {clients} clients with Prefer: wait=10: {rate:.0} jobs/s ({:.2}× baseline), p50 {:.1} ms, p99 {:.1} ms, {failed} failed; fleet loads onto the device meanwhile: {}",
            rate / base_rate,
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.99)),
            loads() - loads_before,
        );
        println!(
            "  {}",
            cpu_line(&cpu, &cpu_ticks(), Duration::from_secs_f64(secs))
        );
        let half = (rate / 2.0).max(1.0);
        let cpu = cpu_ticks();
        let t = Instant::now();
        let r = b.open(half, open_secs).await;
        let over_1s = r
            .lat
            .iter()
            .filter(|l| **l > Duration::from_secs(1))
            .count();
        println!(
            "fleet verifications, users {name}, open loop at {half:.0} jobs/s for {open_secs} s: intake {:.0} jobs/s; send→finished p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {over_1s} over 1 s; {} refused, {} unfinished",
            r.intake_rate,
            ms(percentile(&r.lat, 0.50)),
            ms(percentile(&r.lat, 0.99)),
            ms(r.lat.last().copied().unwrap_or_default()),
            r.refused,
            r.unfinished,
        );
        println!("  {}", cpu_line(&cpu, &cpu_ticks(), t.elapsed()));
    }
    Ok(())
}

/// The open loop's accepted jobs and when each was sent.
type SentLog = Arc<std::sync::Mutex<Vec<(Uuid, chrono::DateTime<chrono::Utc>)>>>;

/// A closed-loop job: its id, when it was sent, when its answer came.
struct Sent {
    id: Uuid,
    at: chrono::DateTime<chrono::Utc>,
    answered: chrono::DateTime<chrono::Utc>,
}

struct OpenResult {
    offered: f64,
    accepted: usize,
    intake_rate: f64,
    refused: usize,
    late: usize,
    unfinished: usize,
    lat: Vec<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let clients: usize = knob("GPUQ_BENCH_CONCURRENCY", 64);
    let workers: usize = knob("GPUQ_BENCH_WORKERS", 1);
    let secs: f64 = knob("GPUQ_BENCH_SECONDS", 10.0);
    let open_secs: f64 = knob("GPUQ_BENCH_OPEN_SECONDS", 20.0);
    let rates: Vec<f64> = knob("GPUQ_BENCH_RATES", "1000,2500,5000".to_string())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let batch_clients: usize = knob("GPUQ_BENCH_BATCH_CLIENTS", 16);
    let batch_size: usize = knob("GPUQ_BENCH_BATCH_SIZE", 100);
    let only = std::env::var("GPUQ_BENCH_ONLY").unwrap_or_default();
    let runs = |phase: &str| only.is_empty() || only == phase;

    let base = std::env::var("GPUQ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432".into());
    let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
    let db_name = format!("gpuq_bench_{tag}");
    let admin =
        gpuq_shared::db::connect(&gpuq_tests::database(&format!("{base}/postgres")), 1).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&admin)
        .await?;
    let db_url = format!("{base}/{db_name}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let bin = std::env::current_exe()?
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let logs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.dev/logs");
    std::fs::create_dir_all(&logs)?;
    let spawn = |name: &str, n: usize| {
        let log = std::fs::File::create(logs.join(format!("bench-{name}-{n}.log"))).unwrap();
        Command::new(bin.join(name))
            .env("DATABASE_URL", &db_url)
            .env("GPUQ_QUEUE", format!("gpuq.bench.{tag}"))
            .env("GPUQ_S3_PREFIX", format!("bench-{tag}"))
            .env(
                "GPUQ_BUCKET",
                std::env::var("GPUQ_TEST_BUCKET").unwrap_or("gpuq-test".into()),
            )
            .env("GPUQ_API_ADDR", format!("127.0.0.1:{port}"))
            // Measures the service, not the per-tenant rate limit or waiter cap.
            .env("GPUQ_RATE_LIMIT_PER_SECOND", "1000000")
            .env("GPUQ_RATE_LIMIT_BURST", "1000000")
            .env("GPUQ_MAX_WAITERS_PER_TENANT", "100000")
            // Default logging, as a user runs it, unless GPUQ_BENCH_LOG asks for more.
            .env(
                "RUST_LOG",
                std::env::var("GPUQ_BENCH_LOG").unwrap_or("info".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("release binaries are built (scripts/dev bench builds them)")
    };
    let mut children = Children(vec![spawn("gpuq-api", 0)]);
    let url = format!("http://127.0.0.1:{port}");
    let probe = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..300 {
        if probe
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(
        ready,
        "the API did not become ready; see .dev/logs/bench-gpuq-api-0.log"
    );
    let pool = gpuq_shared::db::connect(&gpuq_tests::database(&db_url), 4).await?;
    let key = gpuq_api::create_key(&pool, "bench").await?.token;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse()?,
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .default_headers(headers)
        .build()?;
    let started = Instant::now();
    for n in 0..workers {
        children.0.push(spawn("gpuq-worker", n));
    }
    // Ready when its row in `workers` appears (it compiles every kernel before it consumes).
    loop {
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM workers")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        if seen >= workers as i64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "no worker became ready in 5 minutes; see .dev/logs/bench-gpuq-worker-0.log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let worker_ready = started.elapsed();

    // A 64-feature, 10-class model to infer with.
    let rows: Vec<Vec<f32>> = (0..200)
        .map(|i| (0..64).map(|j| ((i * 7 + j * 13) % 17) as f32).collect())
        .collect();
    let labels: Vec<u32> = (0..200).map(|i| i % 10).collect();
    let train: Value = client
        .post(format!("{url}/v1/jobs"))
        .header("Prefer", "wait=60")
        .json(&json!({"type": "train", "algorithm": "logreg", "input": {"rows": rows, "labels": labels},
                      "params": {"epochs": 5}}))
        .send().await?.json().await?;
    anyhow::ensure!(
        train["status"] == "succeeded",
        "training the bench model did not succeed within 60 s: status {}, error {}, attempt errors {}",
        train["status"],
        train["error"],
        train["attempt_errors"]
    );
    let model_id = train["result"]["model_id"].as_str().unwrap().to_string();
    let bench = Bench {
        client,
        url,
        bodies: Bodies::new(vec![
            json!({"type": "infer", "model_id": model_id, "input": {"rows": [rows[3]]}}),
        ]),
        pool: pool.clone(),
    };
    bench.closed(clients, 2.0).await; // warm-up: connections, model cache

    println!("gpuq end-to-end benchmark: inference jobs of 1 row × 64 features, 10 classes;");
    println!(
        "  {workers} worker process(es) (ready {:.1} s after start), {} cores, default log level",
        worker_ready.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let base_rate = baseline(&db_url, clients, secs.min(5.0)).await?;
    println!(
        "  baseline: {base_rate:.0} jobs/s (bare INSERT + UPDATE of one row per job, {clients} clients, same Postgres)"
    );
    if only != "fleet" && runs("closed") {
        let cpu = cpu_ticks();
        let (rate, lat, failed, sent) = bench.closed(clients, secs).await;
        println!(
            "closed loop, {clients} clients, single submits with Prefer: wait=10: {rate:.0} jobs/s ({:.2}× baseline), p50 {:.1} ms, p99 {:.1} ms, {failed} failed",
            rate / base_rate,
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.99)),
        );
        println!(
            "  {}",
            cpu_line(&cpu, &cpu_ticks(), Duration::from_secs_f64(secs))
        );
        println!("  where a job's time goes (medians):");
        for (stage, d) in bench.stages(&sent).await {
            println!("    {:>7.2} ms  {stage}", ms(d));
        }
    }
    if only != "fleet" && runs("open") {
        for &rate in &rates {
            let cpu = cpu_ticks();
            let t = Instant::now();
            let r = bench.open(rate, open_secs).await;
            let over_1s = r
                .lat
                .iter()
                .filter(|l| **l > Duration::from_secs(1))
                .count();
            println!(
                "open loop, {:.0} jobs/s offered for {open_secs} s: intake {:.0} jobs/s ({:.2}× baseline); send→finished p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; {over_1s} over 1 s; {} refused, {} sent late, {} unfinished",
                r.offered,
                r.intake_rate,
                r.intake_rate / base_rate,
                ms(percentile(&r.lat, 0.50)),
                ms(percentile(&r.lat, 0.99)),
                ms(percentile(&r.lat, 0.999)),
                ms(r.lat.last().copied().unwrap_or_default()),
                r.refused,
                r.late,
                r.unfinished,
            );
            let _ = r.accepted;
            println!("  {}", cpu_line(&cpu, &cpu_ticks(), t.elapsed()));
        }
    }
    if only == "fleet" {
        fleet_phase(&bench, &tag, clients, secs, open_secs, base_rate, &logs).await?;
    }
    if only != "fleet" && runs("batch") {
        let cpu = cpu_ticks();
        let (rate, failed, sent) = bench.batches(batch_clients, batch_size, secs).await;
        println!(
            "batches, {batch_clients} clients × {batch_size} jobs with Prefer: wait=10: {rate:.0} jobs/s ({:.2}× baseline), {failed} failed",
            rate / base_rate
        );
        println!(
            "  {}",
            cpu_line(&cpu, &cpu_ticks(), Duration::from_secs_f64(secs))
        );
        println!("  where a job's time goes (medians):");
        for (stage, d) in bench.stages(&sent).await {
            println!("    {:>7.2} ms  {stage}", ms(d));
        }
    }
    // How much each statement shared: jobs per INSERT (intake group), per claim, per completion
    // (one statement's rows share its transaction's `now()`).
    let (jobs, groups, claims, completions): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT created_at), count(DISTINCT started_at),
                count(DISTINCT finished_at)
         FROM jobs WHERE type = 'infer'",
    )
    .fetch_one(&pool)
    .await?;
    println!(
        "over the run: {jobs} jobs; jobs per intake INSERT {:.1}, per read or claim {:.1}, per completion {:.1}",
        jobs as f64 / groups.max(1) as f64,
        jobs as f64 / claims.max(1) as f64,
        jobs as f64 / completions.max(1) as f64
    );
    drop(children);
    pool.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db_name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
    Ok(())
}
