//! The whole path: HTTP → Postgres → RabbitMQ → GPU worker → S3 → Postgres, with real services.

use gpuq_tests::{TestApp, digits};
use serde_json::{Value, json};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread")]
async fn logreg_trained_on_digits_through_the_api_scores_over_95_percent_on_the_held_out_quarter() {
    let app = TestApp::spawn().await;
    let train = app.put("digits/train.csv", digits("train")).await;
    let test = app.put("digits/test.csv", digits("test")).await;

    let job = app
        .submit(json!({"type": "train", "algorithm": "logreg", "input": {"uri": train}}))
        .await;
    let job = app.wait(&job, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["progress"]["fraction"], 1.0);
    let metrics = &job["result"]["metrics"];
    assert!(
        metrics["train_accuracy"].as_f64().unwrap() > 0.97,
        "{metrics}"
    );
    assert!(metrics["final_loss"].as_f64().unwrap() < 0.2, "{metrics}");
    let model_id = job["result"]["model_id"].as_str().unwrap();

    let (s, model) = app.get(&format!("/v1/models/{model_id}")).await;
    assert_eq!(s, 200);
    assert_eq!(
        (model["n_features"].as_i64(), model["n_classes"].as_i64()),
        (Some(64), Some(10))
    );
    assert_eq!(model["job_id"], job["id"]);
    let artifact = app
        .get_object(model["artifact_uri"].as_str().unwrap())
        .await;
    assert!(
        artifact.len() > 10 * 64 * 4,
        "safetensors holds the 10×64 weights"
    );

    let infer = app
        .submit(json!({"type": "infer", "model_id": model_id, "input": {"uri": test}}))
        .await;
    let infer = app.wait(&infer, LIMIT).await;
    assert_eq!(infer["status"], "succeeded", "{infer}");
    assert_eq!(infer["result"]["rows"], 450);
    let csv = String::from_utf8(
        app.get_object(infer["result"]["output_uri"].as_str().unwrap())
            .await,
    )
    .unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), "label,p0,p1,p2,p3,p4,p5,p6,p7,p8,p9");
    let truth: Vec<String> = String::from_utf8(digits("test"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().to_string())
        .collect();
    let predicted: Vec<String> = lines
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(predicted.len(), truth.len());
    let right = predicted.iter().zip(&truth).filter(|(p, t)| p == t).count();
    let accuracy = right as f64 / truth.len() as f64;
    // scikit-learn's figure on this split is tests/reference/digits_sklearn.json's.
    println!("digits test accuracy: {accuracy:.4}");
    assert!(accuracy >= 0.95, "test accuracy {accuracy}");
}

