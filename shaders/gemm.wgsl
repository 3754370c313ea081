// Tiled matrix multiply: C[m×n] = act(op(A)[m×k] · op(B)[k×n] + bias), op = identity or
// transpose, bias and activation optional (the fused epilogue).
// Offsets (in elements) let one bound buffer serve many mini-batches.

struct Params {
    m: u32, n: u32, k: u32,
    trans_a: u32, trans_b: u32,
    a_off: u32, b_off: u32, c_off: u32,
    lda: u32, ldb: u32, ldc: u32,
    bias: u32,        // 1: add bias[bias_off + j]
    activation: u32,  // 0 identity, 1 relu, 2 tanh
    bias_off: u32,
    _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

fn epilogue(v: f32, j: u32) -> f32 {
    var z = v;
    if (p.bias != 0u) { z += bias[p.bias_off + j]; }
    if (p.activation == 1u) { z = max(z, 0.0); }
    else if (p.activation == 2u) { z = tanh(z); }
    return z;
}

// op(A)[i][kk], zero outside the matrix.
fn load_a(i: u32, kk: u32) -> f32 {
    if (i >= p.m || kk >= p.k) { return 0.0; }
    if (p.trans_a == 0u) { return a[p.a_off + i * p.lda + kk]; }
    return a[p.a_off + kk * p.lda + i];
}

// op(B)[kk][j], zero outside the matrix.
fn load_b(kk: u32, j: u32) -> f32 {
    if (kk >= p.k || j >= p.n) { return 0.0; }
    if (p.trans_b == 0u) { return b[p.b_off + kk * p.ldb + j]; }
    return b[p.b_off + j * p.ldb + kk];
}

fn store_c(i: u32, j: u32, v: f32) {
    if (i < p.m && j < p.n) { c[p.c_off + i * p.ldc + j] = epilogue(v, j); }
}

fn store_row(i: u32, j: u32, lo: vec4<f32>, hi: vec4<f32>) {
    store_c(i, j, lo.x); store_c(i, j + 1u, lo.y); store_c(i, j + 2u, lo.z); store_c(i, j + 3u, lo.w);
    store_c(i, j + 64u, hi.x); store_c(i, j + 65u, hi.y); store_c(i, j + 66u, hi.z); store_c(i, j + 67u, hi.w);
}

// ---------------------------------------------------------------------------------------------
// GPU variant: a 16×16 workgroup computes a 128×128 tile of C, each invocation an 8×8 block in
// 16 named vec4 registers: rows 4·ty + {0..3} and 64 + 4·ty + {0..3}, columns 4·tx + {0..3}
// and 64 + 4·tx + {0..3} (so the 16 lanes of a half-warp read 16 consecutive vec4 of a tile row).
// A and B are staged through workgroup memory TK = 8 deep, double-buffered with a register
// prefetch of the next slab, so there is one barrier per slab. Tiles are stored k-major, a k-row
// being TM/4 = 32 vec4; vec4 q of k-row kk lives in slot (q + kk) % 32, a skew that spreads the
// transposing scalar stores of a warp over all 32 banks while every read stays one aligned vec4.
// Both double-buffered tiles together take 16 KiB, WebGPU's default workgroup storage limit.

const TM: u32 = 128u;
const TK: u32 = 8u;
const ROW: u32 = 32u;             // vec4 per k-row of a tile
const BUF: u32 = 256u;            // TK * ROW: vec4 per buffer

var<workgroup> as_: array<vec4<f32>, 512>; // [2][TK][ROW]: op(A) tile, k-major, skewed
var<workgroup> bs_: array<vec4<f32>, 512>; // [2][TK][ROW]: op(B) tile, k-major, skewed

// Slot of element `x` (row of op(A) or column of op(B) within the tile) in k-row `kk`.
fn slot(kk: u32, x: u32) -> u32 {
    return kk * ROW + ((x / 4u + kk) % ROW);
}

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;
    let row0 = wid.y * TM;
    let col0 = wid.x * TM;

