//! The API's contract at its boundary: validation, error bodies, paging, cancel. Against a real
//! Postgres and RabbitMQ; no worker runs, so submitted jobs stay queued.

use gpuq_tests::{Options, StatusCode, TestApp};
use serde_json::{Value, json};

async fn app() -> TestApp {
    TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await
}

fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    let shown: String = body.to_string().chars().take(300).collect();
    assert_eq!(status.as_u16(), want_status, "{shown}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn train_body() -> Value {
    json!({"type": "train", "algorithm": "logreg", "input": {"rows": [[0.0, 1.0], [1.0, 0.0]], "labels": [0, 1]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_request_gets_a_json_error_and_the_service_stays_ready() {
    let app = app().await;
    let (s, b) = app.post_raw("/v1/jobs", b"{\"type\": ".to_vec()).await;
    assert_error(s, &b, 400, "malformed_json");

    let cases = [
        (
            json!({"type": "fly", "input": {"uri": "s3://bkt/x.csv"}}),
            "type",
        ),
        (
            json!({"type": "train", "algorithm": "svm", "input": {"uri": "s3://bkt/x.csv"}}),
            "algorithm",
        ),
        (json!({"type": "train", "algorithm": "logreg"}), "input"),
        (
            json!({"type": "train", "algorithm": "logreg", "input": {"uri": "s3://bkt/x.csv"}, "params": {"epochs": -1}}),
            "params.epochs",
        ),
        (
            json!({"type": "train", "algorithm": "logreg", "input": {"uri": "s3://bkt/x.csv"}, "params": {"learning_rate": "fast"}}),
            "params.learning_rate",
        ),
        (
            json!({"type": "train", "algorithm": "logreg", "input": {"uri": "s3://bkt/x.csv"}, "params": {"epochz": 3}}),
            "params.epochz",
        ),
        (
            json!({"type": "train", "algorithm": "logreg", "input": {"uri": "ftp://x/y"}}),
            "input.uri",
        ),
        (
            json!({"type": "train", "algorithm": "logreg", "input": {"rows": [[1, 2]]}}),
            "input.labels",
        ),
        (
            json!({"type": "infer", "input": {"rows": [[1, 2]]}}),
            "model_id",
        ),
    ];
    for (body, field) in cases {
        let (s, b) = app.post("/v1/jobs", &body).await;
        assert!(s == 400 || s == 422, "{body} → {s} {b}");
        assert_eq!(b["error"]["field"], field, "{body} → {b}");
    }

    let (s, b) = app.get(&format!("/v1/jobs/{}", uuid::Uuid::now_v7())).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get("/v1/jobs/not-a-uuid").await;
    assert_error(s, &b, 400, "invalid_id");
    let (s, b) = app
        .get(&format!("/v1/models/{}", uuid::Uuid::now_v7()))
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app
        .post(
            "/v1/jobs",
            &json!({"type": "infer", "model_id": uuid::Uuid::now_v7(), "input": {"rows": [[1]]}}),
        )
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get("/v1/nothing-here").await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app
        .send(app.client.delete(format!("{}/v1/jobs", app.url)))
        .await;
    assert_error(s, &b, 405, "method_not_allowed");
    let (s, b) = app.get("/v1/jobs?colour=red").await;
    assert_error(s, &b, 400, "unknown_parameter");
    let (s, b) = app.get("/v1/jobs?status=done").await;
    assert_error(s, &b, 400, "invalid_parameter");

    // Over the 1 MiB limit the test app runs with.
    let huge = json!({"type": "train", "algorithm": "logreg",
        "input": {"rows": vec![vec![1.0; 1000]; 400], "labels": vec![0; 400]}});
    let (s, b) = app
        .post_raw("/v1/jobs", serde_json::to_vec(&huge).unwrap())
        .await;
    assert_error(s, &b, 413, "body_too_large");

    let (s, b) = app.get("/readyz").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["checks"], json!({"postgres": true, "rabbitmq": true}));
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_answers_202_with_location_and_the_effective_params() {
    let app = app().await;
    let r = app
        .client
        .post(format!("{}/v1/jobs", app.url))
        .json(&train_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let job: Value = r.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/jobs/{}", job["id"].as_str().unwrap())
    );
    assert_eq!(job["status"], "queued");
    assert_eq!(job["attempt"], 0);
    assert_eq!(job["params"]["epochs"], 100, "defaults are recorded: {job}");
    let (s, got) = app.get(&location).await;
    assert_eq!(s, 200);
    assert_eq!(got["id"], job["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_newest_first_filters_and_pages_with_a_cursor() {
    let app = app().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            app.submit(train_body()).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ids.reverse();
    let (_, page1) = app.get("/v1/jobs?limit=3").await;
    let got: Vec<&str> = page1["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids[..3]);
    let cursor = page1["next"].as_str().unwrap();
    let (_, page2) = app.get(&format!("/v1/jobs?limit=3&after={cursor}")).await;
    let got: Vec<&str> = page2["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids[3..]);
    assert_eq!(page2["next"], Value::Null);

    let (_, queued) = app.get("/v1/jobs?status=queued&type=train").await;
    assert_eq!(queued["jobs"].as_array().unwrap().len(), 5);
    let (_, none) = app.get("/v1/jobs?status=succeeded").await;
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0);
    let (_, infer) = app.get("/v1/jobs?type=infer").await;
    assert_eq!(infer["jobs"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_of_a_queued_job_cancels_it_and_a_second_cancel_returns_409() {
    let app = app().await;
    let job = app.submit(train_body()).await;
    let path = format!("/v1/jobs/{}/cancel", job["id"].as_str().unwrap());
    let (s, b) = app.post(&path, &json!({})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "canceled");
    let (s, b) = app.post(&path, &json!({})).await;
    assert_error(s, &b, 409, "conflict");
    let (s, b) = app
        .post(
            &format!("/v1/jobs/{}/cancel", uuid::Uuid::now_v7()),
            &json!({}),
        )
        .await;
    assert_error(s, &b, 404, "not_found");
}

/// A page of 50 jobs of 2,000 inline rows × 50 values each would carry 5 M numbers; the list
/// shows each input's shape instead, and the job itself still has its rows.
#[tokio::test(flavor = "multi_thread")]
async fn a_list_summarises_inline_inputs_so_a_page_stays_small() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        rate_limit: (1000.0, 1000),
        ..Options::default()
    })
    .await;
    let rows: Vec<Vec<f64>> = (0..2000).map(|i| vec![i as f64; 50]).collect();
    let body = json!({"type": "train", "algorithm": "kmeans", "input": {"rows": rows}});
    let one = app.submit(body.clone()).await;
    for _ in 1..50 {
        app.submit(body.clone()).await;
    }
    let started = std::time::Instant::now();
    let response = app
        .client
        .get(format!("{}/v1/jobs?limit=50", app.url))
        .send()
        .await
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    let page: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 50);
    assert_eq!(
        page["jobs"][49]["input"],
        json!({"inline": {"rows": 2000, "width": 50, "labels": false}})
    );
    assert!(
        bytes.len() < 100_000,
        "a page of 50 summaries took {} bytes ({:?})",
        bytes.len(),
        started.elapsed()
    );
    let (_, full) = app
        .get(&format!("/v1/jobs/{}", one["id"].as_str().unwrap()))
        .await;
    assert_eq!(full["input"]["rows"].as_array().unwrap().len(), 2000);
}

/// A client that sends a whole submit and hangs up must not leave its job recorded but
/// unpublished. With the reaper's republish 60 s away (so it cannot rescue them): four clients
/// hang up while their inserts wait on a lock the test holds, then 200 hang up at moments spread
/// over a submit's life; every job recorded is in the queue.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_after_submitting_still_gets_its_job_published() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    let mut options = Options {
        workers: 0,
        ..Options::default()
    };
    options.lifecycle.republish_after = Duration::from_secs(60);
    let app = TestApp::spawn_with(options).await;
    let addr = app.url.trim_start_matches("http://").to_string();
    let body = train_body().to_string();
    let request = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: gpuq\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        app.key,
        body.len()
    );
    let send = |addr: String, request: String| async move {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        socket
    };
    let counts = || async {
        let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (jobs as u32, app.queued_messages().await)
    };
    // Both counts steady for a second: whatever the server still does for them is done.
    let settled = || async {
        let mut last = counts().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = counts().await;
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    };
    app.submit(train_body()).await; // the pool's connections and the publisher are warm

    // Four submits wait on the lock (the first in an insert, the others in it or in the intake's
    // next groups); their clients hang up; the lock goes.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobs IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(send(addr.clone(), request.clone()).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO jobs%'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if waiting >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} inserts wait on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for the other three to reach the intake behind the blocked insert.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.rollback().await.unwrap();
    let (recorded, published) = settled().await;
    eprintln!("hung up mid-insert: {recorded} jobs recorded, {published} messages queued");
    assert_eq!(
        (recorded, published),
        (5, 5),
        "the four hung-up jobs are recorded and published"
    );

    // Ten waves of twenty, each hanging up 0 to 40 ms after sending: before, during and after
    // the insert and the publish.
    for _wave in 0..10 {
        let hang_ups = (0..20u64).map(|i| {
            let socket = send(addr.clone(), request.clone());
            tokio::spawn(async move {
                let socket = socket.await;
                tokio::time::sleep(Duration::from_millis(i * 2)).await;
                drop(socket);
            })
        });
        for h in futures_util::future::join_all(hang_ups).await {
            h.unwrap();
        }
    }
    let (recorded, published) = settled().await;
    eprintln!("after the burst: {recorded} jobs recorded, {published} messages queued");
    assert_eq!(
        published,
        recorded,
        "{} recorded jobs were never published",
        recorded.saturating_sub(published)
    );
}
