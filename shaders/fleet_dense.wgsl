// Fleets of dense classifiers (logistic regressions and MLPs), one per group, trained and
// scored together. Every group's parameters sit at `group * per_group` in `params`, layer after
// layer: W [out × in] row-major, then b [out]; the last layer is `kmax` wide and a group uses
// its first `classes` outputs (the rest stay zero and never enter a softmax).
//
//   step     one invocation per group: one mini-batch step of every training group at once:
//            forward, softmax cross-entropy gradient (scaled by 1 / batch rows), backward and
//            the update (sgd, momentum or adam; L2 on weights only), the same terms as the
//            kernels a model alone trains with (gemm, softmax, update).
//   forward  one invocation per row, each row by the parameters of its own slot: class
//            probabilities, and with labels each row's loss and whether its argmax was right.
//
// `ints` packs the u32 tables, each at the offset the params name:
//   desc   [group × 4]: first row, rows, classes, steps per epoch
//   starts [group × starts_stride]: this epoch's batch boundaries within the group's order
//   order  the epoch's row order
//   labels class index per row
//   active 1 while a group trains
// (forward reads only `desc`, for each slot's classes; `row_ints` holds each row's slot, then
// from `label_off` its class index when labels are given.)

struct Params {
    dims: array<vec4<u32>, 3>, // layer widths: features, hidden…, kmax
    layers: u32,
    base: u32,       // forward: the first row of this dispatch
    groups: u32,
    step: u32,
    epoch: u32,
    optimizer: u32,  // 0 sgd, 1 momentum, 2 adam
    activation: u32, // 1 relu, 2 tanh
    batch_cap: u32,
    lr: f32,
    l2: f32,
    beta1: f32,      // adam's β₁, or the momentum
    beta2: f32,
    eps: f32,
    scratch_per: u32, // scratch floats per group (step) or per row (forward)
    starts_stride: u32,
    state_per: u32,   // optimiser state floats per group: 0, P or 2P (unused by the kernels)
    desc_off: u32,
    starts_off: u32,
    order_off: u32,
    label_off: u32,
    active_off: u32,
    rows: u32,        // forward: rows to score
    mode: u32,        // forward: bit 0 scale the inputs by the slot's mean/std, bit 1 labels
    per_group: u32,   // P
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> ints: array<u32>;
@group(0) @binding(2) var<storage, read_write> params: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<f32>;
@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@group(0) @binding(6) var<storage, read> corr: array<f32>; // adam: 1-β₁ᵗ, 1-β₂ᵗ for t = 1, 2, …
@group(0) @binding(7) var<uniform> p: Params;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
@group(0) @binding(9) var<storage, read> scaling: array<f32>; // [group × 2F]: mean, std
@group(0) @binding(10) var<storage, read> row_ints: array<u32>; // forward: slot per row, labels

fn dim(l: u32) -> u32 {
    return p.dims[l / 4u][l % 4u];
}

// Offset of layer l's weights within a group's parameters (its bias follows them).
fn weight_off(l: u32) -> u32 {
    var off = 0u;
    for (var m = 0u; m < l; m++) {
        off += dim(m + 1u) * dim(m) + dim(m + 1u);
    }
    return off;
}

// Offset of layer l's activations within a group's scratch; the gradients follow all of them.
fn act_off(l: u32) -> u32 {
    var off = 0u;
    for (var m = 0u; m < l; m++) {
        off += p.batch_cap * dim(m + 1u);
    }
    return off;
}

fn activate(v: f32) -> f32 {
    if (p.activation == 1u) { return max(v, 0.0); }
    if (p.activation == 2u) { return tanh(v); }
    return v;
}

// Training state is interleaved across the chunk's groups: element k of group g is at
// `k * groups + g` in `params`, `state` and `scratch`, so neighbouring invocations (groups)
// touch neighbouring words.
fn pi(k: u32, g: u32) -> u32 {
    return k * p.groups + g;
}

fn apply(k: u32, g: u32, grad_in: f32, l2: f32, t: u32) {
    let i = pi(k, g);
    let w = params[i];
    let grad = grad_in + l2 * w;
    if (p.optimizer == 0u) {
        params[i] = w - p.lr * grad;
    } else if (p.optimizer == 1u) {
        let v = p.beta1 * state[i] - p.lr * grad;
        state[i] = v;
        params[i] = w + v;
    } else {
        let c1 = corr[2u * (t - 1u)];
        let c2 = corr[2u * (t - 1u) + 1u];
        let j = pi(k + p.per_group, g);
        let m = p.beta1 * state[i] + (1.0 - p.beta1) * grad;
        let v = p.beta2 * state[j] + (1.0 - p.beta2) * grad * grad;
        state[i] = m;
        state[j] = v;
        params[i] = w - p.lr * (m / c1) / (sqrt(v / c2) + p.eps);
    }
}

// Row r of this step's batch: its index in x.
fn batch_row(first: u32, start: u32, r: u32) -> u32 {
    return first + ints[p.order_off + first + start + r];
}

// One invocation per group: its whole mini-batch step, every sum in a fixed order (over the
// inputs, then the outputs, then the rows), as the kernels a model alone trains with sum.
@compute @workgroup_size(64)
fn step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.x + gid.y * nwg.x * 64u;
    if (g >= p.groups) { return; }
    let d = p.desc_off + g * 4u;
    let steps = ints[d + 3u];
    if (ints[p.active_off + g] == 0u || p.step >= steps) { return; }
    let first = ints[d];
    let classes = ints[d + 2u];
    let at = p.starts_off + g * p.starts_stride + p.step;
    let start = ints[at];
    let rows = ints[at + 1u] - start;
    let f = dim(0u);
    let last = p.layers - 1u;
    let grads = act_off(p.layers);
    let inv = 1.0 / f32(max(rows, 1u));
    let t = p.epoch * steps + p.step + 1u;

