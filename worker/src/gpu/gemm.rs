//! The GEMM kernel (`shaders/gemm.wgsl`): `C = act(op(A) · op(B) + bias)`, the heart of
//! every dense layer. Its parameter block, dispatch size and CPU reference.

use super::Gpu;
use super::kernels::{Activation, Kernel};
use bytemuck::{Pod, Zeroable};

const GEMM_SRC: &str = include_str!("../../../shaders/gemm.wgsl");

/// Rows and columns of C per workgroup, in both variants (`TM` in the shader).
pub const GEMM_TILE: u32 = 128;

/// Which of the two entry points of `shaders/gemm.wgsl` runs. Both compute the same thing over
/// the same dispatch ([`GemmParams::groups`]); they differ in how they use the hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmVariant {
    /// `main`: the classic GPU design (workgroup-memory tiles, register blocking).
    Gpu,
    /// `main_cpu`: tuned for a CPU implementation of Vulkan (Mesa's lavapipe).
    Cpu,
}

impl GemmVariant {
    /// The variant for `gpu`'s device: [`GemmVariant::Cpu`] on a CPU device.
    pub fn for_device(gpu: &Gpu) -> Self {
        if gpu.info.device_type == wgpu::DeviceType::Cpu {
            Self::Cpu
        } else {
            Self::Gpu
        }
    }
}

impl Kernel {
    /// Bindings: 0 `a`, 1 `b`, 2 `c`, 3 [`GemmParams`], 4 `bias` (bind any buffer when
    /// `bias == 0`). The variant suited to the device ([`GemmVariant::for_device`]).
    pub fn gemm(gpu: &Gpu) -> Self {
        Self::gemm_variant(gpu, GemmVariant::for_device(gpu))
    }

    /// The GEMM kernel in a given variant (the parity tests run both on any device).
    pub fn gemm_variant(gpu: &Gpu, variant: GemmVariant) -> Self {
        match variant {
            GemmVariant::Gpu => Self::from_source(gpu, "gemm", GEMM_SRC, "main"),
            GemmVariant::Cpu => Self::from_source(gpu, "gemm_cpu", GEMM_SRC, "main_cpu"),
        }
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
    /// 1: add `bias[bias_off + j]` to every row (the epilogue, fused).
    pub bias: u32,
    /// [`Activation`] applied after the bias.
    pub activation: u32,
    pub bias_off: u32,
    pub _pad: [u32; 2],
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

    /// The same product with `bias` added and `activation` applied to every element of `C`.
    pub fn with_epilogue(self, bias: bool, activation: Activation) -> Self {
        Self {
            bias: bias as u32,
            activation: activation as u32,
            ..self
        }
    }

    /// Workgroups to dispatch: one per 128×128 tile of C (x over columns, y over rows).
    pub fn groups(&self) -> (u32, u32) {
        (
            self.n.div_ceil(GEMM_TILE).max(1),
            self.m.div_ceil(GEMM_TILE).max(1),
        )
    }
}

/// CPU reference of the GEMM kernel (f64 accumulation), epilogue included.
pub fn gemm_ref(a: &[f32], b: &[f32], bias: &[f32], p: &GemmParams) -> Vec<f32> {
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
            let mut v = (0..k).map(|kk| at(i, kk) * bt(kk, j)).sum::<f64>();
            if p.bias != 0 {
                v += bias[p.bias_off as usize + j] as f64;
            }
            c[i * n + j] = match p.activation {
                1 => v.max(0.0),
                2 => v.tanh(),
                _ => v,
            } as f32;
        }
    }
    c
}
