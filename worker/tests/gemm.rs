//! Parity of the GEMM kernel with its CPU reference on the real Vulkan device: odd shapes,
//! single rows and columns, every transpose, offsets and leading dimensions, shapes just past
//! a tile, depths that are not a multiple of the slab, and the fused bias and activation.
//! Every case runs both kernel variants ([`GemmVariant`]) whatever the device, so the one
//! that the device does not pick is held to the reference too.

mod common;

use common::{assert_close, gpu, values};
use gpuq_worker::gpu::gemm::{GemmParams, GemmVariant, gemm_ref};
use gpuq_worker::gpu::kernels::{Activation, Kernel};

const VARIANTS: [GemmVariant; 2] = [GemmVariant::Gpu, GemmVariant::Cpu];

/// Marks the parts of C that the kernel must not write.
const SENTINEL: f32 = 1234.5;

/// The whole C buffer (`c_off + m·ldc` elements, pre-filled with [`SENTINEL`]) after one
/// dispatch of `variant`.
fn run_gemm(a: &[f32], b: &[f32], bias: &[f32], p: GemmParams, variant: GemmVariant) -> Vec<f32> {
    let g = gpu();
    let (ab, bb, biasb) = (g.upload("a", a), g.upload("b", b), g.upload("bias", bias));
    let len = (p.c_off + p.m * p.ldc) as usize;
    let cb = g.upload("c", &vec![SENTINEL; len]);
    let u = g.uniform(&p);
    let k = Kernel::gemm_variant(g, variant);
    let mut enc = g.encoder();
    k.encode(
        &mut enc,
        &k.bind(g, &[&ab, &bb, &cb, &u, &biasb]),
        p.groups(),
    );
    g.submit(enc);
    g.read(&cb, len).unwrap()
}

/// Runs every variant and holds the m×n block of C to [`gemm_ref`], and everything else in the
/// buffer (before `c_off`, the `ldc - n` padding of each row) to the sentinel.
fn check(a: &[f32], b: &[f32], bias: &[f32], p: GemmParams, what: &str) {
    let want = gemm_ref(a, b, bias, &p);
    let (m, n, ldc, c_off) = (p.m as usize, p.n as usize, p.ldc as usize, p.c_off as usize);
    for variant in VARIANTS {
        let got = run_gemm(a, b, bias, p, variant);
        let what = format!("{what} ({variant:?} variant)");
        let block: Vec<f32> = (0..m)
            .flat_map(|i| got[c_off + i * ldc..c_off + i * ldc + n].iter().copied())
            .collect();
        assert_close(&block, &want, 1e-4, &what);
        for (idx, v) in got.iter().enumerate() {
            let inside = idx >= c_off && (idx - c_off) % ldc < n;
            assert!(
                inside || *v == SENTINEL,
                "{what}: wrote {v} at {idx}, outside C"
            );
        }
    }
}

#[test]
fn gemm_matches_cpu_for_odd_shapes_and_every_transpose() {
    for &(m, n, k) in &[
        (1, 1, 1),
        (1, 10, 64),
        (37, 1, 5),
        (65, 67, 17),
        (130, 3, 129),
        (5, 70, 1),
    ] {
        for ta in [false, true] {
            for tb in [false, true] {
                let a = values(m * k, (m * 31 + k) as u64);
                let b = values(k * n, (n * 17 + k) as u64);
                let p = GemmParams::new(m, n, k, ta, tb);
                check(&a, &b, &[], p, &format!("{m}x{n}x{k} ta={ta} tb={tb}"));
            }
        }
    }
}

#[test]
fn gemm_matches_cpu_across_tile_and_slab_boundaries() {
    // Tiles are 128×128 of C and slabs 8 or 16 deep: exactly one tile, one past it in each
    // direction, one short of it, several tiles with a ragged last one, and depths that end
    // mid-slab (5, 37, 203) or on a slab (16, 128).
    for &(m, n, k) in &[
        (128, 128, 16),
        (129, 128, 37),
        (128, 129, 5),
        (127, 255, 128),
        (257, 130, 203),
        (300, 1, 37),
        (1, 300, 37),
    ] {
        for ta in [false, true] {
            for tb in [false, true] {
                let a = values(m * k, (m * 7 + k) as u64);
                let b = values(k * n, (n * 13 + k) as u64);
                let p = GemmParams::new(m, n, k, ta, tb);
                check(&a, &b, &[], p, &format!("{m}x{n}x{k} ta={ta} tb={tb}"));
            }
        }
    }
}

#[test]
fn gemm_honours_offsets_into_a_larger_buffer() {
    // Rows 3..8 of a 10×6 matrix times a 4×6 matrix transposed: the logreg forward pass.
    let x = values(60, 1);
    let w = values(24, 2);
    let p = GemmParams {
        a_off: 18,
        ..GemmParams::new(5, 4, 6, false, true)
    };
    check(&x, &w, &[], p, "offset");
}

#[test]
fn gemm_honours_leading_dimensions_and_offsets_of_every_operand() {
    // Sub-matrices of larger row-major matrices: every leading dimension larger than the
    // operand's row (and none a multiple of 4), an offset into every buffer, C rows padded.
    for &(m, n, k) in &[(7, 5, 3), (131, 133, 21), (140, 9, 130)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let (ra, ca) = if ta { (k, m) } else { (m, k) };
                let (rb, cb) = if tb { (n, k) } else { (k, n) };
                let (lda, ldb, ldc) = (ca + 3, cb + 5, n + 7);
                let (a_off, b_off, c_off) = (11, 2 * ldb + 1, 13);
                let a = values(a_off + ra * lda, (m + 3 * k) as u64);
                let b = values(b_off + rb * ldb, (n + 5 * k) as u64);
                let p = GemmParams {
                    a_off: a_off as u32,
                    b_off: b_off as u32,
                    c_off: c_off as u32,
                    lda: lda as u32,
                    ldb: ldb as u32,
                    ldc: ldc as u32,
                    ..GemmParams::new(m, n, k, ta, tb)
                };
                check(
                    &a,
                    &b,
                    &[],
                    p,
                    &format!("{m}x{n}x{k} ta={ta} tb={tb} strided"),
                );
            }
        }
    }
}

#[test]
fn gemm_fuses_bias_and_activation() {
    for &(m, n, k) in &[(1, 1, 1), (33, 10, 64), (70, 65, 3), (130, 129, 20)] {
        for act in [Activation::Identity, Activation::Relu, Activation::Tanh] {
            let a = values(m * k, 11);
            let b = values(n * k, 12);
            let bias = values(n + 3, 13);
            let p = GemmParams {
                bias_off: 3,
                ..GemmParams::new(m, n, k, false, true).with_epilogue(true, act)
            };
            check(&a, &b, &bias, p, &format!("{m}x{n}x{k} {act:?}"));
        }
    }
}