    // Forward: a[l] = act(a[l-1] · W[l]ᵀ + b[l]); logits for the last layer.
    for (var l = 0u; l < p.layers; l++) {
        let n_in = dim(l);
        let width = dim(l + 1u);
        let n_out = select(width, classes, l == last);
        let w = weight_off(l);
        let b = w + width * n_in;
        let a = act_off(l);
        var a_in = 0u;
        if (l > 0u) { a_in = act_off(l - 1u); }
        for (var r = 0u; r < rows; r++) {
            let row = batch_row(first, start, r) * f;
            for (var o = 0u; o < n_out; o++) {
                var acc = 0.0;
                if (l == 0u) {
                    for (var i = 0u; i < n_in; i++) {
                        acc += x[row + i] * params[pi(w + o * n_in + i, g)];
                    }
                } else {
                    for (var i = 0u; i < n_in; i++) {
                        acc += scratch[pi(a_in + r * n_in + i, g)] * params[pi(w + o * n_in + i, g)];
                    }
                }
                acc += params[pi(b + o, g)];
                scratch[pi(a + r * width + o, g)] = select(activate(acc), acc, l == last);
            }
        }
    }

    // Softmax cross-entropy: the gradient (p - onehot) / rows over the logits, in place.
    let z = act_off(last);
    let kmax = dim(p.layers);
    for (var r = 0u; r < rows; r++) {
        let pos = first + start + r;
        let label = ints[p.label_off + first + ints[p.order_off + pos]];
        let base = z + r * kmax;
        var zmax = scratch[pi(base, g)];
        for (var j = 1u; j < classes; j++) { zmax = max(zmax, scratch[pi(base + j, g)]); }
        var sum = 0.0;
        for (var j = 0u; j < classes; j++) { sum += exp(scratch[pi(base + j, g)] - zmax); }
        let lse = zmax + log(sum);
        loss[pos] = lse - scratch[pi(base + label, g)];
        for (var j = 0u; j < classes; j++) {
            let onehot = select(0.0, 1.0, j == label);
            let k = pi(base + j, g);
            scratch[k] = (exp(scratch[k] - lse) - onehot) * inv;
        }
    }

