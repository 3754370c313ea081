//! Fleets of classifiers — logistic regressions and MLPs — one per group of rows (a user),
//! trained together on the GPU and stored as one artifact.
//!
//! Each group is prepared on the host exactly as the model alone prepares its rows (the same
//! label classes, standardisation, seeded shuffles and initial weights, drawn from a generator
//! seeded as the model alone seeds its own), then every group still training takes its next
//! mini-batch in one dispatch of `shaders/fleet_dense.wgsl` (`step`: one invocation per group,
//! forward, softmax gradient, backward and update, with parameters, optimiser state and batch
//! activations interleaved across the groups). Early stopping (MLPs) is per group: a group that
//! stops is masked out of later steps. So a member is the model its rows would train on their
//! own, up to the order of the sums inside a step (on lavapipe, bitwise the same).
//!
//! Artifact (safetensors; `G` groups, `K` the most classes of any group):
//!
//! | tensor | shape | |
//! |---|---|---|
//! | `0.weight`, `2.weight`, … | `[G, out, in]` f32 | each layer as `torch.nn.Linear` keeps it; the last layer `K` wide, rows past a group's classes zero |
//! | `0.bias`, `2.bias`, … | `[G, out]` f32 | |
//! | `classes` | `[G, K]` f32 | each output's label value; NaN past the group's classes |
//! | `class_counts` | `[G]` u32 | classes per group |
//! | `input_mean`, `input_std` | `[G, F]` f32 | MLPs: inputs are scaled `(x − mean) / std` first (a logistic regression folds its scaling into its weights) |
//! | `rows` | `[G]` u32 | training rows per group |
//!
//! Metadata: `feature_columns`, `activation`, `hidden`, `group_column`, `groups` (the group
//! values in slot order). One slot's tensors are the model alone's tensors.

use super::classifier::{ClassifierModel, Dense, activation_from_name, activation_name, argmax};
use super::features::{class_indices, column_stats, scale, standardise};
use super::fleet::{self, GroupOutcome};
use super::{Control, CsvOut, Inference, Trained, accuracy_summary, gpu_lost, label_text};
use crate::artifact::{self, Artifact, Tensor};
use crate::gpu::kernels::{Activation, Kernel};
use crate::gpu::{Gpu, groups_1d};
use bytemuck::{Pod, Zeroable};
use gpuq_shared::dataset::{Matrix, Table};
use gpuq_shared::params::{self, FleetParams, Optimizer, TrainParams};
use gpuq_shared::{Algorithm, ErrorCode, JobError};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SRC: &str = include_str!("../../../shaders/fleet_dense.wgsl");
/// Layer widths the kernel's parameter block holds: features, up to 10 hidden, classes.
const MAX_DIMS: usize = 12;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
struct DenseParams {
    dims: [[u32; 4]; 3],
    layers: u32,
    base: u32,
    groups: u32,
    step: u32,
    epoch: u32,
    optimizer: u32,
    activation: u32,
    batch_cap: u32,
    lr: f32,
    l2: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    scratch_per: u32,
    starts_stride: u32,
    state_per: u32,
    desc_off: u32,
    starts_off: u32,
    order_off: u32,
    label_off: u32,
    active_off: u32,
    rows: u32,
    mode: u32,
    per_group: u32,
}

impl DenseParams {
    fn new(dims: &[usize], activation: Activation) -> Self {
        let mut packed = [[0u32; 4]; 3];
        for (i, &d) in dims.iter().enumerate() {
            packed[i / 4][i % 4] = d as u32;
        }
        Self {
            dims: packed,
            layers: (dims.len() - 1) as u32,
            activation: activation as u32,
            per_group: per_group(dims) as u32,
            ..Default::default()
        }
    }
}

/// Parameters of one group: each layer's weights `[out × in]` then its bias.
fn per_group(dims: &[usize]) -> usize {
    dims.windows(2).map(|d| d[1] * d[0] + d[1]).sum()
}

/// What the fleet trains: the algorithm's own parameters, as one training loop sees them.
struct Spec {
    algorithm: Algorithm,
    hidden: Vec<usize>,
    activation: Activation,
    epochs: u32,
    batch_size: usize,
    lr: f32,
    l2: f32,
    seed: u64,
    optimizer: u32,
    momentum: f32,
    /// MLPs: epochs without improvement of the training loss (by more than `tol`) to stop.
    patience: Option<(u32, f64)>,
}

impl Spec {
    fn of(params: &TrainParams) -> Result<Self, JobError> {
        match params {
            TrainParams::Logreg(p) => Ok(Self {
                algorithm: Algorithm::Logreg,
                hidden: Vec::new(),
                activation: Activation::Identity,
                epochs: p.epochs,
                batch_size: p.batch_size as usize,
                lr: p.learning_rate as f32,
                l2: p.l2 as f32,
                seed: p.seed,
                optimizer: 0,
                momentum: 0.0,
                patience: None,
            }),
            TrainParams::Mlp(p) => Ok(Self {
                algorithm: Algorithm::Mlp,
                hidden: p.hidden.iter().map(|&h| h as usize).collect(),
                activation: match p.activation {
                    params::Activation::Relu => Activation::Relu,
                    params::Activation::Tanh => Activation::Tanh,
                },
                epochs: p.epochs,
                batch_size: p.batch_size as usize,
                lr: p.learning_rate as f32,
                l2: p.l2 as f32,
                seed: p.seed,
                optimizer: match p.optimizer {
                    Optimizer::Sgd => 1,
                    Optimizer::Adam => 2,
                },
                momentum: p.momentum as f32,
                patience: Some((p.patience, p.tol)),
            }),
            other => Err(JobError::new(
                ErrorCode::InvalidParams,
                format!("{} does not train classifier fleets", other.algorithm()),
            )),
        }
    }
}

/// One group ready to train: its rows in the order the model alone uploads them, and the
/// generator that model would go on drawing its batches from.
struct Prepared {
    classes: Vec<f64>,
    x: Vec<f32>,
    y: Vec<u32>,
    mean: Vec<f32>,
    std: Vec<f32>,
    /// MLPs: the initial layers (Glorot, drawn as the model alone draws them).
    init: Vec<Dense>,
    rng: StdRng,
    /// Logistic regression: the order of the fixed batches, reshuffled each epoch; MLPs: the
    /// order of the rows, reshuffled each epoch.
    order: Vec<u32>,
    batch: usize,
}

