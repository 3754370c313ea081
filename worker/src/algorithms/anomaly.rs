//! One-class anomaly detectors from keystroke-dynamics research (Killourhy & Maxion, "Comparing
//! Anomaly-Detection Algorithms for Keystroke Dynamics", DSN 2009). Trained on one user's
//! genuine samples; inference scores new samples, higher = more anomalous:
//! - `scaled_manhattan`: Σ |x − μ| / a, a the mean absolute deviation of each feature;
//! - `zscore`: how many features have |x − μ| / σ above `z_threshold`;
//! - `mahalanobis`: √((x − μ)ᵀ S⁺ (x − μ)), S the sample covariance, S⁺ its pseudo-inverse;
//! - `nearest_neighbor_mahalanobis`: the Mahalanobis distance to the nearest training sample.
//!
//! The Mahalanobis forms whiten on the GPU: `z = (x − μ) W` with `W Wᵀ = S⁺` (a GEMM), then a
//! row norm or a nearest-neighbour search among the whitened training samples. With a `label`
//! column at inference (1 genuine, 0 impostor) the result adds the equal-error rate and the
//! zero-miss false-alarm rate.

use super::knn::References;
use super::linalg;
use super::pacing::paced;
use super::{Control, CsvOut, Inference, Trained, check_bindings, gpu_lost};
use crate::artifact::{self, Artifact, Tensor};
use crate::gpu::Gpu;
use crate::gpu::gemm::GemmParams;
use crate::gpu::kernels::Kernel;
use crate::gpu::neighbors::{Metric, ScoreMode, ScoreParams};
use gpuq_shared::dataset::Table;
use gpuq_shared::params::{AnomalyMethod, AnomalyParams};
use gpuq_shared::{Algorithm, ErrorCode, JobError};
use serde_json::json;

/// Eigenvalues at most 1e-10 λ_max count as zero (a rank-deficient covariance, such as timing
/// features where one is the sum of two others, has its null space at ~1e-16 λ_max).
const PINV_RCOND: f64 = 1e-10;
/// Covariance work is on the host: beyond this many features it is refused.
const MAX_MAHALANOBIS_FEATURES: usize = 2048;

/// One detector's parameters, fitted to its genuine samples.
pub struct Fitted {
    pub mean: Vec<f32>,
    /// Scaled Manhattan (mean absolute deviations) and z-score (standard deviations).
    pub scale: Option<Vec<f32>>,
    /// The Mahalanobis forms: `W` (f × rank, row-major) with `W Wᵀ = S⁺`, and the rank.
    pub whitening: Option<(Vec<f32>, usize)>,
    /// Nearest-neighbour Mahalanobis: the training rows whitened (n × rank).
    pub references: Option<Vec<f32>>,
}

