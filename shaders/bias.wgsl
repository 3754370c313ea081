// Bias and activation over a row-major [rows×cols] matrix, and the bias gradient
// (the column sums of a matrix).

struct Params {
    rows: u32,
    cols: u32,
    activation: u32, // 0 identity, 1 relu, 2 tanh
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> bias: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

// x[i, j] = act(x[i, j] + bias[j])
@compute @workgroup_size(256)
fn bias_act(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= p.rows * p.cols) { return; }
    var v = x[idx] + bias[idx % p.cols];
    if (p.activation == 1u) { v = max(v, 0.0); }
    else if (p.activation == 2u) { v = tanh(v); }
    x[idx] = v;
}

// bias[j] = sum_i x[i, j]  (here `bias` is the output)
@compute @workgroup_size(64)
fn column_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.cols) { return; }
    var s = 0.0;
    for (var i = 0u; i < p.rows; i++) { s += x[i * p.cols + j]; }
    bias[j] = s;
}