impl Prepared {
    fn rows(&self) -> usize {
        self.y.len()
    }

    fn steps(&self) -> usize {
        self.rows().div_ceil(self.batch)
    }

    /// This epoch's row order and batch boundaries, drawing from the group's generator as the
    /// model alone draws from its own.
    fn epoch(&mut self, algorithm: Algorithm, order: &mut Vec<u32>, starts: &mut Vec<u32>) {
        let (n, batch) = (self.rows(), self.batch);
        self.order.shuffle(&mut self.rng);
        starts.push(0);
        match algorithm {
            Algorithm::Logreg => {
                for &bi in &self.order {
                    let from = bi as usize * batch;
                    order.extend(from as u32..(from + batch).min(n) as u32);
                    starts.push(starts[starts.len() - 1] + ((from + batch).min(n) - from) as u32);
                }
            }
            _ => {
                order.extend_from_slice(&self.order);
                starts.extend((1..=self.steps()).map(|s| (s * batch).min(n) as u32));
            }
        }
    }
}

/// Prepares one group's rows (`x`: its feature rows, input order) as the model alone would.
fn prepare(spec: &Spec, mut x: Matrix, labels: &[f32]) -> Result<Prepared, JobError> {
    let (classes, y) = class_indices(labels)?;
    let (n, f, k) = (x.rows, x.cols, classes.len());
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let gather = |x: &Matrix, order: &[usize]| -> Vec<f32> {
        order
            .iter()
            .flat_map(|&i| x.row(i).iter().copied())
            .collect()
    };
    match spec.algorithm {
        Algorithm::Logreg => {
            let (mean, std) = standardise(&mut x);
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(&mut rng);
            let batch = spec.batch_size.min(n);
            Ok(Prepared {
                x: gather(&x, &perm),
                y: perm.iter().map(|&i| y[i]).collect(),
                classes,
                mean,
                std,
                init: Vec::new(),
                rng,
                order: (0..n.div_ceil(batch) as u32).collect(),
                batch,
            })
        }
        _ => {
            // No validation split in a fleet: the shuffle still draws, as the model alone's does.
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            let (mean, std) = column_stats(&x, &order);
            scale(&mut x.data, &mean, &std);
            let mut dims = vec![f];
            dims.extend(&spec.hidden);
            dims.push(k);
            let init = dims
                .windows(2)
                .map(|d| {
                    let (weight, bias) = super::mlp::init_layer(&mut rng, d[0], d[1]);
                    Dense {
                        weight,
                        bias,
                        inputs: d[0],
                        outputs: d[1],
                    }
                })
                .collect();
            Ok(Prepared {
                x: gather(&x, &order),
                y: order.iter().map(|&i| y[i]).collect(),
                classes,
                mean,
                std,
                init,
                rng,
                order: (0..n as u32).collect(),
                batch: spec.batch_size.min(n),
            })
        }
    }
}

/// A group's trained model and what its training measured.
struct Fitted {
    model: ClassifierModel,
    metrics: Value,
}

/// A fleet's classifiers, stacked on the group axis (see the module's table). `params` holds
/// each group's parameters packed as the kernels read them, the last layer `kmax` wide.
pub struct Stack {
    algorithm: Algorithm,
    activation: Activation,
    /// Features, hidden widths…, `kmax`.
    dims: Vec<usize>,
    feature_columns: Vec<String>,
    group_column: String,
    groups: Vec<String>,
    classes: Vec<f32>,
    class_counts: Vec<u32>,
    params: Vec<f32>,
    scaling: Option<Vec<f32>>,
    rows: Vec<u32>,
}

impl Stack {
    fn new(
        algorithm: Algorithm,
        activation: Activation,
        dims: Vec<usize>,
        feature_columns: Vec<String>,
        group_column: String,
    ) -> Self {
        Self {
            scaling: (algorithm == Algorithm::Mlp).then(Vec::new),
            algorithm,
            activation,
            dims,
            feature_columns,
            group_column,
            groups: Vec::new(),
            classes: Vec::new(),
            class_counts: Vec::new(),
            params: Vec::new(),
            rows: Vec::new(),
        }
    }

    fn kmax(&self) -> usize {
        self.dims[self.dims.len() - 1]
    }

    fn f(&self) -> usize {
        self.dims[0]
    }

    /// Appends a group's model (its last layer padded to `kmax` outputs); returns its slot.
    fn push(&mut self, key: &str, m: &ClassifierModel, rows: u32) -> u32 {
        let kmax = self.kmax();
        self.groups.push(key.to_string());
        let k = m.classes.len();
        self.classes.extend(m.classes.iter().map(|&c| c as f32));
        self.classes.extend(std::iter::repeat_n(f32::NAN, kmax - k));
        self.class_counts.push(k as u32);
        let last = m.layers.len() - 1;
        for (l, layer) in m.layers.iter().enumerate() {
            let pad = if l == last { kmax - layer.outputs } else { 0 };
            self.params.extend_from_slice(&layer.weight);
            self.params
                .extend(std::iter::repeat_n(0.0, pad * layer.inputs));
            self.params.extend_from_slice(&layer.bias);
            self.params.extend(std::iter::repeat_n(0.0, pad));
        }
        if let (Some(scaling), Some((mean, std))) = (&mut self.scaling, &m.input_scaling) {
            scaling.extend_from_slice(mean);
            scaling.extend_from_slice(std);
        }
        self.rows.push(rows);
        (self.groups.len() - 1) as u32
    }

