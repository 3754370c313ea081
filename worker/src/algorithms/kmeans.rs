//! k-means on the GPU: greedy k-means++ seeding (as scikit-learn does it) on the host, Lloyd
//! iterations on the device (assignment and centroid update kernels), the best of `n_init`
//! runs by inertia. Empty clusters are moved to the points farthest from their centroids.
//! Artifact: `centroids` (k × features, float32).

use super::pacing::paced;
use super::{Control, CsvOut, Inference, Trained, check_bindings, gpu_lost};
use crate::artifact::{self, Artifact, Tensor};
use crate::gpu::Gpu;
use crate::gpu::kernels::Kernel;
use crate::gpu::neighbors::KmeansParams as Shape;
use gpuq_shared::dataset::{Matrix, Table};
use gpuq_shared::params::KmeansParams;
use gpuq_shared::{Algorithm, JobError};
use rand::{Rng, SeedableRng};
use serde_json::json;

fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = *x as f64 - *y as f64;
            d * d
        })
        .sum()
}

/// Greedy k-means++: each new centre is the best of `2 + ln k` candidates drawn with
/// probability proportional to the squared distance to the nearest centre so far.
pub fn kmeans_plus_plus(
    x: &Matrix,
    k: usize,
    rng: &mut impl Rng,
    ctl: &Control,
) -> Result<Vec<f32>, JobError> {
    let n = x.rows;
    let trials = 2 + (k as f64).ln() as usize;
    let first = rng.random_range(0..n);
    let mut centres = x.row(first).to_vec();
    let mut closest: Vec<f64> = (0..n).map(|i| dist2(x.row(i), x.row(first))).collect();
    let mut potential: f64 = closest.iter().sum();
    for _ in 1..k {
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for _ in 0..trials {
            ctl.check()?;
            let target = rng.random::<f64>() * potential;
            let mut acc = 0.0;
            let mut candidate = n - 1;
            for (i, d) in closest.iter().enumerate() {
                acc += d;
                if acc > target {
                    candidate = i;
                    break;
                }
            }
            let with: Vec<f64> = (0..n)
                .map(|i| closest[i].min(dist2(x.row(i), x.row(candidate))))
                .collect();
            let pot: f64 = with.iter().sum();
            if best.as_ref().is_none_or(|b| pot < b.0) {
                best = Some((pot, candidate, with));
            }
        }
        let (pot, chosen, with) = best.expect("at least one trial");
        centres.extend_from_slice(x.row(chosen));
        closest = with;
        potential = pot;
    }
    Ok(centres)
}

/// Buffers of one training run, reused across the `n_init` runs.
struct Lloyd<'a> {
    gpu: &'a Gpu,
    x: &'a Matrix,
    shape: Shape,
    centroids: wgpu::Buffer,
    assignment: wgpu::Buffer,
    dist2: wgpu::Buffer,
    counts: wgpu::Buffer,
    assign_bind: wgpu::BindGroup,
    update_bind: wgpu::BindGroup,
    _u: wgpu::Buffer,
}

impl<'a> Lloyd<'a> {
    fn new(gpu: &'a Gpu, host: &'a Matrix, x: &wgpu::Buffer, shape: Shape) -> Self {
        let (n, k, f) = (shape.rows as usize, shape.k as usize, shape.cols as usize);
        let centroids = gpu.zeros("centroids", k * f);
        let assign = gpu.zeros("assignment", n);
        let dist2 = gpu.zeros("distance", n);
        let counts = gpu.zeros("counts", k);
        let u = gpu.uniform(&shape);
        let assign_bind =
            Kernel::kmeans_assign(gpu).bind(gpu, &[x, &centroids, &assign, &dist2, &u]);
        let update_bind = Kernel::kmeans_update(gpu).bind_at(
            gpu,
            &[(0, x), (1, &centroids), (2, &assign), (4, &u), (5, &counts)],
        );
        Self {
            gpu,
            x: host,
            shape,
            centroids,
            assignment: assign,
            dist2,
            counts,
            assign_bind,
            update_bind,
            _u: u,
        }
    }

    fn assign(&self, enc: &mut wgpu::CommandEncoder) {
        Kernel::kmeans_assign(self.gpu).encode(enc, &self.assign_bind, self.shape.assign_groups());
    }

