//! MLP training throughput (samples/s) on a 64-feature, 10-class problem: gpuq's GPU training
//! (`algorithms::mlp`) beside a straightforward CPU implementation of the same network and
//! optimiser (Adam, mini-batches, ReLU) on `matrixmultiply`'s sgemm, measured in the same run.
//! `cargo run --release -p gpuq-worker --example mlp_bench [ROWS] [EPOCHS]` (default 20000 5).

use gpuq_shared::Algorithm;
use gpuq_shared::dataset::{Matrix, Table};
use gpuq_shared::params::TrainParams;
use gpuq_worker::algorithms::{self, Control};
use gpuq_worker::gpu::Gpu;
use serde_json::json;
use std::time::Instant;

const FEATURES: usize = 64;
const CLASSES: usize = 10;
const HIDDEN: usize = 64;
const BATCH: usize = 200;

/// Ten Gaussian blobs in 64 dimensions (a seeded LCG; no data files needed).
fn data(rows: usize) -> (Vec<f32>, Vec<u32>) {
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let centres: Vec<f32> = (0..CLASSES * FEATURES).map(|_| next() * 2.0).collect();
    let mut x = Vec::with_capacity(rows * FEATURES);
    let mut y = Vec::with_capacity(rows);
    for i in 0..rows {
        let c = i % CLASSES;
        y.push(c as u32);
        for j in 0..FEATURES {
            x.push(centres[c * FEATURES + j] + next());
        }
    }
    (x, y)
}

#[allow(clippy::too_many_arguments)]
fn sgemm(m: usize, n: usize, k: usize, a: &[f32], at: bool, b: &[f32], bt: bool, c: &mut [f32]) {
    let (rsa, csa) = if at { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if bt { (1, k as isize) } else { (n as isize, 1) };
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(len: usize) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }
    fn step(&mut self, w: &mut [f32], g: &[f32], lr: f32, l2: f32, t: i32) {
        let (c1, c2) = (1.0 - 0.9f32.powi(t), 1.0 - 0.999f32.powi(t));
        for i in 0..w.len() {
            let grad = g[i] + l2 * w[i];
            self.m[i] = 0.9 * self.m[i] + 0.1 * grad;
            self.v[i] = 0.999 * self.v[i] + 0.001 * grad * grad;
            w[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + 1e-8);
        }
    }
}