    /// The model at `slot`, as the model alone stores it.
    fn member(&self, slot: usize) -> ClassifierModel {
        let (kmax, f) = (self.kmax(), self.f());
        let k = self.class_counts[slot] as usize;
        let mut at = slot * per_group(&self.dims);
        let last = self.dims.len() - 2;
        let layers = self
            .dims
            .windows(2)
            .enumerate()
            .map(|(l, d)| {
                let (inputs, width) = (d[0], d[1]);
                let outputs = if l == last { k } else { width };
                let weight = self.params[at..at + outputs * inputs].to_vec();
                at += width * inputs;
                let bias = self.params[at..at + outputs].to_vec();
                at += width;
                Dense {
                    weight,
                    bias,
                    inputs,
                    outputs,
                }
            })
            .collect();
        ClassifierModel {
            algorithm: self.algorithm,
            layers,
            activation: self.activation,
            input_scaling: self.scaling.as_ref().map(|s| {
                let row = &s[slot * 2 * f..(slot + 1) * 2 * f];
                (row[..f].to_vec(), row[f..].to_vec())
            }),
            classes: self.classes[slot * kmax..slot * kmax + k]
                .iter()
                .map(|&c| c as f64)
                .collect(),
            feature_columns: self.feature_columns.clone(),
        }
    }

    fn write(&self) -> Vec<u8> {
        let (g, f, kmax) = (self.groups.len(), self.f(), self.kmax());
        let per = per_group(&self.dims);
        // The packed groups, one layer tensor at a time.
        let mut layers = Vec::new();
        let mut at = 0;
        for d in self.dims.windows(2) {
            let (w_len, b_len) = (d[0] * d[1], d[1]);
            let (mut w, mut b) = (Vec::with_capacity(g * w_len), Vec::with_capacity(g * b_len));
            for s in 0..g {
                let p = &self.params[s * per + at..];
                w.extend_from_slice(&p[..w_len]);
                b.extend_from_slice(&p[w_len..w_len + b_len]);
            }
            at += w_len + b_len;
            layers.push((w, b, d[1], d[0]));
        }
        let names: Vec<(String, String)> = (0..layers.len())
            .map(|l| (format!("{}.weight", 2 * l), format!("{}.bias", 2 * l)))
            .collect();
        let mut tensors = Vec::new();
        for ((w, b, out, inp), (wn, bn)) in layers.iter().zip(&names) {
            tensors.push(Tensor::F32(wn, vec![g, *out, *inp], w));
            tensors.push(Tensor::F32(bn, vec![g, *out], b));
        }
        tensors.push(Tensor::F32("classes", vec![g, kmax], &self.classes));
        tensors.push(Tensor::U32("class_counts", vec![g], &self.class_counts));
        tensors.push(Tensor::U32("rows", vec![g], &self.rows));
        let (mut mean, mut std) = (Vec::new(), Vec::new());
        if let Some(s) = &self.scaling {
            for row in s.chunks(2 * f) {
                mean.extend_from_slice(&row[..f]);
                std.extend_from_slice(&row[f..]);
            }
            tensors.push(Tensor::F32("input_mean", vec![g, f], &mean));
            tensors.push(Tensor::F32("input_std", vec![g, f], &std));
        }
        let hidden = &self.dims[1..self.dims.len() - 1];
        artifact::write(
            self.algorithm.as_str(),
            &tensors,
            &[
                ("feature_columns", json!(self.feature_columns)),
                ("activation", json!(activation_name(self.activation))),
                ("hidden", json!(hidden)),
                ("group_column", json!(self.group_column)),
                ("groups", json!(self.groups)),
            ],
        )
    }

