//! Parity of every WGSL kernel with its CPU reference, on the real Vulkan device (lavapipe on
//! machines without a GPU), at sizes that are not multiples of the tiles, single rows and
//! single features.

use gpuq_worker::gpu::Gpu;
use gpuq_worker::gpu::kernels::*;
use std::sync::OnceLock;

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().expect("a Vulkan device (install mesa-vulkan-drivers)"))
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: gpu {g} vs cpu {w}"
        );
    }
}

fn run_gemm(a: &[f32], b: &[f32], p: GemmParams) -> Vec<f32> {
    let g = gpu();
    let (ab, bb) = (g.upload("a", a), g.upload("b", b));
    let len = (p.c_off + p.m * p.ldc) as usize;
    let cb = g.zeros("c", len);
    let u = g.uniform(&p);
    let k = Kernel::gemm(g);
    let mut enc = g.encoder();
    k.encode(&mut enc, &k.bind(g, &[&ab, &bb, &cb, &u]), p.groups());
    g.submit(enc);
    g.read(&cb, len).unwrap()
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
                let got = run_gemm(&a, &b, p);
                assert_close(
                    &got,
                    &gemm_ref(&a, &b, &p),
                    1e-4,
                    &format!("{m}x{n}x{k} ta={ta} tb={tb}"),
                );
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
    assert_close(&run_gemm(&x, &w, p), &gemm_ref(&x, &w, &p), 1e-4, "offset");
}

#[test]
fn bias_activation_and_column_sum_match_cpu() {
    let g = gpu();
    for &(rows, cols) in &[(1, 1), (3, 7), (300, 13)] {
        for act in [Activation::Identity, Activation::Relu, Activation::Tanh] {
            let x = values(rows * cols, 3);
            let bias = values(cols, 4);
            let p = BiasParams::new(rows, cols, act);
            let (xb, bb, u) = (g.upload("x", &x), g.upload("b", &bias), g.uniform(&p));
            let k = Kernel::bias_act(g);
            let mut enc = g.encoder();
            k.encode(&mut enc, &k.bind(g, &[&xb, &bb, &u]), p.bias_act_groups());
            g.submit(enc);
            let mut want = x.clone();
            bias_act_ref(&mut want, &bias, &p);
            assert_close(
                &g.read(&xb, rows * cols).unwrap(),
                &want,
                1e-5,
                &format!("bias_act {rows}x{cols} {act:?}"),
            );
        }
        let x = values(rows * cols, 5);
        let p = BiasParams::new(rows, cols, Activation::Identity);
        let (xb, out, u) = (g.upload("x", &x), g.zeros("sum", cols), g.uniform(&p));
        let k = Kernel::column_sum(g);
        let mut enc = g.encoder();
        k.encode(
            &mut enc,
            &k.bind(g, &[&xb, &out, &u]),
            p.column_sum_groups(),
        );
        g.submit(enc);
        assert_close(
            &g.read(&out, cols).unwrap(),
            &column_sum_ref(&x, &p),
            1e-4,
            "column_sum",
        );
    }
}

#[test]
fn softmax_gradient_loss_and_accuracy_match_cpu() {
    let g = gpu();
    for &(rows, cols) in &[(1, 2), (7, 3), (100, 10)] {
        for mode in [
            SoftmaxMode::Probabilities,
            SoftmaxMode::Gradient,
            SoftmaxMode::Evaluate,
        ] {
            let z: Vec<f32> = values(rows * cols, 6).iter().map(|v| v * 20.0).collect();
            let labels: Vec<u32> = (0..rows as u32 + 2)
                .map(|i| (i * 7) % cols as u32)
                .collect();
            let p = SoftmaxParams::new(rows, cols, 2, mode);
            let zb = g.upload("z", &z);
            let lb = g.upload("labels", &labels);
            let (loss, correct) = (g.zeros("loss", rows + 2), g.zeros("correct", rows + 2));
            let u = g.uniform(&p);
            let k = Kernel::softmax(g);
            let mut enc = g.encoder();
            k.encode(
                &mut enc,
                &k.bind(g, &[&zb, &lb, &loss, &correct, &u]),
                p.groups(),
            );
            g.submit(enc);
            let (mut wz, mut wl, mut wc) = (z.clone(), vec![0.0; rows + 2], vec![0.0; rows + 2]);
            softmax_ref(&mut wz, &labels, &mut wl, &mut wc, &p);
            let what = format!("softmax {rows}x{cols} {mode:?}");
            assert_close(&g.read(&zb, rows * cols).unwrap(), &wz, 1e-5, &what);
            assert_close(&g.read(&loss, rows + 2).unwrap(), &wl, 1e-4, &what);
            assert_close(&g.read(&correct, rows + 2).unwrap(), &wc, 0.0, &what);
        }
    }
}

#[test]
fn sgd_update_matches_cpu() {
    let g = gpu();
    for len in [1, 255, 257, 1000] {
        let (w, grad) = (values(len, 7), values(len, 8));
        let p = SgdParams {
            len: len as u32,
            lr: 0.3,
            l2: 0.01,
            _pad: 0,
        };
        let (wb, gb, u) = (g.upload("w", &w), g.upload("g", &grad), g.uniform(&p));
        let k = Kernel::sgd(g);
        let mut enc = g.encoder();
        k.encode(&mut enc, &k.bind(g, &[&wb, &gb, &u]), p.groups());
        g.submit(enc);
        let mut want = w.clone();
        sgd_ref(&mut want, &grad, &p);
        assert_close(&g.read(&wb, len).unwrap(), &want, 1e-6, "sgd");
    }
}