/// Fits a detector to the `n` rows of `x` (`f` features each), in f64.
pub fn fit(x: &[f32], f: usize, p: &AnomalyParams, ctl: &Control) -> Result<Fitted, JobError> {
    let n = x.len() / f.max(1);
    if n < 2 {
        return Err(JobError::invalid_input(
            "an anomaly detector needs at least two genuine samples",
        ));
    }
    let mean = linalg::means(x, f);
    let mut fitted = Fitted {
        mean: mean.iter().map(|&m| m as f32).collect(),
        scale: None,
        whitening: None,
        references: None,
    };
    match p.method {
        AnomalyMethod::ScaledManhattan | AnomalyMethod::Zscore => {
            // A small group (a fleet's member) is checked once, not once per feature.
            let large = n * f > 1 << 16;
            let scale: Vec<f32> = (0..f)
                .map(|j| {
                    if large {
                        ctl.check()?;
                    }
                    let col = x.chunks(f).map(|r| r[j] as f64 - mean[j]);
                    let s = if p.method == AnomalyMethod::Zscore {
                        (col.map(|d| d * d).sum::<f64>() / (n - 1) as f64).sqrt()
                    } else {
                        col.map(f64::abs).sum::<f64>() / n as f64
                    };
                    Ok(if s > 0.0 { s as f32 } else { 1.0 })
                })
                .collect::<Result<_, JobError>>()?;
            fitted.scale = Some(scale);
        }
        AnomalyMethod::Mahalanobis | AnomalyMethod::NearestNeighborMahalanobis => {
            if f > MAX_MAHALANOBIS_FEATURES {
                return Err(JobError::new(
                    ErrorCode::InputTooLarge,
                    format!(
                        "{f} features: the Mahalanobis detectors take at most {MAX_MAHALANOBIS_FEATURES}"
                    ),
                ));
            }
            let cov = linalg::covariance(x, f, &mean, ctl)?;
            let w = linalg::whitening(&cov, f, PINV_RCOND, ctl)?;
            let r = w.len() / f;
            if p.method == AnomalyMethod::NearestNeighborMahalanobis {
                let mut refs: Vec<f32> = Vec::with_capacity(n * r);
                for row in x.chunks(f) {
                    ctl.check()?;
                    refs.extend((0..r).map(|c| {
                        (0..f)
                            .map(|j| (row[j] as f64 - mean[j]) * w[j * r + c])
                            .sum::<f64>() as f32
                    }));
                }
                fitted.references = Some(refs);
            }
            fitted.whitening = Some((w.iter().map(|&v| v as f32).collect(), r));
        }
    }
    Ok(fitted)
}

pub fn train(table: Table, p: &AnomalyParams, ctl: &Control) -> Result<Trained, JobError> {
    ctl.check()?;
    let x = table.features;
    let (n, f) = (x.rows, x.cols);
    let fitted = fit(&x.data, f, p, ctl)?;
    let mut tensors = vec![Tensor::F32("mean", vec![f], &fitted.mean)];
    if let Some(scale) = &fitted.scale {
        tensors.push(Tensor::F32("scale", vec![f], scale));
    }
    if let Some(refs) = &fitted.references {
        let r = fitted.whitening.as_ref().map_or(0, |w| w.1);
        tensors.push(Tensor::F32("references", vec![n, r], refs));
    }
    if let Some((w, r)) = &fitted.whitening {
        tensors.push(Tensor::F32("whitening", vec![f, *r], w));
    }
    let artifact = artifact::write(
        Algorithm::Anomaly.as_str(),
        &tensors,
        &[
            ("method", json!(p.method)),
            ("z_threshold", json!(p.z_threshold)),
            ("feature_columns", json!(x.columns)),
        ],
    );
    Ok(Trained {
        artifact,
        n_features: f,
        n_classes: 0,
        metrics: json!({ "rows": n, "features": f, "method": p.method }),
        fleet: None,
    })
}

enum Detector {
    /// Scaled Manhattan or z-score: the score kernel against center and scale.
    Scaled {
        mode: ScoreMode,
        center: wgpu::Buffer,
        scale: wgpu::Buffer,
        threshold: f32,
    },
    /// Whitening `W` (f × r); with `references` (whitened training rows) the nearest one.
    Whitened {
        w: wgpu::Buffer,
        rank: usize,
        references: Option<References>,
    },
}

pub struct GpuAnomaly {
    method: AnomalyMethod,
    mean: Vec<f32>,
    detector: Detector,
    feature_columns: Vec<String>,
}

