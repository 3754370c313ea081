//! Live progress: `GET /v1/jobs/{id}/events` streams a training job's progress as Server-Sent
//! Events through the real stack, ends with the finished job, resumes from `Last-Event-ID`, and
//! keeps tenants and the per-tenant connection limit.

use gpuq_tests::{Options, TestApp, client_with_key, data};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug)]
struct Sse {
    event: String,
    id: String,
    data: Value,
}

/// Reads a stream to its end (or `limit`), one event per blank-line-separated block.
async fn events(mut r: reqwest::Response, limit: Duration) -> Vec<Sse> {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, r.chunk()).await {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    text.split("\n\n")
        .filter_map(|block| {
            let (mut event, mut id, mut data) = (None, String::new(), None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).unwrap());
                }
            }
            Some(Sse {
                event: event?,
                id,
                data: data?,
            })
        })
        .collect()
}

async fn open(app: &TestApp, key: &str, job: &str, last: Option<&str>) -> reqwest::Response {
    let mut req = client_with_key(key).get(format!("{}/v1/jobs/{job}/events", app.url));
    if let Some(id) = last {
        req = req.header("last-event-id", id);
    }
    req.send().await.unwrap()
}

fn mark(id: &str) -> (i32, u32) {
    let (a, b) = id.split_once('.').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_training_job_streams_its_progress_then_itself_and_a_stream_resumes_from_its_last_event()
{
    let app = TestApp::spawn_with(Options {
        max_waiters_per_tenant: 1,
        ..Default::default()
    })
    .await;
    let uri = app
        .put("digits/train.csv", data("data/digits_train.csv"))
        .await;
    let job = app
        .submit(json!({"type": "train", "algorithm": "mlp",
                       "params": {"hidden": [64], "epochs": 60, "seed": 1},
                       "input": {"uri": uri}}))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let r = open(&app, &app.key, &id, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // The tenant's one waiting place is this stream's: a second is refused while it is open.
    let second = open(&app, &app.key, &id, None).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let got = events(r, Duration::from_secs(240)).await;
    let (last, progress) = got.split_last().expect("events");
    eprintln!(
        "{} progress events: {:?}",
        progress.len(),
        progress
            .iter()
            .map(|e| (&e.id, &e.data["status"], &e.data["fraction"]))
            .collect::<Vec<_>>()
    );
    assert!(progress.iter().all(|e| e.event == "progress"), "{got:?}");
    // Progress moves forward, and some of it was seen while the job ran.
    let marks: Vec<(i32, u32)> = progress.iter().map(|e| mark(&e.id)).collect();
    assert!(marks.windows(2).all(|w| w[0] <= w[1]), "{marks:?}");
    assert!(
        progress
            .iter()
            .any(|e| e.data["status"] == "running" && e.data["fraction"].as_f64() > Some(0.0)),
        "{got:?}"
    );
    // Then the job itself, as GET returns it, and the end of the stream.
    assert_eq!(
        (last.event.as_str(), last.id.as_str()),
        ("completed", "end")
    );
    let (_, now) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(last.data["status"], "succeeded");
    assert_eq!(last.data["result"]["model_id"], now["result"]["model_id"]);
    // Resuming from the last progress event: nothing older again, only the end.
    let again = open(&app, &app.key, &id, Some(&progress[progress.len() - 1].id)).await;
    let resumed = events(again, Duration::from_secs(30)).await;
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0].event, "completed");
    // Another tenant, or a job that is not there: not found.
    let other = gpuq_api::create_key(&app.pool, "other")
        .await
        .unwrap()
        .token;
    assert_eq!(
        open(&app, &other, &id, None).await.status(),
        StatusCode::NOT_FOUND
    );
    let nobody = gpuq_shared::JobId::new().to_string();
    assert_eq!(
        open(&app, &app.key, &nobody, None).await.status(),
        StatusCode::NOT_FOUND
    );
}
