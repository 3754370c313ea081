//! Parity of every WGSL kernel with its CPU reference, on the real Vulkan device (lavapipe on
//! machines without a GPU), at sizes that are not multiples of the tiles, single rows and
//! single features.

mod common;

use common::{assert_close, gpu, values};
use gpuq_worker::gpu::kernels::*;

#[test]
fn column_sum_matches_cpu() {
    let g = gpu();
    for &(rows, cols) in &[(1, 1), (3, 7), (300, 13)] {
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
fn update_rules_match_cpu() {
    let g = gpu();
    for len in [1, 255, 257, 1000] {
        let (w, grad) = (values(len, 7), values(len, 8));
        let (m0, v0) = (
            values(len, 9),
            values(len, 10).iter().map(|v| v.abs()).collect::<Vec<_>>(),
        );
        // Plain SGD.
        let p = UpdateParams::sgd(len, 0.3, 0.01);
        let (wb, gb, u) = (g.upload("w", &w), g.upload("g", &grad), g.uniform(&p));
        let k = Kernel::sgd(g);
        let mut enc = g.encoder();
        k.encode(&mut enc, &k.bind(g, &[&wb, &gb, &u]), p.groups());
        g.submit(enc);
        let mut want = w.clone();
        sgd_ref(&mut want, &grad, &p);
        assert_close(&g.read(&wb, len).unwrap(), &want, 1e-6, "sgd");
        // Momentum.
        let p = UpdateParams::momentum(len, 0.1, 0.01, 0.9);
        let (wb, mb, u) = (g.upload("w", &w), g.upload("m", &m0), g.uniform(&p));
        let k = Kernel::momentum(g);
        let mut enc = g.encoder();
        k.encode(&mut enc, &k.bind(g, &[&wb, &gb, &u, &mb]), p.groups());
        g.submit(enc);
        let (mut ww, mut wm) = (w.clone(), m0.clone());
        momentum_ref(&mut ww, &grad, &mut wm, &p);
        assert_close(&g.read(&wb, len).unwrap(), &ww, 1e-6, "momentum w");
        assert_close(&g.read(&mb, len).unwrap(), &wm, 1e-6, "momentum m");
        // Adam at step 3.
        let p = UpdateParams::adam(len, 0.01, 0.001, 3);
        let (wb, mb, vb, u) = (
            g.upload("w", &w),
            g.upload("m", &m0),
            g.upload("v", &v0),
            g.uniform(&p),
        );
        let k = Kernel::adam(g);
        let mut enc = g.encoder();
        k.encode(&mut enc, &k.bind(g, &[&wb, &gb, &u, &mb, &vb]), p.groups());
        g.submit(enc);
        let (mut ww, mut wm, mut wv) = (w.clone(), m0.clone(), v0.clone());
        adam_ref(&mut ww, &grad, &mut wm, &mut wv, &p);
        assert_close(&g.read(&wb, len).unwrap(), &ww, 1e-5, "adam w");
        assert_close(&g.read(&mb, len).unwrap(), &wm, 1e-6, "adam m");
        assert_close(&g.read(&vb, len).unwrap(), &wv, 1e-6, "adam v");
    }
}

#[test]
fn activation_gradient_matches_cpu() {
    let g = gpu();
    for &(rows, cols) in &[(1, 1), (3, 7), (300, 13)] {
        for act in [Activation::Identity, Activation::Relu, Activation::Tanh] {
            let dz = values(rows * cols, 21);
            let a: Vec<f32> = values(rows * cols, 22)
                .iter()
                .map(|v| {
                    if act == Activation::Tanh {
                        v.tanh()
                    } else {
                        *v
                    }
                })
                .collect();
            let p = BiasParams::new(rows, cols, act);
            let (db, ab, u) = (g.upload("dz", &dz), g.upload("a", &a), g.uniform(&p));
            let k = Kernel::act_grad(g);
            let mut enc = g.encoder();
            k.encode(
                &mut enc,
                &k.bind(g, &[&db, &ab, &u]),
                p.elementwise_groups(),
            );
            g.submit(enc);
            let mut want = dz.clone();
            act_grad_ref(&mut want, &a, &p);
            assert_close(
                &g.read(&db, rows * cols).unwrap(),
                &want,
                1e-6,
                &format!("act_grad {rows}x{cols} {act:?}"),
            );
        }
    }
}

#[test]
fn gather_builds_batches_from_a_permutation() {
    let g = gpu();
    let (rows, cols) = (37, 5);
    let x = values(rows * cols, 23);
    let index: Vec<u32> = (0..rows as u32).map(|i| (i * 11) % rows as u32).collect();
    for &(take, off) in &[(1, 0), (8, 3), (37, 0), (5, 32)] {
        let p = GatherParams::new(take, cols, off);
        let (xb, ib, out, u) = (
            g.upload("x", &x),
            g.upload("i", &index),
            g.zeros("out", take * cols),
            g.uniform(&p),
        );
        let k = Kernel::gather(g);
        let mut enc = g.encoder();
        k.encode(&mut enc, &k.bind(g, &[&xb, &ib, &out, &u]), p.groups());
        g.submit(enc);
        assert_close(
            &g.read(&out, take * cols).unwrap(),
            &gather_ref(&x, &index, &p),
            0.0,
            "gather",
        );
    }
}
