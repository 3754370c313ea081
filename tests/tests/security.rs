//! Nobody in where they don't belong: API keys, tenant isolation, storage confinement,
//! idempotency, rate and size limits, and secrets kept out of logs. Against the real services.

use gpuq_shared::config::Limits;
use gpuq_tests::{Options, StatusCode, TestApp};
use serde_json::{Value, json};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(240);

fn tiny_train() -> Value {
    json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 5},
        "input": {"rows": [[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]], "labels": [0, 1, 0, 1]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_need_a_live_key_and_a_revoked_key_stops_working_at_once() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let url = format!("{}/v1/jobs", app.url);
    let anonymous = reqwest::Client::new();
    let (s, b) = app.send(anonymous.get(&url)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized")),
        "{b}"
    );

    let mut forged = app.key.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    for bad in [
        "Bearer nonsense",
        "Bearer gpuq_0011223344556677_00",
        &format!("Bearer {forged}"),
        &format!("Basic {}", app.key),
        &format!("Bearer  {}x", app.key),
    ] {
        let (s, b) = app
            .send(anonymous.get(&url).header("authorization", bad))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad}: {b}");
        assert_eq!(b["error"]["code"], "unauthorized");
    }
    // Health endpoints are for load balancers: no key.
    let (s, _) = app
        .send(anonymous.get(format!("{}/healthz", app.url)))
        .await;
    assert_eq!(s, 200);

    let (s, _) = app.get("/v1/jobs").await;
    assert_eq!(s, 200, "the test tenant's key works");
    let key_id = app.key.split('_').nth(1).unwrap();
    assert!(
        gpuq_shared::db::api_key_revoke(&app.pool, key_id)
            .await
            .unwrap()
    );
    let (s, _) = app.get("/v1/jobs").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "revoked");

    // Only the hash is stored.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT secret_sha256 FROM api_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let secret = app.key.rsplit('_').next().unwrap();
    for h in &stored {
        assert_eq!(h.len(), 32);
        assert!(!String::from_utf8_lossy(h).contains(secret));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_can_neither_see_nor_cancel_nor_use_another_tenants_jobs_and_models() {
    let app = TestApp::spawn().await;
    let trained = app.run(tiny_train()).await;
    assert_eq!(trained["status"], "succeeded", "{trained}");
    let job_id = trained["id"].as_str().unwrap();
    let model_id = trained["result"]["model_id"].as_str().unwrap();
    let mine = app
        .submit(json!({"type": "infer", "model_id": model_id,
        "input": {"rows": [[0.0, 1.0]]}}))
        .await;

    let beta = app.client_for("beta").await;
    let at = |p: &str| format!("{}{p}", app.url);
    for path in [
        format!("/v1/jobs/{job_id}"),
        format!("/v1/jobs/{job_id}?wait=1"),
        format!("/v1/models/{model_id}"),
    ] {
        let (s, b) = app.send(beta.get(at(&path))).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{path}: {b}"
        );
    }
    let (s, _) = app
        .send(beta.post(at(&format!(
            "/v1/jobs/{}/cancel",
            mine["id"].as_str().unwrap()
        ))))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, list) = app.send(beta.get(at("/v1/jobs"))).await;
    assert_eq!(list["jobs"], json!([]), "{list}");
    let (_, list) = app.send(beta.get(at("/v1/models"))).await;
    assert_eq!(list["models"], json!([]), "{list}");
    let (s, b) = app
        .send(beta.post(at("/v1/jobs")).json(&json!({"type": "infer",
        "model_id": model_id, "input": {"rows": [[0.0, 1.0]]}})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");

    // The owner still sees everything, and beta's cancel changed nothing.
    let done = app.wait(&mine, LIMIT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (_, list) = app.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    let (_, models) = app.get("/v1/models").await;
    assert_eq!(models["models"][0]["id"], model_id);
    // Its model went under its own prefix.
    let artifact = models["models"][0]["artifact_uri"].as_str().unwrap();
    let own = format!(
        "s3://{}/{}",
        app.settings.bucket,
        app.settings.tenant_prefix("acme")
    );
    assert!(artifact.starts_with(&own), "{artifact} not under {own}");
}

#[tokio::test(flavor = "multi_thread")]
async fn inputs_outside_the_tenants_prefix_are_refused_before_any_s3_call() {
    let app = TestApp::spawn().await;
    let data = b"a,b,label\n0,1,0\n1,0,1\n0.1,0.9,0\n0.9,0.1,1\n".to_vec();
    let beta_file = app
        .put_at(
            &format!("{}train.csv", app.settings.tenant_prefix("beta")),
            data.clone(),
        )
        .await;
    let bucket = &app.settings.bucket;
    let own = app.settings.tenant_prefix(&app.tenant);
    let forbidden = [
        beta_file.clone(),
        format!("s3://{bucket}/{own}../beta/train.csv"),
        format!("s3://{bucket}/{own}/train.csv"),
        format!(
            "s3://{bucket}/{}",
            app.settings.tenant_prefix("acme-evil") + "x.csv"
        ),
        "s3://some-other-bucket/tenants/acme/train.csv".to_string(),
        format!("s3://{bucket}/train.csv"),
    ];
    for uri in &forbidden {
        let (s, b) = app
            .post(
                "/v1/jobs",
                &json!({"type": "train", "algorithm": "logreg", "input": {"uri": uri}}),
            )
            .await;
        assert_eq!(
            (s.as_u16(), b["error"]["code"].as_str()),
            (403, Some("forbidden_input")),
            "{uri}: {b}"
        );
        assert_eq!(b["error"]["field"], "input.uri");
    }

    // The worker checks again: a job row that did not come through the API (here written
    // directly) naming a bucket that does not exist fails as forbidden, not as "not found" —
    // so no S3 call was made.
    let id = app
        .record_unpublished(&json!({"type": "train", "params": {"epochs": 5},
            "input": {"uri": "s3://no-such-bucket-anywhere/tenants/acme/x.csv"}}))
        .await
        .unwrap();
    let done = app.wait(&json!({"id": id.to_string()}), LIMIT).await;
    assert_eq!(
        (done["status"].as_str(), done["error"]["code"].as_str()),
        (Some("failed"), Some("forbidden_input")),
        "{done}"
    );

    // An operator can grant a shared prefix; then the same kind of input runs.
    let shared = app.put_at("shared-sets/public/train.csv", data).await;
    let (s, _) = app
        .post(
            "/v1/jobs",
            &json!({"type": "train", "algorithm": "logreg", "input": {"uri": shared}}),
        )
        .await;
    assert_eq!(s.as_u16(), 403);
    let grant = format!("s3://{bucket}/shared-sets/public/");
    assert!(
        gpuq_shared::db::tenant_allow_input(&app.pool, "acme", &grant)
            .await
            .unwrap()
    );
    let job = app
        .run(
            json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 5},
        "input": {"uri": shared}}),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_identical_submissions_with_one_idempotency_key_make_one_job() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let body = tiny_train();
    let sends = (0..20).map(|_| {
        let request = app
            .client
            .post(format!("{}/v1/jobs", app.url))
            .header("idempotency-key", "order-42")
            .json(&body);
        async move {
            let r = request.send().await.unwrap();
            let replayed = r.headers().contains_key("idempotent-replayed");
            (r.status(), replayed, r.json::<Value>().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    let ids: std::collections::HashSet<_> = answers
        .iter()
        .map(|(s, _, j)| {
            assert_eq!(*s, StatusCode::ACCEPTED, "{j}");
            j["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one job for all 20: {ids:?}");
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| !replayed).count(),
        1
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);

    // Same body with other spacing and key order: still the same request.
    let reordered = serde_json::to_string_pretty(&json!({"params": body["params"],
        "input": body["input"], "algorithm": "logreg", "type": "train"}))
    .unwrap();
    let r = app
        .client
        .post(format!("{}/v1/jobs", app.url))
        .header("idempotency-key", "order-42")
        .header("content-type", "application/json")
        .body(reordered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(ids.contains(r.json::<Value>().await.unwrap()["id"].as_str().unwrap()));

    // Same key, another body: a conflict, and no new job.
    let mut other = body.clone();
    other["params"]["epochs"] = json!(6);
    let (s, b) = app
        .send(
            app.client
                .post(format!("{}/v1/jobs", app.url))
                .header("idempotency-key", "order-42")
                .json(&other),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{b}"
    );
    // Keys are per tenant: beta's "order-42" is its own.
    let beta = app.client_for("beta").await;
    let (s, j) = app
        .send(
            beta.post(format!("{}/v1/jobs", app.url))
                .header("idempotency-key", "order-42")
                .json(&body),
        )
        .await;
    assert_eq!(s, 202);
    assert!(!ids.contains(j["id"].as_str().unwrap()));
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_limits_answer_429_413_and_422_and_refuse_oversized_inputs() {
    let app = TestApp::spawn_with(Options {
        rate_limit: (0.5, 4),
        limits: Limits {
            max_rows: 3,
            max_epochs: 1000,
            max_inline_values: 8,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    // Over the inline limit, over the epoch cap, over the body size: each refused, not queued.
    let (s, b) = app
        .post(
            "/v1/jobs",
            &json!({"type": "train", "algorithm": "logreg",
        "input": {"rows": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "labels": [0, 1, 0]}}),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (422, Some("input_too_large")),
        "{b}"
    );
    let (s, b) = app
        .post(
            "/v1/jobs",
            &json!({"type": "train", "algorithm": "mlp",
        "input": {"rows": [[1, 2]], "labels": [0]}, "params": {"epochs": 1001}}),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["field"].as_str()),
        (422, Some("params.epochs")),
        "{b}"
    );
    let (s, b) = app.post_raw("/v1/jobs", vec![b' '; 2 * 1024 * 1024]).await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{b}"
    );
    // Four requests of the burst are spent: the fifth waits.
    let (s, b) = app.get("/v1/jobs").await;
    let r = app
        .client
        .get(format!("{}/v1/jobs", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{s} {b}");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another tenant has its own budget.
    let beta = app.client_for("beta").await;
    let (s, _) = app.send(beta.get(format!("{}/v1/jobs", app.url))).await;
    assert_eq!(s, 200);
    // A CSV over the row cap fails its job with a clear code once the budget is back.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let uri = app
        .put("rows.csv", b"a,label\n1,0\n2,1\n3,0\n4,1\n".to_vec())
        .await;
    let job = app
        .submit(json!({"type": "train", "algorithm": "logreg", "input": {"uri": uri}}))
        .await;
    let pool = app.pool.clone();
    let id: gpuq_shared::JobId = job["id"].as_str().unwrap().parse().unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let done = loop {
        let j = gpuq_shared::db::job_get(&pool, id).await.unwrap().unwrap();
        if j.status.is_terminal() {
            break j;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        done.error.as_ref().unwrap()["code"],
        "input_too_large",
        "{:?}",
        done.error
    );
    assert_eq!(done.attempt, 1, "not retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let addr = app.url.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    // The harness sets a 2 s header timeout: the server answers 408 or closes.
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after 10 s");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // And the service still serves others.
    let (s, _) = app.get("/v1/jobs").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_from_the_environment_never_reach_logs_or_errors() {
    let secret_pw = "Pw-5f1e0c9a-never-log-me";
    let secret_key = "S3-secret-0b7d2e-never-log-me";
    for bin in [
        gpuq_tests::worker_binary(),
        gpuq_tests::worker_binary().with_file_name("gpuq-api"),
    ] {
        // Both wait for a database that is not there, saying so: let them try for a while.
        let log = std::env::temp_dir().join(format!("gpuq-secrets-{}.log", uuid::Uuid::new_v4()));
        let file = std::fs::File::create(&log).unwrap();
        let mut child = std::process::Command::new(&bin)
            .env(
                "DATABASE_URL",
                format!("postgres://gpuq:{secret_pw}@127.0.0.1:1/gpuq"),
            )
            .env(
                "AMQP_URL",
                format!("amqp://gpuq:{secret_pw}@127.0.0.1:1/%2f"),
            )
            .env("AWS_SECRET_ACCESS_KEY", secret_key)
            .env("GPUQ_API_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "debug")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("the binaries are built");
        let started = std::time::Instant::now();
        // Two rounds of "unreachable; waiting", so the retry path has logged too.
        while std::fs::read_to_string(&log)
            .unwrap()
            .matches("database unreachable")
            .count()
            < 2
            && started.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        assert!(
            text.contains("database unreachable"),
            "{} said:\n{text}",
            bin.display()
        );
        assert!(
            !text.contains(secret_pw) && !text.contains(secret_key),
            "{} leaked a secret:\n{text}",
            bin.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_details_get_clear_errors_and_unicode_is_just_text() {
    let app = TestApp::spawn().await;
    let url = format!("{}/v1/jobs", app.url);
    let utf8 = |s: &str| reqwest::header::HeaderValue::from_bytes(s.as_bytes()).unwrap();
    let (s, b) = app
        .send(
            app.client
                .post(&url)
                .header("idempotency-key", utf8("ключ-1"))
                .json(&tiny_train()),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (400, Some("invalid_idempotency_key")),
        "{b}"
    );
    let (s, b) = app
        .send(
            reqwest::Client::new()
                .get(&url)
                .header("authorization", utf8("Bearer ключ")),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{b}"
    );
    for (body, field) in [
        (
            json!({"type": "train", "algorithm": "knn", "params": {"k": -3},
            "input": {"rows": [[1.0]], "labels": [0]}}),
            "params.k",
        ),
        (
            json!({"type": "train", "algorithm": "kmeans", "params": {"k": 0},
            "input": {"rows": [[1.0]]}}),
            "params.k",
        ),
        (
            json!({"type": "train", "algorithm": "logreg", "input": {"rows": [], "labels": []}}),
            "input.rows",
        ),
    ] {
        let (s, b) = app.post("/v1/jobs", &body).await;
        assert!(s == 400 || s == 422, "{body}: {s} {b}");
        if !field.is_empty() {
            assert_eq!(b["error"]["field"], field, "{body}: {b}");
        }
    }
    // A number JSON cannot hold as a double is refused, not read as infinity.
    let (s, b) = app
        .post_raw(
            "/v1/jobs",
            br#"{"type":"train","algorithm":"logreg","input":{"rows":[[1e400]],"labels":[0]}}"#
                .to_vec(),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (400, Some("malformed_json")),
        "{b}"
    );
    // Column names are text: unicode and quotes in the header are kept, not a problem.
    let uri = app
        .put(
            "unicode.csv",
            "größe,\"ширина 📏\",label\n0,1,0\n1,0,1\n0.1,0.9,0\n0.9,0.1,1\n"
                .as_bytes()
                .to_vec(),
        )
        .await;
    let job = app
        .run(json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 5}, "input": {"uri": uri}}))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let (_, model) = app
        .get(&format!(
            "/v1/models/{}",
            job["result"]["model_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(model["n_features"], 2, "{model}");
}
