// Parameter updates, one invocation per parameter. Weight decay adds `l2 * w` to the gradient.
//   sgd:      w -= lr * g
//   momentum: m = momentum * m - lr * g;  w += m
//   adam:     m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;  w -= lr (m / c1) / (sqrt(v / c2) + eps)
// with c1 = 1 - b1^t and c2 = 1 - b2^t (bias correction, set by the host each step).

struct Params {
    len: u32,
    lr: f32,
    l2: f32,
    beta1: f32, // momentum for `momentum`
    beta2: f32,
    eps: f32,
    c1: f32,
    c2: f32,
}

@group(0) @binding(0) var<storage, read_write> w: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.len) { return; }
    w[i] = w[i] - p.lr * (g[i] + p.l2 * w[i]);
}

@compute @workgroup_size(256)
fn momentum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.len) { return; }
    let step = p.beta1 * m[i] - p.lr * (g[i] + p.l2 * w[i]);
    m[i] = step;
    w[i] = w[i] + step;
}

@compute @workgroup_size(256)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.len) { return; }
    let grad = g[i] + p.l2 * w[i];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * grad;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * grad * grad;
    m[i] = mi;
    v[i] = vi;
    w[i] = w[i] - p.lr * (mi / p.c1) / (sqrt(vi / p.c2) + p.eps);
}
