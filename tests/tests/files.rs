//! Files without S3 credentials: an upload through a presigned `PUT` that a job then reads, and
//! outputs and artifacts fetched through the `302`s the API answers with — keys, tenants and
//! expiry enforced, and the S3 server itself refusing a URL that was tampered with.

use gpuq_tests::{Options, TestApp, client_with_key};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// A client with the app's key that does not follow redirects, so a `302` can be read.
fn no_redirects(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `GET path` without following; returns the status and the `Location`.
async fn location(app: &TestApp, key: &str, path: &str) -> (StatusCode, Option<String>) {
    let r = no_redirects(key)
        .get(format!("{}{path}", app.url))
        .send()
        .await
        .unwrap();
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status(), loc)
}

async fn upload(app: &TestApp, name: &str, bytes: Vec<u8>) -> (Value, StatusCode) {
    let (s, u) = app.post("/v1/uploads", &json!({ "filename": name })).await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    // Whoever holds the URL may PUT, with no gpuq key and no S3 credentials.
    let put = reqwest::Client::new()
        .put(u["upload_url"].as_str().unwrap())
        .body(bytes)
        .send()
        .await
        .unwrap()
        .status();
    (u, put)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_trains_and_outputs_and_artifacts_come_back_through_presigned_redirects() {
    let app = TestApp::spawn().await;
    let mut csv = String::from("a,b,label\n");
    for i in 0..40 {
        let (a, b) = ((i % 7) as f64, (i % 5) as f64);
        csv += &format!("{a},{b},{}\n", (a + b > 5.0) as u32);
    }
    let (u, put) = upload(&app, "train.csv", csv.clone().into_bytes()).await;
    assert_eq!(put, StatusCode::OK, "{u}");
    let uri = u["uri"].as_str().unwrap();
    assert!(
        uri.contains("/tenants/acme/uploads/") && uri.ends_with("/train.csv"),
        "{u}"
    );
    assert_eq!(u["expires_in"], 900, "{u}");
    assert_eq!(app.get_object(uri).await, csv.as_bytes());
    let train = app
        .run(json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 5}, "input": {"uri": uri}}))
        .await;
    assert_eq!(train["status"], "succeeded", "{train}");
    let model_id = train["result"]["model_id"].as_str().unwrap();
    let infer = app
        .run(json!({"type": "infer", "model_id": model_id, "input": {"uri": uri}}))
        .await;
    assert_eq!(infer["status"], "succeeded", "{infer}");
    let infer_id = infer["id"].as_str().unwrap();

    // The output and the artifact, each through a 302 to a presigned GET.
    let (s, loc) = location(&app, &app.key, &format!("/v1/jobs/{infer_id}/output")).await;
    assert_eq!(s, StatusCode::FOUND);
    let got = reqwest::get(loc.unwrap()).await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    let want = app
        .get_object(infer["result"]["output_uri"].as_str().unwrap())
        .await;
    assert_eq!(got.bytes().await.unwrap().to_vec(), want);
    let (s, loc) = location(&app, &app.key, &format!("/v1/models/{model_id}/artifact")).await;
    assert_eq!(s, StatusCode::FOUND);
    let loc = loc.unwrap();
    let artifact = reqwest::get(&loc).await.unwrap().bytes().await.unwrap();
    let (_, model) = app.get(&format!("/v1/models/{model_id}")).await;
    assert_eq!(
        artifact.to_vec(),
        app.get_object(model["artifact_uri"].as_str().unwrap())
            .await
    );
    // The S3 server checks the signature: one changed character and it refuses.
    let sig = loc.rfind("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut bad = loc.clone();
    let flipped = if &bad[sig..sig + 1] == "0" { "1" } else { "0" };
    bad.replace_range(sig..sig + 1, flipped);
    assert_eq!(
        reqwest::get(&bad).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    // A train job has no output file; an unknown id and another tenant's objects are not found.
    let (s, _) = location(
        &app,
        &app.key,
        &format!("/v1/jobs/{}/output", train["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, e) = app
        .get(&format!(
            "/v1/jobs/{}/output",
            train["id"].as_str().unwrap()
        ))
        .await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no output file"),
        "{s} {e}"
    );
    let other = gpuq_api::create_key(&app.pool, "other")
        .await
        .unwrap()
        .token;
    for path in [
        format!("/v1/jobs/{infer_id}/output"),
        format!("/v1/models/{model_id}/artifact"),
    ] {
        let (s, _) = location(&app, &other, &path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let (s, _) = location(
        &app,
        "gpuq_not_a_key",
        &format!("/v1/jobs/{infer_id}/output"),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let r = client_with_key(&other)
        .post(format!("{}/v1/uploads", app.url))
        .json(&json!({"filename": "x.csv"}))
        .send()
        .await
        .unwrap();
    let theirs: Value = r.json().await.unwrap();
    assert!(
        theirs["uri"].as_str().unwrap().contains("/tenants/other/"),
        "{theirs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_names_that_are_not_one_plain_segment_are_refused_and_urls_expire() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        presign: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    for name in ["../x.csv", "a/b.csv", "a\\b.csv", "..", "a\u{1}b", ""] {
        let (s, e) = app.post("/v1/uploads", &json!({ "filename": name })).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name:?}: {e}");
        assert_eq!(e["error"]["field"], "filename", "{name:?}: {e}");
    }
    for body in [json!({}), json!({"filename": 3}), json!({"name": "x.csv"})] {
        let (s, e) = app.post("/v1/uploads", &body).await;
        assert!(s.is_client_error(), "{body}: {s} {e}");
    }
    let (s, u) = app
        .post("/v1/uploads", &json!({"filename": "late.csv"}))
        .await;
    assert_eq!(
        (s, u["expires_in"].as_u64()),
        (StatusCode::CREATED, Some(1))
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let put = reqwest::Client::new()
        .put(u["upload_url"].as_str().unwrap())
        .body("a\n1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::FORBIDDEN, "an expired URL");
}
