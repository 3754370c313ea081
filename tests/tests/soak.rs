//! The soak: many jobs (GPUQ_SOAK_JOBS, default 10 000) through the API and three worker
//! processes while faults are injected at random — workers killed (-9), frozen past their lease,
//! told to shut down, duplicate deliveries, jobs recorded but never published (an API that died
//! between insert and publish), RabbitMQ and PostgreSQL stopped and started. Killed and stopped
//! workers are replaced, as ECS or `scripts/dev up` would. Then, after a bounded wait (15 min),
//! an audit: nothing lost (a job not terminal by then is lost), nothing doubled, and no object
//! in S3 that nothing records (an orphan), once the orphan sweep has had its turn. Long: run with
//! `scripts/dev soak`, not in CI. Knobs: GPUQ_SOAK_JOBS (10 000), GPUQ_SOAK_RATE (submissions
//! per second, 50), GPUQ_SOAK_SEED.

use gpuq_shared::orphans;
use gpuq_shared::queue::Publisher;
use gpuq_tests::{Options, TestApp, postgres, rabbitmq, signal, submit_retrying, wait_terminal};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A worker process, killed when dropped.
struct Worker(std::process::Child);
impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// xorshift64*: enough randomness for choosing faults, and repeatable from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "runs for many minutes: scripts/dev soak"]
async fn soak_with_random_faults_loses_nothing_and_doubles_nothing() {
    let total: usize = std::env::var("GPUQ_SOAK_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // Paced so faults land throughout: the service alone runs about 200 jobs/s here.
    let rate: f64 = std::env::var("GPUQ_SOAK_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50.0);
    let seed: u64 = std::env::var("GPUQ_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut opts = Options {
        workers: 0,
        concurrency: 8,
        ..Options::default()
    };
    opts.lifecycle.republish_after = Duration::from_secs(5);
    // Orphans are swept often here, so the audit can hold the sweep to its word.
    opts.lifecycle.orphan_sweep_interval = Duration::from_secs(5);
    opts.lifecycle.orphan_grace = Duration::from_secs(5);
    let app = Arc::new(TestApp::spawn_with(opts).await);
    let quiet = [("RUST_LOG", "warn")];
    let spawn = || {
        Worker(
            app.worker_command(&quiet)
                .spawn()
                .expect("gpuq-worker runs"),
        )
    };
    let mut workers: Vec<Worker> = (0..3).map(|_| spawn()).collect();
    let mut retired: Vec<Worker> = Vec::new();
    let trained = app.run(json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 20},
        "input": {"rows": [[0.0, 1.0], [1.0, 0.0], [0.2, 0.8], [0.9, 0.1]], "labels": [0, 1, 0, 1]}})).await;
    assert_eq!(trained["status"], "succeeded", "{trained}");
    let model = trained["result"]["model_id"].as_str().unwrap().to_string();

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(Vec::<String>::with_capacity(total)));
    let trains = Arc::new(Mutex::new(HashSet::<String>::new()));
    let body_for = move |i: usize| -> (bool, Value) {
        if i.is_multiple_of(20) {
            (
                true,
                json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 5}, "max_attempts": 10,
                "input": {"rows": [[0.0, 1.0], [1.0, 0.0]], "labels": [0, 1]}}),
            )
        } else {
            (
                false,
                json!({"type": "infer", "model_id": model, "max_attempts": 10,
                "input": {"rows": [[(i % 97) as f64 / 97.0, 0.5]]}}),
            )
        }
    };
    let submitters: Vec<_> = (0..32)
        .map(|_| {
            let (app, next, unavailable, ids, trains) = (
                app.clone(),
                next.clone(),
                unavailable.clone(),
                ids.clone(),
                trains.clone(),
            );
            let body_for = body_for.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let (train, body) = body_for(i);
                    let id = submit_retrying(&app, &body, &format!("soak-{i}"), &unavailable).await;
                    tokio::time::sleep(Duration::from_secs_f64(32.0 / rate)).await;
                    if train {
                        trains.lock().unwrap().insert(id.clone());
                    }
                    ids.lock().unwrap().push(id);
                }
            })
        })
        .collect();

    // The chaos monkey, in this task, until the submitters are done and every job is terminal.
    let mut rng = Rng(seed);
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    // Service faults at fixed points of the run, so every run has them: (share submitted, which).
    let mut service_faults = vec![
        (0.15, "rabbitmq"),
        (0.35, "postgres"),
        (0.55, "rabbitmq"),
        (0.75, "postgres"),
    ];
    let publisher = Publisher::lazy(app.settings.amqp_url.expose(), &app.settings.queue);
    let submitting_done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = submitting_done.clone();
        tokio::spawn(async move {
            for s in submitters {
                s.await.unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let lease = app.settings.lifecycle.lease;
    while !submitting_done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(900))).await;
        let progress = next.load(Ordering::Relaxed) as f64 / total as f64;
        let which = match service_faults.first() {
            Some(&(at, service)) if progress >= at => {
                service_faults.remove(0);
                if service == "rabbitmq" { 90 } else { 95 }
            }
            _ => rng.below(85),
        };
        let victim = rng.below(workers.len() as u64) as usize;
        let fault = match which {
            0..=24 => {
                signal(workers[victim].0.id(), "KILL");
                workers[victim] = spawn();
                "worker killed (-9) and replaced"
            }
            25..=39 => {
                let pid = workers[victim].0.id();
                signal(pid, "STOP");
                tokio::spawn(async move {
                    tokio::time::sleep(lease + Duration::from_secs(1)).await;
                    // It may have been killed meanwhile: then there is nothing to resume.
                    let _ = std::process::Command::new("kill")
                        .args(["-CONT", &pid.to_string()])
                        .stderr(std::process::Stdio::null())
                        .status();
                });
                "worker frozen past its lease, then resumed"
            }
            40..=49 => {
                signal(workers[victim].0.id(), "TERM");
                // Left to drain and exit on its own (dropping it would kill it).
                retired.push(std::mem::replace(&mut workers[victim], spawn()));
                "worker told to shut down (SIGTERM) and replaced"
            }
            50..=69 => {
                let some: Vec<String> = {
                    let ids = ids.lock().unwrap();
                    (0..20)
                        .filter_map(|_| {
                            ids.get(rng.below(ids.len().max(1) as u64) as usize)
                                .cloned()
                        })
                        .collect()
                };
                for id in some {
                    let _ = publisher.publish(id.parse().unwrap()).await;
                }
                "20 duplicate deliveries"
            }
            70..=84 => {
                // What an API that died between the insert and the publish leaves behind.
                let spec = json!({"type": "infer", "model_id": trained["result"]["model_id"],
                    "max_attempts": 10, "input": {"rows": [[0.5, 0.5]]}});
                match app.record_unpublished(&spec).await {
                    Ok(id) => {
                        ids.lock().unwrap().push(id.to_string());
                        "job recorded, never published (API died)"
                    }
                    Err(_) => "skipped: database down",
                }
            }
            90 => {
                rabbitmq("stop_app");
                tokio::time::sleep(Duration::from_secs(2)).await;
                rabbitmq("start_app");
                "RabbitMQ stopped for 2 s"
            }
            95 => {
                postgres("stop");
                tokio::time::sleep(Duration::from_secs(2)).await;
                postgres("start");
                "PostgreSQL stopped for 2 s"
            }
            _ => continue,
        };
        *faults.entry(fault).or_default() += 1;
        let done = next.load(Ordering::Relaxed).min(total);
        println!(
            "[{:>6.1}s] {done:>6} submitted · {fault}",
            started.elapsed().as_secs_f64()
        );
    }
    watcher.await.unwrap();
    let submitted_in = started.elapsed();
    let ids = ids.lock().unwrap().clone();
    // Bounded: a job still not terminal when it ends is lost, and counted as such below.
    let outcome = wait_terminal(&app, &ids, Duration::from_secs(900)).await;
    let (succeeded, failed) = (outcome.succeeded, &outcome.failed);
    let finished_in = started.elapsed();
    // Objects nothing records, once the maintenance loop has had two sweeps past their grace:
    // what losing attempts failed to delete and the sweep failed to find.
    let l = &app.settings.lifecycle;
    tokio::time::sleep(l.orphan_grace + 2 * l.orphan_sweep_interval).await;
    let orphaned = orphans::find(&app.pool, &app.storage, &app.settings, Duration::ZERO)
        .await
        .expect("S3 and Postgres are up");

    // The audit.
    let pool = &app.pool;
    let in_db: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(pool)
        .await
        .unwrap();
    let unique: HashSet<&String> = ids.iter().collect();
    let lost = outcome.not_terminal.len();
    let doubled_jobs = in_db - 1 - unique.len() as i64;
    let doubled_models: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id FROM models GROUP BY job_id HAVING count(*) > 1) d",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let models: i64 = sqlx::query_scalar("SELECT count(*) FROM models")
        .fetch_one(pool)
        .await
        .unwrap();
    let train_succeeded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE type = 'train' AND status = 'succeeded'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let retried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE jsonb_array_length(attempt_errors) > 0",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let no_result: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status = 'succeeded' AND result IS NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    println!(
        "\nsoak: {} jobs ({} train) + 1 setup job, seed {seed:#x}, paced at {rate} submissions/s",
        ids.len(),
        trains.lock().unwrap().len()
    );
    println!(
        "  submitted in {submitted_in:.1?}, {} of {} terminal after {finished_in:.1?} ({:.0} jobs/s)",
        succeeded + failed.len(),
        unique.len(),
        ids.len() as f64 / finished_in.as_secs_f64()
    );
    for (fault, n) in &faults {
        println!("  fault: {n:>4} × {fault}");
    }
    println!(
        "  503s met by clients: {}",
        unavailable.load(Ordering::Relaxed)
    );
    println!("  jobs that needed more than one attempt: {retried}");
    println!(
        "  audit: lost (not terminal) {lost}, failed or canceled {}, doubled jobs {doubled_jobs}, train jobs with >1 model {doubled_models}, succeeded without result {no_result}",
        failed.len()
    );
    println!("  models {models} for {train_succeeded} succeeded train jobs");
    println!(
        "  orphaned objects (in S3, recorded nowhere): {}",
        orphaned.len()
    );
    assert_eq!(
        lost,
        0,
        "jobs not terminal at the end (first 10): {:?}",
        &outcome.not_terminal[..lost.min(10)]
    );
    assert_eq!(doubled_jobs, 0, "a retried submission made a second job");
    assert_eq!(doubled_models, 0);
    assert_eq!(models, train_succeeded);
    assert_eq!(no_result, 0);
    assert!(
        orphaned.is_empty(),
        "orphaned objects (first 10): {:?}",
        &orphaned[..orphaned.len().min(10)]
    );
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(10)]);
}

/// The soak's bounded wait: a job that never finishes is reported lost when the wait ends,
/// rather than panicking it, and a finished one is counted as such.
#[tokio::test(flavor = "multi_thread")]
async fn the_soaks_wait_ends_on_time_and_counts_a_job_never_run_as_lost() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let spec = json!({"type": "infer", "model_id": gpuq_shared::ModelId::new().to_string(),
        "input": {"rows": [[0.5, 0.5]]}});
    let never_run = app.record_unpublished(&spec).await.unwrap();
    let canceled = app.record_unpublished(&spec).await.unwrap();
    gpuq_shared::db::job_set_canceled(&app.pool, &app.tenant, canceled)
        .await
        .unwrap();
    let ids = [never_run.to_string(), canceled.to_string()];
    let started = Instant::now();
    let outcome = wait_terminal(&app, &ids, Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(10), "{outcome:?}");
    assert_eq!(outcome.succeeded, 0, "{outcome:?}");
    assert_eq!(outcome.failed.len(), 1, "{outcome:?}");
    assert!(outcome.failed[0].starts_with("canceled"), "{outcome:?}");
    assert_eq!(
        outcome.not_terminal,
        [format!("{never_run}: queued")],
        "the job never run is the one lost"
    );
}
