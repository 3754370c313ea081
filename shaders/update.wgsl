// Parameter update, plain SGD with L2 weight decay: w -= lr * (g + l2 * w).

struct Params {
    len: u32,
    lr: f32,
    l2: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> w: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.len) { return; }
    w[i] = w[i] - p.lr * (g[i] + p.l2 * w[i]);
}