impl GpuAnomaly {
    pub fn load(gpu: &Gpu, a: &Artifact) -> Result<Self, JobError> {
        let feature_columns: Vec<String> = a.meta("feature_columns")?;
        let method: AnomalyMethod = a.meta("method")?;
        let f = feature_columns.len();
        let mean = a.f32("mean", &[f])?;
        check_bindings(gpu, &[("the feature means", f)])?;
        let detector = match method {
            AnomalyMethod::ScaledManhattan | AnomalyMethod::Zscore => {
                let scale = a.f32("scale", &[f])?;
                let threshold = a.meta::<f64>("z_threshold")? as f32;
                Detector::Scaled {
                    mode: if method == AnomalyMethod::Zscore {
                        ScoreMode::ZScoreCount
                    } else {
                        ScoreMode::ScaledManhattan
                    },
                    center: gpu.upload("center", &mean),
                    scale: gpu.upload("scale", &scale),
                    threshold,
                }
            }
            AnomalyMethod::Mahalanobis | AnomalyMethod::NearestNeighborMahalanobis => {
                // W is f × r, r the rank of the training covariance: never more than f.
                let (rows, rank) = a.matrix_shape("whitening")?;
                if rows != f || rank > f {
                    return Err(artifact::corrupt(format!(
                        "whitening is {rows} × {rank} for {f} features"
                    )));
                }
                let w = a.f32("whitening", &[f, rank])?;
                check_bindings(gpu, &[("the whitening", f * rank)])?;
                let references = if method == AnomalyMethod::Mahalanobis {
                    None
                } else {
                    let (n, _) = a.matrix_shape("references")?;
                    let refs = a.f32("references", &[n, rank])?;
                    if n == 0 {
                        return Err(artifact::corrupt("no reference samples"));
                    }
                    check_bindings(gpu, &[("the reference samples", n * rank)])?;
                    Some(References {
                        buffer: gpu.upload("references", &refs),
                        rows: n,
                        cols: rank,
                        k: 1,
                        metric: Metric::SquaredEuclidean,
                    })
                };
                Detector::Whitened {
                    w: gpu.upload("whitening", &w),
                    rank,
                    references,
                }
            }
        };
        Ok(Self {
            method,
            mean,
            detector,
            feature_columns,
        })
    }

    pub fn n_features(&self) -> usize {
        self.feature_columns.len()
    }

    /// Bytes held: the detector's buffers on the device, the mean on the host.
    pub fn bytes(&self) -> u64 {
        let device = match &self.detector {
            Detector::Scaled { center, scale, .. } => center.size() + scale.size(),
            Detector::Whitened { w, references, .. } => {
                w.size() + references.as_ref().map_or(0, |r| r.buffer.size())
            }
        };
        device + self.mean.len() as u64 * 4
    }

