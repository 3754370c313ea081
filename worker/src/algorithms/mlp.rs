//! Multilayer perceptron classifier trained on the GPU: dense layers with ReLU or tanh, a
//! softmax output and cross-entropy, mini-batches redrawn from a fresh permutation every
//! epoch, Adam or SGD with momentum, L2 on the weights, and early stopping on a held-out
//! validation split (or on the training loss). Deterministic for a seed on a given device:
//! every kernel sums in a fixed order.

use super::classifier::{ClassifierModel, Dense, Evaluator, GpuDense, training_metrics};
use super::features::{column_stats, labelled, scale, upload_rows};
use super::{Control, Trained, check_bindings, gpu_lost};
use crate::gpu::Gpu;
use crate::gpu::gemm::GemmParams;
use crate::gpu::kernels::{
    Activation, BiasParams, GatherParams, Kernel, SoftmaxMode, SoftmaxParams, UpdateParams,
};
use gpuq_shared::dataset::Table;
use gpuq_shared::params::{self, MlpParams, Optimizer};
use gpuq_shared::{Algorithm, ErrorCode, JobError};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// One layer's parameters, gradients, optimiser state and batch activations on the GPU.
struct Layer {
    inputs: usize,
    outputs: usize,
    w: wgpu::Buffer,
    b: wgpu::Buffer,
    dw: wgpu::Buffer,
    db: wgpu::Buffer,
    /// Optimiser state: (first moment or velocity, second moment) for w and for b.
    state_w: (wgpu::Buffer, wgpu::Buffer),
    state_b: (wgpu::Buffer, wgpu::Buffer),
    /// This layer's output for the batch (the softmax gradient, in place, for the last).
    a: wgpu::Buffer,
    /// The gradient with respect to this layer's output (hidden layers).
    d: wgpu::Buffer,
    u_w: wgpu::Buffer,
    u_b: wgpu::Buffer,
}

/// Glorot-uniform weights and biases, as scikit-learn initialises them.
pub(super) fn init_layer(
    rng: &mut rand::rngs::StdRng,
    inputs: usize,
    outputs: usize,
) -> (Vec<f32>, Vec<f32>) {
    let bound = (6.0 / (inputs + outputs) as f64).sqrt() as f32;
    let mut draw =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-bound..bound)).collect() };
    let w = draw(inputs * outputs);
    let b = draw(outputs);
    (w, b)
}

/// The uniforms and bind groups of one training step for a batch of `rows` rows.
struct StepPlan {
    passes: Vec<(Kernel, wgpu::BindGroup, (u32, u32))>,
    _uniforms: Vec<wgpu::Buffer>,
}

