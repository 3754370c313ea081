//! The algorithms on the real device without the services around them: determinism, the
//! optimisers and early stopping, and edge cases (k past the rows, constant features). Hostile
//! model files are `artifacts.rs`'.

mod common;

use common::gpu;
use gpuq_shared::dataset::{Table, from_rows, read_csv};
use gpuq_shared::memory::Reservation;
use gpuq_shared::params::TrainParams;
use gpuq_shared::{Algorithm, ErrorCode};
use gpuq_worker::algorithms::{self, Control, LoadedModel};
use gpuq_worker::artifact::Artifact;
use serde_json::{Value, json};

fn digits_train(rows: usize) -> Table {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/digits_train.csv"
    ))
    .unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let head: String = text
        .lines()
        .take(rows + 1)
        .map(|l| format!("{l}\n"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(read_csv(
        head.as_bytes(),
        "label",
        true,
        &Default::default(),
        &mut Reservation::unlimited(),
    ))
    .unwrap()
}

fn train(algorithm: Algorithm, table: Table, params: Value) -> algorithms::Trained {
    let params = TrainParams::parse(algorithm, &params).unwrap();
    algorithms::train(gpu(), table, &params, &Control::default()).unwrap()
}

fn weights(artifact: &[u8]) -> Vec<f32> {
    let a = Artifact::parse(artifact).unwrap();
    let w0 = a.shape("0.weight").unwrap();
    a.f32("0.weight", &w0).unwrap()
}

#[test]
fn mlp_training_is_deterministic_for_a_seed_and_differs_across_seeds() {
    let params = json!({"hidden": [16], "epochs": 3, "batch_size": 32, "seed": 7});
    let a = train(Algorithm::Mlp, digits_train(300), params.clone());
    let b = train(Algorithm::Mlp, digits_train(300), params);
    assert_eq!(weights(&a.artifact), weights(&b.artifact));
    assert_eq!(a.metrics, b.metrics);
    let c = train(
        Algorithm::Mlp,
        digits_train(300),
        json!({"hidden": [16], "epochs": 3, "batch_size": 32, "seed": 8}),
    );
    assert_ne!(weights(&a.artifact), weights(&c.artifact));
}

#[test]
fn mlp_learns_with_sgd_momentum_tanh_and_two_hidden_layers() {
    let t = train(
        Algorithm::Mlp,
        digits_train(600),
        json!({"hidden": [32, 16], "activation": "tanh", "optimizer": "sgd", "learning_rate": 0.05, "epochs": 30}),
    );
    let acc = t.metrics["train_accuracy"].as_f64().unwrap();
    assert!(acc > 0.95, "{}", t.metrics);
    let a = Artifact::parse(&t.artifact).unwrap();
    assert_eq!(a.shape("0.weight").unwrap(), vec![32, 64]);
    assert_eq!(a.shape("2.weight").unwrap(), vec![16, 32]);
    assert_eq!(a.shape("4.weight").unwrap(), vec![10, 16]);
}

#[test]
fn mlp_stops_early_on_its_validation_split_and_keeps_the_best_epoch() {
    let t = train(
        Algorithm::Mlp,
        digits_train(600),
        json!({"hidden": [32], "epochs": 500, "batch_size": 32, "validation_fraction": 0.2, "patience": 10}),
    );
    let m = &t.metrics;
    assert_eq!(m["stopped_early"], true, "{m}");
    assert_eq!(m["validation_rows"], 120);
    assert!(
        m["best_epoch"].as_u64().unwrap() < m["epochs"].as_u64().unwrap(),
        "{m}"
    );
    assert!(m["validation_accuracy"].as_f64().unwrap() > 0.9, "{m}");
}

#[test]
fn knn_with_k_past_the_references_returns_every_reference_in_order() {
    let rows = vec![vec![0.0, 0.0], vec![3.0, 0.0], vec![1.0, 0.0]];
    let t = train(
        Algorithm::Knn,
        from_rows(&rows, Some(&[1.0, 2.0, 2.0])).unwrap(),
        json!({"k": 10}),
    );
    let model = LoadedModel::load(gpu(), &t.artifact).unwrap();
    let query = from_rows(&[vec![0.4, 0.0]], None).unwrap();
    let out = model
        .infer(gpu(), &query, true, &Control::default())
        .unwrap();
    let p = &out.rows[0];
    assert_eq!(p["neighbors"], json!([0, 2, 1]));
    // Two votes for 2 against one for 1, though 1 is nearest.
    assert_eq!(p["label"], 2.0);
    assert!((p["distance"].as_f64().unwrap() - 0.6).abs() < 1e-6, "{p}");
}

#[test]
fn anomaly_detectors_survive_constant_and_duplicate_features() {
    // Column 1 constant, column 2 a copy of column 0: a singular covariance.
    let rows: Vec<Vec<f64>> = (0..20)
        .map(|i| {
            let v = (i as f64 * 0.37).sin();
            vec![v, 1.0, v, (i as f64 * 0.11).cos()]
        })
        .collect();
    for method in [
        "scaled_manhattan",
        "mahalanobis",
        "zscore",
        "nearest_neighbor_mahalanobis",
    ] {
        let t = train(
            Algorithm::Anomaly,
            from_rows(&rows, None).unwrap(),
            json!({"method": method}),
        );
        let model = LoadedModel::load(gpu(), &t.artifact).unwrap();
        let probe = from_rows(&[rows[3].clone(), vec![5.0, 1.0, 5.0, 0.0]], None).unwrap();
        let out = model
            .infer(gpu(), &probe, true, &Control::default())
            .unwrap();
        let (near, far) = (
            out.rows[0]["score"].as_f64().unwrap(),
            out.rows[1]["score"].as_f64().unwrap(),
        );
        assert!(
            near.is_finite() && far.is_finite(),
            "{method}: {near} {far}"
        );
        assert!(
            far > near,
            "{method}: an outlier must score higher ({far} vs {near})"
        );
        if method == "nearest_neighbor_mahalanobis" {
            assert!(
                near < 1e-2,
                "a training sample is its own nearest neighbour: {near}"
            );
        }
    }
}

/// A second device handle whose bindings are capped at `bytes`.
fn capped_gpu(bytes: u64) -> gpuq_worker::gpu::Gpu {
    let mut g = gpuq_worker::gpu::Gpu::new().unwrap();
    g.cap_bindings(bytes);
    g
}

#[test]
fn inputs_past_one_binding_are_chunked_or_refused_naming_the_limit() {
    const CAP: u64 = 16 * 1024;
    let small = capped_gpu(CAP);
    let mut queries = digits_train(300);
    queries.labels = None;

    // Models that fit are loaded; inputs larger than a binding run in chunks with the same
    // results as in one pass.
    let models = [
        (
            Algorithm::Mlp,
            train(
                Algorithm::Mlp,
                digits_train(200),
                json!({"hidden": [16], "epochs": 2}),
            ),
        ),
        (
            Algorithm::Kmeans,
            train(
                Algorithm::Kmeans,
                digits_train(200),
                json!({"k": 5, "n_init": 1}),
            ),
        ),
        (
            Algorithm::Knn,
            train(Algorithm::Knn, digits_train(40), json!({"k": 3})),
        ),
        (
            Algorithm::Anomaly,
            train(
                Algorithm::Anomaly,
                digits_train(200),
                json!({"method": "scaled_manhattan"}),
            ),
        ),
    ];
    for (algorithm, trained) in &models {
        let whole = LoadedModel::load(gpu(), &trained.artifact).unwrap();
        let chunked = LoadedModel::load(&small, &trained.artifact).unwrap();
        let a = whole
            .infer(gpu(), &queries, false, &Control::default())
            .unwrap();
        let b = chunked
            .infer(&small, &queries, false, &Control::default())
            .unwrap();
        assert_eq!(
            a.csv.text(),
            b.csv.text(),
            "{algorithm:?}: chunked inference differs"
        );
        assert_eq!(a.summary, b.summary, "{algorithm:?}");
    }

    // Training data past the cap is refused by name, with the limit.
    for algorithm in [Algorithm::Logreg, Algorithm::Mlp, Algorithm::Kmeans] {
        let params = TrainParams::parse(algorithm, &json!({})).unwrap();
        let err = algorithms::train(&small, digits_train(300), &params, &Control::default())
            .err()
            .unwrap_or_else(|| panic!("{algorithm:?} trained past the cap"));
        assert_eq!(err.code, ErrorCode::InputTooLarge, "{algorithm:?}: {err:?}");
        assert!(err.message.contains(&CAP.to_string()), "{}", err.message);
    }
    // A stored reference set past the cap cannot be loaded: refused, not a driver error.
    let big = train(Algorithm::Knn, digits_train(300), json!({}));
    let err = LoadedModel::load(&small, &big.artifact).err().unwrap();
    assert_eq!(err.code, ErrorCode::InputTooLarge, "{err:?}");
}
