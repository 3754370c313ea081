//! The WGSL kernels (`shaders/*.wgsl`): for each, its parameter block, how to bind and
//! dispatch it, and a CPU reference that the parity tests hold it to.

use super::{Gpu, groups_1d};
use bytemuck::{Pod, Zeroable};
use std::sync::Arc;

const BIAS_SRC: &str = include_str!("../../../shaders/bias.wgsl");
const SOFTMAX_SRC: &str = include_str!("../../../shaders/softmax.wgsl");
const UPDATE_SRC: &str = include_str!("../../../shaders/update.wgsl");
const ACTIVATION_SRC: &str = include_str!("../../../shaders/activation.wgsl");
const ROWS_SRC: &str = include_str!("../../../shaders/rows.wgsl");

/// One compiled entry point.
#[derive(Clone)]
pub struct Kernel {
    pipeline: Arc<wgpu::ComputePipeline>,
}

impl Kernel {
    pub(crate) fn from_source(gpu: &Gpu, name: &'static str, source: &str, entry: &str) -> Self {
        Self {
            pipeline: gpu.pipeline(name, source, entry),
        }
    }
    /// Bindings: 0 `x`, 1 the column sums (out), 2 [`BiasParams`].
    pub fn column_sum(gpu: &Gpu) -> Self {
        Self::from_source(gpu, "column_sum", BIAS_SRC, "column_sum")
    }
    /// Bindings: 0 logits (in place), 1 labels, 2 loss, 3 correct, 4 [`SoftmaxParams`].
    pub fn softmax(gpu: &Gpu) -> Self {
        Self::from_source(gpu, "softmax", SOFTMAX_SRC, "main")
    }
    /// Bindings: 0 `w`, 1 `g`, 2 [`UpdateParams`].
    pub fn sgd(gpu: &Gpu) -> Self {
        Self::from_source(gpu, "sgd", UPDATE_SRC, "sgd")
    }
    /// Bindings: 0 `w`, 1 `g`, 2 [`UpdateParams`], 3 velocity.
    pub fn momentum(gpu: &Gpu) -> Self {
        Self::from_source(gpu, "momentum", UPDATE_SRC, "momentum")
    }
    /// Bindings: 0 `w`, 1 `g`, 2 [`UpdateParams`], 3 first moment, 4 second moment.
    pub fn adam(gpu: &Gpu) -> Self {
        Self::from_source(gpu, "adam", UPDATE_SRC, "adam")
    }
    /// Bindings: 0 `dz` (in place), 1 the layer's output `a`, 2 [`BiasParams`].
    pub fn act_grad(gpu: &Gpu) -> Self {
        Self::from_source(gpu, "act_grad", ACTIVATION_SRC, "act_grad")
    }
    /// Bindings: 0 `x`, 1 row indices (u32), 2 `out`, 3 [`GatherParams`].
    pub fn gather(gpu: &Gpu) -> Self {
        Self::from_source(gpu, "gather", ROWS_SRC, "gather")
    }

    /// Binds `buffers` to bindings 0, 1, … in order.
    pub fn bind(&self, gpu: &Gpu, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        gpu.bind_group(&self.pipeline, buffers)
    }

    /// Binds each buffer to the binding number beside it.
    pub fn bind_at(&self, gpu: &Gpu, buffers: &[(u32, &wgpu::Buffer)]) -> wgpu::BindGroup {
        gpu.bind_group_at(&self.pipeline, buffers)
    }

    pub fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bind: &wgpu::BindGroup,
        groups: (u32, u32),
    ) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }
}

/// Activation after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Activation {
    Identity = 0,
    Relu = 1,
    Tanh = 2,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct BiasParams {
    pub rows: u32,
    pub cols: u32,
    pub activation: u32,
    pub _pad: u32,
}

impl BiasParams {
    pub fn new(rows: usize, cols: usize, activation: Activation) -> Self {
        Self {
            rows: rows as u32,
            cols: cols as u32,
            activation: activation as u32,
            _pad: 0,
        }
    }
    pub fn elementwise_groups(&self) -> (u32, u32) {
        groups_1d(self.rows as usize * self.cols as usize, 256)
    }
    pub fn column_sum_groups(&self) -> (u32, u32) {
        ((self.cols as usize).div_ceil(64).max(1) as u32, 1)
    }
}

pub fn column_sum_ref(x: &[f32], p: &BiasParams) -> Vec<f32> {
    let cols = p.cols as usize;
    (0..cols)
        .map(|j| (0..p.rows as usize).map(|i| x[i * cols + j]).sum())
        .collect()
}

/// What the softmax kernel leaves in the logits buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SoftmaxMode {
    /// Probabilities.
    Probabilities = 0,
    /// The cross-entropy gradient `(p - onehot) * scale`, plus loss and correctness per row.
    Gradient = 1,
    /// Probabilities, plus loss and correctness per row (evaluation).
    Evaluate = 2,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct SoftmaxParams {
    pub rows: u32,
    pub cols: u32,
    pub label_off: u32,
    pub mode: u32,
    pub scale: f32,
    pub _pad: [u32; 3],
}

impl SoftmaxParams {
    pub fn new(rows: usize, cols: usize, label_off: usize, mode: SoftmaxMode) -> Self {
        Self {
            rows: rows as u32,
            cols: cols as u32,
            label_off: label_off as u32,
            mode: mode as u32,
            scale: 1.0 / rows.max(1) as f32,
            _pad: [0; 3],
        }
    }
    pub fn groups(&self) -> (u32, u32) {
        groups_1d(self.rows as usize, 64)
    }
}

