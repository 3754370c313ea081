//! A canceled or timed-out attempt stops its work, not only its bookkeeping: a real worker
//! process runs a long knn inference or anomaly training, the job is canceled (or runs past
//! its `timeout_s`), and the process's CPU time, read from `/proc/<pid>/stat`, shows it idle
//! within seconds.

use gpuq_tests::{Options, TestApp};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);
/// Below this share of one core over a window, the worker counts as idle (its heartbeat and
/// presence tasks take a few milliseconds a second; a running job takes most of a core).
const IDLE_SHARE: f64 = 0.15;
/// How long after the stop the worker may take to go idle.
const STOP_WITHIN: Duration = Duration::from_secs(6);
/// `/proc` counts CPU time in clock ticks of 1/100 s (USER_HZ on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// The CPU time (user + system, all threads) process `pid` has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the worker runs");
    // Fields after the `(comm)`: state is the 3rd field of the line, utime the 14th.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / TICKS_PER_SECOND
}

/// The share of one core `pid` used over the next `window`.
async fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    tokio::time::sleep(window).await;
    (cpu_seconds(pid) - before) / window.as_secs_f64()
}

/// Waits (from `since`) for a two-second window in which `pid` is idle; returns when that
/// window began, or fails once [`STOP_WITHIN`] has passed without one.
async fn goes_idle(pid: u32, since: Instant, what: &str) -> Duration {
    let window = Duration::from_secs(2);
    let mut shares = Vec::new();
    loop {
        let began = since.elapsed();
        let share = cpu_share(pid, window).await;
        shares.push(format!("{began:.1?}: {:.0}%", share * 100.0));
        if share < IDLE_SHARE {
            println!("{what}: idle from {began:.1?} after the stop ({shares:?})");
            return began;
        }
        assert!(
            began < STOP_WITHIN,
            "{what}: the worker is still busy after the stop: {shares:?}"
        );
    }
}

/// `rows` CSV rows of `features` small integers (1 byte each keeps the test data small) and,
/// with `label`, a label column of two classes.
fn csv(rows: usize, features: usize, seed: u64, label: bool) -> Vec<u8> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 59) as u8 % 10
    };
    let mut out: Vec<String> = (0..features).map(|j| format!("f{j}")).collect();
    if label {
        out.push("label".into());
    }
    let mut text = out.join(",") + "\n";
    for _ in 0..rows {
        let mut row: Vec<String> = (0..features).map(|_| next().to_string()).collect();
        if label {
            row.push((next() % 2).to_string());
        }
        text.push_str(&row.join(","));
        text.push('\n');
    }
    text.into_bytes()
}

/// A test app with no worker of its own, and one real worker process taking one job at a time.
async fn app_with_worker_process() -> (TestApp, u32) {
    let mut app = TestApp::spawn_with(Options {
        workers: 0,
        concurrency: 1,
        ..Default::default()
    })
    .await;
    let pid = app.spawn_worker_process();
    (app, pid)
}

/// Waits until the job is running and the worker is busy with it.
async fn wait_until_busy(app: &TestApp, job: &Value, pid: u32) {
    let id = job["id"].as_str().unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        let (_, j) = app.get(&format!("/v1/jobs/{id}")).await;
        assert!(
            ["queued", "running"].contains(&j["status"].as_str().unwrap()),
            "{j}"
        );
        if j["status"] == "running" && cpu_share(pid, Duration::from_millis(500)).await > 0.25 {
            // Past reading the input: into the work itself.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
        assert!(Instant::now() < deadline, "the job never got going: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cancel(app: &TestApp, job: &Value) -> Instant {
    let id = job["id"].as_str().unwrap();
    let (s, j) = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(
        (s.as_u16(), j["status"].as_str()),
        (200, Some("canceled")),
        "the job must still be running when canceled: {j}"
    );
    Instant::now()
}

/// Without a stop, this training takes the debug worker tens of seconds: the covariance
/// eigendecomposition of 512 features on the host.
fn long_anomaly_training(uri: &str) -> Value {
    json!({"type": "train", "algorithm": "anomaly", "input": {"uri": uri},
        "params": {"method": "nearest_neighbor_mahalanobis"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn canceling_a_long_knn_inference_leaves_the_worker_idle_within_seconds() {
    let (app, pid) = app_with_worker_process().await;
    // 16,384 queries × 32,768 references × 64 features: tens of seconds on lavapipe.
    let refs = app.put("knn/refs.csv", csv(32_768, 64, 1, true)).await;
    let queries = app.put("knn/queries.csv", csv(16_384, 64, 2, false)).await;
    let trained = app
        .run(json!({"type": "train", "algorithm": "knn", "input": {"uri": refs}}))
        .await;
    assert_eq!(trained["status"], "succeeded", "{trained}");
    let model_id = trained["result"]["model_id"].as_str().unwrap();

    let job = app
        .submit(json!({"type": "infer", "model_id": model_id, "input": {"uri": queries}}))
        .await;
    wait_until_busy(&app, &job, pid).await;
    let canceled = cancel(&app, &job).await;
    goes_idle(pid, canceled, "knn inference").await;

    let (_, j) = app
        .get(&format!("/v1/jobs/{}", job["id"].as_str().unwrap()))
        .await;
    assert_eq!(j["status"], "canceled", "{j}");
}

#[tokio::test(flavor = "multi_thread")]
async fn canceling_a_long_anomaly_training_leaves_the_worker_idle_within_seconds() {
    let (app, pid) = app_with_worker_process().await;
    let samples = app.put("anomaly/train.csv", csv(300, 512, 3, false)).await;
    let job = app.submit(long_anomaly_training(&samples)).await;
    wait_until_busy(&app, &job, pid).await;
    let canceled = cancel(&app, &job).await;
    goes_idle(pid, canceled, "anomaly training").await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(app.model_rows_for(id).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anomaly_training_past_its_timeout_fails_with_timeout_and_its_work_stops() {
    let (app, pid) = app_with_worker_process().await;
    let samples = app.put("anomaly/train.csv", csv(300, 512, 3, false)).await;
    let mut spec = long_anomaly_training(&samples);
    spec["timeout_s"] = json!(3);
    let job = app.submit(spec).await;
    let started = Instant::now();
    let done = app.wait(&job, LIMIT).await;
    let took = started.elapsed();
    assert_eq!(
        (done["status"].as_str(), done["error"]["code"].as_str()),
        (Some("failed"), Some("timeout")),
        "{done}"
    );
    // Recorded once the work stopped, not at the end of the worker's 10 s grace for a stop.
    println!("timed out after 3 s; failed {took:?} after submission");
    assert!(took < Duration::from_secs(11), "failed after {took:?}");
    goes_idle(pid, Instant::now(), "timed-out anomaly training").await;
}
