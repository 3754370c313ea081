//! A model whose stored file is damaged: inference with it fails `model_corrupt` on its first
//! attempt (a fatal error, never retried), and the worker keeps serving.

use gpuq_tests::TestApp;
use gpuq_worker::artifact::{Tensor, write};
use serde_json::json;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn inference_with_a_corrupt_artifact_fails_model_corrupt_on_its_first_attempt() {
    let app = TestApp::spawn().await;
    let rows = json!({"rows": [[0.0, 0.0], [1.0, 1.0]], "labels": [0, 1]});
    let trained = app
        .run(
            json!({"type": "train", "algorithm": "logreg", "input": rows, "params": {"epochs": 2}}),
        )
        .await;
    assert_eq!(trained["status"], "succeeded", "{trained}");
    let model_id = trained["result"]["model_id"].as_str().unwrap();
    let (_, model) = app.get(&format!("/v1/models/{model_id}")).await;

    // Overwritten with a classifier of no classes (whose outputs chain to nothing).
    let hostile = write(
        "logreg",
        &[
            Tensor::F32("0.weight", vec![0, 2], &[]),
            Tensor::F32("0.bias", vec![0], &[]),
        ],
        &[
            ("feature_columns", json!(["a", "b"])),
            ("classes", json!([])),
        ],
    );
    let uri = model["artifact_uri"].as_str().unwrap().parse().unwrap();
    app.storage
        .put(&uri, hostile, "application/octet-stream")
        .await
        .unwrap();

    let job = app
        .run(json!({"type": "infer", "model_id": model_id, "input": {"rows": [[0.5, 0.5]]}}))
        .await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["error"]["code"].as_str(),
            job["attempt"].as_i64()
        ),
        (Some("failed"), Some("model_corrupt"), Some(1)),
        "{job}"
    );

    let next = app
        .submit(
            json!({"type": "train", "algorithm": "logreg", "input": rows, "params": {"epochs": 2}}),
        )
        .await;
    assert_eq!(app.wait(&next, LIMIT).await["status"], "succeeded");
}
