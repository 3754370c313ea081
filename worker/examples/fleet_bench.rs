//! Fleet training and scoring, in process: per-user keystroke detectors (scaled Manhattan, the
//! best of Killourhy & Maxion's table) for many users at once, beside a plain single-threaded CPU
//! implementation of the same arithmetic, measured in the same run, as a ratio.
//!
//! Data: [`gpuq_worker::synthetic`]'s keystroke-like timings (31 features, seeded), generated
//! here, not committed.
//!
//! Then fleets of classifiers (logistic regression, and an MLP with one hidden layer of 16 and
//! Adam) on the same users, each row labelled genuine (1) or typed by another user (0), for
//! `GPUQ_FLEET_EPOCHS` epochs (default 10, no early stopping), beside a plain single-threaded
//! CPU loop of the same mini-batch training.
//!
//! `cargo run --release -p gpuq-worker --example fleet_bench [USERS ROWS]...`
//! (default: 100000 20 10000 200). `GPUQ_FLEET_METHOD` picks the detector
//! (`scaled_manhattan`); `GPUQ_FLEET_ONLY=anomaly|classifiers` runs one half.

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
    let only = std::env::var("GPUQ_FLEET_ONLY").unwrap_or_default();
    let gpu = Gpu::new().expect("a Vulkan device");
    println!("device: {} ({:?})", gpu.info.name, gpu.info.device_type);
    if only != "classifiers" {
        anomaly_fleets(&gpu, &shapes, &method);
    }
    if only != "anomaly" {
        classifier_fleets(&gpu, &shapes);
    }
}

