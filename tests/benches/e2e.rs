//! End-to-end benchmark: tiny inference jobs (one 64-feature row each) submitted over HTTP to
//! real `gpuq-api` and `gpuq-worker` processes, each waited for with `Prefer: wait`, against a
//! baseline measured in the same run on the same Postgres: a bare insert-then-update of one row
//! per job at the same concurrency. Run with `scripts/dev bench` (release build).
//!
//! Knobs: GPUQ_BENCH_JOBS (default 4000), GPUQ_BENCH_CONCURRENCY (64), GPUQ_BENCH_WORKERS (1).

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn knob(name: &str, default: usize) -> usize {
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
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs = knob("GPUQ_BENCH_JOBS", 4000);
    let concurrency = knob("GPUQ_BENCH_CONCURRENCY", 64);
    let workers = knob("GPUQ_BENCH_WORKERS", 1);
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
    let spawn = |name: &str| {
        Command::new(bin.join(name))
            .env("DATABASE_URL", &db_url)
            .env("GPUQ_QUEUE", format!("gpuq.bench.{tag}"))
            .env("GPUQ_S3_PREFIX", format!("bench-{tag}"))
            .env(
                "GPUQ_BUCKET",
                std::env::var("GPUQ_TEST_BUCKET").unwrap_or("gpuq-test".into()),
            )
            .env("GPUQ_API_ADDR", format!("127.0.0.1:{port}"))
            // Measures the service, not the per-tenant rate limit.
            .env("GPUQ_RATE_LIMIT_PER_SECOND", "1000000")
            .env("GPUQ_RATE_LIMIT_BURST", "1000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("release binaries are built (scripts/dev bench builds them)")
    };
    let mut children = Children(vec![spawn("gpuq-api")]);
    let url = format!("http://127.0.0.1:{port}");
    let probe = reqwest::Client::new();
    for _ in 0..100 {
        if probe
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pool = gpuq_shared::db::connect(&gpuq_tests::database(&db_url), 1).await?;
    let key = gpuq_api::create_key(&pool, "bench").await?.token;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse()?,
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .default_headers(headers)
        .build()?;
    for _ in 0..workers {
        children.0.push(spawn("gpuq-worker"));
    }

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
        "training the bench model failed: {train}"
    );
    let model_id = train["result"]["model_id"].as_str().unwrap().to_string();
    let body =
        Arc::new(json!({"type": "infer", "model_id": model_id, "input": {"rows": [rows[3]]}}));

    let run = |n: usize| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let start = Instant::now();
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (client, url, body, next) =
                        (client.clone(), url.clone(), body.clone(), next.clone());
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut failed = 0usize;
                        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                            let t = Instant::now();
                            let r = client
                                .post(format!("{url}/v1/jobs"))
                                .header("Prefer", "wait=30")
                                .json(&*body)
                                .send()
                                .await;
                            let ok = match r {
                                Ok(r) => r
                                    .json::<Value>()
                                    .await
                                    .is_ok_and(|j| j["status"] == "succeeded"),
                                Err(_) => false,
                            };
                            if ok {
                                lat.push(t.elapsed())
                            } else {
                                failed += 1
                            }
                        }
                        (lat, failed)
                    })
                })
                .collect();
            let mut lat = Vec::new();
            let mut failed = 0;
            for t in tasks {
                let (l, f) = t.await.unwrap();
                lat.extend(l);
                failed += f;
            }
            (start.elapsed(), lat, failed)
        }
    };
    run(concurrency * 4).await; // warm-up: connections, model cache, pipelines
    let (elapsed, mut lat, failed) = run(jobs).await;
    lat.sort();
    let gpuq_rate = lat.len() as f64 / elapsed.as_secs_f64();

    drop(children); // the baseline gets the machine to itself
    // Baseline: the same number of "jobs" as a bare insert then update of one row, same clients.
    let pool = gpuq_shared::db::connect(&gpuq_tests::database(&db_url), concurrency as u32).await?;
    sqlx::query(
        "CREATE TABLE bench_baseline (id uuid PRIMARY KEY, status text NOT NULL, result jsonb)",
    )
    .execute(&pool)
    .await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (pool, next) = (pool.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < jobs {
                    let id = Uuid::now_v7();
                    sqlx::query("INSERT INTO bench_baseline (id, status) VALUES ($1, 'queued')")
                        .bind(id).execute(&pool).await.unwrap();
                    sqlx::query("UPDATE bench_baseline SET status = 'succeeded', result = '{}' WHERE id = $1")
                        .bind(id).execute(&pool).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let base_rate = jobs as f64 / start.elapsed().as_secs_f64();

    println!(
        "gpuq end-to-end benchmark: {jobs} tiny inference jobs (1 row × 64 features, 10 classes),"
    );
    println!("  {concurrency} concurrent HTTP clients, {workers} worker process(es), Prefer: wait");
    println!(
        "  gpuq:      {gpuq_rate:>8.0} jobs/s   p50 {:>6.1} ms   p99 {:>6.1} ms   failed {failed}",
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "  baseline:  {base_rate:>8.0} jobs/s   (bare INSERT + UPDATE of one row per job, same Postgres, same concurrency)"
    );
    println!("  ratio gpuq / baseline: {:.3}", gpuq_rate / base_rate);
    pool.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db_name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
    Ok(())
}
