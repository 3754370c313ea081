//! The WGSL kernels (`shaders/*.wgsl`): for each, its parameter block, how to bind and
//! dispatch it, and a CPU reference that the parity tests hold it to.

use super::{Gpu, groups_1d};
use bytemuck::{Pod, Zeroable};
use std::sync::Arc;

const GEMM_SRC: &str = include_str!("../../../shaders/gemm.wgsl");
const BIAS_SRC: &str = include_str!("../../../shaders/bias.wgsl");
const SOFTMAX_SRC: &str = include_str!("../../../shaders/softmax.wgsl");
const UPDATE_SRC: &str = include_str!("../../../shaders/update.wgsl");

/// One compiled entry point.
#[derive(Clone)]
pub struct Kernel {
    pipeline: Arc<wgpu::ComputePipeline>,
}

impl Kernel {
    pub fn gemm(gpu: &Gpu) -> Self {
        Self {
            pipeline: gpu.pipeline("gemm", GEMM_SRC, "main"),
        }
    }
    pub fn bias_act(gpu: &Gpu) -> Self {
        Self {
            pipeline: gpu.pipeline("bias_act", BIAS_SRC, "bias_act"),
        }
    }
    pub fn column_sum(gpu: &Gpu) -> Self {
        Self {
            pipeline: gpu.pipeline("column_sum", BIAS_SRC, "column_sum"),
        }
    }
    pub fn softmax(gpu: &Gpu) -> Self {
        Self {
            pipeline: gpu.pipeline("softmax", SOFTMAX_SRC, "main"),
        }
    }
    pub fn sgd(gpu: &Gpu) -> Self {
        Self {
            pipeline: gpu.pipeline("sgd", UPDATE_SRC, "sgd"),
        }
    }

    /// Binds `buffers` to bindings 0, 1, … in order.
    pub fn bind(&self, gpu: &Gpu, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        gpu.bind_group(&self.pipeline, buffers)
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

/// `C[m×n] = op(A)[m×k] · op(B)[k×n]`; offsets and leading dimensions in elements.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub trans_a: u32,
    pub trans_b: u32,
    pub a_off: u32,
    pub b_off: u32,
    pub c_off: u32,
    pub lda: u32,
    pub ldb: u32,
    pub ldc: u32,
    pub _pad: u32,
}

impl GemmParams {
    /// Dense operands with their natural leading dimensions.
    pub fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        Self {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            trans_a: trans_a as u32,
            trans_b: trans_b as u32,
            lda: if trans_a { m } else { k } as u32,
            ldb: if trans_b { k } else { n } as u32,
            ldc: n as u32,
            ..Default::default()
        }
    }

    pub fn groups(&self) -> (u32, u32) {
        (self.n.div_ceil(64).max(1), self.m.div_ceil(64).max(1))
    }
}

/// CPU reference of the GEMM kernel (f64 accumulation).
pub fn gemm_ref(a: &[f32], b: &[f32], p: &GemmParams) -> Vec<f32> {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let at = |i: usize, kk: usize| {
        let idx = if p.trans_a == 0 {
            i * p.lda as usize + kk
        } else {
            kk * p.lda as usize + i
        };
        a[p.a_off as usize + idx] as f64
    };
    let bt = |kk: usize, j: usize| {
        let idx = if p.trans_b == 0 {
            kk * p.ldb as usize + j
        } else {
            j * p.ldb as usize + kk
        };
        b[p.b_off as usize + idx] as f64
    };
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|kk| at(i, kk) * bt(kk, j)).sum::<f64>() as f32;
        }
    }
    c
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
    pub fn bias_act_groups(&self) -> (u32, u32) {
        groups_1d(self.rows as usize * self.cols as usize, 256)
    }
    pub fn column_sum_groups(&self) -> (u32, u32) {
        ((self.cols as usize).div_ceil(64).max(1) as u32, 1)
    }
}

pub fn bias_act_ref(x: &mut [f32], bias: &[f32], p: &BiasParams) {
    let cols = p.cols as usize;
    for (idx, v) in x.iter_mut().enumerate().take(p.rows as usize * cols) {
        let z = *v + bias[idx % cols];
        *v = match p.activation {
            1 => z.max(0.0),
            2 => z.tanh(),
            _ => z,
        };
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

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct SgdParams {
    pub len: u32,
    pub lr: f32,
    pub l2: f32,
    pub _pad: u32,
}

impl SgdParams {
    pub fn groups(&self) -> (u32, u32) {
        groups_1d(self.len as usize, 256)
    }
}

pub fn sgd_ref(w: &mut [f32], g: &[f32], p: &SgdParams) {
    for (w, g) in w.iter_mut().zip(g).take(p.len as usize) {
        *w -= p.lr * (g + p.l2 * *w);
    }
}
