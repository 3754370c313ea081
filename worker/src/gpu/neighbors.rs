//! Distance kernels: k-means assignment and update (`shaders/kmeans.wgsl`), k nearest
//! references (`shaders/knn.wgsl`) and per-row anomaly scores (`shaders/anomaly.wgsl`), each
//! with its parameter block and a CPU reference that the parity tests hold it to.

use super::kernels::Kernel;
use super::{Gpu, groups_1d};
use bytemuck::{Pod, Zeroable};

const KMEANS_SRC: &str = include_str!("../../../shaders/kmeans.wgsl");
const KNN_SRC: &str = include_str!("../../../shaders/knn.wgsl");
const ANOMALY_SRC: &str = include_str!("../../../shaders/anomaly.wgsl");

impl Kernel {
    /// Bindings: 0 `x`, 1 centroids, 2 assignment (u32), 3 squared distance, 4 [`KmeansParams`].
    pub fn kmeans_assign(gpu: &Gpu) -> Self {
        Self::from_source(gpu, "kmeans_assign", KMEANS_SRC, "assign_rows")
    }
    /// Bindings: 0 `x`, 1 centroids (updated), 2 assignment, 4 [`KmeansParams`], 5 counts.
    pub fn kmeans_update(gpu: &Gpu) -> Self {
        Self::from_source(gpu, "kmeans_update", KMEANS_SRC, "update_centroids")
    }
    /// Bindings: 0 queries, 1 references, 2 best distances, 3 best indices (u32),
    /// 4 [`KnnParams`].
    pub fn knn(gpu: &Gpu) -> Self {
        Self::from_source(gpu, "knn", KNN_SRC, "nearest")
    }
    /// Bindings: 0 `x`, 1 center, 2 scale, 3 score, 4 [`ScoreParams`].
    pub fn anomaly_score(gpu: &Gpu) -> Self {
        Self::from_source(gpu, "anomaly_score", ANOMALY_SRC, "score_rows")
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct KmeansParams {
    pub rows: u32,
    pub cols: u32,
    pub k: u32,
    pub _pad: u32,
}

impl KmeansParams {
    pub fn new(rows: usize, cols: usize, k: usize) -> Self {
        Self {
            rows: rows as u32,
            cols: cols as u32,
            k: k as u32,
            _pad: 0,
        }
    }
    pub fn assign_groups(&self) -> (u32, u32) {
        groups_1d(self.rows as usize, 64)
    }
    pub fn update_groups(&self) -> (u32, u32) {
        groups_1d(self.k as usize * self.cols as usize, 64)
    }
}

/// Nearest centroid of each row (ties: the lower index) and the squared distance to it.
pub fn kmeans_assign_ref(x: &[f32], centroids: &[f32], p: &KmeansParams) -> (Vec<u32>, Vec<f32>) {
    let cols = p.cols as usize;
    x.chunks(cols)
        .take(p.rows as usize)
        .map(|row| {
            let mut best = (0u32, f32::MAX);
            for (c, centroid) in centroids.chunks(cols).take(p.k as usize).enumerate() {
                let d = row
                    .iter()
                    .zip(centroid)
                    .fold(0f32, |d, (a, b)| (a - b).mul_add(a - b, d));
                if d < best.1 {
                    best = (c as u32, d);
                }
            }
            best
        })
        .unzip()
}

/// New centroids (an empty cluster keeps its old one) and the count of each cluster.
pub fn kmeans_update_ref(
    x: &[f32],
    centroids: &[f32],
    assign: &[u32],
    p: &KmeansParams,
) -> (Vec<f32>, Vec<f32>) {
    let cols = p.cols as usize;
    let mut sums = vec![0f32; p.k as usize * cols];
    let mut counts = vec![0f32; p.k as usize];
    for (row, &c) in x.chunks(cols).zip(assign).take(p.rows as usize) {
        counts[c as usize] += 1.0;
        for (s, v) in sums[c as usize * cols..][..cols].iter_mut().zip(row) {
            *s += v;
        }
    }
    let mut out = centroids[..p.k as usize * cols].to_vec();
    for (c, &n) in counts.iter().enumerate() {
        if n > 0.0 {
            for j in 0..cols {
                out[c * cols + j] = sums[c * cols + j] / n;
            }
        }
    }
    (out, counts)
}

/// Distance measures of the nearest-neighbour kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Metric {
    /// Squared Euclidean distance (the square root is taken on the host).
    SquaredEuclidean = 0,
    /// `1 - cos(q, r)`; 1 when either vector is zero.
    Cosine = 1,
    Manhattan = 2,
}

impl From<gpuq_shared::params::Metric> for Metric {
    fn from(m: gpuq_shared::params::Metric) -> Self {
        use gpuq_shared::params::Metric as Named;
        match m {
            Named::Euclidean => Self::SquaredEuclidean,
            Named::Cosine => Self::Cosine,
            Named::Manhattan => Self::Manhattan,
        }
    }
}

impl Metric {
    /// The kernel's metric for a name as params and artifacts spell it.
    pub fn parse(name: &str) -> Option<Self> {
        gpuq_shared::params::Metric::from_name(name).map(Self::from)
    }

