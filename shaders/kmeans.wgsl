// Lloyd's k-means on row-major data x [rows×cols] and centroids [k×cols].
//   assign: each row's nearest centroid (ties: the lower index) and its squared distance.
//   update: each centroid coordinate becomes the mean of its rows' (one invocation per
//           coordinate, rows summed in order, so the result is deterministic); a centroid
//           with no rows keeps its place and reports a count of 0.

struct Params {
    rows: u32,
    cols: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> centroids: array<f32>;
@group(0) @binding(2) var<storage, read_write> assign: array<u32>;
@group(0) @binding(3) var<storage, read_write> dist2: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read_write> counts: array<f32>;

@compute @workgroup_size(64)
fn assign_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.rows) { return; }
    let base = i * p.cols;
    var best = 0u;
    var best_d = 3.4e38;
    for (var c = 0u; c < p.k; c++) {
        var d = 0.0;
        let cb = c * p.cols;
        for (var j = 0u; j < p.cols; j++) {
            let t = x[base + j] - centroids[cb + j];
            d = fma(t, t, d);
        }
        if (d < best_d) { best_d = d; best = c; }
    }
    assign[i] = best;
    dist2[i] = best_d;
}

@compute @workgroup_size(64)
fn update_centroids(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.k * p.cols) { return; }
    let c = idx / p.cols;
    let j = idx % p.cols;
    var sum = 0.0;
    var count = 0u;
    for (var i = 0u; i < p.rows; i++) {
        if (assign[i] == c) {
            sum += x[i * p.cols + j];
            count++;
        }
    }
    if (count > 0u) { centroids[idx] = sum / f32(count); }
    if (j == 0u) { counts[c] = f32(count); }
}
