// Backpropagation through an activation: dz[i] *= act'(a[i]), where `a` is the layer's output
// (relu' = a > 0, tanh' = 1 - a²). Row-major [rows×cols].

struct Params {
    rows: u32,
    cols: u32,
    activation: u32, // 0 identity, 1 relu, 2 tanh
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> dz: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn act_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.rows * p.cols) { return; }
    if (p.activation == 1u) {
        dz[i] = select(0.0, dz[i], a[i] > 0.0);
    } else if (p.activation == 2u) {
        dz[i] = dz[i] * (1.0 - a[i] * a[i]);
    }
}