    /// The anomaly score of every row, in [`paced`] submissions.
    pub fn scores(
        &self,
        gpu: &Gpu,
        x: &[f32],
        n: usize,
        ctl: &Control,
    ) -> Result<Vec<f32>, JobError> {
        let f = self.n_features();
        // Rows per chunk so that the widest per-row buffer fits one binding.
        let chunk = |width: usize| {
            n.min(gpu.max_binding_bytes() as usize / (4 * width.max(1)))
                .clamp(1, 1 << 14)
        };
        let mut out = Vec::with_capacity(n);
        match &self.detector {
            Detector::Scaled {
                mode,
                center,
                scale,
                threshold,
            } => {
                let chunk = chunk(f);
                let score = gpu.zeros("scores", chunk);
                paced(n, f, chunk, ctl, |off, rows| {
                    let xb = gpu.upload("features", &x[off * f..(off + rows) * f]);
                    let p = ScoreParams::new(rows, f, *mode, *threshold);
                    submit_scores(gpu, &xb, center, scale, &score, p);
                    out.extend(gpu.read(&score, rows).map_err(gpu_lost)?);
                    Ok(())
                })?;
            }
            Detector::Whitened {
                w,
                rank,
                references,
            } => {
                // Whole chunks, so that a search among the references has as many queries as
                // a binding holds; the whitening and the search pace themselves.
                let chunk = chunk(f.max(*rank));
                let score = gpu.zeros("scores", chunk);
                for off in (0..n).step_by(chunk) {
                    let rows = chunk.min(n - off);
                    let z = self.whiten(gpu, &x[off * f..(off + rows) * f], w, *rank, ctl)?;
                    match references {
                        None => {
                            ctl.check()?;
                            let unused = gpu.zeros("unused", 1);
                            let p = ScoreParams::new(rows, *rank, ScoreMode::Norm, 0.0);
                            submit_scores(gpu, &z, &unused, &unused, &score, p);
                            out.extend(gpu.read(&score, rows).map_err(gpu_lost)?);
                        }
                        Some(refs) => {
                            let nearest = gpu.zeros("nearest", rows);
                            refs.nearest(gpu, &z, rows, [&score, &nearest], ctl)?;
                            // The search leaves squared distances.
                            let d2 = gpu.read(&score, rows).map_err(gpu_lost)?;
                            out.extend(d2.iter().map(|v| v.max(0.0).sqrt()));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// `z = (x − μ) W` for the rows of `slice`, on the GPU, in [`paced`] ranges of rows.
    fn whiten(
        &self,
        gpu: &Gpu,
        slice: &[f32],
        w: &wgpu::Buffer,
        rank: usize,
        ctl: &Control,
    ) -> Result<wgpu::Buffer, JobError> {
        let f = self.n_features();
        let rows = slice.len() / f;
        // Centre on the host (exact enough in f32), whiten on the GPU.
        let centred: Vec<f32> = slice
            .chunks(f)
            .flat_map(|row| row.iter().zip(&self.mean).map(|(v, m)| v - m))
            .collect();
        let xb = gpu.upload("features", &centred);
        let z = gpu.zeros("whitened", rows * rank.max(1));
        let gemm = Kernel::gemm(gpu);
        paced(rows, f * rank.max(1), rows, ctl, |start, len| {
            let p = GemmParams {
                a_off: (start * f) as u32,
                c_off: (start * rank) as u32,
                ..GemmParams::new(len, rank, f, false, false)
            };
            let u = gpu.uniform(&p);
            let mut enc = gpu.encoder();
            gemm.encode(&mut enc, &gemm.bind(gpu, &[&xb, w, &z, &u, w]), p.groups());
            gpu.submit(enc);
            gpu.wait();
            Ok(())
        })?;
        Ok(z)
    }

    /// `score` per row; with labels, the equal-error and zero-miss false-alarm rates.
    pub fn infer(
        &self,
        gpu: &Gpu,
        table: &Table,
        rows_json: bool,
        ctl: &Control,
        csv: CsvOut,
    ) -> Result<Inference, JobError> {
        let x = &table.features;
        let scores = self.scores(gpu, &x.data, x.rows, ctl)?;
        inference_of(&scores, self.method, table, rows_json, ctl, csv)
    }
}

/// An inference of anomaly `scores`: a `score` per row; with labels in `table`, the equal-error
/// and zero-miss false-alarm rates.
pub fn inference_of(
    scores: &[f32],
    method: AnomalyMethod,
    table: &Table,
    rows_json: bool,
    ctl: &Control,
    csv: CsvOut,
) -> Result<Inference, JobError> {
    let mut inf = Inference::new(vec!["score".into()], csv);
    for s in scores {
        ctl.check()?;
        inf.push_csv(&[s.to_string()])?;
        if rows_json {
            inf.rows.push(json!({ "score": s }));
        }
    }
    inf.summary.insert("method".into(), json!(method));
    if let Some(labels) = &table.labels {
        let genuine = labels
            .iter()
            .map(|&l| match l {
                1.0 => Ok(true),
                0.0 => Ok(false),
                other => Err(JobError::invalid_input(format!(
                    "label {other}: anomaly labels are 1 (genuine) or 0 (impostor)"
                ))),
            })
            .collect::<Result<Vec<bool>, _>>()?;
        let rates = ErrorRates::of(scores, &genuine);
        inf.summary
            .insert("genuine_rows".into(), json!(rates.genuine));
        inf.summary
            .insert("impostor_rows".into(), json!(rates.impostors));
        inf.summary
            .insert("equal_error_rate".into(), json!(rates.eer));
        inf.summary.insert(
            "zero_miss_false_alarm_rate".into(),
            json!(rates.zero_miss_far),
        );
    }
    Ok(inf)
}

/// Submits the score kernel over `p.rows` rows of `x` into `out`.
fn submit_scores(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    center: &wgpu::Buffer,
    scale: &wgpu::Buffer,
    out: &wgpu::Buffer,
    p: ScoreParams,
) {
    let u = gpu.uniform(&p);
    let k = Kernel::anomaly_score(gpu);
    let mut enc = gpu.encoder();
    k.encode(
        &mut enc,
        &k.bind(gpu, &[x, center, scale, out, &u]),
        p.groups(),
    );
    gpu.submit(enc);
}

/// Detection error rates of anomaly scores, an alarm being `score > threshold`.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorRates {
    pub genuine: usize,
    pub impostors: usize,
    /// At the threshold where false alarms and misses are closest: their mean (the smaller
    /// mean among equally close thresholds).
    pub eer: Option<f64>,
    /// The false-alarm rate of the highest threshold that still misses no impostor.
    pub zero_miss_far: Option<f64>,
}

impl ErrorRates {
    pub fn of(scores: &[f32], genuine: &[bool]) -> Self {
        let g: Vec<f64> = scores
            .iter()
            .zip(genuine)
            .filter(|(_, g)| **g)
            .map(|(s, _)| *s as f64)
            .collect();
        let i: Vec<f64> = scores
            .iter()
            .zip(genuine)
            .filter(|(_, g)| !**g)
            .map(|(s, _)| *s as f64)
            .collect();
        let (ng, ni) = (g.len(), i.len());
        if ng == 0 || ni == 0 {
            return Self {
                genuine: ng,
                impostors: ni,
                eer: None,
                zero_miss_far: None,
            };
        }
        let mut thresholds: Vec<f64> = scores.iter().map(|&s| s as f64).collect();
        thresholds.sort_by(f64::total_cmp);
        thresholds.dedup();
        thresholds.insert(0, f64::NEG_INFINITY);
        let mut best = (f64::INFINITY, f64::INFINITY);
        for t in thresholds {
            let fa = g.iter().filter(|&&s| s > t).count() as f64 / ng as f64;
            let miss = i.iter().filter(|&&s| s <= t).count() as f64 / ni as f64;
            let key = ((fa - miss).abs(), (fa + miss) / 2.0);
            if key.0 < best.0 || (key.0 == best.0 && key.1 < best.1) {
                best = key;
            }
        }
        let min_impostor = i.iter().copied().fold(f64::INFINITY, f64::min);
        let zero_miss = g.iter().filter(|&&s| s >= min_impostor).count() as f64 / ng as f64;
        Self {
            genuine: ng,
            impostors: ni,
            eer: Some(best.1),
            zero_miss_far: Some(zero_miss),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_scores_have_zero_error() {
        let r = ErrorRates::of(&[0.1, 0.2, 0.9, 1.0], &[true, true, false, false]);
        assert_eq!(r.eer, Some(0.0));
        assert_eq!(r.zero_miss_far, Some(0.0));
    }

    #[test]
    fn overlapping_scores_meet_in_the_middle() {
        // Genuine 1,2,3,4; impostors 3.5,5,6,7. At t = 3.5: FA = 1/4 (4), miss = 1/4 (3.5).
        let r = ErrorRates::of(
            &[1.0, 2.0, 3.0, 4.0, 3.5, 5.0, 6.0, 7.0],
            &[true, true, true, true, false, false, false, false],
        );
        assert_eq!(r.eer, Some(0.25));
        // No miss needs t < 3.5: genuine 4 alarms → 1/4.
        assert_eq!(r.zero_miss_far, Some(0.25));
    }

    #[test]
    fn one_sided_labels_have_no_rates() {
        let r = ErrorRates::of(&[1.0, 2.0], &[true, true]);
        assert_eq!((r.eer, r.zero_miss_far), (None, None));
    }
}