fn anomaly_fleets(gpu: &Gpu, shapes: &[(usize, usize)], method: &str) {
    println!(
        "| users × rows | gpuq fleet training | rows/s | CPU loop | ratio | artifact | scoring 1M rows (gpuq / CPU) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &(n_users, rows) in shapes {
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
        let trained = algorithms::train_fleet(gpu, table, &params, None, &ctl).unwrap();
        let gpuq_train = t.elapsed();
        let t = Instant::now();
        let (mean, scale) = cpu_train(&x, n_users, rows);
        let cpu_train_time = t.elapsed();
        drop(x);
        let model = LoadedModel::load(gpu, &trained.artifact).unwrap();
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
        let ours = fleet.scores(gpu, &q, &slots, &ctl).unwrap();
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

/// A plain single-threaded CPU version of the fleet's classifier training: per user,
/// standardised features, the same mini-batches and layer widths, softmax cross-entropy, SGD
/// (logistic regression) or Adam (MLP), f32 throughout.
fn cpu_classifiers(
    x: &[f32],
    y: &[u32],
    users: usize,
    rows: usize,
    hidden: &[usize],
    epochs: u32,
    batch: usize,
) -> f64 {
    let f = FEATURES;
    let mut dims = vec![f];
    dims.extend(hidden);
    dims.push(2);
    let adam = !hidden.is_empty();
    let mut checksum = 0f64;
    for u in 0..users {
        let mut xs = x[u * rows * f..(u + 1) * rows * f].to_vec();
        let ys = &y[u * rows..(u + 1) * rows];
        for j in 0..f {
            let m = xs.chunks(f).map(|r| r[j] as f64).sum::<f64>() / rows as f64;
            let v = xs.chunks(f).map(|r| (r[j] as f64 - m).powi(2)).sum::<f64>() / rows as f64;
            let s = if v.sqrt() > 1e-8 { v.sqrt() } else { 1.0 };
            for r in xs.chunks_mut(f) {
                r[j] = ((r[j] as f64 - m) / s) as f32;
            }
        }
        let mut rng = Rng(u as u64);
        let mut w: Vec<Vec<f32>> = dims
            .windows(2)
            .map(|d| {
                let bound = (6.0 / (d[0] + d[1]) as f64).sqrt();
                (0..d[0] * d[1] + d[1])
                    .map(|_| {
                        if adam {
                            ((rng.uniform() * 2.0 - 1.0) * bound) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect();
        let mut m: Vec<Vec<f32>> = w.iter().map(|l| vec![0.0; l.len()]).collect();
        let mut v = m.clone();
        let mut grads = m.clone();
        let mut t = 0;
        let widest = *dims.iter().max().unwrap();
        let mut acts: Vec<Vec<f32>> = dims.iter().map(|_| vec![0f32; batch * widest]).collect();
        let mut deltas = acts.clone();
        for _ in 0..epochs {
            for start in (0..rows).step_by(batch) {
                let b = batch.min(rows - start);
                t += 1;
                for r in 0..b {
                    acts[0][r * f..(r + 1) * f]
                        .copy_from_slice(&xs[(start + r) * f..(start + r + 1) * f]);
                }
                for l in 0..dims.len() - 1 {
                    let (i, o) = (dims[l], dims[l + 1]);
                    let (lo, hi) = acts.split_at_mut(l + 1);
                    for r in 0..b {
                        for k in 0..o {
                            let mut acc = w[l][i * o + k];
                            for j in 0..i {
                                acc += lo[l][r * i + j] * w[l][k * i + j];
                            }
                            hi[0][r * o + k] = if l + 2 < dims.len() {
                                acc.max(0.0)
                            } else {
                                acc
                            };
                        }
                    }
                }
                let last = dims.len() - 1;
                for r in 0..b {
                    let z = &acts[last][r * 2..r * 2 + 2];
                    let mx = z[0].max(z[1]);
                    let s = (z[0] - mx).exp() + (z[1] - mx).exp();
                    for k in 0..2 {
                        let p = (z[k] - mx).exp() / s;
                        deltas[last][r * 2 + k] =
                            (p - (ys[start + r] as usize == k) as u32 as f32) / b as f32;
                    }
                }
                for l in (0..last).rev() {
                    let (i, o) = (dims[l], dims[l + 1]);
                    let g = &mut grads[l];
                    g.iter_mut().for_each(|v| *v = 0.0);
                    for r in 0..b {
                        for k in 0..o {
                            let d = deltas[l + 1][r * o + k];
                            for j in 0..i {
                                g[k * i + j] += d * acts[l][r * i + j];
                            }
                            g[i * o + k] += d;
                        }
                    }
                    if l > 0 {
                        for r in 0..b {
                            for j in 0..i {
                                let mut acc = 0.0;
                                for k in 0..o {
                                    acc += deltas[l + 1][r * o + k] * w[l][k * i + j];
                                }
                                deltas[l][r * i + j] =
                                    if acts[l][r * i + j] > 0.0 { acc } else { 0.0 };
                            }
                        }
                    }
                    let (c1, c2) = (1.0 - 0.9f32.powi(t), 1.0 - 0.999f32.powi(t));
                    for (n, p) in w[l].iter_mut().enumerate() {
                        let grad = g[n] + if n < i * o { 1e-4 * *p } else { 0.0 };
                        if adam {
                            m[l][n] = 0.9 * m[l][n] + 0.1 * grad;
                            v[l][n] = 0.999 * v[l][n] + 0.001 * grad * grad;
                            *p -= 1e-3 * (m[l][n] / c1) / ((v[l][n] / c2).sqrt() + 1e-8);
                        } else {
                            *p -= 0.1 * grad;
                        }
                    }
                }
            }
        }
        checksum += w[0][0] as f64;
    }
    checksum
}

/// Users trained one at a time to estimate the one-model-per-job path.
const ALONE_SAMPLE: usize = 50;

fn classifier_fleets(gpu: &Gpu, shapes: &[(usize, usize)]) {
    let epochs: u32 = std::env::var("GPUQ_FLEET_EPOCHS")
        .ok()
        .and_then(|e| e.parse().ok())
        .unwrap_or(10);
    println!();
    println!("classifier fleets, {epochs} epochs each (no early stopping):");
    println!(
        "| model | users × rows | gpuq fleet training | rows × epochs / s | CPU loop | ratio | \
         each model alone on the device (from {ALONE_SAMPLE} users) | ratio | artifact |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &(n_users, rows) in shapes {
        let mut rng = Rng(0xc1a55 ^ n_users as u64);
        let users = Users::new(n_users, &mut rng);
        let mut x = Vec::with_capacity(n_users * rows * FEATURES);
        let mut y = Vec::with_capacity(n_users * rows);
        let mut groups = Groups::default();
        for u in 0..n_users {
            let name = format!("user{u}");
            for i in 0..rows {
                let genuine = i % 2 == 0;
                let typist = if genuine {
                    u
                } else {
                    (u + 1 + rng.below(n_users - 1)) % n_users
                };
                users.row(typist, &mut rng, &mut x);
                y.push(genuine as u32);
                groups.push(&name);
            }
        }
        for (name, algorithm, params, hidden, batch) in [
            (
                "logreg",
                Algorithm::Logreg,
                json!({"batch_size": 32}),
                vec![],
                32,
            ),
            (
                "mlp [16] adam",
                Algorithm::Mlp,
                json!({"hidden": [16], "batch_size": 200, "patience": 100000}),
                vec![16],
                200,
            ),
        ] {
            let mut params = params;
            params["epochs"] = json!(epochs);
            params["group_column"] = json!("user");
            let table = Table {
                features: Matrix {
                    rows: n_users * rows,
                    cols: FEATURES,
                    data: x.clone(),
                    columns: (0..FEATURES).map(|f| format!("t{f}")).collect(),
                },
                labels: Some(y.iter().map(|&v| v as f32).collect()),
                groups: Some(groups.clone()),
            };
            let params = TrainParams::parse(algorithm, &params).unwrap();
            let ctl = Control::default();
            let t = Instant::now();
            let trained = algorithms::train_fleet(gpu, table, &params, None, &ctl).unwrap();
            let gpuq = t.elapsed().as_secs_f64();
            assert_eq!(trained.metrics["trained_groups"], n_users);
            let t = Instant::now();
            let check = cpu_classifiers(&x, &y, n_users, rows, &hidden, epochs, batch.min(rows));
            let cpu = t.elapsed().as_secs_f64();
            assert!(check.is_finite());
            // Today's path for the same work: one training per user, one after another on the
            // same device; timed for the first users and scaled to all of them.
            let mut alone_params = params.to_json();
            alone_params.as_object_mut().unwrap().remove("group_column");
            let alone_params = TrainParams::parse(algorithm, &alone_params).unwrap();
            let sample = ALONE_SAMPLE.min(n_users);
            let mut t = Instant::now();
            // User 0 trains first untimed: the driver compiles the kernels on first use.
            for u in 0..=sample {
                if u == 1 {
                    t = Instant::now();
                }
                let table = Table {
                    features: Matrix {
                        rows,
                        cols: FEATURES,
                        data: x[u * rows * FEATURES..(u + 1) * rows * FEATURES].to_vec(),
                        columns: (0..FEATURES).map(|f| format!("t{f}")).collect(),
                    },
                    labels: Some(
                        y[u * rows..(u + 1) * rows]
                            .iter()
                            .map(|&v| v as f32)
                            .collect(),
                    ),
                    groups: None,
                };
                algorithms::train(gpu, table, &alone_params, &ctl).unwrap();
            }
            let alone = t.elapsed().as_secs_f64() * n_users as f64 / sample as f64;
            let work = (n_users * rows) as f64 * epochs as f64;
            println!(
                "| {name} | {n_users} × {rows} | {gpuq:.2} s | {:.2} M | {cpu:.2} s | {:.2} | {alone:.0} s | {:.0} | {:.1} MB |",
                work / gpuq / 1e6,
                cpu / gpuq,
                alone / gpuq,
                trained.artifact.len() as f64 / 1e6,
            );
        }
    }
}
