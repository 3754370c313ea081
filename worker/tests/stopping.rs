//! A job told to stop (cancel, timeout, shutdown) stops its work: inference and the training
//! done on the host return `stopped` soon after their control is stopped, not when the work is
//! done. The work here takes seconds to tens of seconds on lavapipe when not stopped.

mod common;

use common::{gpu, values};
use gpuq_shared::dataset::{Table, from_rows};
use gpuq_shared::params::TrainParams;
use gpuq_shared::{Algorithm, ErrorCode, JobError};
use gpuq_worker::algorithms::{self, Control, LoadedModel, StopReason};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// When the control is stopped, after the work began.
const STOP_AFTER: Duration = Duration::from_millis(300);
/// How long the work may go on after that: about one paced submission and one heartbeat.
const STOPS_WITHIN: Duration = Duration::from_millis(1500);

/// `rows × features` values in [-1, 1), with two classes of labels when `labelled`.
fn table(rows: usize, features: usize, seed: u64, labelled: bool) -> Table {
    let v = values(rows * features, seed);
    let rows: Vec<Vec<f64>> = v
        .chunks(features)
        .map(|r| r.iter().map(|&x| x as f64).collect())
        .collect();
    let labels: Vec<f64> = (0..rows.len()).map(|i| (i % 2) as f64).collect();
    from_rows(&rows, labelled.then_some(&labels[..])).unwrap()
}

fn trained(algorithm: Algorithm, table: Table, params: Value) -> LoadedModel {
    let params = TrainParams::parse(algorithm, &params).unwrap();
    let t = algorithms::train(gpu(), table, &params, &Control::default()).unwrap();
    LoadedModel::load(gpu(), &t.artifact).unwrap()
}

/// Runs `work`, stopping its control [`STOP_AFTER`] in; it must end `stopped` within
/// [`STOPS_WITHIN`] of the stop (or have finished before it, on a fast device).
fn stops_promptly<T>(what: &str, work: impl FnOnce(&Control) -> Result<T, JobError>) {
    let ctl = Control::default();
    let started = Instant::now();
    let (result, took) = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(STOP_AFTER);
            ctl.stop(StopReason::TimedOut);
        });
        let result = work(&ctl);
        (result, started.elapsed())
    });
    match result {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::Stopped, "{what}: {e}");
            assert!(
                took < STOP_AFTER + STOPS_WITHIN,
                "{what}: stopped only {took:?} after it began"
            );
            println!("{what}: stopped {:?} after the stop", took - STOP_AFTER);
        }
        Ok(_) => assert!(
            took < STOP_AFTER,
            "{what}: ran to the end ({took:?}) though stopped after {STOP_AFTER:?}"
        ),
    }
}

#[test]
fn a_long_knn_inference_returns_stopped_soon_after_its_control_is_stopped() {
    // 16,384 queries × 8,192 references × 32 features: about ten seconds on lavapipe.
    let model = trained(Algorithm::Knn, table(8192, 32, 1, true), json!({"k": 5}));
    let queries = table(16_384, 32, 2, false);
    stops_promptly("knn inference", |ctl| {
        model.infer(gpu(), &queries, false, ctl)
    });
}

#[test]
fn a_long_nearest_neighbour_anomaly_scoring_returns_stopped_soon_after_its_control_is_stopped() {
    let model = trained(
        Algorithm::Anomaly,
        table(8192, 32, 3, false),
        json!({"method": "nearest_neighbor_mahalanobis"}),
    );
    let queries = table(16_384, 32, 4, false);
    stops_promptly("anomaly scoring", |ctl| {
        model.infer(gpu(), &queries, false, ctl)
    });
}

#[test]
fn a_long_anomaly_training_returns_stopped_soon_after_its_control_is_stopped() {
    // The eigendecomposition of a 384 × 384 covariance: tens of seconds in a debug build.
    let samples = table(400, 384, 5, false);
    let params = TrainParams::parse(
        Algorithm::Anomaly,
        &json!({"method": "nearest_neighbor_mahalanobis"}),
    )
    .unwrap();
    stops_promptly("anomaly training", |ctl| {
        algorithms::train(gpu(), samples, &params, ctl)
    });
}

#[test]
fn every_model_and_host_training_refuses_to_start_under_a_stopped_control() {
    let ctl = Control::default();
    ctl.request_stop();
    let small = || table(64, 4, 6, true);
    let models = [
        trained(Algorithm::Logreg, small(), json!({"epochs": 1})),
        trained(Algorithm::Mlp, small(), json!({"hidden": [4], "epochs": 1})),
        trained(Algorithm::Kmeans, small(), json!({"k": 2})),
        trained(Algorithm::Knn, small(), json!({"k": 3})),
        trained(
            Algorithm::Anomaly,
            small(),
            json!({"method": "nearest_neighbor_mahalanobis"}),
        ),
        trained(Algorithm::Anomaly, small(), json!({"method": "zscore"})),
    ];
    let probe = table(8, 4, 7, false);
    for (i, model) in models.iter().enumerate() {
        let e = model.infer(gpu(), &probe, true, &ctl).err();
        assert_eq!(e.map(|e| e.code), Some(ErrorCode::Stopped), "model {i}");
    }
    for algorithm in [Algorithm::Knn, Algorithm::Anomaly] {
        let params = TrainParams::parse(algorithm, &json!({})).unwrap();
        let e = algorithms::train(gpu(), small(), &params, &ctl).err();
        assert_eq!(e.map(|e| e.code), Some(ErrorCode::Stopped), "{algorithm:?}");
    }
}
