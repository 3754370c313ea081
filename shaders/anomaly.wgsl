// Per-row anomaly scores against a genuine user's statistics (Killourhy & Maxion, DSN 2009).
//   mode 0, scaled Manhattan: sum_j |x_j - center_j| / scale_j   (scale: mean absolute deviation)
//   mode 1, z-score:          #{ j : |x_j - center_j| / scale_j > threshold }   (scale: std)
//   mode 2, norm:             sqrt(sum_j x_j²)   (rows already whitened: Mahalanobis distance)

struct Params {
    rows: u32,
    cols: u32,
    mode: u32,
    threshold: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> center: array<f32>;
@group(0) @binding(2) var<storage, read> scale: array<f32>;
@group(0) @binding(3) var<storage, read_write> score: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn score_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.rows) { return; }
    let base = i * p.cols;
    var s = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        let v = x[base + j];
        if (p.mode == 0u) {
            s += abs(v - center[j]) / scale[j];
        } else if (p.mode == 1u) {
            s += select(0.0, 1.0, abs(v - center[j]) / scale[j] > p.threshold);
        } else {
            s = fma(v, v, s);
        }
    }
    if (p.mode == 2u) { s = sqrt(s); }
    score[i] = s;
}
