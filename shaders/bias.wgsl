// The bias gradient: the column sums of a row-major [rows×cols] matrix. (Adding the bias and
// the activation is fused into the GEMM's epilogue.)

struct Params {
    rows: u32,
    cols: u32,
    activation: u32, // 0 identity, 1 relu, 2 tanh
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> bias: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

// bias[j] = sum_i x[i, j]  (here `bias` is the output)
@compute @workgroup_size(64)
fn column_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.cols) { return; }
    var s = 0.0;
    for (var i = 0u; i < p.rows; i++) { s += x[i * p.cols + j]; }
    bias[j] = s;
}