    /// The reported distance for the kernel's value.
    pub fn finish(self, d: f32) -> f64 {
        match self {
            Self::SquaredEuclidean => (d as f64).sqrt(),
            _ => d as f64,
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct KnnParams {
    pub queries: u32,
    /// The end of the references one dispatch scans.
    pub refs: u32,
    pub cols: u32,
    pub k: u32,
    pub metric: u32,
    /// The first reference one dispatch scans (see [`KnnParams::slice`]).
    pub ref_start: u32,
    pub _pad: [u32; 2],
}

impl KnnParams {
    /// `k` is capped at the number of references.
    pub fn new(queries: usize, refs: usize, cols: usize, k: usize, metric: Metric) -> Self {
        Self {
            queries: queries as u32,
            refs: refs as u32,
            cols: cols as u32,
            k: k.min(refs).max(1) as u32,
            metric: metric as u32,
            ref_start: 0,
            _pad: [0; 2],
        }
    }

    /// Scans only references `start..end`, carrying on from the best lists already in the
    /// output buffers when `start > 0`: consecutive slices give what one pass over all gives.
    pub fn slice(self, start: usize, end: usize) -> Self {
        Self {
            ref_start: start as u32,
            refs: end as u32,
            ..self
        }
    }
    pub fn groups(&self) -> (u32, u32) {
        groups_1d(self.queries as usize, 64)
    }
}

/// The kernel's distance, term by term in feature order, in f32.
pub fn knn_distance_ref(q: &[f32], r: &[f32], metric: u32) -> f32 {
    match metric {
        0 => q
            .iter()
            .zip(r)
            .fold(0f32, |acc, (a, b)| acc + (a - b) * (a - b)),
        2 => q
            .iter()
            .zip(r)
            .fold(0f32, |acc, (a, b)| acc + (a - b).abs()),
        _ => {
            let dot = q.iter().zip(r).fold(0f32, |acc, (a, b)| acc + a * b);
            let qn = q.iter().fold(0f32, |acc, a| acc + a * a);
            let rn = r.iter().fold(0f32, |acc, a| acc + a * a);
            if qn == 0.0 || rn == 0.0 {
                1.0
            } else {
                1.0 - dot / (qn.sqrt() * rn.sqrt())
            }
        }
    }
}

/// For each query, its `k` nearest references sorted by distance, ties by lower index.
pub fn knn_ref(q: &[f32], r: &[f32], p: &KnnParams) -> (Vec<f32>, Vec<u32>) {
    let (cols, k) = (p.cols as usize, p.k as usize);
    let mut dist = Vec::new();
    let mut idx = Vec::new();
    for query in q.chunks(cols).take(p.queries as usize) {
        let mut all: Vec<(f32, u32)> = r
            .chunks(cols)
            .take(p.refs as usize)
            .enumerate()
            .map(|(i, row)| (knn_distance_ref(query, row, p.metric), i as u32))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for &(d, i) in &all[..k] {
            dist.push(d);
            idx.push(i);
        }
    }
    (dist, idx)
}

/// What the anomaly kernel computes per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ScoreMode {
    ScaledManhattan = 0,
    ZScoreCount = 1,
    Norm = 2,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct ScoreParams {
    pub rows: u32,
    pub cols: u32,
    pub mode: u32,
    pub threshold: f32,
}

impl ScoreParams {
    pub fn new(rows: usize, cols: usize, mode: ScoreMode, threshold: f32) -> Self {
        Self {
            rows: rows as u32,
            cols: cols as u32,
            mode: mode as u32,
            threshold,
        }
    }
    pub fn groups(&self) -> (u32, u32) {
        groups_1d(self.rows as usize, 64)
    }
}

pub fn anomaly_score_ref(x: &[f32], center: &[f32], scale: &[f32], p: &ScoreParams) -> Vec<f32> {
    x.chunks(p.cols as usize)
        .take(p.rows as usize)
        .map(|row| {
            let terms = row.iter().zip(center.iter().zip(scale));
            match p.mode {
                0 => terms.fold(0f32, |s, (v, (c, a))| s + (v - c).abs() / a),
                1 => terms
                    .filter(|(v, (c, a))| (*v - *c).abs() / *a > p.threshold)
                    .count() as f32,
                _ => row.iter().fold(0f32, |s, v| v.mul_add(*v, s)).sqrt(),
            }
        })
        .collect()
}