    /// Σ of the squared distances of every row to its nearest centroid (in f64).
    fn inertia(&self) -> Result<f64, JobError> {
        let mut enc = self.gpu.encoder();
        self.assign(&mut enc);
        self.gpu.submit(enc);
        let d = self
            .gpu
            .read(&self.dist2, self.shape.rows as usize)
            .map_err(gpu_lost)?;
        Ok(d.iter().map(|&v| v as f64).sum())
    }

    /// Lloyd iterations from `init` until the centroids move less than `tol_abs`. Returns
    /// the centroids, the inertia and the iterations run.
    fn run(
        &self,
        init: &[f32],
        max_iter: u32,
        tol_abs: f64,
        ctl: &Control,
    ) -> Result<(Vec<f32>, f64, u32), JobError> {
        let (gpu, k, f) = (self.gpu, self.shape.k as usize, self.shape.cols as usize);
        gpu.queue
            .write_buffer(&self.centroids, 0, bytemuck::cast_slice(init));
        let mut current = init.to_vec();
        let mut iterations = 0;
        for _ in 0..max_iter {
            ctl.check()?;
            iterations += 1;
            let mut enc = gpu.encoder();
            self.assign(&mut enc);
            Kernel::kmeans_update(gpu).encode(
                &mut enc,
                &self.update_bind,
                self.shape.update_groups(),
            );
            gpu.submit(enc);
            let mut next = gpu.read(&self.centroids, k * f).map_err(gpu_lost)?;
            let counts = gpu.read(&self.counts, k).map_err(gpu_lost)?;
            if counts.contains(&0.0) {
                self.relocate_empty(&mut next, &counts)?;
            }
            let shift: f64 = dist2(&next, &current);
            current = next;
            if shift <= tol_abs {
                break;
            }
        }
        let inertia = self.inertia()?;
        Ok((current, inertia, iterations))
    }

    /// Moves each empty cluster's centroid onto the row farthest from its own centroid.
    fn relocate_empty(&self, centroids: &mut [f32], counts: &[f32]) -> Result<(), JobError> {
        let (gpu, f) = (self.gpu, self.shape.cols as usize);
        let n = self.shape.rows as usize;
        let d = gpu.read(&self.dist2, n).map_err(gpu_lost)?;
        let mut far: Vec<usize> = (0..n).collect();
        far.sort_by(|&a, &b| d[b].total_cmp(&d[a]).then(a.cmp(&b)));
        let empty = counts.iter().enumerate().filter(|(_, n)| **n == 0.0);
        for ((c, _), &row) in empty.zip(&far) {
            centroids[c * f..(c + 1) * f].copy_from_slice(self.x.row(row));
        }
        gpu.queue
            .write_buffer(&self.centroids, 0, bytemuck::cast_slice(centroids));
        Ok(())
    }

    /// The cluster of every row under the centroids on the device.
    fn sizes(&self) -> Result<Vec<u64>, JobError> {
        let mut sizes = vec![0u64; self.shape.k as usize];
        let assigned = self
            .gpu
            .read_u32(&self.assignment, self.shape.rows as usize)
            .map_err(gpu_lost)?;
        for c in assigned {
            sizes[c as usize] += 1;
        }
        Ok(sizes)
    }
}

pub fn train(
    gpu: &Gpu,
    table: Table,
    p: &KmeansParams,
    ctl: &Control,
) -> Result<Trained, JobError> {
    let x = table.features;
    let (n, f, k) = (x.rows, x.cols, p.k as usize);
    if k > n {
        return Err(JobError::invalid_input(format!(
            "k = {k} clusters needs at least {k} rows; the input has {n}"
        )));
    }
    check_bindings(
        gpu,
        &[("the training matrix", n * f), ("the centroids", k * f)],
    )?;
    let x_buf = gpu.upload("features", &x.data);
    let shape = Shape::new(n, f, k);
    let lloyd = Lloyd::new(gpu, &x, &x_buf, shape);
    // scikit-learn's tolerance: relative to the mean variance of the features.
    let mean_var = (0..f)
        .map(|j| {
            let col = (0..n).map(|i| x.row(i)[j] as f64);
            let mean = col.clone().sum::<f64>() / n as f64;
            col.map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64
        })
        .sum::<f64>()
        / f.max(1) as f64;
    let tol_abs = p.tol * mean_var;
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
    let mut best: Option<(Vec<f32>, f64, u32)> = None;
    let mut inertias = Vec::new();
    for run in 0..p.n_init {
        ctl.report(
            run as f32 / p.n_init as f32,
            format!("initialisation {}/{}", run + 1, p.n_init),
        );
        let init = kmeans_plus_plus(&x, k, &mut rng, ctl)?;
        let result = lloyd.run(&init, p.max_iter, tol_abs, ctl)?;
        inertias.push(result.1);
        if best.as_ref().is_none_or(|b| result.1 < b.1) {
            best = Some(result);
        }
    }
    let (centroids, inertia, iterations) = best.expect("n_init >= 1");
    gpu.queue
        .write_buffer(&lloyd.centroids, 0, bytemuck::cast_slice(&centroids));
    lloyd.inertia()?;
    let sizes = lloyd.sizes()?;
    let metrics = json!({
        "inertia": inertia,
        "iterations": iterations,
        "n_init": p.n_init,
        "inertia_per_init": inertias,
        "cluster_sizes": sizes,
        "rows": n,
        "features": f,
        "clusters": k,
    });
    let artifact = artifact::write(
        Algorithm::Kmeans.as_str(),
        &[Tensor::F32("centroids", vec![k, f], &centroids)],
        &[
            ("feature_columns", json!(x.columns)),
            ("inertia", json!(inertia)),
        ],
    );
    Ok(Trained {
        artifact,
        n_features: f,
        n_classes: k,
        metrics,
        fleet: None,
    })
}

