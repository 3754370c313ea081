//! Small dense linear algebra on the host, in f64: covariance, and the symmetric
//! eigendecomposition (cyclic Jacobi) behind the pseudo-inverse and whitening that the
//! Mahalanobis detectors use. Sizes are features × features, so the host is the right place.
//! The long loops check the job's [`Control`] as they go: a stopped job ends within a row.

use super::Control;
use gpuq_shared::JobError;

/// Column means of a row-major `n × f` matrix.
pub fn means(x: &[f32], f: usize) -> Vec<f64> {
    let n = (x.len() / f.max(1)).max(1) as f64;
    let mut m = vec![0f64; f];
    for row in x.chunks(f) {
        for (s, &v) in m.iter_mut().zip(row) {
            *s += v as f64;
        }
    }
    m.iter().map(|s| s / n).collect()
}

/// Sample covariance (denominator n − 1), `f × f` row-major.
pub fn covariance(x: &[f32], f: usize, mean: &[f64], ctl: &Control) -> Result<Vec<f64>, JobError> {
    let n = x.len() / f.max(1);
    let mut c = vec![0f64; f * f];
    for row in x.chunks(f) {
        ctl.check()?;
        let d: Vec<f64> = row.iter().zip(mean).map(|(&v, m)| v as f64 - m).collect();
        for i in 0..f {
            for j in i..f {
                c[i * f + j] += d[i] * d[j];
            }
        }
    }
    let denom = (n.max(2) - 1) as f64;
    for i in 0..f {
        for j in i..f {
            c[i * f + j] /= denom;
            c[j * f + i] = c[i * f + j];
        }
    }
    Ok(c)
}

/// Eigenvalues and eigenvectors (columns of the returned row-major matrix) of a symmetric
/// matrix, by cyclic Jacobi rotations.
pub fn symmetric_eigen(
    a: &[f64],
    f: usize,
    ctl: &Control,
) -> Result<(Vec<f64>, Vec<f64>), JobError> {
    let mut a = a.to_vec();
    let mut v = vec![0f64; f * f];
    for i in 0..f {
        v[i * f + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..f)
            .flat_map(|i| (0..f).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * f + j] * a[i * f + j])
            .sum();
        let scale: f64 = (0..f).map(|i| a[i * f + i] * a[i * f + i]).sum();
        if off <= 1e-30 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..f {
            ctl.check()?;
            for q in p + 1..f {
                let apq = a[p * f + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * f + q] - a[p * f + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..f {
                    let (akp, akq) = (a[k * f + p], a[k * f + q]);
                    a[k * f + p] = c * akp - s * akq;
                    a[k * f + q] = s * akp + c * akq;
                }
                for k in 0..f {
                    let (apk, aqk) = (a[p * f + k], a[q * f + k]);
                    a[p * f + k] = c * apk - s * aqk;
                    a[q * f + k] = s * apk + c * aqk;
                }
                for k in 0..f {
                    let (vkp, vkq) = (v[k * f + p], v[k * f + q]);
                    v[k * f + p] = c * vkp - s * vkq;
                    v[k * f + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    Ok(((0..f).map(|i| a[i * f + i]).collect(), v))
}

/// A whitening matrix `W` (`f × r`, row-major) with `W Wᵀ` the pseudo-inverse of the
/// symmetric positive semi-definite `s`: eigenvalues at most `rcond × λ_max` count as zero
/// (NumPy's `pinv(hermitian=True)` rule). Then `‖(x − y) W‖² = (x − y)ᵀ s⁺ (x − y)`.
pub fn whitening(s: &[f64], f: usize, rcond: f64, ctl: &Control) -> Result<Vec<f64>, JobError> {
    let (values, vectors) = symmetric_eigen(s, f, ctl)?;
    let max = values.iter().fold(0f64, |m, v| m.max(v.abs()));
    let kept: Vec<usize> = (0..f).filter(|&i| values[i] > rcond * max).collect();
    let r = kept.len();
    let mut w = vec![0f64; f * r];
    for (col, &i) in kept.iter().enumerate() {
        let scale = 1.0 / values[i].sqrt();
        for row in 0..f {
            w[row * r + col] = vectors[row * f + i] * scale;
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitening_inverts_a_full_rank_covariance() {
        // s = [[4, 2], [2, 3]]; s⁻¹ = [[3, -2], [-2, 4]] / 8.
        let s = [4.0, 2.0, 2.0, 3.0];
        let w = whitening(&s, 2, 1e-15, &Control::default()).unwrap();
        let r = w.len() / 2;
        assert_eq!(r, 2);
        let inv = |i: usize, j: usize| (0..r).map(|k| w[i * r + k] * w[j * r + k]).sum::<f64>();
        for (i, j, want) in [(0, 0, 3.0 / 8.0), (0, 1, -2.0 / 8.0), (1, 1, 4.0 / 8.0)] {
            assert!((inv(i, j) - want).abs() < 1e-12, "{i}{j}: {}", inv(i, j));
        }
    }

    #[test]
    fn whitening_drops_the_null_space_of_a_singular_covariance() {
        // Two identical columns: rank 1, pseudo-inverse [[1, 1], [1, 1]] / (4 var).
        let x = [1.0f32, 1.0, 2.0, 2.0, 4.0, 4.0];
        let m = means(&x, 2);
        let ctl = Control::default();
        let s = covariance(&x, 2, &m, &ctl).unwrap();
        assert!((s[0] - 7.0 / 3.0).abs() < 1e-12);
        let w = whitening(&s, 2, 1e-10, &ctl).unwrap();
        assert_eq!(w.len(), 2, "one direction kept");
        let inv00 = w[0] * w[0];
        assert!((inv00 - 1.0 / (4.0 * 7.0 / 3.0)).abs() < 1e-12, "{inv00}");
    }

    #[test]
    fn a_stopped_job_ends_the_eigendecomposition_as_stopped() {
        let ctl = Control::default();
        ctl.request_stop();
        let s = [4.0, 2.0, 2.0, 3.0];
        let e = whitening(&s, 2, 1e-15, &ctl).unwrap_err();
        assert_eq!(e.code, gpuq_shared::ErrorCode::Stopped);
        assert!(covariance(&[1.0, 2.0], 2, &[0.0, 0.0], &ctl).is_err());
    }
}