/// One-hidden-layer MLP, the same maths as the GPU path; returns samples per second.
fn cpu_train(x: &[f32], y: &[u32], epochs: usize) -> f64 {
    let n = y.len();
    let mut w1: Vec<f32> = (0..HIDDEN * FEATURES)
        .map(|i| ((i * 7919) % 1000) as f32 / 5000.0 - 0.1)
        .collect();
    let mut b1 = vec![0f32; HIDDEN];
    let mut w2: Vec<f32> = (0..CLASSES * HIDDEN)
        .map(|i| ((i * 104729) % 1000) as f32 / 5000.0 - 0.1)
        .collect();
    let mut b2 = vec![0f32; CLASSES];
    let (mut o_w1, mut o_b1, mut o_w2, mut o_b2) = (
        Adam::new(w1.len()),
        Adam::new(HIDDEN),
        Adam::new(w2.len()),
        Adam::new(CLASSES),
    );
    let (mut h, mut z) = (vec![0f32; BATCH * HIDDEN], vec![0f32; BATCH * CLASSES]);
    let (mut dw1, mut dw2, mut dh) = (
        vec![0f32; w1.len()],
        vec![0f32; w2.len()],
        vec![0f32; BATCH * HIDDEN],
    );
    let mut t = 0;
    let start = Instant::now();
    for _ in 0..epochs {
        for off in (0..n).step_by(BATCH) {
            let rows = BATCH.min(n - off);
            let xb = &x[off * FEATURES..(off + rows) * FEATURES];
            t += 1;
            sgemm(
                rows,
                HIDDEN,
                FEATURES,
                xb,
                false,
                &w1,
                true,
                &mut h[..rows * HIDDEN],
            );
            for r in 0..rows {
                for j in 0..HIDDEN {
                    h[r * HIDDEN + j] = (h[r * HIDDEN + j] + b1[j]).max(0.0);
                }
            }
            sgemm(
                rows,
                CLASSES,
                HIDDEN,
                &h[..rows * HIDDEN],
                false,
                &w2,
                true,
                &mut z[..rows * CLASSES],
            );
            for r in 0..rows {
                let row = &mut z[r * CLASSES..(r + 1) * CLASSES];
                let mut max = f32::MIN;
                for (j, v) in row.iter_mut().enumerate() {
                    *v += b2[j];
                    max = max.max(*v);
                }
                let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
                for (j, v) in row.iter_mut().enumerate() {
                    let p = (*v - max).exp() / sum;
                    *v = (p - if j as u32 == y[off + r] { 1.0 } else { 0.0 }) / rows as f32;
                }
            }
            let dz = &z[..rows * CLASSES];
            sgemm(
                CLASSES,
                HIDDEN,
                rows,
                dz,
                true,
                &h[..rows * HIDDEN],
                false,
                &mut dw2,
            );
            let db2: Vec<f32> = (0..CLASSES)
                .map(|j| (0..rows).map(|r| dz[r * CLASSES + j]).sum())
                .collect();
            sgemm(
                rows,
                HIDDEN,
                CLASSES,
                dz,
                false,
                &w2,
                false,
                &mut dh[..rows * HIDDEN],
            );
            for i in 0..rows * HIDDEN {
                if h[i] <= 0.0 {
                    dh[i] = 0.0;
                }
            }
            sgemm(
                HIDDEN,
                FEATURES,
                rows,
                &dh[..rows * HIDDEN],
                true,
                xb,
                false,
                &mut dw1,
            );
            let db1: Vec<f32> = (0..HIDDEN)
                .map(|j| (0..rows).map(|r| dh[r * HIDDEN + j]).sum())
                .collect();
            o_w1.step(&mut w1, &dw1, 1e-3, 1e-4, t);
            o_b1.step(&mut b1, &db1, 1e-3, 0.0, t);
            o_w2.step(&mut w2, &dw2, 1e-3, 1e-4, t);
            o_b2.step(&mut b2, &db2, 1e-3, 0.0, t);
        }
    }
    (n * epochs) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rows = args.first().copied().unwrap_or(20_000);
    let epochs = args.get(1).copied().unwrap_or(5);
    let gpu = Gpu::new().expect("a Vulkan device");
    println!("device: {} ({:?})", gpu.info.name, gpu.info.device_type);
    let (x, y) = data(rows);
    let table = || Table {
        features: Matrix {
            rows,
            cols: FEATURES,
            data: x.clone(),
            columns: (0..FEATURES).map(|j| format!("f{j}")).collect(),
        },
        labels: Some(y.iter().map(|&v| v as f32).collect()),
        groups: None,
    };
    let params = |epochs: usize| {
        TrainParams::parse(
            Algorithm::Mlp,
            &json!({"hidden": [HIDDEN], "epochs": epochs, "batch_size": BATCH, "patience": 100000}),
        )
        .unwrap()
    };
    // Warm-up (pipeline compilation), then the timed run.
    algorithms::train(&gpu, table(), &params(1), &Control::default()).unwrap();
    let start = Instant::now();
    let t = algorithms::train(&gpu, table(), &params(epochs), &Control::default()).unwrap();
    let gpu_rate = (rows * epochs) as f64 / start.elapsed().as_secs_f64();
    let cpu_rate = cpu_train(&x, &y, epochs);
    println!(
        "mlp 64-{HIDDEN}-10, batch {BATCH}, {rows} rows × {epochs} epochs (train accuracy {:.3})",
        t.metrics["train_accuracy"].as_f64().unwrap_or(0.0)
    );
    println!(
        "{:>22} {:>14} {:>8}",
        "GPU samples/s", "CPU samples/s", "ratio"
    );
    println!(
        "{gpu_rate:>22.0} {cpu_rate:>14.0} {:>8.2}",
        gpu_rate / cpu_rate
    );
}
