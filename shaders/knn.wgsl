// k nearest references for each query row, in one pass over the references. Each invocation
// owns one query and keeps its k best (distance, index) pairs sorted in the output buffers.
// References are scanned in index order and only a strictly smaller distance displaces
// another, so equal distances keep the lower index first — the order a sequential scan gives.
// Features are accumulated in order, one rounding per term (no reassociation).
// Distances: 0 squared Euclidean, 1 cosine (1 - cos), 2 Manhattan.
// One dispatch scans references `ref_start..refs`; with `ref_start > 0` it carries on from
// the best lists already in the output buffers, so a scan split over several submissions (each
// short enough for a stop to take effect between them) gives what one pass gives.

struct Params {
    queries: u32,
    refs: u32,   // the end of the references this dispatch scans
    cols: u32,
    k: u32,      // at most the number of references
    metric: u32,
    ref_start: u32,
    _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> r: array<f32>;
@group(0) @binding(2) var<storage, read_write> best_d: array<f32>;
@group(0) @binding(3) var<storage, read_write> best_i: array<u32>;
@group(0) @binding(4) var<uniform> p: Params;

fn distance(qb: u32, rb: u32, q_norm: f32) -> f32 {
    var acc = 0.0;
    if (p.metric == 0u) {
        for (var j = 0u; j < p.cols; j++) {
            let t = q[qb + j] - r[rb + j];
            acc = acc + t * t;
        }
        return acc;
    }
    if (p.metric == 2u) {
        for (var j = 0u; j < p.cols; j++) { acc = acc + abs(q[qb + j] - r[rb + j]); }
        return acc;
    }
    var r_norm = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        acc = acc + q[qb + j] * r[rb + j];
        r_norm = r_norm + r[rb + j] * r[rb + j];
    }
    if (q_norm == 0.0 || r_norm == 0.0) { return 1.0; }
    return 1.0 - acc / (sqrt(q_norm) * sqrt(r_norm));
}

@compute @workgroup_size(64)
fn nearest(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.queries) { return; }
    let qb = i * p.cols;
    let ob = i * p.k;
    if (p.ref_start == 0u) {
        for (var s = 0u; s < p.k; s++) {
            best_d[ob + s] = 3.4e38;
            best_i[ob + s] = 0xffffffffu;
        }
    }
    var q_norm = 0.0;
    if (p.metric == 1u) {
        for (var j = 0u; j < p.cols; j++) { q_norm = q_norm + q[qb + j] * q[qb + j]; }
    }
    var worst = best_d[ob + p.k - 1u];
    for (var ri = p.ref_start; ri < p.refs; ri++) {
        let d = distance(qb, ri * p.cols, q_norm);
        if (d < worst) {
            var s = p.k - 1u;
            while (s > 0u && best_d[ob + s - 1u] > d) {
                best_d[ob + s] = best_d[ob + s - 1u];
                best_i[ob + s] = best_i[ob + s - 1u];
                s--;
            }
            best_d[ob + s] = d;
            best_i[ob + s] = ri;
            worst = best_d[ob + p.k - 1u];
        }
    }
}