    // What this invocation stages per slab: 4 elements of op(A) and 4 of op(B). Consecutive
    // invocations walk the operand's contiguous dimension (k for row-major A, rows for Aᵀ; columns
    // for row-major B, k for Bᵀ), 8 or 128 apart.
    var sa_i: u32; var sa_k: u32; var sa_di: u32; var sa_dk: u32;
    if (p.trans_a == 0u) { sa_i = tid / 8u; sa_k = tid % 8u; sa_di = 32u; sa_dk = 0u; }
    else { sa_i = tid % 128u; sa_k = tid / 128u; sa_di = 0u; sa_dk = 2u; }
    var sb_j: u32; var sb_k: u32; var sb_dj: u32; var sb_dk: u32;
    if (p.trans_b == 0u) { sb_j = tid % 128u; sb_k = tid / 128u; sb_dj = 0u; sb_dk = 2u; }
    else { sb_j = tid / 8u; sb_k = tid % 8u; sb_dj = 32u; sb_dk = 0u; }

    var ra: vec4<f32>;
    var rb: vec4<f32>;
    for (var l = 0u; l < 4u; l++) {
        ra[l] = load_a(row0 + sa_i + l * sa_di, sa_k + l * sa_dk);
        rb[l] = load_b(sb_k + l * sb_dk, col0 + sb_j + l * sb_dj);
    }
    for (var l = 0u; l < 4u; l++) {
        let ai = sa_i + l * sa_di;
        as_[slot(sa_k + l * sa_dk, ai)][ai % 4u] = ra[l];
        let bj = sb_j + l * sb_dj;
        bs_[slot(sb_k + l * sb_dk, bj)][bj % 4u] = rb[l];
    }
    workgroupBarrier();

    var c00_0 = vec4<f32>(0.0); var c00_1 = vec4<f32>(0.0);
    var c01_0 = vec4<f32>(0.0); var c01_1 = vec4<f32>(0.0);
    var c02_0 = vec4<f32>(0.0); var c02_1 = vec4<f32>(0.0);
    var c03_0 = vec4<f32>(0.0); var c03_1 = vec4<f32>(0.0);
    var c10_0 = vec4<f32>(0.0); var c10_1 = vec4<f32>(0.0);
    var c11_0 = vec4<f32>(0.0); var c11_1 = vec4<f32>(0.0);
    var c12_0 = vec4<f32>(0.0); var c12_1 = vec4<f32>(0.0);
    var c13_0 = vec4<f32>(0.0); var c13_1 = vec4<f32>(0.0);

    let slabs = (p.k + TK - 1u) / TK;
    var cur = 0u;
    for (var t = 0u; t < slabs; t++) {
        let more = t + 1u < slabs;
        if (more) {
            let k0 = (t + 1u) * TK;
            for (var l = 0u; l < 4u; l++) {
                ra[l] = load_a(row0 + sa_i + l * sa_di, k0 + sa_k + l * sa_dk);
                rb[l] = load_b(k0 + sb_k + l * sb_dk, col0 + sb_j + l * sb_dj);
            }
        }
        let base = cur * BUF;
        for (var kk = 0u; kk < TK; kk++) {
            let o = base + kk * ROW;
            let a0 = as_[o + ((ty + kk) % ROW)];
            let a1 = as_[o + ((ty + 16u + kk) % ROW)];
            let b0 = bs_[o + ((tx + kk) % ROW)];
            let b1 = bs_[o + ((tx + 16u + kk) % ROW)];
            c00_0 = fma(vec4<f32>(a0.x), b0, c00_0); c00_1 = fma(vec4<f32>(a0.x), b1, c00_1);
            c01_0 = fma(vec4<f32>(a0.y), b0, c01_0); c01_1 = fma(vec4<f32>(a0.y), b1, c01_1);
            c02_0 = fma(vec4<f32>(a0.z), b0, c02_0); c02_1 = fma(vec4<f32>(a0.z), b1, c02_1);
            c03_0 = fma(vec4<f32>(a0.w), b0, c03_0); c03_1 = fma(vec4<f32>(a0.w), b1, c03_1);
            c10_0 = fma(vec4<f32>(a1.x), b0, c10_0); c10_1 = fma(vec4<f32>(a1.x), b1, c10_1);
            c11_0 = fma(vec4<f32>(a1.y), b0, c11_0); c11_1 = fma(vec4<f32>(a1.y), b1, c11_1);
            c12_0 = fma(vec4<f32>(a1.z), b0, c12_0); c12_1 = fma(vec4<f32>(a1.z), b1, c12_1);
            c13_0 = fma(vec4<f32>(a1.w), b0, c13_0); c13_1 = fma(vec4<f32>(a1.w), b1, c13_1);
        }
        if (more) {
            let nb = (1u - cur) * BUF;
            for (var l = 0u; l < 4u; l++) {
                let ai = sa_i + l * sa_di;
                as_[nb + slot(sa_k + l * sa_dk, ai)][ai % 4u] = ra[l];
                let bj = sb_j + l * sb_dj;
                bs_[nb + slot(sb_k + l * sb_dk, bj)][bj % 4u] = rb[l];
            }
        }
        workgroupBarrier();
        cur = 1u - cur;
    }