    /// Reads and checks a classifier fleet's artifact; anything amiss is `model_corrupt`.
    fn parse(a: &Artifact) -> Result<Self, JobError> {
        let algorithm = match a.algorithm()? {
            a @ (Algorithm::Logreg | Algorithm::Mlp) => a,
            other => return Err(artifact::corrupt(format!("`{other}` is not a classifier"))),
        };
        let feature_columns: Vec<String> = a.meta("feature_columns")?;
        let groups: Vec<String> = a.meta("groups")?;
        let hidden: Vec<usize> = a.meta("hidden")?;
        let name: String = a.meta("activation")?;
        let activation = activation_from_name(&name)
            .ok_or_else(|| artifact::corrupt(format!("unknown activation {name}")))?;
        let (g, f) = (groups.len(), feature_columns.len());
        if g == 0 || f == 0 {
            return Err(artifact::corrupt("a fleet with no groups or no features"));
        }
        if algorithm == Algorithm::Logreg && !hidden.is_empty() {
            return Err(artifact::corrupt(
                "a logistic regression has no hidden layers",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = groups.iter().find(|k| !seen.insert(k.as_str())) {
            return Err(artifact::corrupt(format!("group `{dup}` appears twice")));
        }
        let (_, kmax) = a.matrix_shape("classes")?;
        let mut dims = vec![f];
        dims.extend(&hidden);
        dims.push(kmax);
        if dims.len() > MAX_DIMS || dims.contains(&0) {
            return Err(artifact::corrupt("layers of no width, or too many"));
        }
        let class_counts = a.u32("class_counts", &[g])?;
        if class_counts.iter().any(|&k| k < 2 || k as usize > kmax) {
            return Err(artifact::corrupt("a group's class count is out of range"));
        }
        let per = per_group(&dims);
        let mut params = vec![0f32; g * per];
        let mut at = 0;
        for (l, d) in dims.windows(2).enumerate() {
            let (w_len, b_len) = (d[0] * d[1], d[1]);
            let w = a.f32(&format!("{}.weight", 2 * l), &[g, d[1], d[0]])?;
            let b = a.f32(&format!("{}.bias", 2 * l), &[g, d[1]])?;
            for s in 0..g {
                let p = &mut params[s * per + at..];
                p[..w_len].copy_from_slice(&w[s * w_len..(s + 1) * w_len]);
                p[w_len..w_len + b_len].copy_from_slice(&b[s * b_len..(s + 1) * b_len]);
            }
            at += w_len + b_len;
        }
        if a.has(&format!("{}.weight", 2 * (dims.len() - 1))) {
            return Err(artifact::corrupt("more layers than `hidden` says"));
        }
        let scaling = match algorithm {
            Algorithm::Mlp => {
                let mean = a.f32("input_mean", &[g, f])?;
                let std = a.f32("input_std", &[g, f])?;
                let mut s = Vec::with_capacity(2 * g * f);
                for (m, d) in mean.chunks(f).zip(std.chunks(f)) {
                    s.extend_from_slice(m);
                    s.extend_from_slice(d);
                }
                Some(s)
            }
            _ => None,
        };
        Ok(Self {
            algorithm,
            activation,
            dims,
            classes: a.f32("classes", &[g, kmax])?,
            class_counts,
            params,
            scaling,
            rows: a.u32("rows", &[g])?,
            group_column: a.meta("group_column")?,
            feature_columns,
            groups,
        })
    }
}

/// Trains one classifier per group of `table` (its `groups`). A group that cannot train (one
/// class, or a loss that diverges) fails alone; the fleet fails only when none trains. With
/// `base`, the base's groups absent from the input are carried over unchanged.
pub fn train(
    gpu: &Gpu,
    table: Table,
    params: &TrainParams,
    fleet: &FleetParams,
    base: Option<&[u8]>,
    ctl: &Control,
) -> Result<Trained, JobError> {
    let spec = Spec::of(params)?;
    let groups = fleet::groups_of(&table)?;
    let labels = table
        .labels
        .as_ref()
        .ok_or_else(|| JobError::invalid_input("training needs a label column"))?;
    let x = &table.features;
    let f = x.cols;
    if spec.hidden.len() + 2 > MAX_DIMS {
        return Err(JobError::new(
            ErrorCode::InvalidParams,
            format!(
                "params.hidden: a fleet takes at most {} hidden layers",
                MAX_DIMS - 2
            ),
        ));
    }
    let base = base
        .map(|bytes| Artifact::parse(bytes).and_then(|a| Stack::parse(&a)))
        .transpose()?;
    if let Some(b) = &base {
        let refused = fleet::refused_base;
        if b.feature_columns != x.columns {
            return Err(refused(format!(
                "it takes the features {:?}; the input has {:?}",
                b.feature_columns, x.columns
            )));
        }
        if b.dims[1..b.dims.len() - 1] != spec.hidden[..] || b.activation != spec.activation {
            return Err(refused(format!(
                "its hidden layers are {:?} ({}); these params ask for {:?} ({})",
                &b.dims[1..b.dims.len() - 1],
                activation_name(b.activation),
                spec.hidden,
                activation_name(spec.activation),
            )));
        }
    }

    // Every group prepared on the host as the model alone would prepare it, on every core.
    let by_group = groups.rows_by_group();
    let total = by_group.len();
    let prepared = fleet::each_group(&by_group, ctl, "prepared", |rows| {
        let m = Matrix {
            rows: rows.len(),
            cols: f,
            data: rows
                .iter()
                .flat_map(|&r| x.row(r).iter().copied())
                .collect(),
            columns: Vec::new(),
        };
        let y: Vec<f32> = rows.iter().map(|&r| labels[r]).collect();
        prepare(&spec, m, &y)
    })?;

    // Train the groups that prepared, a chunk of groups at a time (bounded device memory).
    let mut fitted: Vec<Option<Result<Fitted, JobError>>> = (0..total).map(|_| None).collect();
    let mut ready: Vec<(usize, Prepared)> = Vec::new();
    for (g, p) in prepared.into_iter().enumerate() {
        match p {
            Ok(p) => ready.push((g, p)),
            Err(e) => fitted[g] = Some(Err(e)),
        }
    }
    let chunks = chunk_groups(&ready, &spec, f);
    let mut done_groups = 0;
    let mut rest = ready.into_iter();
    for size in chunks {
        let mut chunk: Vec<(usize, Prepared)> = rest.by_ref().take(size).collect();
        let results = train_chunk(gpu, &spec, f, &mut chunk, ctl, (done_groups, total))?;
        done_groups += chunk.len();
        for ((g, _), r) in chunk.iter().zip(results) {
            fitted[*g] = Some(r);
        }
    }

    // Stack the trained groups, then the base's carried ones, at one class width.
    let mut kmax = 2;
    for r in fitted.iter().flatten().flatten() {
        kmax = kmax.max(r.model.n_classes());
    }
    let carried_from: Vec<usize> = match &base {
        None => Vec::new(),
        Some(b) => {
            let present: std::collections::HashSet<&str> =
                groups.names.iter().map(String::as_str).collect();
            (0..b.groups.len())
                .filter(|&s| !present.contains(b.groups[s].as_str()))
                .collect()
        }
    };
    if let Some(b) = &base {
        for &s in &carried_from {
            kmax = kmax.max(b.class_counts[s] as usize);
        }
    }
    let mut dims = vec![f];
    dims.extend(&spec.hidden);
    dims.push(kmax);
    let mut stack = Stack::new(
        spec.algorithm,
        spec.activation,
        dims,
        x.columns.clone(),
        fleet.group_column.clone(),
    );
    let mut outcomes = Vec::with_capacity(total + carried_from.len());
    let (mut accuracy, mut losses) = (Vec::new(), Vec::new());
    for (g, (rows, fit)) in by_group.iter().zip(fitted).enumerate() {
        let key = &groups.names[g];
        let fit = fit.expect("every group trained or failed");
        let (slot, metrics) = match fit {
            Ok(fit) => {
                accuracy.push(fit.metrics["train_accuracy"].as_f64().unwrap_or(f64::NAN));
                losses.push(fit.metrics["final_loss"].as_f64().unwrap_or(f64::NAN));
                (
                    Ok(stack.push(key, &fit.model, rows.len() as u32)),
                    fit.metrics,
                )
            }
            Err(e) => (Err(e), Value::Null),
        };
        outcomes.push(GroupOutcome {
            key: key.clone(),
            slot,
            rows: rows.len() as u32,
            carried: false,
            metrics,
        });
    }
    let trained = stack.groups.len();
    if trained == 0 {
        let (key, e) = outcomes
            .iter()
            .find_map(|o| o.slot.as_ref().err().map(|e| (&o.key, e)))
            .expect("a group failed");
        return Err(JobError::new(
            e.code,
            format!(
                "no group trained ({total} failed); group `{key}`: {}",
                e.message
            ),
        ));
    }
    if let Some(b) = &base {
        for &s in &carried_from {
            let slot = stack.push(&b.groups[s], &b.member(s), b.rows[s]);
            outcomes.push(GroupOutcome {
                key: b.groups[s].clone(),
                slot: Ok(slot),
                rows: b.rows[s],
                carried: true,
                metrics: Value::Null,
            });
        }
    }
    let mut rows: Vec<u32> = stack.rows[..trained].to_vec();
    rows.sort_unstable();
    accuracy.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let metrics = json!({
        "features": f,
        "classes_max": kmax,
        "groups": stack.groups.len(),
        "trained_groups": trained,
        "failed_groups": total - trained,
        "carried_groups": carried_from.len(),
        "rows": x.rows,
        "rows_per_group": {
            "min": rows[0], "median": rows[rows.len() / 2], "max": rows[rows.len() - 1],
        },
        "train_accuracy": {
            "min": accuracy[0], "median": accuracy[accuracy.len() / 2], "mean": mean(&accuracy),
        },
        "final_loss_mean": mean(&losses),
    });
    Ok(Trained {
        artifact: stack.write(),
        n_features: f,
        n_classes: kmax,
        metrics,
        fleet: Some(outcomes),
    })
}

/// Device bytes one chunk may hold for its rows, parameters and scratch.
const CHUNK_BYTES: usize = 256 << 20;

/// Sizes of consecutive chunks of `ready` whose buffers each fit [`CHUNK_BYTES`] and one
/// dispatch's workgroups.
fn chunk_groups(ready: &[(usize, Prepared)], spec: &Spec, f: usize) -> Vec<usize> {
    let widths: usize = spec.hidden.iter().sum::<usize>() + 16;
    let mut dims = vec![f];
    dims.extend(&spec.hidden);
    dims.push(16);
    let per = per_group(&dims) * 3;
    let mut sizes = Vec::new();
    let (mut groups, mut bytes) = (0usize, 0usize);
    for (_, p) in ready {
        let b = 4 * (p.rows() * (f + 2 + widths * 2) + per + 2 * p.batch * widths + 8);
        if groups > 0 && (bytes + b > CHUNK_BYTES || groups >= 1 << 20) {
            sizes.push(groups);
            (groups, bytes) = (0, 0);
        }
        groups += 1;
        bytes += b;
    }
    if groups > 0 {
        sizes.push(groups);
    }
    sizes
}

/// Trains one chunk of prepared groups together; each group's own result.
fn train_chunk(
    gpu: &Gpu,
    spec: &Spec,
    f: usize,
    chunk: &mut [(usize, Prepared)],
    ctl: &Control,
    (done_before, total): (usize, usize),
) -> Result<Vec<Result<Fitted, JobError>>, JobError> {
    let c = chunk.len();
    let kmax = chunk
        .iter()
        .map(|(_, p)| p.classes.len())
        .max()
        .unwrap_or(2);
    let mut dims = vec![f];
    dims.extend(&spec.hidden);
    dims.push(kmax);
    let per = per_group(&dims);
    let layers = dims.len() - 1;
    let batch_cap = chunk.iter().map(|(_, p)| p.batch).max().unwrap_or(1);
    let max_steps = chunk.iter().map(|(_, p)| p.steps()).max().unwrap_or(1);
    let stride = max_steps + 1;

    // Rows, labels and each group's descriptor: first row, rows, classes, steps per epoch.
    let mut first = Vec::with_capacity(c + 1);
    let mut xs = Vec::new();
    let mut labels = Vec::new();
    let mut desc = Vec::with_capacity(4 * c);
    for (_, p) in chunk.iter() {
        first.push(labels.len());
        desc.extend([
            labels.len() as u32,
            p.rows() as u32,
            p.classes.len() as u32,
            p.steps() as u32,
        ]);
        xs.extend_from_slice(&p.x);
        labels.extend_from_slice(&p.y);
    }
    let n = labels.len();
    first.push(n);
    let (desc_off, starts_off) = (0, 4 * c);
    let order_off = starts_off + c * stride;
    let label_off = order_off + n;
    let active_off = label_off + n;
    let mut ints = desc.clone();
    ints.resize(order_off, 0);
    ints.resize(label_off, 0);
    ints.extend_from_slice(&labels);
    ints.extend(std::iter::repeat_n(1u32, c));

    // Parameters: zeros for a logistic regression, each group's own Glorot draw for an MLP;
    // interleaved across the chunk's groups as the step kernel reads them.
    let mut init = vec![0f32; c * per];
    if spec.algorithm == Algorithm::Mlp {
        for (s, (_, p)) in chunk.iter().enumerate() {
            let mut at = 0;
            for (l, layer) in p.init.iter().enumerate() {
                let width = dims[l + 1];
                for (k, &v) in layer.weight.iter().enumerate() {
                    init[(at + k) * c + s] = v;
                }
                at += width * layer.inputs;
                for (k, &v) in layer.bias.iter().enumerate() {
                    init[(at + k) * c + s] = v;
                }
                at += width;
            }
        }
    }
    let state_per = match spec.optimizer {
        0 => 0,
        1 => per,
        _ => 2 * per,
    };
    // Adam's bias corrections for every step a group can take, computed as the model alone's.
    let steps_total = spec.epochs as usize * max_steps;
    let corr: Vec<f32> = (1..=steps_total.max(1))
        .flat_map(|t| {
            let (b1, b2) = (0.9f64, 0.999f64);
            [
                (1.0 - b1.powi(t as i32)) as f32,
                (1.0 - b2.powi(t as i32)) as f32,
            ]
        })
        .collect();
    let scratch_per = 2 * dims[1..].iter().map(|w| batch_cap * w).sum::<usize>();
    super::check_bindings(
        gpu,
        &[
            ("the fleet's training rows", xs.len()),
            ("the fleet's parameters", c * per),
            ("the fleet's optimiser state", c * state_per),
            ("the fleet's batch activations", c * scratch_per),
        ],
    )?;
    let x_buf = gpu.upload("fleet rows", &xs);
    drop(xs);
    let ints_buf = gpu.upload("fleet tables", &ints);
    let params_buf = gpu.upload("fleet parameters", &init);
    drop(init);
    let state = gpu.zeros("fleet optimiser state", c * state_per);
    let scratch = gpu.zeros("fleet batch activations", c * scratch_per);
    let loss = gpu.zeros("fleet losses", n);
    let corr_buf = gpu.upload("adam corrections", &corr);
    let mut base = DenseParams {
        groups: c as u32,
        optimizer: spec.optimizer,
        batch_cap: batch_cap as u32,
        lr: spec.lr,
        l2: spec.l2,
        beta1: if spec.optimizer == 2 {
            0.9
        } else {
            spec.momentum
        },
        beta2: 0.999,
        eps: 1e-8,
        scratch_per: scratch_per as u32,
        starts_stride: stride as u32,
        state_per: state_per as u32,
        desc_off: desc_off as u32,
        starts_off: starts_off as u32,
        order_off: order_off as u32,
        label_off: label_off as u32,
        active_off: active_off as u32,
        ..DenseParams::new(&dims, spec.activation)
    };
    let u = gpu.uniform(&base);
    let step = Kernel::from_source(gpu, "fleet_dense_step", SRC, "step");
    let bind = step.bind_at(
        gpu,
        &[
            (0, &x_buf),
            (1, &ints_buf),
            (2, &params_buf),
            (3, &state),
            (4, &scratch),
            (5, &loss),
            (6, &corr_buf),
            (7, &u),
        ],
    );
    let workgroups = groups_1d(c, 64);

    // Per group: still training, epochs run, early stopping's state, the last epoch's loss.
    let mut active = vec![true; c];
    let mut failed: Vec<Option<JobError>> = (0..c).map(|_| None).collect();
    let mut epochs_run = vec![0u32; c];
    let mut best = vec![(f64::NEG_INFINITY, 0u32); c];
    let mut last_loss = vec![f64::NAN; c];
    let (mut order, mut starts) = (Vec::with_capacity(n), Vec::with_capacity(c * stride));
    let mut last_report = Instant::now();
    for epoch in 0..spec.epochs {
        ctl.check()?;
        let training = active.iter().filter(|&&a| a).count();
        if training == 0 {
            break;
        }
        order.clear();
        starts.clear();
        let mut steps = 0;
        for (s, (_, p)) in chunk.iter_mut().enumerate() {
            let from = starts.len();
            if active[s] {
                p.epoch(spec.algorithm, &mut order, &mut starts);
                steps = steps.max(p.steps());
                epochs_run[s] = epoch + 1;
            } else {
                order.extend(std::iter::repeat_n(0, p.rows()));
            }
            starts.resize(from + stride, 0);
        }
        let flags: Vec<u32> = active.iter().map(|&a| a as u32).collect();
        gpu.queue.write_buffer(
            &ints_buf,
            (4 * starts_off) as u64,
            bytemuck::cast_slice(&starts),
        );
        gpu.queue.write_buffer(
            &ints_buf,
            (4 * order_off) as u64,
            bytemuck::cast_slice(&order),
        );
        gpu.queue.write_buffer(
            &ints_buf,
            (4 * active_off) as u64,
            bytemuck::cast_slice(&flags),
        );
        for s in 0..steps {
            if s % 16 == 15 {
                gpu.wait();
                ctl.check()?;
            }
            base.step = s as u32;
            base.epoch = epoch;
            gpu.queue.write_buffer(&u, 0, bytemuck::bytes_of(&base));
            let mut enc = gpu.encoder();
            step.encode(&mut enc, &bind, workgroups);
            gpu.submit(enc);
        }
        // The epoch's mean loss per group decides divergence and (MLPs) early stopping, as the
        // model alone decides them; a logistic regression looks at the last epoch only.
        let last = epoch + 1 == spec.epochs;
        if spec.patience.is_some() || last {
            let l = gpu.read(&loss, n).map_err(gpu_lost)?;
            for s in 0..c {
                if !active[s] {
                    continue;
                }
                let mine = &l[first[s]..first[s + 1]];
                let mean = mine.iter().map(|&v| v as f64).sum::<f64>() / mine.len() as f64;
                last_loss[s] = mean;
                if !mean.is_finite() {
                    active[s] = false;
                    failed[s] = Some(JobError::new(
                        ErrorCode::Diverged,
                        format!(
                            "the loss became {mean} at epoch {}: lower learning_rate",
                            epoch + 1
                        ),
                    ));
                    continue;
                }
                if let Some((patience, tol)) = spec.patience {
                    let (best_score, since) = &mut best[s];
                    if -mean > *best_score + tol {
                        *best_score = -mean;
                        *since = 0;
                    } else {
                        *since += 1;
                    }
                    if *since >= patience {
                        active[s] = false;
                    }
                }
            }
        }
        if last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            ctl.report(
                (done_before as f32 + c as f32 * (epoch + 1) as f32 / spec.epochs as f32)
                    / total as f32,
                format!(
                    "groups {}–{} of {total}: epoch {}/{}, {training} still training",
                    done_before + 1,
                    done_before + c,
                    epoch + 1,
                    spec.epochs
                ),
            );
        }
    }
    gpu.wait();

    // Final loss and accuracy of every group over its training rows, with its final weights.
    let slots: Vec<u32> = (0..c)
        .flat_map(|s| std::iter::repeat_n(s as u32, first[s + 1] - first[s]))
        .collect();
    let mut row_ints = slots;
    row_ints.extend_from_slice(&labels);
    let row_buf = gpu.upload("fleet rows' slots and labels", &row_ints);
    // The trained parameters, one group after another.
    let interleaved = gpu.read(&params_buf, c * per).map_err(gpu_lost)?;
    drop((params_buf, state, scratch));
    let mut trained = vec![0f32; c * per];
    for (k, across) in interleaved.chunks(c).enumerate() {
        for (s, &v) in across.iter().enumerate() {
            trained[s * per + k] = v;
        }
    }
    drop(interleaved);
    let params_buf = gpu.upload("fleet parameters", &trained);
    let forward = Forward::new(gpu, &dims, spec.activation);
    let (_, eval) = forward.run(
        gpu,
        &FleetBuffers {
            params: &params_buf,
            desc: &ints_buf,
            scaling: None,
        },
        &x_buf,
        &row_buf,
        n,
        Some(n),
        ctl,
    )?;
    let eval = eval.expect("labels were given");
    let mut out = Vec::with_capacity(c);
    for (s, (_, p)) in chunk.iter_mut().enumerate() {
        if let Some(e) = failed[s].take() {
            out.push(Err(e));
            continue;
        }
        let rows = first[s + 1] - first[s];
        let (mut l, mut right) = (0f64, 0f64);
        for r in first[s]..first[s + 1] {
            l += eval[2 * r] as f64;
            right += eval[2 * r + 1] as f64;
        }
        let k = p.classes.len();
        let mut at = s * per;
        let mut layers = Vec::with_capacity(layers);
        for (l, d) in dims.windows(2).enumerate() {
            let (inputs, width) = (d[0], d[1]);
            let outputs = if l == dims.len() - 2 { k } else { width };
            let weight = trained[at..at + outputs * inputs].to_vec();
            at += width * inputs;
            let bias = trained[at..at + outputs].to_vec();
            at += width;
            layers.push(Dense {
                weight,
                bias,
                inputs,
                outputs,
            });
        }
        let classes = std::mem::take(&mut p.classes);
        let columns = Vec::new();
        let model = match spec.algorithm {
            Algorithm::Logreg => {
                let layer = layers.pop().expect("one layer");
                super::logreg::fold_standardisation(
                    layer.weight,
                    layer.bias,
                    &p.mean,
                    &p.std,
                    classes,
                    columns,
                )
            }
            _ => ClassifierModel {
                algorithm: Algorithm::Mlp,
                layers,
                activation: spec.activation,
                input_scaling: Some((std::mem::take(&mut p.mean), std::mem::take(&mut p.std))),
                classes,
                feature_columns: columns,
            },
        };
        let mut metrics = json!({
            "rows": rows,
            "classes": k,
            "final_loss": l / rows as f64,
            "train_accuracy": right / rows as f64,
            "epochs": epochs_run[s],
            "last_epoch_mean_batch_loss": last_loss[s],
        });
        if spec.patience.is_some() {
            metrics["stopped_early"] = (epochs_run[s] < spec.epochs).into();
        }
        out.push(Ok(Fitted { model, metrics }));
    }
    Ok(out)
}

/// A fleet's parameters on the device, as the `forward` kernel reads them.
struct FleetBuffers<'a> {
    params: &'a wgpu::Buffer,
    /// The groups' descriptors (classes at `4 × slot + 2`).
    desc: &'a wgpu::Buffer,
    /// MLPs: each slot's input mean and std.
    scaling: Option<&'a wgpu::Buffer>,
}

/// The `forward` kernel over rows that each name their slot.
struct Forward {
    kernel: Kernel,
    params: DenseParams,
    kmax: usize,
    scratch_per: usize,
}

impl Forward {
    fn new(gpu: &Gpu, dims: &[usize], activation: Activation) -> Self {
        Self {
            kernel: Kernel::from_source(gpu, "fleet_dense_forward", SRC, "forward"),
            params: DenseParams::new(dims, activation),
            kmax: dims[dims.len() - 1],
            scratch_per: dims.iter().sum(),
        }
    }

