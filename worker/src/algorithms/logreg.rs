//! Multinomial logistic regression on the GPU: mini-batch SGD with L2 on standardised
//! features. The standardisation is folded into the saved weights, so the artifact is a plain
//! `Linear(features, classes)` on raw inputs that `torch.nn.Sequential(Linear)` loads as is.

use super::classifier::{ClassifierModel, Dense, Evaluator, GpuDense, training_metrics};
use super::features::{labelled, standardise, upload_rows};
use super::{Control, Trained, check_bindings, gpu_lost};
use crate::gpu::Gpu;
use crate::gpu::gemm::GemmParams;
use crate::gpu::kernels::{
    Activation, BiasParams, Kernel, SoftmaxMode, SoftmaxParams, UpdateParams,
};
use gpuq_shared::dataset::Table;
use gpuq_shared::params::LogregParams;
use gpuq_shared::{Algorithm, ErrorCode, JobError};
use rand::SeedableRng;
use rand::seq::SliceRandom;

pub fn train(
    gpu: &Gpu,
    table: Table,
    p: &LogregParams,
    ctl: &Control,
) -> Result<Trained, JobError> {
    let (mut x, classes, y) = labelled(table)?;
    let (n, f, k) = (x.rows, x.cols, classes.len());
    check_bindings(
        gpu,
        &[
            ("the training matrix", n * f),
            ("the weights", k * f),
            ("the batch logits", k * p.batch_size as usize),
        ],
    )?;
    let (mean, std) = standardise(&mut x);

    // Shuffle the rows once (seeded); each epoch then visits the batches in a fresh order.
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    let x_buf = upload_rows(gpu, &x, &perm);
    let columns = std::mem::take(&mut x.columns);
    drop(x);
    let y_perm: Vec<u32> = perm.iter().map(|&i| y[i]).collect();
    let y_buf = gpu.upload("labels", &y_perm);

    let batch = (p.batch_size as usize).min(n);
    let w = gpu.zeros("weight", k * f);
    let b = gpu.zeros("bias", k);
    let logits = gpu.zeros("logits", batch * k);
    let dw = gpu.zeros("dweight", k * f);
    let db = gpu.zeros("dbias", k);
    let loss = gpu.zeros("loss", n);
    let correct = gpu.zeros("correct", n);

    let (gemm, colsum, softmax, sgd) = (
        Kernel::gemm(gpu),
        Kernel::column_sum(gpu),
        Kernel::softmax(gpu),
        Kernel::sgd(gpu),
    );
    let u_fwd = gpu.uniform(&GemmParams::default());
    let u_bias = gpu.uniform(&BiasParams::default());
    let u_soft = gpu.uniform(&SoftmaxParams::default());
    let u_bwd = gpu.uniform(&GemmParams::default());
    let sgd_w = UpdateParams::sgd(k * f, p.learning_rate as f32, p.l2 as f32);
    let sgd_b = UpdateParams::sgd(k, p.learning_rate as f32, 0.0);
    let (u_sgd_w, u_sgd_b) = (gpu.uniform(&sgd_w), gpu.uniform(&sgd_b));
    let g_fwd = gemm.bind(gpu, &[&x_buf, &w, &logits, &u_fwd, &b]);
    let g_soft = softmax.bind(gpu, &[&logits, &y_buf, &loss, &correct, &u_soft]);
    let g_bwd = gemm.bind(gpu, &[&logits, &x_buf, &dw, &u_bwd, &b]);
    let g_colsum = colsum.bind(gpu, &[&logits, &db, &u_bias]);
    let g_sgd_w = sgd.bind(gpu, &[&w, &dw, &u_sgd_w]);
    let g_sgd_b = sgd.bind(gpu, &[&b, &db, &u_sgd_b]);
    let (sgd_w_groups, sgd_b_groups) = (sgd_w.groups(), sgd_b.groups());

    let mut order: Vec<usize> = (0..n.div_ceil(batch)).collect();
    let mut last_loss = f64::NAN;
    let mut last_report = std::time::Instant::now();
    for epoch in 0..p.epochs {
        order.shuffle(&mut rng);
        for (step, &bi) in order.iter().enumerate() {
            // Submission is asynchronous: wait for the device now and then so the queue never
            // runs far ahead of the GPU, and a cancel takes effect within a few batches.
            if step % 16 == 15 {
                gpu.wait();
            }
            ctl.check()?;
            let off = bi * batch;
            let rows = batch.min(n - off);
            // logits = Xb · Wᵀ + b, then the softmax gradient in place.
            let fwd = GemmParams {
                a_off: (off * f) as u32,
                ..GemmParams::new(rows, k, f, false, true)
            }
            .with_epilogue(true, Activation::Identity);
            let bias = BiasParams::new(rows, k, Activation::Identity);
            let soft = SoftmaxParams::new(rows, k, off, SoftmaxMode::Gradient);
            // dW = Gᵀ · Xb, db = column sums of G.
            let bwd = GemmParams {
                b_off: (off * f) as u32,
                ..GemmParams::new(k, f, rows, true, false)
            };
            gpu.queue.write_buffer(&u_fwd, 0, bytemuck::bytes_of(&fwd));
            gpu.queue
                .write_buffer(&u_bias, 0, bytemuck::bytes_of(&bias));
            gpu.queue
                .write_buffer(&u_soft, 0, bytemuck::bytes_of(&soft));
            gpu.queue.write_buffer(&u_bwd, 0, bytemuck::bytes_of(&bwd));
            let mut enc = gpu.encoder();
            gemm.encode(&mut enc, &g_fwd, fwd.groups());
            softmax.encode(&mut enc, &g_soft, soft.groups());
            gemm.encode(&mut enc, &g_bwd, bwd.groups());
            colsum.encode(&mut enc, &g_colsum, bias.column_sum_groups());
            sgd.encode(&mut enc, &g_sgd_w, sgd_w_groups);
            sgd.encode(&mut enc, &g_sgd_b, sgd_b_groups);
            gpu.submit(enc);
        }
        gpu.wait();
        let last = epoch + 1 == p.epochs;
        if last || last_report.elapsed() >= std::time::Duration::from_millis(500) {
            last_report = std::time::Instant::now();
            let losses = gpu.read(&loss, n).map_err(gpu_lost)?;
            last_loss = losses.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            if !last_loss.is_finite() {
                return Err(JobError::new(
                    ErrorCode::Diverged,
                    format!(
                        "the loss became {last_loss} at epoch {}: lower learning_rate",
                        epoch + 1
                    ),
                ));
            }
            ctl.report(
                (epoch + 1) as f32 / p.epochs as f32,
                format!("epoch {}/{}: loss {last_loss:.4}", epoch + 1, p.epochs),
            );
        }
    }

    // Final metrics with the final weights over the whole training set.
    let weight = gpu.read(&w, k * f).map_err(gpu_lost)?;
    let bias_v = gpu.read(&b, k).map_err(gpu_lost)?;
    let layer = [GpuDense {
        w: &w,
        b: &b,
        inputs: f,
        outputs: k,
    }];
    let (eval_loss, eval_acc) = Evaluator::new(gpu, &layer, n).run(
        gpu,
        &layer,
        Activation::Identity,
        &x_buf,
        &y_buf,
        n,
        ctl,
    )?;
    let model = fold_standardisation(weight, bias_v, &mean, &std, classes, columns);
    let mut metrics = training_metrics(eval_loss, eval_acc, n, &model);
    metrics["last_epoch_mean_batch_loss"] = last_loss.into();
    metrics["epochs"] = p.epochs.into();
    Ok(Trained {
        artifact: model.to_bytes(),
        n_features: f,
        n_classes: k,
        metrics,
        fleet: None,
    })
}

/// Rewrites a model trained on `(x - mean) / std` as one on raw `x`:
/// `W' = W / std`, `b' = b - W' · mean`.
pub(super) fn fold_standardisation(
    mut weight: Vec<f32>,
    mut bias: Vec<f32>,
    mean: &[f32],
    std: &[f32],
    classes: Vec<f64>,
    feature_columns: Vec<String>,
) -> ClassifierModel {
    let f = mean.len();
    for (c, row) in weight.chunks_mut(f).enumerate() {
        let mut shift = 0f64;
        for j in 0..f {
            row[j] /= std[j];
            shift += row[j] as f64 * mean[j] as f64;
        }
        bias[c] -= shift as f32;
    }
    ClassifierModel {
        algorithm: Algorithm::Logreg,
        layers: vec![Dense {
            inputs: f,
            outputs: bias.len(),
            weight,
            bias,
        }],
        activation: Activation::Identity,
        input_scaling: None,
        classes,
        feature_columns,
    }
}
