//! Every algorithm through the whole path (API → queue → GPU worker → S3 → Postgres) on real
//! data, held to published results or to independent implementations (`tests/reference`).

use gpuq_tests::{TestApp, data, digits, reference};
use safetensors::SafeTensors;
use serde_json::{Value, json};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(600);

/// Trains `algorithm` on `train`, then runs the model over `test`; returns both finished jobs.
async fn train_and_infer(
    app: &TestApp,
    algorithm: &str,
    params: Value,
    train: &str,
    test: &str,
) -> (Value, Value) {
    let job = app
        .submit(json!({"type": "train", "algorithm": algorithm, "params": params, "input": {"uri": train}}))
        .await;
    let job = app.wait(&job, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model_id = job["result"]["model_id"].as_str().unwrap();
    let infer = app
        .submit(json!({"type": "infer", "model_id": model_id, "input": {"uri": test}}))
        .await;
    let infer = app.wait(&infer, LIMIT).await;
    assert_eq!(infer["status"], "succeeded", "{infer}");
    (job, infer)
}

fn f64_tensor(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f64>) {
    let t = st.tensor(name).unwrap();
    let values = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
        .collect();
    (t.shape().to_vec(), values)
}

/// Class probabilities computed from the artifact alone, the way a NumPy user would: scale
/// the inputs by the metadata (`mlp`; `logreg` folds its scaling into the weights), then
/// `Linear`, activation, …, `Linear`, softmax — in f64.
fn probabilities_from_artifact(bytes: &[u8], rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let parse = |k: &str| serde_json::from_str::<Value>(&meta[k]).unwrap();
    let width = rows.first().map_or(0, Vec::len);
    let (mean, std): (Vec<f64>, Vec<f64>) = if meta.contains_key("input_mean") {
        (
            serde_json::from_value(parse("input_mean")).unwrap(),
            serde_json::from_value(parse("input_std")).unwrap(),
        )
    } else {
        (vec![0.0; width], vec![1.0; width])
    };
    let activation = parse("activation");
    let mut layers = Vec::new();
    while st.tensor(&format!("{}.weight", 2 * layers.len())).is_ok() {
        let l = 2 * layers.len();
        layers.push((
            f64_tensor(&st, &format!("{l}.weight")),
            f64_tensor(&st, &format!("{l}.bias")).1,
        ));
    }
    rows.iter()
        .map(|row| {
            let mut a: Vec<f64> = row
                .iter()
                .zip(&mean)
                .zip(&std)
                .map(|((x, m), s)| (x - m) / s)
                .collect();
            for (l, ((shape, w), b)) in layers.iter().enumerate() {
                let (out, inp) = (shape[0], shape[1]);
                a = (0..out)
                    .map(|o| {
                        let z = b[o] + (0..inp).map(|i| w[o * inp + i] * a[i]).sum::<f64>();
                        match (l + 1 < layers.len(), activation.as_str()) {
                            (true, Some("relu")) => z.max(0.0),
                            (true, Some("tanh")) => z.tanh(),
                            _ => z,
                        }
                    })
                    .collect();
            }
            let max = a.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = a.iter().map(|z| (z - max).exp()).sum();
            a.iter().map(|z| (z - max).exp() / sum).collect()
        })
        .collect()
}

/// The largest difference between the probabilities the artifact alone gives for the digits test
/// rows and those in gpuq's output CSV; panics if any predicted label differs.
async fn artifact_vs_gpuq(app: &TestApp, job: &Value, infer: &Value) -> f64 {
    let (_, model) = app
        .get(&format!(
            "/v1/models/{}",
            job["result"]["model_id"].as_str().unwrap()
        ))
        .await;
    let artifact = app
        .get_object(model["artifact_uri"].as_str().unwrap())
        .await;
    let test_rows: Vec<Vec<f64>> = csv_rows(&digits("test"))
        .into_iter()
        .map(|mut r| {
            r.pop();
            r
        })
        .collect();
    let independent = probabilities_from_artifact(&artifact, &test_rows);
    let gpuq = csv_rows(
        &app.get_object(infer["result"]["output_uri"].as_str().unwrap())
            .await,
    );
    assert_eq!(gpuq.len(), independent.len());
    let mut worst = 0f64;
    for (mine, theirs) in independent.iter().zip(&gpuq) {
        let (label, probs) = (theirs[0], &theirs[1..]);
        for (a, b) in mine.iter().zip(probs) {
            worst = worst.max((a - b).abs());
        }
        let arg = (0..mine.len())
            .max_by(|&a, &b| mine[a].total_cmp(&mine[b]))
            .unwrap();
        assert_eq!(arg as f64, label, "the artifact's own prediction differs");
    }
    eprintln!("largest probability difference, artifact (f64) vs gpuq: {worst:.2e}");
    worst
}

fn csv_rows(bytes: &[u8]) -> Vec<Vec<f64>> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mlp_on_digits_scores_over_97_percent_and_its_artifact_alone_reproduces_the_predictions() {
    let app = TestApp::spawn().await;
    let train = app.put("digits/train.csv", digits("train")).await;
    let test = app.put("digits/test.csv", digits("test")).await;
    let (job, infer) = train_and_infer(
        &app,
        "mlp",
        json!({"hidden": [64], "seed": 1}),
        &train,
        &test,
    )
    .await;
    let accuracy = infer["result"]["accuracy"].as_f64().unwrap();
    let sklearn = reference("digits_sklearn.json")["mlp_64_standardised"].clone();
    eprintln!(
        "mlp digits: test accuracy {accuracy:.4} (scikit-learn MLPClassifier((64,)), seeds 0-9: {:.4}-{:.4}), training {}",
        sklearn["min"].as_f64().unwrap(),
        sklearn["max"].as_f64().unwrap(),
        job["result"]["metrics"]
    );
    assert!(accuracy >= 0.97, "test accuracy {accuracy}");
    assert_eq!(infer["result"]["labelled_rows"], 450);
    let worst = artifact_vs_gpuq(&app, &job, &infer).await;
    assert!(worst < 1e-5, "{worst}");
}

#[tokio::test(flavor = "multi_thread")]
async fn logreg_on_digits_scores_over_96_percent_and_its_artifact_alone_reproduces_the_predictions()
{
    let app = TestApp::spawn().await;
    let train = app.put("digits/train.csv", digits("train")).await;
    let test = app.put("digits/test.csv", digits("test")).await;
    let (job, infer) = train_and_infer(&app, "logreg", json!({}), &train, &test).await;
    let accuracy = infer["result"]["accuracy"].as_f64().unwrap();
    let sklearn = reference("digits_sklearn.json")["logistic_regression"].clone();
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(job[k].as_str().unwrap()).unwrap();
    eprintln!(
        "logreg digits: test accuracy {accuracy:.4} (scikit-learn LogisticRegression: raw {:.4}, standardised {:.4}); training took {:.1} s: {}",
        sklearn["raw"].as_f64().unwrap(),
        sklearn["standardised"].as_f64().unwrap(),
        (at("finished_at") - at("started_at")).as_seconds_f64(),
        job["result"]["metrics"]
    );
    assert!(accuracy >= 0.965, "test accuracy {accuracy}");
    assert_eq!(infer["result"]["labelled_rows"], 450);
    let worst = artifact_vs_gpuq(&app, &job, &infer).await;
    assert!(worst < 1e-5, "{worst}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kmeans_on_digits_comes_within_a_tenth_of_a_percent_of_scikit_learns_inertia() {
    let app = TestApp::spawn().await;
    let train = app.put("digits/train.csv", digits("train")).await;
    let test = app.put("digits/test.csv", digits("test")).await;
    let (job, infer) = train_and_infer(
        &app,
        "kmeans",
        json!({"k": 10, "n_init": 10, "seed": 0}),
        &train,
        &test,
    )
    .await;
    let ours = job["result"]["metrics"]["inertia"].as_f64().unwrap();
    let sklearn = reference("kmeans.json")["n_init_10_seeds_0_4"]["per_seed"]["0"]["inertia"]
        .as_f64()
        .unwrap();
    eprintln!(
        "kmeans digits inertia: gpuq {ours:.1}, scikit-learn {sklearn:.1}, ratio {:.4}",
        ours / sklearn
    );
    assert!(
        ours <= sklearn * 1.001,
        "gpuq {ours} vs scikit-learn {sklearn}"
    );
    assert_eq!(
        job["result"]["metrics"]["cluster_sizes"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    let csv = String::from_utf8(
        app.get_object(infer["result"]["output_uri"].as_str().unwrap())
            .await,
    )
    .unwrap();
    assert_eq!(csv.lines().next(), Some("cluster,distance"));
    assert_eq!(csv.lines().count(), 451);
    assert!(infer["result"]["inertia"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn knn_reproduces_the_published_ucr_1nn_euclidean_error_rates() {
    let app = TestApp::spawn().await;
    let published = reference("ucr.json");
    for (name, want) in published.as_object().unwrap() {
        let train = app
            .put(
                &format!("ucr/{name}_TRAIN.csv"),
                data(&format!("data/ucr/{name}_TRAIN.csv")),
            )
            .await;
        let test = app
            .put(
                &format!("ucr/{name}_TEST.csv"),
                data(&format!("data/ucr/{name}_TEST.csv")),
            )
            .await;
        let (_, infer) = train_and_infer(
            &app,
            "knn",
            json!({"k": 1, "metric": "euclidean"}),
            &train,
            &test,
        )
        .await;
        let error = infer["result"]["error_rate"].as_f64().unwrap();
        let expected = want["published_error"].as_f64().unwrap();
        eprintln!("{name}: 1-NN error {error:.4}, published {expected:.4}");
        assert!(
            (error - expected).abs() < 5e-5,
            "{name}: {error} vs published {expected}"
        );
        assert_eq!(infer["result"]["labelled_rows"], want["n_test"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn anomaly_detectors_match_an_independent_implementation_to_four_decimals() {
    let app = TestApp::spawn().await;
    let expected = reference("anomaly.json");
    let subjects: Vec<&String> = expected
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["scaled_manhattan"].is_object())
        .map(|(k, _)| k)
        .collect();
    assert!(!subjects.is_empty());
    for subject in subjects {
        let train = app
            .put(
                &format!("ks/{subject}_train.csv"),
                data(&format!("data/keystroke/{subject}_train.csv")),
            )
            .await;
        let test = app
            .put(
                &format!("ks/{subject}_test.csv"),
                data(&format!("data/keystroke/{subject}_test.csv")),
            )
            .await;
        for method in [
            "scaled_manhattan",
            "mahalanobis",
            "zscore",
            "nearest_neighbor_mahalanobis",
        ] {
            let want = &expected[subject.as_str()][method];
            let (_, infer) =
                train_and_infer(&app, "anomaly", json!({"method": method}), &train, &test).await;
            let r = &infer["result"];
            let first = &expected["first_scores"];
            if first["subject"] == subject.as_str() {
                let csv = app.get_object(r["output_uri"].as_str().unwrap()).await;
                let ours = csv_rows(&csv);
                for (i, want) in first[method].as_array().unwrap().iter().enumerate() {
                    let (got, want) = (ours[i][0], want.as_f64().unwrap());
                    assert!(
                        (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                        "{method} row {i}: {got} vs {want}"
                    );
                }
            }
            let (eer, far) = (
                r["equal_error_rate"].as_f64().unwrap(),
                r["zero_miss_false_alarm_rate"].as_f64().unwrap(),
            );
            let (want_eer, want_far) = (
                want["eer"].as_f64().unwrap(),
                want["zero_miss_far"].as_f64().unwrap(),
            );
            eprintln!(
                "{subject} {method}: EER {eer:.4} (reference {want_eer:.4}), zero-miss FAR {far:.4} (reference {want_far:.4})"
            );
            // Both rates are counts over 200 genuine and 250 impostor samples: equal to four
            // decimals means the same counts.
            assert!(
                (eer - want_eer).abs() < 5e-5,
                "{subject} {method}: EER {eer} vs {want_eer}"
            );
            assert!(
                (far - want_far).abs() < 5e-5,
                "{subject} {method}: zero-miss {far} vs {want_far}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupervised_models_train_on_inline_rows_and_bad_params_name_their_field() {
    let app = TestApp::spawn().await;
    let rows = json!([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [0.0, 0.2]]);
    let job = app.run(json!({"type": "train", "algorithm": "kmeans", "params": {"k": 2, "n_init": 2}, "input": {"rows": rows}})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["result"]["metrics"]["cluster_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .max(),
        Some(3)
    );
    let model_id = job["result"]["model_id"].as_str().unwrap();
    let infer = app.run(json!({"type": "infer", "model_id": model_id, "input": {"rows": [[5.0, 5.1], [0.0, 0.1]]}})).await;
    let p = &infer["result"]["predictions"];
    assert_ne!(p[0]["cluster"], p[1]["cluster"], "{infer}");
    assert!(p[1]["distance"].as_f64().unwrap() < 0.2);

    let job = app.run(json!({"type": "train", "algorithm": "anomaly", "params": {"method": "zscore"}, "input": {"rows": rows}})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["metrics"]["method"], "zscore");

    // Too many clusters for the rows: the job fails with a clear input error.
    let job = app.run(json!({"type": "train", "algorithm": "kmeans", "params": {"k": 9}, "input": {"rows": rows}})).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "invalid_input");
    assert!(
        job["error"]["message"].as_str().unwrap().contains("k = 9"),
        "{job}"
    );

    for (algorithm, params, field) in [
        ("mlp", json!({"activation": "sigmoid"}), "params.activation"),
        ("mlp", json!({"hidden": [0]}), "params.hidden"),
        ("knn", json!({"k": 0}), "params.k"),
        ("knn", json!({"metric": "hamming"}), "params.metric"),
        ("kmeans", json!({"k": -1}), "params.k"),
        ("anomaly", json!({"method": "svm"}), "params.method"),
    ] {
        let (status, body) = app
            .post("/v1/jobs", &json!({"type": "train", "algorithm": algorithm, "params": params, "input": {"rows": rows}}))
            .await;
        assert_eq!(status, 422, "{algorithm} {params}: {body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    // A supervised algorithm still needs labels.
    let (status, body) = app
        .post(
            "/v1/jobs",
            &json!({"type": "train", "algorithm": "knn", "input": {"rows": rows}}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "input.labels", "{body}");
}
