//! k-nearest-neighbour classification. Training validates and stores the reference rows and
//! their labels; inference finds every query's `k` nearest references in one batched GPU
//! pass (`shaders/knn.wgsl`) and votes. Ties between equally near references go to the lower
//! row index; a tied vote goes to the label whose voters are nearer in total, then to the
//! label of the nearest voter.
//! Artifact: `references` (rows × features, float32), `label_index` (u32 per row, into the
//! `classes` metadata), metadata `k`, `metric`, `classes`, `feature_columns`.

use super::features::class_indices_any;
use super::pacing::paced;
use super::{
    Control, CsvOut, Inference, Trained, accuracy_summary, check_bindings, gpu_lost, label_text,
};
use crate::artifact::{self, Artifact, Tensor};
use crate::gpu::Gpu;
use crate::gpu::kernels::Kernel;
use crate::gpu::neighbors::{KnnParams as Shape, Metric};
use gpuq_shared::dataset::Table;
use gpuq_shared::params::KnnParams;
use gpuq_shared::{Algorithm, JobError};
use serde_json::json;

/// References past this many bytes are refused (they must fit one GPU binding anyway).
pub fn train(table: Table, p: &KnnParams, ctl: &Control) -> Result<Trained, JobError> {
    ctl.check()?;
    let labels = table
        .labels
        .ok_or_else(|| JobError::invalid_input("training needs a label column"))?;
    let x = table.features;
    let (classes, index) = class_indices_any(&labels)?;
    ctl.check()?;
    let (n, f) = (x.rows, x.cols);
    if (n * f) as u64 * 4 > u32::MAX as u64 {
        return Err(super::too_large(
            "the reference rows",
            (n * f) as u64 * 4,
            u32::MAX as u64,
        ));
    }
    let artifact = artifact::write(
        Algorithm::Knn.as_str(),
        &[
            Tensor::F32("references", vec![n, f], &x.data),
            Tensor::U32("label_index", vec![n], &index),
        ],
        &[
            ("k", json!(p.k)),
            ("metric", json!(p.metric)),
            ("classes", json!(classes)),
            ("feature_columns", json!(x.columns)),
        ],
    );
    ctl.check()?;
    let metrics = json!({
        "rows": n,
        "features": f,
        "classes": classes.len(),
        "k": p.k.min(n as u32),
        "metric": p.metric,
    });
    Ok(Trained {
        artifact,
        n_features: f,
        n_classes: classes.len(),
        metrics,
        fleet: None,
    })
}

/// Reference rows on the GPU and how to search them: each query's `k` nearest by `metric`.
pub struct References {
    pub buffer: wgpu::Buffer,
    pub rows: usize,
    pub cols: usize,
    pub k: usize,
    pub metric: Metric,
}

impl References {
    /// Leaves the nearest references of each of the `n` rows of `queries` in `best` (distances,
    /// indices; `n × k`, nearest first), scanning the references in [`paced`] slices.
    pub fn nearest(
        &self,
        gpu: &Gpu,
        queries: &wgpu::Buffer,
        n: usize,
        best: [&wgpu::Buffer; 2],
        ctl: &Control,
    ) -> Result<(), JobError> {
        let kernel = Kernel::knn(gpu);
        let shape = Shape::new(n, self.rows, self.cols, self.k, self.metric);
        let per_reference = n * (self.cols + 1);
        paced(self.rows, per_reference, self.rows, ctl, |start, len| {
            let slice = shape.slice(start, start + len);
            let u = gpu.uniform(&slice);
            let mut enc = gpu.encoder();
            kernel.encode(
                &mut enc,
                &kernel.bind(gpu, &[queries, &self.buffer, best[0], best[1], &u]),
                slice.groups(),
            );
            gpu.submit(enc);
            gpu.wait();
            Ok(())
        })
    }
}

/// References resident on the GPU.
pub struct GpuKnn {
    refs: References,
    label_index: Vec<u32>,
    classes: Vec<f64>,
    feature_columns: Vec<String>,
}

impl GpuKnn {
    pub fn load(gpu: &Gpu, a: &Artifact) -> Result<Self, JobError> {
        let feature_columns: Vec<String> = a.meta("feature_columns")?;
        let classes: Vec<f64> = a.meta("classes")?;
        let k: usize = a.meta("k")?;
        // The same bounds training enforces (`KnnParams`).
        if !(1..=1024).contains(&k) {
            return Err(artifact::corrupt(format!("k = {k} is outside 1..=1024")));
        }
        let metric_name: String = a.meta("metric")?;
        let metric = Metric::parse(&metric_name)
            .ok_or_else(|| artifact::corrupt(format!("unknown metric {metric_name}")))?;
        let f = feature_columns.len();
        let (n, _) = a.matrix_shape("references")?;
        let refs = a.f32("references", &[n, f])?;
        let label_index = a.u32("label_index", &[n])?;
        if n == 0 {
            return Err(artifact::corrupt("no references"));
        }
        if let Some(c) = label_index.iter().find(|&&c| c as usize >= classes.len()) {
            return Err(artifact::corrupt(format!(
                "label index {c} is past its {} classes",
                classes.len()
            )));
        }
        check_bindings(gpu, &[("the reference rows", n * f)])?;
        Ok(Self {
            refs: References {
                buffer: gpu.upload("references", &refs),
                rows: n,
                cols: f,
                k: k.clamp(1, n),
                metric,
            },
            label_index,
            classes,
            feature_columns,
        })
    }