#[allow(clippy::too_many_arguments)]
fn plan_step(
    gpu: &Gpu,
    layers: &[Layer],
    rows: usize,
    xb: &wgpu::Buffer,
    x: &wgpu::Buffer,
    perm: &wgpu::Buffer,
    u_gather: &wgpu::Buffer,
    softmax_bind: &wgpu::BindGroup,
    activation: Activation,
    optimizer: Optimizer,
) -> StepPlan {
    let (gemm, colsum, act_grad, softmax, gather) = (
        Kernel::gemm(gpu),
        Kernel::column_sum(gpu),
        Kernel::act_grad(gpu),
        Kernel::softmax(gpu),
        Kernel::gather(gpu),
    );
    let mut passes = Vec::new();
    let mut uniforms = Vec::new();
    let f = layers[0].inputs;
    passes.push((
        gather.clone(),
        gather.bind(gpu, &[x, perm, xb, u_gather]),
        GatherParams::new(rows, f, 0).groups(),
    ));
    let last = layers.len() - 1;
    // Forward: a[l] = act(a[l-1] · W[l]ᵀ + b[l]).
    for (l, layer) in layers.iter().enumerate() {
        let act = if l == last {
            Activation::Identity
        } else {
            activation
        };
        let p = GemmParams::new(rows, layer.outputs, layer.inputs, false, true)
            .with_epilogue(true, act);
        let u = gpu.uniform(&p);
        let input = if l == 0 { xb } else { &layers[l - 1].a };
        passes.push((
            gemm.clone(),
            gemm.bind(gpu, &[input, &layer.w, &layer.a, &u, &layer.b]),
            p.groups(),
        ));
        uniforms.push(u);
    }
    passes.push((
        softmax.clone(),
        softmax_bind.clone(),
        SoftmaxParams::new(rows, layers[last].outputs, 0, SoftmaxMode::Gradient).groups(),
    ));
    // Backward: dW = dZᵀ · input, db = Σ dZ, dA[l-1] = dZ · W, dZ[l-1] = dA ⊙ act'(a[l-1]).
    for l in (0..layers.len()).rev() {
        let layer = &layers[l];
        let dz = if l == last { &layer.a } else { &layer.d };
        let input = if l == 0 { xb } else { &layers[l - 1].a };
        let p = GemmParams::new(layer.outputs, layer.inputs, rows, true, false);
        let u = gpu.uniform(&p);
        passes.push((
            gemm.clone(),
            gemm.bind(gpu, &[dz, input, &layer.dw, &u, &layer.b]),
            p.groups(),
        ));
        uniforms.push(u);
        let bp = BiasParams::new(rows, layer.outputs, Activation::Identity);
        let u = gpu.uniform(&bp);
        passes.push((
            colsum.clone(),
            colsum.bind(gpu, &[dz, &layer.db, &u]),
            bp.column_sum_groups(),
        ));
        uniforms.push(u);
        if l > 0 {
            let below = &layers[l - 1];
            let p = GemmParams::new(rows, layer.inputs, layer.outputs, false, false);
            let u = gpu.uniform(&p);
            passes.push((
                gemm.clone(),
                gemm.bind(gpu, &[dz, &layer.w, &below.d, &u, &layer.b]),
                p.groups(),
            ));
            uniforms.push(u);
            let ap = BiasParams::new(rows, layer.inputs, activation);
            let u = gpu.uniform(&ap);
            passes.push((
                act_grad.clone(),
                act_grad.bind(gpu, &[&below.d, &below.a, &u]),
                ap.elementwise_groups(),
            ));
            uniforms.push(u);
        }
    }
    // Updates.
    let rule = match optimizer {
        Optimizer::Adam => Kernel::adam(gpu),
        Optimizer::Sgd => Kernel::momentum(gpu),
    };
    for layer in layers {
        for (param, grad, state, u, len) in [
            (
                &layer.w,
                &layer.dw,
                &layer.state_w,
                &layer.u_w,
                layer.w.size() as usize / 4,
            ),
            (
                &layer.b,
                &layer.db,
                &layer.state_b,
                &layer.u_b,
                layer.outputs,
            ),
        ] {
            let bind = if optimizer == Optimizer::Adam {
                rule.bind(gpu, &[param, grad, u, &state.0, &state.1])
            } else {
                rule.bind(gpu, &[param, grad, u, &state.0])
            };
            passes.push((
                rule.clone(),
                bind,
                UpdateParams::sgd(len, 0.0, 0.0).groups(),
            ));
        }
    }
    StepPlan {
        passes,
        _uniforms: uniforms,
    }
}

/// The layers as the shared forward pass sees them.
fn dense(layers: &[Layer]) -> Vec<GpuDense<'_>> {
    layers
        .iter()
        .map(|l| GpuDense {
            w: &l.w,
            b: &l.b,
            inputs: l.inputs,
            outputs: l.outputs,
        })
        .collect()
}

