//! What the classifiers (and knn) share of their training data: the labelled rows with each
//! row's class index, per-column standardisation, and rows uploaded to the GPU in a given order.

use crate::gpu::Gpu;
use gpuq_shared::JobError;
use gpuq_shared::dataset::{Matrix, Table};

/// A classifier's training data: the features, the class values and each row's class index.
pub fn labelled(table: Table) -> Result<(Matrix, Vec<f64>, Vec<u32>), JobError> {
    let labels = table
        .labels
        .ok_or_else(|| JobError::invalid_input("training needs a label column"))?;
    let (classes, y) = class_indices(&labels)?;
    Ok((table.features, classes, y))
}

/// Maps label values to class indices 0..k (sorted by value), for a classifier that needs
/// at least two classes and at most 10 000 outputs.
pub fn class_indices(labels: &[f32]) -> Result<(Vec<f64>, Vec<u32>), JobError> {
    let (classes, index) = class_indices_any(labels)?;
    if classes.len() < 2 {
        return Err(JobError::invalid_input(
            "the label column needs at least two distinct classes",
        ));
    }
    if classes.len() > 10_000 {
        return Err(JobError::invalid_input(format!(
            "{} distinct labels: at most 10000 classes",
            classes.len()
        )));
    }
    Ok((classes, index))
}

/// Maps label values to class indices 0..k (sorted by value), any number of classes.
pub fn class_indices_any(labels: &[f32]) -> Result<(Vec<f64>, Vec<u32>), JobError> {
    let mut classes: Vec<f64> = labels.iter().map(|&v| v as f64).collect();
    classes.sort_by(f64::total_cmp);
    classes.dedup();
    if classes.is_empty() {
        return Err(JobError::invalid_input("no labelled rows"));
    }
    let index = labels
        .iter()
        .map(|&v| {
            classes
                .binary_search_by(|c| c.total_cmp(&(v as f64)))
                .expect("label is a class") as u32
        })
        .collect();
    Ok((classes, index))
}

/// Column means and standard deviations over `rows` (1 for constant columns).
pub fn column_stats(x: &Matrix, rows: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let f = x.cols;
    let (mut sum, mut sq) = (vec![0f64; f], vec![0f64; f]);
    for &i in rows {
        for (j, &v) in x.row(i).iter().enumerate() {
            sum[j] += v as f64;
            sq[j] += v as f64 * v as f64;
        }
    }
    let n = rows.len().max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(s, &m)| {
            let sd = (s / n - m as f64 * m as f64).max(0.0).sqrt();
            if sd > 1e-8 { sd as f32 } else { 1.0 }
        })
        .collect();
    (mean, std)
}

/// `x ← (x − mean) / std`, column by column, over row-major rows of `mean.len()` values.
pub fn scale(data: &mut [f32], mean: &[f32], std: &[f32]) {
    for row in data.chunks_mut(mean.len().max(1)) {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (*v - mean[j]) / std[j];
        }
    }
}

/// Standardises `x` in place by its own column statistics; returns them.
pub fn standardise(x: &mut Matrix) -> (Vec<f32>, Vec<f32>) {
    let all: Vec<usize> = (0..x.rows).collect();
    let (mean, std) = column_stats(x, &all);
    scale(&mut x.data, &mean, &std);
    (mean, std)
}

/// Uploads the rows of `x` in `perm` order straight into a mapped GPU buffer (no host copy).
pub fn upload_rows(gpu: &Gpu, x: &Matrix, perm: &[usize]) -> wgpu::Buffer {
    let f = x.cols;
    let buf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("features"),
        size: (x.rows * f * 4).max(4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: true,
    });
    {
        let mut view = buf
            .slice(..)
            .get_mapped_range_mut()
            .expect("mapped at creation");
        let row_bytes = f * 4;
        for (to, &from) in perm.iter().enumerate() {
            view.slice(to * row_bytes..(to + 1) * row_bytes)
                .copy_from_slice(bytemuck::cast_slice(x.row(from)));
        }
    }
    buf.unmap();
    buf
}
