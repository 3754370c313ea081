// Anomaly scores against a fleet of detectors, one per group, each row scored by its own
// group's detector: `slot[i]` is row i's index on the group axis of the stacked parameters.
// The arithmetic per row is that of anomaly.wgsl and knn.wgsl for one detector (the same terms
// in the same order), so a fleet member scores as the same detector trained alone.
//   scaled  mode 0, scaled Manhattan: sum_j |x_j - mean[s,j]| / scale[s,j]
//           mode 1, z-score:          #{ j : |x_j - mean[s,j]| / scale[s,j] > threshold }
//   whiten  z[i,c] = sum_j (x_j - mean[s,j]) W[s,j,c]   (W padded to cols × cols with zeros)
//   norm    sqrt(sum_c z[i,c]²)                         (Mahalanobis)
//   nearest sqrt(min over the group's references r of sum_c (z[i,c] - r_c)²)

struct Params {
    rows: u32,
    cols: u32,
    mode: u32,
    threshold: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> slot: array<u32>;
@group(0) @binding(2) var<storage, read> mean: array<f32>;
@group(0) @binding(3) var<storage, read> scale: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;
@group(0) @binding(6) var<storage, read> ref_start: array<u32>;
@group(0) @binding(7) var<storage, read> refs: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

@compute @workgroup_size(64)
fn scaled(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.rows) { return; }
    let base = i * p.cols;
    let g = slot[i] * p.cols;
    var s = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        let v = x[base + j];
        if (p.mode == 0u) {
            s += abs(v - mean[g + j]) / scale[g + j];
        } else {
            s += select(0.0, 1.0, abs(v - mean[g + j]) / scale[g + j] > p.threshold);
        }
    }
    out[i] = s;
}

// One invocation per (row, column) of z; `scale` holds the stacked W [groups, cols, cols].
@compute @workgroup_size(64)
fn whiten(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = index(gid, nwg);
    if (t >= p.rows * p.cols) { return; }
    let i = t / p.cols;
    let c = t % p.cols;
    let s = slot[i];
    let g = s * p.cols;
    let w = s * p.cols * p.cols;
    var acc = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        acc = fma(x[i * p.cols + j] - mean[g + j], scale[w + j * p.cols + c], acc);
    }
    out[t] = acc;
}

@compute @workgroup_size(64)
fn norm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.rows) { return; }
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let v = x[i * p.cols + c];
        s = fma(v, v, s);
    }
    out[i] = sqrt(s);
}

// `x` holds whitened rows; the references of group s are rows ref_start[s]..ref_start[s + 1].
@compute @workgroup_size(64)
fn nearest(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.rows) { return; }
    let s = slot[i];
    var best = 3.402823e38;
    for (var r = ref_start[s]; r < ref_start[s + 1u]; r++) {
        var acc = 0.0;
        for (var j = 0u; j < p.cols; j++) {
            let t = x[i * p.cols + j] - refs[r * p.cols + j];
            acc = acc + t * t;
        }
        best = min(best, acc);
    }
    out[i] = sqrt(max(best, 0.0));
}