    let i0 = row0 + 4u * ty;
    let j0 = col0 + 4u * tx;
    store_row(i0, j0, c00_0, c00_1);
    store_row(i0 + 1u, j0, c01_0, c01_1);
    store_row(i0 + 2u, j0, c02_0, c02_1);
    store_row(i0 + 3u, j0, c03_0, c03_1);
    store_row(i0 + 64u, j0, c10_0, c10_1);
    store_row(i0 + 65u, j0, c11_0, c11_1);
    store_row(i0 + 66u, j0, c12_0, c12_1);
    store_row(i0 + 67u, j0, c13_0, c13_1);
}

fn store4(i: u32, j: u32, v: vec4<f32>) {
    store_c(i, j, v.x); store_c(i, j + 1u, v.y); store_c(i, j + 2u, v.z); store_c(i, j + 3u, v.w);
}

// ---------------------------------------------------------------------------------------------
// CPU variant (lavapipe): an 8×8 workgroup computes the same 128×128 tile of C, each
// invocation a 16×16 block in 64 named vec4 registers: rows 4·ty + 32·h + r, columns
// 4·tx + 32·q + s. llvmpipe runs 8 invocations as SIMD lanes, but Mesa 22.3's gallivm executes
// every workgroup or storage load inside a loop as a loop over the lanes (it has no gather and
// no uniform fast path under control flow), so this variant minimises loads per FMA: a big
// per-invocation block, vec4 loads only (one lane loop fetches four floats), op(A) and op(B)
// staged CK = 16 deep through workgroup memory as whole vec4 stores, and 64 invocations per
// workgroup (8 coroutines to switch at each barrier). Measured on lavapipe: about 1.7× the
// GPU variant and 4× the previous 64×64 kernel; the shared-memory loads of the inner loop are
// still about 70% of its time.

const CK: u32 = 16u;
var<workgroup> ca: array<vec4<f32>, 512>; // [CK][32]: op(A) tile, k-major
var<workgroup> cb: array<vec4<f32>, 512>; // [CK][32]: op(B) tile, k-major

