// Tiled matrix multiply: C[m×n] = op(A)[m×k] · op(B)[k×n], op = identity or transpose.
// Each 16×16 workgroup computes a 64×64 tile of C, each invocation a 4×4 block held in
// registers; A and B tiles of depth 16 are staged through workgroup memory.
// Offsets (in elements) let one bound buffer serve many mini-batches.

struct Params {
    m: u32, n: u32, k: u32,
    trans_a: u32, trans_b: u32,
    a_off: u32, b_off: u32, c_off: u32,
    lda: u32, ldb: u32, ldc: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [TK][TM]
var<workgroup> b_tile: array<f32, 1024>; // [TK][TN]

fn load_a(i: u32, kk: u32) -> f32 {
    if (i >= p.m || kk >= p.k) { return 0.0; }
    if (p.trans_a == 0u) { return a[p.a_off + i * p.lda + kk]; }
    return a[p.a_off + kk * p.lda + i];
}

fn load_b(kk: u32, j: u32) -> f32 {
    if (kk >= p.k || j >= p.n) { return 0.0; }
    if (p.trans_b == 0u) { return b[p.b_off + kk * p.ldb + j]; }
    return b[p.b_off + j * p.ldb + kk];
}

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }

    for (var t = 0u; t < p.k; t += TK) {
        for (var l = 0u; l < 4u; l++) {
            let idx = tid + l * 256u;
            // A: consecutive invocations walk k when A is row-major, rows when transposed.
            var ai = idx / TK;
            var ak = idx % TK;
            if (p.trans_a != 0u) { ai = idx % TM; ak = idx / TM; }
            a_tile[ak * TM + ai] = load_a(row0 + ai, t + ak);
            var bk = idx / TN;
            var bj = idx % TN;
            if (p.trans_b != 0u) { bk = idx % TK; bj = idx / TK; }
            b_tile[bk * TN + bj] = load_b(t + bk, col0 + bj);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) { av[r] = a_tile[kk * TM + lid.y * 4u + r]; }
            for (var s = 0u; s < 4u; s++) { bv[s] = b_tile[kk * TN + lid.x * 4u + s]; }
            for (var r = 0u; r < 4u; r++) {
                for (var s = 0u; s < 4u; s++) {
                    acc[r * 4u + s] = fma(av[r], bv[s], acc[r * 4u + s]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var r = 0u; r < 4u; r++) {
        let i = row0 + lid.y * 4u + r;
        for (var s = 0u; s < 4u; s++) {
            let j = col0 + lid.x * 4u + s;
            if (i < p.m && j < p.n) {
                c[p.c_off + i * p.ldc + j] = acc[r * 4u + s];
            }
        }
    }
}
