//! Deleting: `DELETE /v1/jobs/{id}` (finished jobs, with their outputs), `DELETE /v1/models/{id}`
//! (with its artifact, and never served again, cached or not), and retention, which deletes
//! what is older than the deployment keeps. Another tenant's ids do not exist.

use gpuq_shared::config::Retention;
use gpuq_tests::{Options, StatusCode, TestApp};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(240);

fn train_inline() -> Value {
    json!({"type": "train", "algorithm": "logreg", "params": {"epochs": 20},
        "input": {"rows": [[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]], "labels": [0, 1, 0, 1]}})
}

fn id_of(job: &Value) -> &str {
    job["id"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_can_be_deleted_once_finished_and_only_by_its_tenant() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let job = app.submit(train_inline()).await;
    let path = format!("/v1/jobs/{}", id_of(&job));

    let (s, b) = app.delete(&path).await;
    assert_eq!(s, StatusCode::CONFLICT, "a queued job: {b}");
    assert_eq!(b["error"]["code"], "conflict");
    let (s, _) = app.post(&format!("{path}/cancel"), &json!({})).await;
    assert_eq!(s, StatusCode::OK);

    let other = app.client_for("globex").await;
    let (s, b) = app.send(other.delete(format!("{}{path}", app.url))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another tenant's job: {b}");
    assert_eq!(app.get(&path).await.0, StatusCode::OK, "still there");

    let (s, b) = app.delete(&path).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert_eq!(app.get(&path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&path).await.0, StatusCode::NOT_FOUND);
    let (s, b) = app.delete("/v1/jobs/not-a-uuid").await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_id"))
    );
    let (s, _) = app.delete(&format!("/v1/models/{}", Uuid::now_v7())).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_inference_job_deletes_its_output_and_a_train_job_leaves_its_model() {
    let app = TestApp::spawn().await;
    let train = app.run(train_inline()).await;
    assert_eq!(train["status"], "succeeded", "{train}");
    let model_id = train["result"]["model_id"].as_str().unwrap();
    let input = app
        .put("rows.csv", b"a,b\n0.0,1.0\n1.0,0.0\n0.5,0.5\n".to_vec())
        .await;
    let infer = app
        .run(json!({"type": "infer", "model_id": model_id, "input": {"uri": input}}))
        .await;
    assert_eq!(infer["status"], "succeeded", "{infer}");
    let output = infer["result"]["output_uri"].as_str().unwrap();
    assert!(app.object_exists(output).await);

    let (s, b) = app.delete(&format!("/v1/jobs/{}", id_of(&infer))).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert!(
        !app.object_exists(output).await,
        "the output went with its job"
    );
    assert!(
        app.object_exists(&input).await,
        "the input is the tenant's, and stays"
    );

    let (s, b) = app.delete(&format!("/v1/jobs/{}", id_of(&train))).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, model) = app.get(&format!("/v1/models/{model_id}")).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the model outlives its train job: {model}"
    );
    assert!(
        app.object_exists(model["artifact_uri"].as_str().unwrap())
            .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_model_is_not_found_for_infer_and_no_worker_serves_its_cached_copy() {
    let app = TestApp::spawn().await;
    let train = app.run(train_inline()).await;
    let model_id = train["result"]["model_id"].as_str().unwrap().to_string();
    let infer = json!({"type": "infer", "model_id": model_id, "input": {"rows": [[0.0, 1.0]]}});
    // The worker now holds the model on its GPU.
    let first = app.run(infer.clone()).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let path = format!("/v1/models/{model_id}");
    let (_, model) = app.get(&path).await;
    let artifact = model["artifact_uri"].as_str().unwrap().to_string();

    let other = app.client_for("globex").await;
    let (s, _) = app.send(other.delete(format!("{}{path}", app.url))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another tenant's model");
    assert_eq!(app.get(&path).await.0, StatusCode::OK);

    let (s, b) = app.delete(&path).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert_eq!(app.get(&path).await.0, StatusCode::NOT_FOUND);
    assert!(!app.object_exists(&artifact).await, "the artifact went too");
    let (s, b) = app.post("/v1/jobs", &infer).await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );

    // A job naming it that got past the API anyway (queued before the delete) reaches the
    // worker that still holds the model: it must not be served.
    let id = app.record_unpublished(&infer).await.unwrap();
    let done = app.wait(&json!({"id": id.to_string()}), LIMIT).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "model_not_found", "{done}");
}

/// Submits under an `Idempotency-Key`; returns the job.
async fn submit_keyed(app: &TestApp, key: &str) -> Value {
    let request = app
        .client
        .post(format!("{}/v1/jobs", app.url))
        .header("idempotency-key", key)
        .json(&train_inline());
    let (s, job) = app.send(request).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    job
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_old_finished_jobs_their_outputs_and_old_idempotency_keys() {
    let app = TestApp::spawn_with(Options {
        workers: 0,
        retention: Retention {
            jobs: Some(Duration::from_secs(86_400)),
            idempotency_keys: Some(Duration::from_secs(86_400)),
        },
        ..Options::default()
    })
    .await;
    // old: finished two days ago, an inference with outputs; old_train: finished two days ago,
    // with a model; recent: finished now, its key made two days ago; waiting: queued for three.
    let old = submit_keyed(&app, "old").await;
    let old_train = submit_keyed(&app, "old-train").await;
    let recent = submit_keyed(&app, "recent").await;
    let waiting = submit_keyed(&app, "waiting").await;
    for job in [&old, &old_train, &recent] {
        let (s, _) = app
            .post(&format!("/v1/jobs/{}/cancel", id_of(job)), &json!({}))
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let outputs = format!(
        "{}outputs/{}/",
        app.settings.tenant_prefix(&app.tenant),
        id_of(&old)
    );
    let output = app
        .put_at(&format!("{outputs}predictions.csv"), b"label\n1\n".to_vec())
        .await;
    let stray = app
        .put_at(
            &format!("{outputs}attempt-1/predictions.csv"),
            b"label\n0\n".to_vec(),
        )
        .await;
    let recent_output = app
        .put_at(
            &format!(
                "{}outputs/{}/predictions.csv",
                app.settings.tenant_prefix(&app.tenant),
                id_of(&recent)
            ),
            b"label\n1\n".to_vec(),
        )
        .await;
    let sql = |q: &'static str, id: &str| {
        let id: Uuid = id.parse().unwrap();
        let pool = app.pool.clone();
        async move { sqlx::query(q).bind(id).execute(&pool).await.unwrap() }
    };
    // Only a delete by retention can take these rows now: the loop runs every 0.5 s.
    sqlx::query(
        "UPDATE jobs SET type = 'infer', result = jsonb_build_object('output_uri', $2::text),
                         finished_at = now() - interval '2 days'
         WHERE id = $1",
    )
    .bind(id_of(&old).parse::<Uuid>().unwrap())
    .bind(&output)
    .execute(&app.pool)
    .await
    .unwrap();
    let model = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO models (id, algorithm, job_id, n_features, n_classes, params, metrics,
                             artifact_uri, tenant_id)
         VALUES ($1, 'logreg', $2, 2, 2, '{}', '{}', 's3://x/y', $3)",
    )
    .bind(model)
    .bind(id_of(&old_train).parse::<Uuid>().unwrap())
    .bind(&app.tenant)
    .execute(&app.pool)
    .await
    .unwrap();
    sql(
        "UPDATE jobs SET finished_at = now() - interval '2 days' WHERE id = $1",
        id_of(&old_train),
    )
    .await;
    sql(
        "UPDATE idempotency_keys SET created_at = now() - interval '2 days' WHERE job_id = $1",
        id_of(&recent),
    )
    .await;
    sql(
        "UPDATE jobs SET created_at = now() - interval '3 days' WHERE id = $1",
        id_of(&waiting),
    )
    .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.get(&format!("/v1/jobs/{}", id_of(&old))).await.0 != StatusCode::NOT_FOUND
        || app.get(&format!("/v1/jobs/{}", id_of(&old_train))).await.0 != StatusCode::NOT_FOUND
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention deleted nothing in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !app.object_exists(&output).await,
        "the recorded output went"
    );
    assert!(
        !app.object_exists(&stray).await,
        "and everything under the job's outputs"
    );
    let (s, _) = app.get(&format!("/v1/models/{model}")).await;
    assert_eq!(s, StatusCode::OK, "a model outlives its train job");
    for kept in [&recent, &waiting] {
        let (s, _) = app.get(&format!("/v1/jobs/{}", id_of(kept))).await;
        assert_eq!(
            s,
            StatusCode::OK,
            "{kept} is within retention or unfinished"
        );
    }
    assert!(app.object_exists(&recent_output).await);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        keys,
        ["waiting"],
        "the old jobs' keys went with them, `recent`'s by age"
    );
    // An expired key makes a new job.
    let again = submit_keyed(&app, "recent").await;
    assert_ne!(id_of(&again), id_of(&recent));
}