    /// Class probabilities `[rows × kmax]` of the `n` rows of `x`, each by its slot
    /// (`rows_buf[i]`); with `labels_at` (where the labels start in `rows_buf`), each row's
    /// loss and correctness as well.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        gpu: &Gpu,
        fleet: &FleetBuffers,
        x: &wgpu::Buffer,
        rows_buf: &wgpu::Buffer,
        n: usize,
        labels_at: Option<usize>,
        ctl: &Control,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), JobError> {
        let chunk = n
            .clamp(1, 1 << 16)
            .min(gpu.max_binding_bytes() as usize / (4 * self.scratch_per.max(self.kmax)));
        let scratch = gpu.zeros("fleet forward scratch", chunk * self.scratch_per);
        let out = gpu.zeros("fleet probabilities", chunk * self.kmax);
        let evals = gpu.zeros("fleet losses", 2 * chunk);
        let unused = gpu.zeros("unused", 1);
        let mut probs = Vec::with_capacity(n * self.kmax);
        let mut eval = labels_at.map(|_| Vec::with_capacity(2 * n));
        for off in (0..n).step_by(chunk) {
            ctl.check()?;
            let rows = chunk.min(n - off);
            let p = DenseParams {
                rows: rows as u32,
                base: off as u32,
                scratch_per: self.scratch_per as u32,
                desc_off: 0,
                order_off: off as u32,
                label_off: labels_at.map_or(0, |at| at + off) as u32,
                mode: fleet.scaling.is_some() as u32 | (labels_at.is_some() as u32) << 1,
                ..self.params
            };
            let u = gpu.uniform(&p);
            let bind = self.kernel.bind_at(
                gpu,
                &[
                    (0, x),
                    (1, fleet.desc),
                    (2, fleet.params),
                    (4, &scratch),
                    (5, &evals),
                    (7, &u),
                    (8, &out),
                    (9, fleet.scaling.unwrap_or(&unused)),
                    (10, rows_buf),
                ],
            );
            let mut enc = gpu.encoder();
            self.kernel.encode(&mut enc, &bind, groups_1d(rows, 64));
            gpu.submit(enc);
            probs.extend(gpu.read(&out, rows * self.kmax).map_err(gpu_lost)?);
            if let Some(e) = &mut eval {
                e.extend(gpu.read(&evals, 2 * rows).map_err(gpu_lost)?);
            }
        }
        Ok((probs, eval))
    }
}