    pub fn n_features(&self) -> usize {
        self.feature_columns.len()
    }

    /// Bytes held: the reference rows on the device, their labels on the host.
    pub fn bytes(&self) -> u64 {
        self.refs.buffer.size() + self.label_index.len() as u64 * 4 + self.classes.len() as u64 * 8
    }

    /// The `k` nearest references of every row of `table`: (distances, indices), row-major.
    pub fn neighbours(
        &self,
        gpu: &Gpu,
        x: &[f32],
        n: usize,
        ctl: &Control,
    ) -> Result<(Vec<f32>, Vec<u32>), JobError> {
        let (f, k) = (self.n_features(), self.refs.k);
        let by_limit = gpu.max_binding_bytes() as usize / (4 * f.max(k));
        let chunk = n.min(by_limit).clamp(1, 1 << 14);
        let (mut dist, mut idx) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
        let best_d = gpu.zeros("best distances", chunk * k);
        let best_i = gpu.zeros("best indices", chunk * k);
        for off in (0..n).step_by(chunk) {
            let rows = chunk.min(n - off);
            let q = gpu.upload("queries", &x[off * f..(off + rows) * f]);
            self.refs.nearest(gpu, &q, rows, [&best_d, &best_i], ctl)?;
            dist.extend(gpu.read(&best_d, rows * k).map_err(gpu_lost)?);
            idx.extend(gpu.read_u32(&best_i, rows * k).map_err(gpu_lost)?);
        }
        Ok((dist, idx))
    }

    /// The winning class of one query's neighbours (sorted nearest first) and the distance
    /// to its nearest voter.
    fn vote(&self, dist: &[f32], idx: &[u32]) -> (usize, f64) {
        let mut tally: Vec<(usize, usize, f64, usize)> = Vec::new(); // class, votes, Σd, first
        for (pos, (&d, &i)) in dist.iter().zip(idx).enumerate() {
            let class = self.label_index[i as usize] as usize;
            match tally.iter_mut().find(|t| t.0 == class) {
                Some(t) => {
                    t.1 += 1;
                    t.2 += d as f64;
                }
                None => tally.push((class, 1, d as f64, pos)),
            }
        }
        let best = tally
            .iter()
            .min_by(|a, b| b.1.cmp(&a.1).then(a.2.total_cmp(&b.2)).then(a.3.cmp(&b.3)))
            .expect("k >= 1");
        (best.0, self.refs.metric.finish(dist[best.3]))
    }

    /// `label,distance,n0..n{k-1}` per row: the voted label, the distance to its nearest
    /// voter and the training-row index of each neighbour, nearest first.
    pub fn infer(
        &self,
        gpu: &Gpu,
        table: &Table,
        rows_json: bool,
        ctl: &Control,
        csv: CsvOut,
    ) -> Result<Inference, JobError> {
        let x = &table.features;
        let k = self.refs.k;
        let (dist, idx) = self.neighbours(gpu, &x.data, x.rows, ctl)?;
        let mut columns = vec!["label".to_string(), "distance".to_string()];
        columns.extend((0..k).map(|s| format!("n{s}")));
        let mut inf = Inference::new(columns, csv);
        let mut predicted = Vec::with_capacity(x.rows);
        for (d, i) in dist.chunks(k).zip(idx.chunks(k)) {
            ctl.check()?;
            let (class, distance) = self.vote(d, i);
            let label = self.classes[class];
            predicted.push(label);
            let mut cells = vec![label_text(label), distance.to_string()];
            cells.extend(i.iter().map(|v| v.to_string()));
            inf.push_csv(&cells)?;
            if rows_json {
                let distances: Vec<f64> = d.iter().map(|&v| self.refs.metric.finish(v)).collect();
                inf.rows.push(json!({
                    "label": label, "distance": distance, "neighbors": i, "distances": distances,
                }));
            }
        }
        inf.summary.insert("k".into(), json!(k));
        if let Some(truth) = &table.labels {
            inf.summary.extend(accuracy_summary(&predicted, truth));
        }
        Ok(inf)
    }
}
