//! Nothing is lost: a worker killed mid-job, a job whose message never went out, a message
//! delivered twice. Each ends in a true state with its result written exactly once.

use gpuq_shared::queue::Publisher;
use gpuq_tests::{Options, TestApp, digits};
use serde_json::json;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_training_leaves_the_job_to_the_next_worker_which_finishes_it_once() {
    let mut app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let train = app.put("digits/train.csv", digits("train")).await;
    let pid = app.spawn_worker_process();
    let job = app
        .submit(
            json!({"type": "train", "algorithm": "logreg", "input": {"uri": train},
        "params": {"epochs": 400}}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_string();

    // Wait until it is training (progress reported), then kill -9.
    app.wait_for_training(&id, LIMIT).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (_, j) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(j["status"], "running", "killed mid-job: {j}");

    // A new worker (as `scripts/dev up` would start) picks it up once the lease expires.
    app.spawn_worker_process();
    let done = app.wait(&job, LIMIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["attempt"].as_i64().unwrap() >= 2, "{done}");
    assert_eq!(done["attempt_errors"][0]["code"], "lease_expired", "{done}");
    assert_eq!(
        app.model_rows_for(&id).await,
        1,
        "exactly one model for the job"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_recorded_but_never_published_is_published_by_the_reaper() {
    let app = TestApp::spawn().await;
    // What the API leaves behind if it dies between the insert and the publish.
    let id = gpuq_shared::JobId::new();
    let input = json!({"rows": [[0.0], [1.0]], "labels": [0, 1]});
    let params = json!({"epochs": 2});
    gpuq_shared::db::job_insert(
        &app.pool,
        &gpuq_shared::db::NewJob {
            id,
            job_type: "train",
            algorithm: "logreg",
            model_id: None,
            max_attempts: 3,
            params: &params,
            input: &input,
        },
    )
    .await
    .unwrap();
    let done = app.wait(&json!({"id": id.to_string()}), LIMIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_delivery_runs_the_job_once() {
    let app = TestApp::spawn_with(Options {
        workers: 2,
        ..Options::default()
    })
    .await;
    let job = app.submit(json!({"type": "train", "algorithm": "logreg",
        "input": {"rows": [[0.0], [1.0], [0.2], [0.9]], "labels": [0, 1, 0, 1]}, "params": {"epochs": 50}})).await;
    let publisher = Publisher::connect(&app.settings.amqp_url, &app.settings.queue)
        .await
        .unwrap();
    let id: gpuq_shared::JobId = job["id"].as_str().unwrap().parse().unwrap();
    for _ in 0..3 {
        publisher.publish(id).await.unwrap();
    }
    let done = app.wait(&job, LIMIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 1, "claimed once: {done}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.model_rows_for(job["id"].as_str().unwrap()).await, 1);
}
