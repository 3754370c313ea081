//! Fleet training and scoring, in process: per-user keystroke detectors (scaled Manhattan, the
//! best of Killourhy & Maxion's table) for many users at once, beside a plain single-threaded CPU
//! implementation of the same arithmetic, measured in the same run, as a ratio.
//!
//! Data: [`gpuq_worker::synthetic`]'s keystroke-like timings (31 features, seeded), generated
//! here, not committed.
//!
//! `cargo run --release -p gpuq-worker --example fleet_bench [USERS ROWS]...`
//! (default: 100000 20 10000 200). `GPUQ_FLEET_METHOD` picks the detector
//! (`scaled_manhattan`).

use gpuq_shared::Algorithm;
use gpuq_shared::dataset::{Groups, Matrix, Table};
use gpuq_shared::params::TrainParams;
use gpuq_worker::algorithms::{self, Control, LoadedModel};
use gpuq_worker::gpu::Gpu;
use gpuq_worker::synthetic::{FEATURES, Rng, Users};
use serde_json::json;
use std::time::Instant;

/// The plain CPU version of the training: per user, the mean and mean absolute deviation of
/// each feature, in f64, over rows stored user after user.
fn cpu_train(x: &[f32], users: usize, rows: usize) -> (Vec<f32>, Vec<f32>) {
    let mut mean = vec![0f32; users * FEATURES];
    let mut scale = vec![0f32; users * FEATURES];
    for u in 0..users {
        let block = &x[u * rows * FEATURES..(u + 1) * rows * FEATURES];
        for f in 0..FEATURES {
            let m = block.chunks(FEATURES).map(|r| r[f] as f64).sum::<f64>() / rows as f64;
            let a = block
                .chunks(FEATURES)
                .map(|r| (r[f] as f64 - m).abs())
                .sum::<f64>()
                / rows as f64;
            mean[u * FEATURES + f] = m as f32;
            scale[u * FEATURES + f] = if a > 0.0 { a as f32 } else { 1.0 };
        }
    }
    (mean, scale)
}

/// The plain CPU version of scoring: each row against its user's detector.
fn cpu_scores(x: &[f32], users: &[u32], mean: &[f32], scale: &[f32]) -> Vec<f32> {
    x.chunks(FEATURES)
        .zip(users)
        .map(|(row, &u)| {
            let base = u as usize * FEATURES;
            row.iter()
                .enumerate()
                .map(|(f, v)| (v - mean[base + f]).abs() / scale[base + f])
                .sum()
        })
        .collect()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let shapes: Vec<(usize, usize)> = if args.len() >= 2 {
        args.chunks_exact(2).map(|c| (c[0], c[1])).collect()
    } else {
        vec![(100_000, 20), (10_000, 200)]
    };
    let method = std::env::var("GPUQ_FLEET_METHOD").unwrap_or_else(|_| "scaled_manhattan".into());
    let gpu = Gpu::new().expect("a Vulkan device");
    println!("device: {} ({:?})", gpu.info.name, gpu.info.device_type);
    println!(
        "| users × rows | gpuq fleet training | rows/s | CPU loop | ratio | artifact | scoring 1M rows (gpuq / CPU) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (n_users, rows) in shapes {
        let mut rng = Rng(0x5eed ^ n_users as u64);
        let users = Users::new(n_users, &mut rng);
        let mut x = Vec::with_capacity(n_users * rows * FEATURES);
        let mut groups = Groups::default();
        for u in 0..n_users {
            let name = format!("user{u}");
            for _ in 0..rows {
                users.row(u, &mut rng, &mut x);
                groups.push(&name);
            }
        }
        let table = Table {
            features: Matrix {
                rows: n_users * rows,
                cols: FEATURES,
                data: x.clone(),
                columns: (0..FEATURES).map(|f| format!("t{f}")).collect(),
            },
            labels: None,
            groups: Some(groups),
        };
        let params = TrainParams::parse(
            Algorithm::Anomaly,
            &json!({"method": method, "group_column": "user"}),
        )
        .unwrap();
        let ctl = Control::default();
        let t = Instant::now();
        let trained = algorithms::train_fleet(table, &params, None, &ctl).unwrap();
        let gpuq_train = t.elapsed();
        let t = Instant::now();
        let (mean, scale) = cpu_train(&x, n_users, rows);
        let cpu_train_time = t.elapsed();
        drop(x);
        let model = LoadedModel::load(&gpu, &trained.artifact).unwrap();
        let LoadedModel::AnomalyFleet(fleet) = &model else {
            panic!("a fleet")
        };
        // Scoring: a million logins, each by a user drawn uniformly, half genuine, half typed by
        // another user.
        let n = 1_000_000;
        let mut q = Vec::with_capacity(n * FEATURES);
        let mut who = Vec::with_capacity(n);
        for i in 0..n {
            let u = rng.below(n_users) as u32;
            let typist = if i % 2 == 0 {
                u as usize
            } else {
                rng.below(n_users)
            };
            users.row(typist, &mut rng, &mut q);
            who.push(u);
        }
        let slots: Vec<u32> = who
            .iter()
            .map(|u| fleet.slot(&format!("user{u}")).unwrap())
            .collect();
        let t = Instant::now();
        let ours = fleet.scores(&gpu, &q, &slots, &ctl).unwrap();
        let gpuq_score = t.elapsed();
        let t = Instant::now();
        let theirs = cpu_scores(&q, &who, &mean, &scale);
        let cpu_score = t.elapsed();
        if method == "scaled_manhattan" {
            let worst = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| ((a - b) / b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "gpuq and the CPU loop disagree by {worst}");
        }
        let total_rows = (n_users * rows) as f64;
        println!(
            "| {n_users} × {rows} | {:.2} s | {:.2} M | {:.2} s | {:.2} | {:.1} MB (device {:.1} MB) | {:.3} s / {:.3} s | {:.2} |",
            gpuq_train.as_secs_f64(),
            total_rows / gpuq_train.as_secs_f64() / 1e6,
            cpu_train_time.as_secs_f64(),
            cpu_train_time.as_secs_f64() / gpuq_train.as_secs_f64(),
            trained.artifact.len() as f64 / 1e6,
            model.bytes() as f64 / 1e6,
            gpuq_score.as_secs_f64(),
            cpu_score.as_secs_f64(),
            cpu_score.as_secs_f64() / gpuq_score.as_secs_f64(),
        );
    }
}