#[tokio::test(flavor = "multi_thread")]
async fn inline_rows_train_and_infer_with_predictions_in_the_result() {
    let app = TestApp::spawn().await;
    // Two separable blobs.
    let rows: Vec<Vec<f64>> = (0..40)
        .map(|i| {
            let c = (i % 2) as f64;
            vec![
                c * 4.0 + (i as f64 * 0.37).sin(),
                -c * 3.0 + (i as f64 * 0.71).cos(),
            ]
        })
        .collect();
    let labels: Vec<i32> = (0..40).map(|i| (i % 2) * 5).collect();
    let job = app
        .submit(json!({"type": "train", "algorithm": "logreg",
        "input": {"rows": rows, "labels": labels}, "params": {"epochs": 30, "batch_size": 8}}))
        .await;
    let job = app.wait(&job, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model_id = job["result"]["model_id"].as_str().unwrap();

    let r = app.client.post(format!("{}/v1/jobs", app.url)).header("Prefer", "wait=30")
        .json(&json!({"type": "infer", "model_id": model_id, "input": {"rows": [[0.0, 1.0], [4.0, -3.0]]}}))
        .send().await.unwrap();
    assert_eq!(r.status(), 202);
    let infer: Value = r.json().await.unwrap();
    assert_eq!(
        infer["status"], "succeeded",
        "Prefer: wait returns the finished job: {infer}"
    );
    let preds = infer["result"]["predictions"].as_array().unwrap();
    assert_eq!(preds[0]["label"], 0.0);
    assert_eq!(
        preds[1]["label"], 5.0,
        "labels come back as given, not as class indices"
    );
    let p: Vec<f64> = preds[1]["p"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        (p.iter().sum::<f64>() - 1.0).abs() < 1e-5 && p[1] > 0.9,
        "{p:?}"
    );
    assert_eq!(infer["result"]["output_uri"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_fail_the_job_with_a_code_and_the_worker_keeps_serving() {
    let app = TestApp::spawn().await;

    let missing = format!(
        "s3://{}/{}nope.csv",
        app.settings.bucket,
        app.settings.tenant_prefix(&app.tenant)
    );
    let job = app
        .run(json!({"type": "train", "algorithm": "logreg", "input": {"uri": missing}}))
        .await;
    assert_eq!(
        (job["status"].as_str(), job["error"]["code"].as_str()),
        (Some("failed"), Some("input_not_found")),
        "{job}"
    );
    assert_eq!(job["attempt"], 1, "input errors are not retried");

    let bad_cell = app
        .put("bad.csv", b"a,b,label\n1,2,0\n3,x,1\n".to_vec())
        .await;
    let job = app
        .run(json!({"type": "train", "algorithm": "logreg", "input": {"uri": bad_cell}}))
        .await;
    assert_eq!(job["error"]["code"], "invalid_input", "{job}");
    let msg = job["error"]["message"].as_str().unwrap();
    assert!(msg.contains("line 3") && msg.contains("`b`"), "{msg}");

    let no_label = app.put("nolabel.csv", b"a,b\n1,2\n3,4\n".to_vec()).await;
    let job = app
        .run(json!({"type": "train", "algorithm": "logreg", "input": {"uri": no_label}}))
        .await;
    assert_eq!(job["error"]["code"], "invalid_input");
    assert!(
        job["error"]["message"].as_str().unwrap().contains("label"),
        "{job}"
    );

    let nan = app
        .put("nan.csv", b"a,b,label\n1,NaN,0\n3,4,1\n".to_vec())
        .await;
    let job = app
        .run(json!({"type": "train", "algorithm": "logreg", "input": {"uri": nan}}))
        .await;
    assert_eq!(job["error"]["code"], "invalid_input", "{job}");

    // A good model, then inference rows of the wrong width.
    let good = app
        .put(
            "good.csv",
            b"a,b,label\n0,0,0\n1,1,1\n0,1,0\n1,0,1\n".to_vec(),
        )
        .await;
    let job = app
        .run(
            json!({"type": "train", "algorithm": "logreg", "input": {"uri": good},
        "params": {"epochs": 5}}),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model_id = job["result"]["model_id"].as_str().unwrap();
    let wide = app.put("wide.csv", b"a,b,c\n1,2,3\n".to_vec()).await;
    let job = app
        .run(json!({"type": "infer", "model_id": model_id, "input": {"uri": wide}}))
        .await;
    assert_eq!(job["error"]["code"], "shape_mismatch", "{job}");
    let (s, b) = app
        .post(
            "/v1/jobs",
            &json!({"type": "infer", "model_id": model_id, "input": {"rows": [[1, 2, 3]]}}),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["error"]["code"].as_str()),
        (422, Some("shape_mismatch")),
        "{b}"
    );

    let (s, _) = app.get("/readyz").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_reports_progress_and_stops_when_canceled() {
    // One job at a time: the next job can only run once the canceled one has let go.
    let app = TestApp::spawn_with(gpuq_tests::Options {
        concurrency: 1,
        ..Default::default()
    })
    .await;
    let train = app.put("digits/train.csv", digits("train")).await;
    let job = app
        .submit(
            json!({"type": "train", "algorithm": "logreg", "input": {"uri": train},
        "params": {"epochs": 20000}}),
        )
        .await;
    let id = job["id"].as_str().unwrap();
    let j = app.wait_for_training(id, LIMIT).await;
    assert_eq!(j["status"], "running");
    assert!(j["progress"]["fraction"].as_f64().unwrap() > 0.0, "{j}");
    let (s, j) = app.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!((s.as_u16(), j["status"].as_str()), (200, Some("canceled")));
    // The worker notices within its heartbeat, stops, and takes the next job.
    let canceled_at = std::time::Instant::now();
    let quick = app
        .submit(json!({"type": "train", "algorithm": "logreg",
        "input": {"rows": [[0], [1]], "labels": [0, 1]}, "params": {"epochs": 1}}))
        .await;
    assert_eq!(app.wait(&quick, LIMIT).await["status"], "succeeded");
    let freed_after = canceled_at.elapsed();
    println!("worker freed {freed_after:?} after the cancel");
    assert!(freed_after < Duration::from_secs(10), "{freed_after:?}");
    let (_, j) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(
        j["status"], "canceled",
        "a canceled job stays canceled: {j}"
    );
    assert_eq!(app.model_rows_for(id).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_float64_npy_input_trains_like_a_csv() {
    let app = TestApp::spawn().await;
    // 8 rows × (2 features + label in column 2), little-endian float64, C order.
    let rows: [[f64; 3]; 8] = [
        [0.0, 0.1, 0.0],
        [0.2, 0.0, 0.0],
        [0.1, 0.3, 0.0],
        [0.3, 0.2, 0.0],
        [2.0, 2.1, 1.0],
        [2.2, 1.9, 1.0],
        [1.9, 2.3, 1.0],
        [2.1, 2.0, 1.0],
    ];
    let mut header = "{'descr': '<f8', 'fortran_order': False, 'shape': (8, 3), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    npy.extend(rows.iter().flatten().flat_map(|v| v.to_le_bytes()));
    let uri = app.put("blobs.npy", npy).await;
    let job = app
        .run(
            json!({"type": "train", "algorithm": "logreg", "input": {"uri": uri},
            "params": {"label_column": "2", "epochs": 50, "batch_size": 4}}),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["metrics"]["train_accuracy"], 1.0, "{job}");
    assert_eq!(job["result"]["metrics"]["features"], 2);
}