/// A classifier fleet resident on the GPU.
pub struct GpuDenseFleet {
    stack: Stack,
    pub group_column: String,
    slots: HashMap<String, u32>,
    params: wgpu::Buffer,
    desc: wgpu::Buffer,
    scaling: Option<wgpu::Buffer>,
    forward: Forward,
}

impl GpuDenseFleet {
    pub fn is_fleet(a: &Artifact) -> Result<bool, JobError> {
        Ok(a.meta_opt::<String>("group_column")?.is_some())
    }

    pub fn load(gpu: &Gpu, a: &Artifact) -> Result<Self, JobError> {
        let mut stack = Stack::parse(a)?;
        super::check_bindings(
            gpu,
            &[
                ("the fleet's parameters", stack.params.len()),
                (
                    "the fleet's input scaling",
                    stack.scaling.as_ref().map_or(0, Vec::len),
                ),
            ],
        )?;
        let desc: Vec<u32> = stack
            .class_counts
            .iter()
            .flat_map(|&k| [0, 0, k, 0])
            .collect();
        let params = gpu.upload("fleet parameters", &stack.params);
        // The host keeps what answers need (classes, groups); the parameters live on the device.
        stack.params = Vec::new();
        Ok(Self {
            params,
            desc: gpu.upload("fleet classes", &desc),
            scaling: stack
                .scaling
                .as_ref()
                .map(|s| gpu.upload("fleet input scaling", s)),
            forward: Forward::new(gpu, &stack.dims, stack.activation),
            slots: stack
                .groups
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), i as u32))
                .collect(),
            group_column: stack.group_column.clone(),
            stack,
        })
    }

    pub fn n_features(&self) -> usize {
        self.stack.f()
    }

    pub fn slot(&self, group: &str) -> Option<u32> {
        self.slots.get(group).copied()
    }

    pub fn bytes(&self) -> u64 {
        let index: usize = self.slots.keys().map(|k| 2 * k.len() + 64).sum();
        let host = (self.stack.classes.len() + self.stack.class_counts.len()) * 4;
        self.params.size()
            + self.desc.size()
            + self.scaling.as_ref().map_or(0, |s| s.size())
            + (index + host) as u64
    }

    /// Class probabilities `[rows × kmax]` of the rows of `x`, each by its slot.
    fn probabilities(
        &self,
        gpu: &Gpu,
        x: &[f32],
        slots: &[u32],
        ctl: &Control,
    ) -> Result<Vec<f32>, JobError> {
        let x_buf = gpu.upload("features", x);
        let rows_buf = gpu.upload("slots", slots);
        let (probs, _) = self.forward.run(
            gpu,
            &FleetBuffers {
                params: &self.params,
                desc: &self.desc,
                scaling: self.scaling.as_ref(),
            },
            &x_buf,
            &rows_buf,
            slots.len(),
            None,
            ctl,
        )?;
        Ok(probs)
    }

    /// Scores `table`, each row by the classifier at its `slots` entry. One member's rows are
    /// answered as that model alone answers (`label,p0..p{k-1}`); rows of several groups get
    /// as many probability columns as the widest group has classes, blank past a row's own.
    pub fn infer(
        &self,
        gpu: &Gpu,
        table: &Table,
        slots: &[u32],
        rows_json: bool,
        ctl: &Control,
        csv: CsvOut,
    ) -> Result<Inference, JobError> {
        let probs = self.probabilities(gpu, &table.features.data, slots, ctl)?;
        self.inference(table, slots, &probs, rows_json, ctl, csv)
    }

    /// Each member's table scored by that member (rows as JSON, no CSV), all in one pass.
    pub fn infer_members(
        &self,
        gpu: &Gpu,
        tables: &[(&Table, u32)],
        ctl: &Control,
    ) -> Result<Vec<Inference>, JobError> {
        let rows: usize = tables.iter().map(|(t, _)| t.features.rows).sum();
        let mut x = Vec::with_capacity(rows * self.n_features());
        let mut slots = Vec::with_capacity(rows);
        for (t, slot) in tables {
            x.extend_from_slice(&t.features.data);
            slots.extend(std::iter::repeat_n(*slot, t.features.rows));
        }
        let probs = self.probabilities(gpu, &x, &slots, ctl)?;
        let kmax = self.stack.kmax();
        let mut at = 0;
        tables
            .iter()
            .map(|(t, _)| {
                let n = t.features.rows;
                at += n;
                self.inference(
                    t,
                    &slots[at - n..at],
                    &probs[(at - n) * kmax..at * kmax],
                    true,
                    ctl,
                    CsvOut::discard(),
                )
            })
            .collect()
    }

    fn inference(
        &self,
        table: &Table,
        slots: &[u32],
        probs: &[f32],
        rows_json: bool,
        ctl: &Control,
        csv: CsvOut,
    ) -> Result<Inference, JobError> {
        let kmax = self.stack.kmax();
        let one = slots.first().filter(|&&s| slots.iter().all(|&t| t == s));
        let width = match one {
            Some(&s) => self.stack.class_counts[s as usize] as usize,
            None => kmax,
        };
        let mut columns = vec!["label".to_string()];
        columns.extend((0..width).map(|c| format!("p{c}")));
        let mut inf = Inference::new(columns, csv);
        let mut labels = Vec::with_capacity(slots.len());
        for (&s, p) in slots.iter().zip(probs.chunks(kmax)) {
            ctl.check()?;
            let k = self.stack.class_counts[s as usize] as usize;
            let classes = &self.stack.classes[s as usize * kmax..];
            let p = &p[..k];
            let label = classes[argmax(p)] as f64;
            labels.push(label);
            let mut cells = vec![label_text(label)];
            cells.extend(p.iter().map(|v| v.to_string()));
            cells.resize(width + 1, String::new());
            inf.push_csv(&cells)?;
            if rows_json {
                inf.rows.push(json!({ "label": label, "p": p }));
            }
        }
        if let Some(&s) = one {
            let k = self.stack.class_counts[s as usize] as usize;
            let classes: Vec<f64> = self.stack.classes[s as usize * kmax..s as usize * kmax + k]
                .iter()
                .map(|&c| c as f64)
                .collect();
            inf.summary.insert("classes".into(), json!(classes));
        }
        if let Some(truth) = &table.labels {
            inf.summary.extend(accuracy_summary(&labels, truth));
        }
        Ok(inf)
    }
}

/// The member at `slot` of a classifier fleet's artifact, as the model alone stores it.
pub fn member_of(a: &Artifact, slot: usize) -> Result<ClassifierModel, JobError> {
    let s = Stack::parse(a)?;
    if slot >= s.groups.len() {
        return Err(artifact::corrupt(format!("no slot {slot}")));
    }
    let mut m = s.member(slot);
    m.feature_columns = s.feature_columns.clone();
    Ok(m)
}