/// Centroids resident on the GPU.
pub struct GpuKmeans {
    centroids: Vec<f32>,
    buffer: wgpu::Buffer,
    feature_columns: Vec<String>,
}

impl GpuKmeans {
    pub fn load(gpu: &Gpu, a: &Artifact) -> Result<Self, JobError> {
        let feature_columns: Vec<String> = a.meta("feature_columns")?;
        let f = feature_columns.len();
        let (k, _) = a.matrix_shape("centroids")?;
        let centroids = a.f32("centroids", &[k, f])?;
        if k == 0 {
            return Err(artifact::corrupt("no centroids"));
        }
        check_bindings(gpu, &[("the centroids", k * f)])?;
        Ok(Self {
            buffer: gpu.upload("centroids", &centroids),
            centroids,
            feature_columns,
        })
    }

    pub fn n_features(&self) -> usize {
        self.feature_columns.len()
    }

    /// Bytes held: the centroids, on the device and on the host.
    pub fn bytes(&self) -> u64 {
        self.buffer.size() + self.centroids.len() as u64 * 4
    }

    fn k(&self) -> usize {
        self.centroids.len() / self.n_features().max(1)
    }

    /// `cluster,distance` (Euclidean, to the cluster's centroid) per row; the inertia of the
    /// input in the summary.
    pub fn infer(
        &self,
        gpu: &Gpu,
        table: &Table,
        rows_json: bool,
        ctl: &Control,
        csv: CsvOut,
    ) -> Result<Inference, JobError> {
        let x = &table.features;
        let (n, f, k) = (x.rows, x.cols, self.k());
        let chunk = n
            .min(gpu.max_binding_bytes() as usize / (4 * f.max(1)))
            .clamp(1, 1 << 20);
        let mut inf = Inference::new(vec!["cluster".into(), "distance".into()], csv);
        let mut inertia = 0f64;
        let assign_buf = gpu.zeros("assignment", chunk);
        let dist_buf = gpu.zeros("distance", chunk);
        let kernel = Kernel::kmeans_assign(gpu);
        paced(n, k * f, chunk, ctl, |off, rows| {
            let x_buf = gpu.upload("features", &x.data[off * f..(off + rows) * f]);
            let shape = Shape::new(rows, f, k);
            let u = gpu.uniform(&shape);
            let mut enc = gpu.encoder();
            kernel.encode(
                &mut enc,
                &kernel.bind(gpu, &[&x_buf, &self.buffer, &assign_buf, &dist_buf, &u]),
                shape.assign_groups(),
            );
            gpu.submit(enc);
            let clusters = gpu.read_u32(&assign_buf, rows).map_err(gpu_lost)?;
            let d2 = gpu.read(&dist_buf, rows).map_err(gpu_lost)?;
            for (c, d) in clusters.iter().zip(&d2) {
                let d = (*d as f64).sqrt();
                inertia += d * d;
                inf.push_csv(&[c.to_string(), d.to_string()])?;
                if rows_json {
                    inf.rows.push(json!({ "cluster": c, "distance": d }));
                }
            }
            Ok(())
        })?;
        inf.summary.insert("clusters".into(), json!(k));
        inf.summary.insert("inertia".into(), json!(inertia));
        Ok(inf)
    }
}
