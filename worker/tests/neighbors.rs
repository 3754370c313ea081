//! Parity of the distance kernels (k-means, k nearest neighbours, anomaly scores) with their
//! CPU references on the real Vulkan device: odd sizes, a single row, k ≥ n, constant
//! columns and duplicate rows (exact ties).

mod common;

use common::{assert_close, gpu, values};
use gpuq_worker::gpu::kernels::Kernel;
use gpuq_worker::gpu::neighbors::*;

/// `rows × cols` values with a constant column 1 and row 2 repeated as row 4 (when present).
fn awkward(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut x = values(rows * cols, seed);
    for r in 0..rows {
        if cols > 1 {
            x[r * cols + 1] = 0.5;
        }
    }
    if rows > 4 {
        let (src, dst) = (2 * cols, 4 * cols);
        for j in 0..cols {
            x[dst + j] = x[src + j];
        }
    }
    x
}

#[test]
fn kmeans_assignment_and_update_match_cpu() {
    let g = gpu();
    for &(rows, cols, k) in &[(1, 1, 1), (7, 3, 7), (65, 5, 4), (300, 13, 10)] {
        let x = awkward(rows, cols, 31);
        // Centroids: the first k rows, so duplicate rows give exact distance ties.
        let c: Vec<f32> = x[..k * cols].to_vec();
        let p = KmeansParams::new(rows, cols, k);
        let xb = g.upload("x", &x);
        let cb = g.upload("c", &c);
        let (ab, db, nb) = (
            g.zeros("assign", rows),
            g.zeros("d", rows),
            g.zeros("counts", k),
        );
        let u = g.uniform(&p);
        let (assign, update) = (Kernel::kmeans_assign(g), Kernel::kmeans_update(g));
        let mut enc = g.encoder();
        assign.encode(
            &mut enc,
            &assign.bind(g, &[&xb, &cb, &ab, &db, &u]),
            p.assign_groups(),
        );
        g.submit(enc);
        let (want_a, want_d) = kmeans_assign_ref(&x, &c, &p);
        let what = format!("kmeans {rows}x{cols} k={k}");
        assert_eq!(g.read_u32(&ab, rows).unwrap(), want_a, "{what}: assignment");
        assert_close(&g.read(&db, rows).unwrap(), &want_d, 1e-5, &what);
        let mut enc = g.encoder();
        update.encode(
            &mut enc,
            &update.bind_at(g, &[(0, &xb), (1, &cb), (2, &ab), (4, &u), (5, &nb)]),
            p.update_groups(),
        );
        g.submit(enc);
        let (want_c, want_n) = kmeans_update_ref(&x, &c, &want_a, &p);
        assert_close(&g.read(&cb, k * cols).unwrap(), &want_c, 1e-5, &what);
        assert_close(&g.read(&nb, k).unwrap(), &want_n, 0.0, &what);
    }
}

#[test]
fn knn_matches_cpu_including_ties_and_k_past_the_references() {
    let g = gpu();
    for metric in [Metric::SquaredEuclidean, Metric::Cosine, Metric::Manhattan] {
        for &(queries, refs, cols, k) in &[
            (1, 1, 1, 1),
            (3, 9, 4, 20),
            (70, 33, 7, 5),
            (129, 200, 16, 1),
        ] {
            let r = awkward(refs, cols, 41);
            // Queries include copies of references: distance 0, and ties with duplicates.
            let mut q = awkward(queries, cols, 42);
            q[..cols].copy_from_slice(&r[..cols]);
            let p = KnnParams::new(queries, refs, cols, k, metric);
            let (qb, rb) = (g.upload("q", &q), g.upload("r", &r));
            let kk = p.k as usize;
            let (db, ib) = (g.zeros("d", queries * kk), g.zeros("i", queries * kk));
            let u = g.uniform(&p);
            let kernel = Kernel::knn(g);
            let mut enc = g.encoder();
            kernel.encode(
                &mut enc,
                &kernel.bind(g, &[&qb, &rb, &db, &ib, &u]),
                p.groups(),
            );
            g.submit(enc);
            let (want_d, want_i) = knn_ref(&q, &r, &p);
            let what = format!("knn {metric:?} q={queries} r={refs} f={cols} k={k}");
            assert_eq!(
                g.read_u32(&ib, queries * kk).unwrap(),
                want_i,
                "{what}: indices"
            );
            assert_close(&g.read(&db, queries * kk).unwrap(), &want_d, 1e-5, &what);
        }
    }
}

#[test]
fn knn_over_references_in_slices_matches_one_pass() {
    // A scan split over submissions (so that a stop can come between them) carries each
    // query's best list over: ties still go to the lower index, k past a slice still fills.
    let g = gpu();
    for metric in [Metric::SquaredEuclidean, Metric::Cosine] {
        for &(queries, refs, cols, k, slice) in &[(70, 33, 7, 5, 1), (129, 200, 16, 9, 7)] {
            let r = awkward(refs, cols, 61);
            let mut q = awkward(queries, cols, 62);
            q[..cols].copy_from_slice(&r[..cols]);
            let p = KnnParams::new(queries, refs, cols, k, metric);
            let (qb, rb) = (g.upload("q", &q), g.upload("r", &r));
            let kk = p.k as usize;
            let (db, ib) = (g.zeros("d", queries * kk), g.zeros("i", queries * kk));
            let kernel = Kernel::knn(g);
            for start in (0..refs).step_by(slice) {
                let part = p.slice(start, (start + slice).min(refs));
                let u = g.uniform(&part);
                let mut enc = g.encoder();
                kernel.encode(
                    &mut enc,
                    &kernel.bind(g, &[&qb, &rb, &db, &ib, &u]),
                    part.groups(),
                );
                g.submit(enc);
            }
            let (want_d, want_i) = knn_ref(&q, &r, &p);
            let what = format!("knn {metric:?} q={queries} r={refs} k={k} in slices of {slice}");
            assert_eq!(
                g.read_u32(&ib, queries * kk).unwrap(),
                want_i,
                "{what}: indices"
            );
            assert_close(&g.read(&db, queries * kk).unwrap(), &want_d, 1e-5, &what);
        }
    }
}

#[test]
fn anomaly_scores_match_cpu() {
    let g = gpu();
    for &(rows, cols) in &[(1, 1), (5, 31), (257, 3)] {
        let x = awkward(rows, cols, 51);
        let center = values(cols, 52);
        let scale: Vec<f32> = values(cols, 53).iter().map(|v| v.abs() + 0.1).collect();
        for (mode, threshold) in [
            (ScoreMode::ScaledManhattan, 0.0),
            (ScoreMode::ZScoreCount, 1.96),
            (ScoreMode::Norm, 0.0),
        ] {
            let p = ScoreParams::new(rows, cols, mode, threshold);
            let (xb, cb, sb) = (
                g.upload("x", &x),
                g.upload("c", &center),
                g.upload("s", &scale),
            );
            let (out, u) = (g.zeros("score", rows), g.uniform(&p));
            let k = Kernel::anomaly_score(g);
            let mut enc = g.encoder();
            k.encode(&mut enc, &k.bind(g, &[&xb, &cb, &sb, &out, &u]), p.groups());
            g.submit(enc);
            assert_close(
                &g.read(&out, rows).unwrap(),
                &anomaly_score_ref(&x, &center, &scale, &p),
                1e-5,
                &format!("anomaly {rows}x{cols} {mode:?}"),
            );
        }
    }
}
