//! The batched path: `POST /v1/jobs/batch` (items answered in order, one bad item refusing only
//! itself, one `Idempotency-Key` for the whole batch, rate limits counting jobs), and the worker
//! running small inline inference jobs claimed together through one forward pass per model.

use gpuq_tests::{Options, StatusCode, TestApp};
use serde_json::{Value, json};

/// Two separable classes: x0 > x1 is class 1.
fn train_body() -> Value {
    json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 60, "learning_rate": 0.5},
        "input": {"rows": [[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.1], [0.2, 0.7], [0.8, 0.3]],
                  "labels": [0, 1, 0, 1, 0, 1]}})
}

async fn trained(app: &TestApp) -> String {
    let job = app.run(train_body()).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job["result"]["model_id"].as_str().unwrap().to_string()
}

async fn post_batch(
    app: &TestApp,
    jobs: &[Value],
    headers: &[(&str, &str)],
) -> (StatusCode, Value, bool) {
    let mut request = app
        .client
        .post(format!("{}/v1/jobs/batch", app.url))
        .json(&json!({ "jobs": jobs }));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request.send().await.unwrap();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null), replayed)
}

async fn job_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_answers_every_item_in_order_and_a_bad_item_refuses_only_itself() {
    let app = TestApp::spawn().await;
    let model = trained(&app).await;
    let missing = uuid::Uuid::now_v7();
    let items = vec![
        json!({"type": "infer", "model_id": model, "input": {"rows": [[0.0, 1.0], [0.1, 0.8]]}}),
        json!({"type": "infer", "model_id": model, "input": {"rows": [[1.0, 0.0]]}, "colour": "red"}),
        json!({"type": "infer", "model_id": model, "input": {"rows": [[1.0, 0.0, 3.0]]}}),
        json!({"type": "infer", "model_id": missing, "input": {"rows": [[1.0, 0.0]]}}),
        json!("not an object"),
        json!({"type": "infer", "model_id": model, "input": {"rows": [[0.9, 0.0]]}}),
        train_body(),
    ];
    let before = job_count(&app).await;
    let (status, body, _) = post_batch(&app, &items, &[("prefer", "wait=60")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let out = body["jobs"].as_array().unwrap();
    assert_eq!(out.len(), items.len(), "{body}");
    // The good items, in their places, waited for and run.
    for (i, want) in [(0, vec![0.0, 0.0]), (5, vec![1.0])] {
        assert_eq!(out[i]["status"], "succeeded", "item {i}: {}", out[i]);
        let labels: Vec<f64> = out[i]["result"]["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["label"].as_f64().unwrap())
            .collect();
        assert_eq!(
            labels, want,
            "item {i} got its own rows' predictions: {}",
            out[i]
        );
    }
    assert_eq!(out[6]["status"], "succeeded", "{}", out[6]);
    assert!(out[6]["result"]["model_id"].is_string());
    // The bad ones, each with its own error.
    let error = |i: usize| {
        (
            out[i]["error"]["code"].clone(),
            out[i]["error"]["field"].clone(),
        )
    };
    assert_eq!(
        error(1),
        (json!("invalid_field"), json!("colour")),
        "{}",
        out[1]
    );
    assert_eq!(
        error(2),
        (json!("shape_mismatch"), json!("input.rows")),
        "{}",
        out[2]
    );
    assert_eq!(out[3]["error"]["code"], "not_found", "{}", out[3]);
    assert_eq!(out[4]["error"]["code"], "malformed_json", "{}", out[4]);
    for refused in &out[1..5] {
        assert!(
            refused.get("id").is_none(),
            "a refused item is no job: {refused}"
        );
    }
    assert_eq!(
        job_count(&app).await - before,
        3,
        "only the valid items were recorded"
    );

    // The batch as a whole: shape and size.
    let (s, b, _) = post_batch(&app, &[], &[]).await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (422, Some("invalid_field")),
        "{b}"
    );
    let too_many = vec![items[0].clone(); 51];
    let (s, b, _) = post_batch(&app, &too_many, &[]).await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (422, Some("over_limit")),
        "{b}"
    );
    let (s, b) = app.post("/v1/jobs/batch", &json!({"jobz": []})).await;
    assert_eq!(
        (s.as_u16(), b["error"]["field"].as_str()),
        (422, Some("jobz")),
        "{b}"
    );
    let (s, b) = app.post("/v1/jobs/batch", &json!([1, 2])).await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (400, Some("malformed_json")),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_under_one_idempotency_key_replays_whole_and_the_key_serves_no_other_request() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let items = vec![
        train_body(),
        json!({"type": "train", "algorithm": "nope", "input": {"rows": [[1.0]], "labels": [0]}}),
        train_body(),
    ];
    let key = [("idempotency-key", "batch-1")];
    let (s, first, replayed) = post_batch(&app, &items, &key).await;
    assert_eq!((s, replayed), (StatusCode::OK, false), "{first}");
    let count = job_count(&app).await;
    assert_eq!(count, 2);
    // The same request again: the same answer, item for item, and nothing new recorded.
    let (s, again, replayed) = post_batch(&app, &items, &key).await;
    assert_eq!((s, replayed), (StatusCode::OK, true), "{again}");
    let ids = |b: &Value| -> Vec<Value> {
        b["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].clone())
            .collect()
    };
    assert_eq!(ids(&again), ids(&first));
    assert!(ids(&first)[0].is_string() && ids(&first)[1].is_null() && ids(&first)[2].is_string());
    assert_eq!(again["jobs"][1]["error"], first["jobs"][1]["error"]);
    assert_eq!(again["jobs"][1]["error"]["field"], "algorithm");
    assert_eq!(job_count(&app).await, count);
    // The key with another batch, or with a single submit: a conflict, and nothing recorded.
    let (s, b, _) = post_batch(&app, &items[..1], &key).await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{b}"
    );
    let r = app
        .client
        .post(format!("{}/v1/jobs", app.url))
        .header("idempotency-key", "batch-1")
        .json(&items[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(job_count(&app).await, count);
    // Concurrent identical batches under a fresh key make one set of jobs.
    let key2 = [("idempotency-key", "batch-2")];
    let tries =
        futures_util::future::join_all((0..6).map(|_| post_batch(&app, &items, &key2))).await;
    let firsts: std::collections::HashSet<String> = tries
        .iter()
        .map(|(s, b, _)| {
            assert_eq!(*s, StatusCode::OK, "{b}");
            b["jobs"][0]["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(firsts.len(), 1, "one batch recorded: {firsts:?}");
    assert_eq!(job_count(&app).await, count + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn single_submits_that_share_a_group_keep_their_own_keys_and_jobs() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    // Forty concurrent submits, every key twice and one key with two different bodies: grouped
    // or not, each key makes one job and the odd one out gets 409.
    let sends = (0..40).map(|i| {
        let key = format!("k-{}", i / 2);
        let body = if i == 39 {
            json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 3},
                   "input": {"rows": [[0.0], [1.0]], "labels": [0, 1]}})
        } else {
            train_body()
        };
        let request = app
            .client
            .post(format!("{}/v1/jobs", app.url))
            .header("idempotency-key", key.clone())
            .json(&body);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status();
            let b: Value = r.json().await.unwrap();
            (key, status, b["id"].as_str().map(str::to_string))
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    let mut by_key: std::collections::HashMap<String, Vec<(StatusCode, Option<String>)>> =
        Default::default();
    for (k, s, id) in answers {
        by_key.entry(k).or_default().push((s, id));
    }
    for (key, got) in &by_key {
        let ids: std::collections::HashSet<_> =
            got.iter().filter_map(|(_, id)| id.clone()).collect();
        assert_eq!(ids.len(), 1, "{key}: {got:?}");
        if key == "k-19" {
            let mut statuses: Vec<u16> = got.iter().map(|(s, _)| s.as_u16()).collect();
            statuses.sort();
            assert_eq!(statuses, vec![202, 409], "{got:?}");
        } else {
            assert!(
                got.iter().all(|(s, _)| *s == StatusCode::ACCEPTED),
                "{key}: {got:?}"
            );
        }
    }
    assert_eq!(job_count(&app).await, 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_run_in_one_batch_get_their_own_rows_and_their_own_accuracy() {
    let app = TestApp::spawn().await;
    let model = trained(&app).await;
    // Forty jobs of one model: even ones class 0 labelled rightly, odd ones class 1 labelled
    // wrongly, each a different number of rows.
    let items: Vec<Value> = (0..40)
        .map(|i| {
            let n = 1 + i % 5;
            let (row, label) = if i % 2 == 0 {
                ([0.05, 0.95], 0)
            } else {
                ([0.95, 0.05], 0)
            };
            json!({"type": "infer", "model_id": model,
                   "input": {"rows": vec![row; n], "labels": vec![label; n]}})
        })
        .collect();
    let (status, body, _) = post_batch(&app, &items, &[("prefer", "wait=60")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (i, job) in body["jobs"].as_array().unwrap().iter().enumerate() {
        assert_eq!(job["status"], "succeeded", "{job}");
        let n = 1 + i % 5;
        let r = &job["result"];
        assert_eq!(r["rows"], n, "{job}");
        assert_eq!(r["predictions"].as_array().unwrap().len(), n, "{job}");
        let want = if i % 2 == 0 { (0.0, 1.0) } else { (1.0, 0.0) };
        assert!(
            r["predictions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["label"] == want.0),
            "{job}"
        );
        assert_eq!(
            r["accuracy"], want.1,
            "job {i}: accuracy over its own rows: {r}"
        );
        assert_eq!(r["output_uri"], Value::Null);
    }
    // They shared claims: fewer claim statements than jobs is not visible from outside, but
    // their start times are: some jobs were started by the same statement.
    let shared: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT started_at FROM jobs WHERE type = 'infer'
                               GROUP BY started_at HAVING count(*) > 1) s",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(shared > 0, "no two jobs were claimed in one statement");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_spends_one_token_per_job() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        rate_limit: (1.0, 10),
        ..Options::default()
    })
    .await;
    let items = vec![train_body(); 8];
    let (s, b, _) = post_batch(&app, &items, &[]).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // 10 − 8 leaves 2: one request, then the third is refused.
    let (s, _) = app.post("/v1/jobs", &train_body()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) = app.post("/v1/jobs", &train_body()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, b) = app.post("/v1/jobs", &train_body()).await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{b}"
    );
}