@compute @workgroup_size(8, 8)
fn main_cpu(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 8u + tx;
    let row0 = wid.y * TM;
    let col0 = wid.x * TM;

    var c00_0 = vec4<f32>(0.0); var c00_1 = vec4<f32>(0.0); var c00_2 = vec4<f32>(0.0); var c00_3 = vec4<f32>(0.0);
    var c01_0 = vec4<f32>(0.0); var c01_1 = vec4<f32>(0.0); var c01_2 = vec4<f32>(0.0); var c01_3 = vec4<f32>(0.0);
    var c02_0 = vec4<f32>(0.0); var c02_1 = vec4<f32>(0.0); var c02_2 = vec4<f32>(0.0); var c02_3 = vec4<f32>(0.0);
    var c03_0 = vec4<f32>(0.0); var c03_1 = vec4<f32>(0.0); var c03_2 = vec4<f32>(0.0); var c03_3 = vec4<f32>(0.0);
    var c10_0 = vec4<f32>(0.0); var c10_1 = vec4<f32>(0.0); var c10_2 = vec4<f32>(0.0); var c10_3 = vec4<f32>(0.0);
    var c11_0 = vec4<f32>(0.0); var c11_1 = vec4<f32>(0.0); var c11_2 = vec4<f32>(0.0); var c11_3 = vec4<f32>(0.0);
    var c12_0 = vec4<f32>(0.0); var c12_1 = vec4<f32>(0.0); var c12_2 = vec4<f32>(0.0); var c12_3 = vec4<f32>(0.0);
    var c13_0 = vec4<f32>(0.0); var c13_1 = vec4<f32>(0.0); var c13_2 = vec4<f32>(0.0); var c13_3 = vec4<f32>(0.0);
    var c20_0 = vec4<f32>(0.0); var c20_1 = vec4<f32>(0.0); var c20_2 = vec4<f32>(0.0); var c20_3 = vec4<f32>(0.0);
    var c21_0 = vec4<f32>(0.0); var c21_1 = vec4<f32>(0.0); var c21_2 = vec4<f32>(0.0); var c21_3 = vec4<f32>(0.0);
    var c22_0 = vec4<f32>(0.0); var c22_1 = vec4<f32>(0.0); var c22_2 = vec4<f32>(0.0); var c22_3 = vec4<f32>(0.0);
    var c23_0 = vec4<f32>(0.0); var c23_1 = vec4<f32>(0.0); var c23_2 = vec4<f32>(0.0); var c23_3 = vec4<f32>(0.0);
    var c30_0 = vec4<f32>(0.0); var c30_1 = vec4<f32>(0.0); var c30_2 = vec4<f32>(0.0); var c30_3 = vec4<f32>(0.0);
    var c31_0 = vec4<f32>(0.0); var c31_1 = vec4<f32>(0.0); var c31_2 = vec4<f32>(0.0); var c31_3 = vec4<f32>(0.0);
    var c32_0 = vec4<f32>(0.0); var c32_1 = vec4<f32>(0.0); var c32_2 = vec4<f32>(0.0); var c32_3 = vec4<f32>(0.0);
    var c33_0 = vec4<f32>(0.0); var c33_1 = vec4<f32>(0.0); var c33_2 = vec4<f32>(0.0); var c33_3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < p.k; k0 += CK) {
        for (var s = tid; s < 512u; s += 64u) {
            let kk = k0 + s / 32u;
            let x = 4u * (s % 32u);
            let i = row0 + x;
            ca[s] = vec4<f32>(load_a(i, kk), load_a(i + 1u, kk), load_a(i + 2u, kk), load_a(i + 3u, kk));
            let j = col0 + x;
            cb[s] = vec4<f32>(load_b(kk, j), load_b(kk, j + 1u), load_b(kk, j + 2u), load_b(kk, j + 3u));
        }
        workgroupBarrier();
        for (var kk = 0u; kk < CK; kk++) {
            let o = kk * 32u;
            let a0 = ca[o + ty + 0u];
            let a1 = ca[o + ty + 8u];
            let a2 = ca[o + ty + 16u];
            let a3 = ca[o + ty + 24u];
            let b0 = cb[o + tx + 0u];
            let b1 = cb[o + tx + 8u];
            let b2 = cb[o + tx + 16u];
            let b3 = cb[o + tx + 24u];
            c00_0 = fma(vec4<f32>(a0.x), b0, c00_0); c00_1 = fma(vec4<f32>(a0.x), b1, c00_1); c00_2 = fma(vec4<f32>(a0.x), b2, c00_2); c00_3 = fma(vec4<f32>(a0.x), b3, c00_3);
            c01_0 = fma(vec4<f32>(a0.y), b0, c01_0); c01_1 = fma(vec4<f32>(a0.y), b1, c01_1); c01_2 = fma(vec4<f32>(a0.y), b2, c01_2); c01_3 = fma(vec4<f32>(a0.y), b3, c01_3);
            c02_0 = fma(vec4<f32>(a0.z), b0, c02_0); c02_1 = fma(vec4<f32>(a0.z), b1, c02_1); c02_2 = fma(vec4<f32>(a0.z), b2, c02_2); c02_3 = fma(vec4<f32>(a0.z), b3, c02_3);
            c03_0 = fma(vec4<f32>(a0.w), b0, c03_0); c03_1 = fma(vec4<f32>(a0.w), b1, c03_1); c03_2 = fma(vec4<f32>(a0.w), b2, c03_2); c03_3 = fma(vec4<f32>(a0.w), b3, c03_3);
            c10_0 = fma(vec4<f32>(a1.x), b0, c10_0); c10_1 = fma(vec4<f32>(a1.x), b1, c10_1); c10_2 = fma(vec4<f32>(a1.x), b2, c10_2); c10_3 = fma(vec4<f32>(a1.x), b3, c10_3);
            c11_0 = fma(vec4<f32>(a1.y), b0, c11_0); c11_1 = fma(vec4<f32>(a1.y), b1, c11_1); c11_2 = fma(vec4<f32>(a1.y), b2, c11_2); c11_3 = fma(vec4<f32>(a1.y), b3, c11_3);
            c12_0 = fma(vec4<f32>(a1.z), b0, c12_0); c12_1 = fma(vec4<f32>(a1.z), b1, c12_1); c12_2 = fma(vec4<f32>(a1.z), b2, c12_2); c12_3 = fma(vec4<f32>(a1.z), b3, c12_3);
            c13_0 = fma(vec4<f32>(a1.w), b0, c13_0); c13_1 = fma(vec4<f32>(a1.w), b1, c13_1); c13_2 = fma(vec4<f32>(a1.w), b2, c13_2); c13_3 = fma(vec4<f32>(a1.w), b3, c13_3);
            c20_0 = fma(vec4<f32>(a2.x), b0, c20_0); c20_1 = fma(vec4<f32>(a2.x), b1, c20_1); c20_2 = fma(vec4<f32>(a2.x), b2, c20_2); c20_3 = fma(vec4<f32>(a2.x), b3, c20_3);
            c21_0 = fma(vec4<f32>(a2.y), b0, c21_0); c21_1 = fma(vec4<f32>(a2.y), b1, c21_1); c21_2 = fma(vec4<f32>(a2.y), b2, c21_2); c21_3 = fma(vec4<f32>(a2.y), b3, c21_3);
            c22_0 = fma(vec4<f32>(a2.z), b0, c22_0); c22_1 = fma(vec4<f32>(a2.z), b1, c22_1); c22_2 = fma(vec4<f32>(a2.z), b2, c22_2); c22_3 = fma(vec4<f32>(a2.z), b3, c22_3);
            c23_0 = fma(vec4<f32>(a2.w), b0, c23_0); c23_1 = fma(vec4<f32>(a2.w), b1, c23_1); c23_2 = fma(vec4<f32>(a2.w), b2, c23_2); c23_3 = fma(vec4<f32>(a2.w), b3, c23_3);
            c30_0 = fma(vec4<f32>(a3.x), b0, c30_0); c30_1 = fma(vec4<f32>(a3.x), b1, c30_1); c30_2 = fma(vec4<f32>(a3.x), b2, c30_2); c30_3 = fma(vec4<f32>(a3.x), b3, c30_3);
            c31_0 = fma(vec4<f32>(a3.y), b0, c31_0); c31_1 = fma(vec4<f32>(a3.y), b1, c31_1); c31_2 = fma(vec4<f32>(a3.y), b2, c31_2); c31_3 = fma(vec4<f32>(a3.y), b3, c31_3);
            c32_0 = fma(vec4<f32>(a3.z), b0, c32_0); c32_1 = fma(vec4<f32>(a3.z), b1, c32_1); c32_2 = fma(vec4<f32>(a3.z), b2, c32_2); c32_3 = fma(vec4<f32>(a3.z), b3, c32_3);
            c33_0 = fma(vec4<f32>(a3.w), b0, c33_0); c33_1 = fma(vec4<f32>(a3.w), b1, c33_1); c33_2 = fma(vec4<f32>(a3.w), b2, c33_2); c33_3 = fma(vec4<f32>(a3.w), b3, c33_3);
        }
        workgroupBarrier();
    }

    let i0 = row0 + 4u * ty;
    let j0 = col0 + 4u * tx;
    store4(i0 + 0u, j0 + 0u, c00_0);
    store4(i0 + 0u, j0 + 32u, c00_1);
    store4(i0 + 0u, j0 + 64u, c00_2);
    store4(i0 + 0u, j0 + 96u, c00_3);
    store4(i0 + 1u, j0 + 0u, c01_0);
    store4(i0 + 1u, j0 + 32u, c01_1);
    store4(i0 + 1u, j0 + 64u, c01_2);
    store4(i0 + 1u, j0 + 96u, c01_3);
    store4(i0 + 2u, j0 + 0u, c02_0);
    store4(i0 + 2u, j0 + 32u, c02_1);
    store4(i0 + 2u, j0 + 64u, c02_2);
    store4(i0 + 2u, j0 + 96u, c02_3);
    store4(i0 + 3u, j0 + 0u, c03_0);
    store4(i0 + 3u, j0 + 32u, c03_1);
    store4(i0 + 3u, j0 + 64u, c03_2);
    store4(i0 + 3u, j0 + 96u, c03_3);
    store4(i0 + 32u, j0 + 0u, c10_0);
    store4(i0 + 32u, j0 + 32u, c10_1);
    store4(i0 + 32u, j0 + 64u, c10_2);
    store4(i0 + 32u, j0 + 96u, c10_3);
    store4(i0 + 33u, j0 + 0u, c11_0);
    store4(i0 + 33u, j0 + 32u, c11_1);
    store4(i0 + 33u, j0 + 64u, c11_2);
    store4(i0 + 33u, j0 + 96u, c11_3);
    store4(i0 + 34u, j0 + 0u, c12_0);
    store4(i0 + 34u, j0 + 32u, c12_1);
    store4(i0 + 34u, j0 + 64u, c12_2);
    store4(i0 + 34u, j0 + 96u, c12_3);
    store4(i0 + 35u, j0 + 0u, c13_0);
    store4(i0 + 35u, j0 + 32u, c13_1);
    store4(i0 + 35u, j0 + 64u, c13_2);
    store4(i0 + 35u, j0 + 96u, c13_3);
    store4(i0 + 64u, j0 + 0u, c20_0);
    store4(i0 + 64u, j0 + 32u, c20_1);
    store4(i0 + 64u, j0 + 64u, c20_2);
    store4(i0 + 64u, j0 + 96u, c20_3);
    store4(i0 + 65u, j0 + 0u, c21_0);
    store4(i0 + 65u, j0 + 32u, c21_1);
    store4(i0 + 65u, j0 + 64u, c21_2);
    store4(i0 + 65u, j0 + 96u, c21_3);
    store4(i0 + 66u, j0 + 0u, c22_0);
    store4(i0 + 66u, j0 + 32u, c22_1);
    store4(i0 + 66u, j0 + 64u, c22_2);
    store4(i0 + 66u, j0 + 96u, c22_3);
    store4(i0 + 67u, j0 + 0u, c23_0);
    store4(i0 + 67u, j0 + 32u, c23_1);
    store4(i0 + 67u, j0 + 64u, c23_2);
    store4(i0 + 67u, j0 + 96u, c23_3);
    store4(i0 + 96u, j0 + 0u, c30_0);
    store4(i0 + 96u, j0 + 32u, c30_1);
    store4(i0 + 96u, j0 + 64u, c30_2);
    store4(i0 + 96u, j0 + 96u, c30_3);
    store4(i0 + 97u, j0 + 0u, c31_0);
    store4(i0 + 97u, j0 + 32u, c31_1);
    store4(i0 + 97u, j0 + 64u, c31_2);
    store4(i0 + 97u, j0 + 96u, c31_3);
    store4(i0 + 98u, j0 + 0u, c32_0);
    store4(i0 + 98u, j0 + 32u, c32_1);
    store4(i0 + 98u, j0 + 64u, c32_2);
    store4(i0 + 98u, j0 + 96u, c32_3);
    store4(i0 + 99u, j0 + 0u, c33_0);
    store4(i0 + 99u, j0 + 32u, c33_1);
    store4(i0 + 99u, j0 + 64u, c33_2);
    store4(i0 + 99u, j0 + 96u, c33_3);
}
