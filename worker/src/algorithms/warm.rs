//! Warming the device before the first job. Mesa's lavapipe (llvmpipe) compiles a compute
//! shader for the CPU when it is first dispatched, not when its pipeline is created, and on a
//! machine whose shader cache is empty that took two minutes for a first training job. So a
//! worker, before it takes any message, trains every algorithm once on a few rows and runs each
//! model's inference, dispatching every kernel a job can reach; the driver keeps what it
//! compiled in its on-disk cache (`~/.cache/mesa_shader_cache_db`), so the next worker start on
//! the machine takes a second or two.

use super::{Control, LoadedModel, Scope, train, train_fleet};
use crate::gpu::Gpu;
use gpuq_shared::dataset;
use gpuq_shared::params::TrainParams;
use gpuq_shared::{Algorithm, JobError};
use serde_json::json;
use std::time::{Duration, Instant};

/// Trains and runs every algorithm on a tiny table; returns how long each step took.
pub fn warm_up(gpu: &Gpu) -> Result<Vec<(String, Duration)>, JobError> {
    let rows: Vec<Vec<f64>> = (0..16)
        .map(|i| vec![(i % 4) as f64, (i / 4) as f64, (i % 3) as f64])
        .collect();
    let labels: Vec<f64> = (0..16).map(|i| (i % 2) as f64).collect();
    let ctl = Control::default();
    let runs = [
        (Algorithm::Logreg, json!({"epochs": 1})),
        (
            Algorithm::Mlp,
            json!({"epochs": 1, "hidden": [4], "optimizer": "adam"}),
        ),
        (
            Algorithm::Mlp,
            json!({"epochs": 1, "hidden": [4], "optimizer": "sgd", "momentum": 0.0}),
        ),
        (
            Algorithm::Mlp,
            json!({"epochs": 1, "hidden": [4], "optimizer": "sgd", "momentum": 0.9}),
        ),
        (
            Algorithm::Kmeans,
            json!({"k": 2, "n_init": 1, "max_iter": 2}),
        ),
        (Algorithm::Knn, json!({"k": 1})),
        (Algorithm::Anomaly, json!({})),
    ];
    let mut took = Vec::new();
    for (algorithm, params) in runs {
        let started = Instant::now();
        let params = TrainParams::parse(algorithm, &params)
            .map_err(|e| JobError::invalid_input(format!("warm-up params: {e:?}")))?;
        let table = dataset::from_rows(&rows, Some(&labels))?;
        let trained = train(gpu, table, &params, &ctl)?;
        let model = LoadedModel::load(gpu, &trained.artifact)?;
        let table = dataset::from_rows(&rows, Some(&labels))?;
        model.infer(gpu, &table, true, &ctl)?;
        let tables = [(&table, Scope::Whole), (&table, Scope::Whole)];
        for inference in model.infer_many(gpu, &tables, &ctl) {
            inference?;
        }
        took.push((
            format!("{algorithm} {params:?}").chars().take(40).collect(),
            started.elapsed(),
        ));
    }
    // Fleets: each anomaly scoring kernel, and a classifier fleet's training step and forward
    // pass (one pipeline each, whatever the algorithm or optimiser), for two groups of eight rows.
    let fleets = [
        ("scaled_manhattan", Algorithm::Anomaly),
        ("mahalanobis", Algorithm::Anomaly),
        ("nearest_neighbor_mahalanobis", Algorithm::Anomaly),
        ("adam", Algorithm::Mlp),
    ];
    for (variant, algorithm) in fleets {
        let started = Instant::now();
        let (params, labels) = match algorithm {
            Algorithm::Anomaly => (json!({"method": variant, "group_column": "g"}), None),
            _ => (
                json!({"epochs": 1, "hidden": [4], "group_column": "g"}),
                Some(&labels[..]),
            ),
        };
        let params = TrainParams::parse(algorithm, &params)
            .map_err(|e| JobError::invalid_input(format!("warm-up params: {e:?}")))?;
        let mut table = dataset::from_rows(&rows, labels)?;
        let mut groups = dataset::Groups::default();
        for i in 0..rows.len() {
            groups.push(if i < 8 { "a" } else { "b" });
        }
        table.groups = Some(groups);
        let trained = train_fleet(gpu, table.clone(), &params, None, &ctl)?;
        let model = LoadedModel::load(gpu, &trained.artifact)?;
        let tables = [(&table, Scope::Member(0)), (&table, Scope::Member(1))];
        for inference in model.infer_many(gpu, &tables, &ctl) {
            inference?;
        }
        took.push((format!("{algorithm} fleet, {variant}"), started.elapsed()));
    }
    Ok(took)
}