    // Backward, last layer first: the gradient below from this layer's weights before they
    // change, then this layer's update.
    for (var k = 0u; k < p.layers; k++) {
        let l = last - k;
        let n_in = dim(l);
        let width = dim(l + 1u);
        let n_out = select(width, classes, l == last);
        let w = weight_off(l);
        let b = w + width * n_in;
        let dz = select(grads + act_off(l), z, l == last);
        if (l > 0u) {
            let below = grads + act_off(l - 1u);
            let a_below = act_off(l - 1u);
            for (var r = 0u; r < rows; r++) {
                for (var i = 0u; i < n_in; i++) {
                    var acc = 0.0;
                    for (var o = 0u; o < n_out; o++) {
                        acc += scratch[pi(dz + r * width + o, g)] * params[pi(w + o * n_in + i, g)];
                    }
                    let a = scratch[pi(a_below + r * n_in + i, g)];
                    if (p.activation == 1u) {
                        acc = select(0.0, acc, a > 0.0);
                    } else if (p.activation == 2u) {
                        acc = acc * (1.0 - a * a);
                    }
                    scratch[pi(below + r * n_in + i, g)] = acc;
                }
            }
        }
        var a_in = 0u;
        if (l > 0u) { a_in = act_off(l - 1u); }
        for (var o = 0u; o < n_out; o++) {
            for (var i = 0u; i < n_in; i++) {
                var acc = 0.0;
                for (var r = 0u; r < rows; r++) {
                    var v = 0.0;
                    if (l == 0u) {
                        v = x[batch_row(first, start, r) * f + i];
                    } else {
                        v = scratch[pi(a_in + r * n_in + i, g)];
                    }
                    acc += scratch[pi(dz + r * width + o, g)] * v;
                }
                apply(w + o * n_in + i, g, acc, p.l2, t);
            }
            var acc = 0.0;
            for (var r = 0u; r < rows; r++) { acc += scratch[pi(dz + r * width + o, g)]; }
            apply(b + o, g, acc, 0.0, t);
        }
    }
}

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let local = gid.x + gid.y * nwg.x * 64u;
    if (local >= p.rows) { return; }
    let row = p.base + local;
    let slot = row_ints[row];
    let classes = ints[p.desc_off + slot * 4u + 2u];
    let f = dim(0u);
    let pbase = slot * p.per_group;
    // Scratch per row: the input (scaled), then each layer's output.
    let scr = local * p.scratch_per;
    for (var i = 0u; i < f; i++) {
        var v = x[row * f + i];
        if ((p.mode & 1u) != 0u) {
            v = (v - scaling[slot * 2u * f + i]) / scaling[slot * 2u * f + f + i];
        }
        scratch[scr + i] = v;
    }
    var a_in = scr;
    let last = p.layers - 1u;
    for (var l = 0u; l < p.layers; l++) {
        let n_in = dim(l);
        let width = dim(l + 1u);
        let n_out = select(width, classes, l == last);
        let w = pbase + weight_off(l);
        let b = w + width * n_in;
        let a = a_in + n_in;
        for (var o = 0u; o < n_out; o++) {
            var acc = 0.0;
            for (var i = 0u; i < n_in; i++) {
                acc += scratch[a_in + i] * params[w + o * n_in + i];
            }
            acc += params[b + o];
            scratch[a + o] = select(activate(acc), acc, l == last);
        }
        a_in = a;
    }
    // a_in now holds the logits.
    let kmax = dim(p.layers);
    var zmax = scratch[a_in];
    var arg = 0u;
    for (var j = 1u; j < classes; j++) {
        if (scratch[a_in + j] > zmax) { zmax = scratch[a_in + j]; arg = j; }
    }
    var sum = 0.0;
    for (var j = 0u; j < classes; j++) { sum += exp(scratch[a_in + j] - zmax); }
    let lse = zmax + log(sum);
    for (var j = 0u; j < kmax; j++) {
        out[local * kmax + j] = select(0.0, exp(scratch[a_in + j] - lse), j < classes);
    }
    if ((p.mode & 2u) != 0u) {
        let label = row_ints[p.label_off + local];
        loss[2u * local] = lse - scratch[a_in + label];
        loss[2u * local + 1u] = select(0.0, 1.0, arg == label);
    }
}
