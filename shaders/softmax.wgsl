// Row-wise softmax of logits [rows×cols], in place, and for training the cross-entropy
// gradient (p - onehot(label)) * scale with each row's loss and whether its argmax was right.

struct Params {
    rows: u32,
    cols: u32,
    label_off: u32, // index of this batch's first row in labels/loss/correct
    mode: u32,      // 0: probabilities, 1: gradient, 2: probabilities + loss/correct
    scale: f32,     // gradient scale, 1 / batch size
    _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> z: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> correct: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.rows) { return; }
    let base = i * p.cols;
    var zmax = z[base];
    var arg = 0u;
    for (var j = 1u; j < p.cols; j++) {
        if (z[base + j] > zmax) { zmax = z[base + j]; arg = j; }
    }
    var sum = 0.0;
    for (var j = 0u; j < p.cols; j++) { sum += exp(z[base + j] - zmax); }
    let lse = zmax + log(sum);
    if (p.mode != 0u) {
        let label = labels[p.label_off + i];
        loss[p.label_off + i] = lse - z[base + label];
        correct[p.label_off + i] = select(0.0, 1.0, arg == label);
        if (p.mode == 1u) {
            for (var j = 0u; j < p.cols; j++) {
                let onehot = select(0.0, 1.0, j == label);
                z[base + j] = (exp(z[base + j] - lse) - onehot) * p.scale;
            }
            return;
        }
    }
    for (var j = 0u; j < p.cols; j++) { z[base + j] = exp(z[base + j] - lse); }
}