/// CPU reference of the softmax kernel: transforms `z` in place and fills `loss`/`correct`.
pub fn softmax_ref(
    z: &mut [f32],
    labels: &[u32],
    loss: &mut [f32],
    correct: &mut [f32],
    p: &SoftmaxParams,
) {
    let cols = p.cols as usize;
    for i in 0..p.rows as usize {
        let row = &mut z[i * cols..(i + 1) * cols];
        let (mut arg, mut zmax) = (0, row[0]);
        for (j, &v) in row.iter().enumerate().skip(1) {
            if v > zmax {
                zmax = v;
                arg = j;
            }
        }
        let lse = zmax as f64
            + row
                .iter()
                .map(|&v| ((v - zmax) as f64).exp())
                .sum::<f64>()
                .ln();
        if p.mode != 0 {
            let at = p.label_off as usize + i;
            let label = labels[at] as usize;
            loss[at] = (lse - row[label] as f64) as f32;
            correct[at] = if arg == label { 1.0 } else { 0.0 };
        }
        for (j, v) in row.iter_mut().enumerate() {
            let prob = ((*v as f64) - lse).exp();
            *v = if p.mode == 1 {
                ((prob
                    - if j == labels[p.label_off as usize + i] as usize {
                        1.0
                    } else {
                        0.0
                    })
                    * p.scale as f64) as f32
            } else {
                prob as f32
            };
        }
    }
}

/// The parameter block of every update rule in `shaders/update.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct UpdateParams {
    pub len: u32,
    pub lr: f32,
    pub l2: f32,
    /// Adam's β₁, or the momentum.
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Adam's bias corrections `1 - β₁ᵗ` and `1 - β₂ᵗ` for step `t`.
    pub c1: f32,
    pub c2: f32,
}

impl UpdateParams {
    pub fn sgd(len: usize, lr: f32, l2: f32) -> Self {
        Self {
            len: len as u32,
            lr,
            l2,
            ..Default::default()
        }
    }

    pub fn momentum(len: usize, lr: f32, l2: f32, momentum: f32) -> Self {
        Self {
            beta1: momentum,
            ..Self::sgd(len, lr, l2)
        }
    }

    /// Adam at step `t` (1-based) with the usual β₁ = 0.9, β₂ = 0.999, ε = 1e-8.
    pub fn adam(len: usize, lr: f32, l2: f32, t: u32) -> Self {
        let (b1, b2) = (0.9f64, 0.999f64);
        Self {
            beta1: b1 as f32,
            beta2: b2 as f32,
            eps: 1e-8,
            c1: (1.0 - b1.powi(t as i32)) as f32,
            c2: (1.0 - b2.powi(t as i32)) as f32,
            ..Self::sgd(len, lr, l2)
        }
    }

    pub fn groups(&self) -> (u32, u32) {
        groups_1d(self.len as usize, 256)
    }
}

pub fn sgd_ref(w: &mut [f32], g: &[f32], p: &UpdateParams) {
    for (w, g) in w.iter_mut().zip(g).take(p.len as usize) {
        *w -= p.lr * (g + p.l2 * *w);
    }
}

pub fn momentum_ref(w: &mut [f32], g: &[f32], m: &mut [f32], p: &UpdateParams) {
    for i in 0..p.len as usize {
        m[i] = p.beta1 * m[i] - p.lr * (g[i] + p.l2 * w[i]);
        w[i] += m[i];
    }
}

pub fn adam_ref(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], p: &UpdateParams) {
    for i in 0..p.len as usize {
        let grad = g[i] + p.l2 * w[i];
        m[i] = p.beta1 * m[i] + (1.0 - p.beta1) * grad;
        v[i] = p.beta2 * v[i] + (1.0 - p.beta2) * grad * grad;
        w[i] -= p.lr * (m[i] / p.c1) / ((v[i] / p.c2).sqrt() + p.eps);
    }
}

/// Backpropagation through the activation in `p` (given the layer's output `a`).
pub fn act_grad_ref(dz: &mut [f32], a: &[f32], p: &BiasParams) {
    for (d, &a) in dz.iter_mut().zip(a).take(p.rows as usize * p.cols as usize) {
        *d = match p.activation {
            1 if a > 0.0 => *d,
            1 => 0.0,
            2 => *d * (1.0 - a * a),
            _ => *d,
        };
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct GatherParams {
    pub rows: u32,
    pub cols: u32,
    pub off: u32,
    pub _pad: u32,
}

impl GatherParams {
    pub fn new(rows: usize, cols: usize, off: usize) -> Self {
        Self {
            rows: rows as u32,
            cols: cols as u32,
            off: off as u32,
            _pad: 0,
        }
    }
    pub fn groups(&self) -> (u32, u32) {
        groups_1d(self.rows as usize * self.cols as usize, 256)
    }
}

pub fn gather_ref(x: &[f32], index: &[u32], p: &GatherParams) -> Vec<f32> {
    let cols = p.cols as usize;
    (0..p.rows as usize)
        .flat_map(|r| {
            let from = index[p.off as usize + r] as usize * cols;
            x[from..from + cols].iter().copied()
        })
        .collect()
}