pub fn train(gpu: &Gpu, table: Table, p: &MlpParams, ctl: &Control) -> Result<Trained, JobError> {
    let (mut x, classes, y) = labelled(table)?;
    let (n, f, k) = (x.rows, x.cols, classes.len());
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);

    // Hold out the validation rows (seeded), then scale by the training rows' statistics.
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let n_val = (n as f64 * p.validation_fraction).round() as usize;
    if p.validation_fraction > 0.0 && (n_val == 0 || n_val >= n) {
        return Err(JobError::invalid_input(format!(
            "validation_fraction {} of {n} rows leaves no validation or no training rows",
            p.validation_fraction
        )));
    }
    let (val_rows, train_rows) = order.split_at(n_val);
    let n_train = train_rows.len();
    let (mean, std) = column_stats(&x, train_rows);
    scale(&mut x.data, &mean, &std);
    let mut dims = vec![f];
    dims.extend(p.hidden.iter().map(|&h| h as usize));
    dims.push(k);
    let widest = *dims.iter().max().expect("dims");
    let batch = (p.batch_size as usize).min(n_train);
    check_bindings(
        gpu,
        &[
            ("the training matrix", n * f),
            ("the batch activations", batch * widest),
            (
                "the widest weight matrix",
                dims.windows(2).map(|d| d[0] * d[1]).max().unwrap_or(0),
            ),
        ],
    )?;

    let x_train = upload_rows(gpu, &x, train_rows);
    let x_val = upload_rows(gpu, &x, val_rows);
    let columns = std::mem::take(&mut x.columns);
    drop(x);
    let y_val = gpu.upload(
        "val labels",
        &val_rows.iter().map(|&i| y[i]).collect::<Vec<u32>>(),
    );
    let y_train_fixed = gpu.upload(
        "train labels",
        &train_rows.iter().map(|&i| y[i]).collect::<Vec<u32>>(),
    );

    let activation = match p.activation {
        params::Activation::Relu => Activation::Relu,
        params::Activation::Tanh => Activation::Tanh,
    };
    let layers: Vec<Layer> = dims
        .windows(2)
        .map(|d| {
            let (inputs, outputs) = (d[0], d[1]);
            let (w, b) = init_layer(&mut rng, inputs, outputs);
            Layer {
                inputs,
                outputs,
                w: gpu.upload("weight", &w),
                b: gpu.upload("bias", &b),
                dw: gpu.zeros("dweight", w.len()),
                db: gpu.zeros("dbias", outputs),
                state_w: (gpu.zeros("m", w.len()), gpu.zeros("v", w.len())),
                state_b: (gpu.zeros("m", outputs), gpu.zeros("v", outputs)),
                a: gpu.zeros("activations", batch * outputs),
                d: gpu.zeros("gradient", batch * outputs),
                u_w: gpu.uniform(&UpdateParams::default()),
                u_b: gpu.uniform(&UpdateParams::default()),
            }
        })
        .collect();

    let xb = gpu.zeros("batch", batch * f);
    let perm = gpu.upload("permutation", &(0..n_train as u32).collect::<Vec<u32>>());
    let y_perm = gpu.upload("labels in epoch order", &vec![0u32; n_train]);
    let loss = gpu.zeros("loss", n_train);
    let correct = gpu.zeros("correct", n_train);
    let u_gather = gpu.uniform(&GatherParams::default());
    let u_soft = gpu.uniform(&SoftmaxParams::default());
    let last = layers.len() - 1;
    let softmax_bind =
        Kernel::softmax(gpu).bind(gpu, &[&layers[last].a, &y_perm, &loss, &correct, &u_soft]);
    let plan = |rows| {
        plan_step(
            gpu,
            &layers,
            rows,
            &xb,
            &x_train,
            &perm,
            &u_gather,
            &softmax_bind,
            activation,
            p.optimizer,
        )
    };
    let full = plan(batch);
    let rest = n_train % batch;
    let partial = (rest > 0).then(|| plan(rest));
    let view = dense(&layers);
    let evaluator = Evaluator::new(gpu, &view, n_train.max(n_val));
    let best: Vec<(wgpu::Buffer, wgpu::Buffer)> = layers
        .iter()
        .map(|l| {
            (
                gpu.zeros("best w", l.w.size() as usize / 4),
                gpu.zeros("best b", l.outputs),
            )
        })
        .collect();

    let lr = p.learning_rate as f32;
    let mut step_count = 0u32;
    let mut epoch_order: Vec<u32> = (0..n_train as u32).collect();
    let (mut best_score, mut since_best, mut best_epoch) = (f64::NEG_INFINITY, 0u32, 0u32);
    let mut epochs_run = 0;
    let mut last_loss = f64::NAN;
    let mut last_report = Instant::now() - Duration::from_secs(1);
    for epoch in 0..p.epochs {
        epoch_order.shuffle(&mut rng);
        let y_epoch: Vec<u32> = epoch_order
            .iter()
            .map(|&i| y[train_rows[i as usize]])
            .collect();
        gpu.queue
            .write_buffer(&perm, 0, bytemuck::cast_slice(&epoch_order));
        gpu.queue
            .write_buffer(&y_perm, 0, bytemuck::cast_slice(&y_epoch));
        for (step, off) in (0..n_train).step_by(batch).enumerate() {
            // Wait for the device now and then so the queue never runs far ahead of it and a
            // cancel takes effect within a few batches.
            if step % 16 == 15 {
                gpu.wait();
            }
            ctl.check()?;
            let rows = batch.min(n_train - off);
            let plan = if rows == batch {
                &full
            } else {
                partial.as_ref().expect("a partial batch")
            };
            step_count += 1;
            // The gather reads from `off`, the softmax's labels and losses start there; Adam's
            // bias correction moves with the step.
            gpu.queue.write_buffer(
                &u_gather,
                0,
                bytemuck::bytes_of(&GatherParams::new(rows, f, off)),
            );
            gpu.queue.write_buffer(
                &u_soft,
                0,
                bytemuck::bytes_of(&SoftmaxParams::new(rows, k, off, SoftmaxMode::Gradient)),
            );
            for layer in &layers {
                let len_w = layer.inputs * layer.outputs;
                let (uw, ub) = match p.optimizer {
                    Optimizer::Adam => (
                        UpdateParams::adam(len_w, lr, p.l2 as f32, step_count),
                        UpdateParams::adam(layer.outputs, lr, 0.0, step_count),
                    ),
                    Optimizer::Sgd => (
                        UpdateParams::momentum(len_w, lr, p.l2 as f32, p.momentum as f32),
                        UpdateParams::momentum(layer.outputs, lr, 0.0, p.momentum as f32),
                    ),
                };
                gpu.queue
                    .write_buffer(&layer.u_w, 0, bytemuck::bytes_of(&uw));
                gpu.queue
                    .write_buffer(&layer.u_b, 0, bytemuck::bytes_of(&ub));
            }
            let mut enc = gpu.encoder();
            for (kernel, bind, groups) in &plan.passes {
                kernel.encode(&mut enc, bind, *groups);
            }
            gpu.submit(enc);
        }
        epochs_run = epoch + 1;
        let losses = gpu.read(&loss, n_train).map_err(gpu_lost)?;
        last_loss = losses.iter().map(|&v| v as f64).sum::<f64>() / n_train as f64;
        if !last_loss.is_finite() {
            return Err(JobError::new(
                ErrorCode::Diverged,
                format!("the loss became {last_loss} at epoch {epochs_run}: lower learning_rate"),
            ));
        }
        // Early stopping: on validation accuracy when there is a validation split, else on
        // the training loss.
        let score = if n_val > 0 {
            evaluator
                .run(gpu, &view, activation, &x_val, &y_val, n_val, ctl)?
                .1
        } else {
            -last_loss
        };
        if score > best_score + p.tol {
            best_score = score;
            best_epoch = epochs_run;
            since_best = 0;
            if n_val > 0 {
                let mut enc = gpu.encoder();
                for (layer, (bw, bb)) in layers.iter().zip(&best) {
                    enc.copy_buffer_to_buffer(&layer.w, 0, bw, 0, layer.w.size());
                    enc.copy_buffer_to_buffer(&layer.b, 0, bb, 0, layer.b.size());
                }
                gpu.submit(enc);
            }
        } else {
            since_best += 1;
        }
        if last_report.elapsed() >= Duration::from_millis(500) || epochs_run == p.epochs {
            last_report = Instant::now();
            let what = if n_val > 0 {
                format!(", validation accuracy {score:.4}")
            } else {
                String::new()
            };
            ctl.report(
                epochs_run as f32 / p.epochs as f32,
                format!("epoch {epochs_run}/{}: loss {last_loss:.4}{what}", p.epochs),
            );
        }
        if since_best >= p.patience {
            break;
        }
    }
    let stopped_early = epochs_run < p.epochs;
    if n_val > 0 {
        // Keep the weights of the best validation epoch.
        let mut enc = gpu.encoder();
        for (layer, (bw, bb)) in layers.iter().zip(&best) {
            enc.copy_buffer_to_buffer(bw, 0, &layer.w, 0, layer.w.size());
            enc.copy_buffer_to_buffer(bb, 0, &layer.b, 0, layer.b.size());
        }
        gpu.submit(enc);
    }
    let (train_loss, train_acc) = evaluator.run(
        gpu,
        &view,
        activation,
        &x_train,
        &y_train_fixed,
        n_train,
        ctl,
    )?;
    let mut dense = Vec::new();
    for layer in &layers {
        dense.push(Dense {
            weight: gpu
                .read(&layer.w, layer.inputs * layer.outputs)
                .map_err(gpu_lost)?,
            bias: gpu.read(&layer.b, layer.outputs).map_err(gpu_lost)?,
            inputs: layer.inputs,
            outputs: layer.outputs,
        });
    }
    let model = ClassifierModel {
        algorithm: Algorithm::Mlp,
        layers: dense,
        activation,
        input_scaling: Some((mean, std)),
        classes,
        feature_columns: columns,
    };
    let mut metrics = training_metrics(train_loss, train_acc, n_train, &model);
    metrics["epochs"] = epochs_run.into();
    metrics["stopped_early"] = stopped_early.into();
    metrics["last_epoch_mean_batch_loss"] = last_loss.into();
    if n_val > 0 {
        let (val_loss, val_acc) =
            evaluator.run(gpu, &view, activation, &x_val, &y_val, n_val, ctl)?;
        metrics["validation_rows"] = n_val.into();
        metrics["validation_loss"] = val_loss.into();
        metrics["validation_accuracy"] = val_acc.into();
        metrics["best_epoch"] = best_epoch.into();
    }
    Ok(Trained {
        artifact: model.to_bytes(),
        n_features: f,
        n_classes: k,
        metrics,
        fleet: None,
    })
}
