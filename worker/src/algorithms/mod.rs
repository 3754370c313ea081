//! The algorithms gpuq trains and runs, what a running job can report or be told, and the
//! shapes every algorithm shares: a trained artifact, a loaded model, an inference result.

pub mod anomaly;
pub mod classifier;
pub mod dense_fleet;
pub mod features;
pub mod fleet;
mod inference;
pub mod kmeans;
pub mod knn;
pub mod linalg;
pub mod logreg;
pub mod mlp;
pub mod pacing;
mod warm;

use crate::artifact::{self, Artifact};
use crate::gpu::{Gpu, GpuError};
use gpuq_shared::dataset::Table;
use gpuq_shared::params::TrainParams;
use gpuq_shared::{Algorithm, ErrorCode, JobError};
pub use inference::{CsvOut, Inference};
use serde_json::{Map, Value, json};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio_util::sync::CancellationToken;
pub use warm::warm_up;

/// Shared between a job's GPU thread and its heartbeat task: the progress to report and the
/// request to stop (cancel, or the lease was lost).
pub struct Control {
    /// Why the job must stop: 0 while it may go on, else a [`StopReason`] code. The first
    /// reason set wins.
    stop: AtomicU8,
    /// The worker's abort: fired when it shuts down without waiting for jobs in hand.
    abort: CancellationToken,
    progress: Mutex<Option<(f32, String)>>,
}

/// Why a running job was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Canceled, or its lease passed to another worker: write nothing.
    Released = 1,
    /// It ran past its `timeout_s`: it fails with `timeout`.
    TimedOut = 2,
    /// The worker is shutting down past its drain deadline: hand the job back.
    Shutdown = 3,
}

impl Default for Control {
    fn default() -> Self {
        Self::new(CancellationToken::new())
    }
}

impl Control {
    pub fn new(abort: CancellationToken) -> Self {
        Self {
            stop: AtomicU8::new(0),
            abort,
            progress: Mutex::new(None),
        }
    }

    pub fn report(&self, fraction: f32, message: String) {
        *self.progress.lock().expect("progress lock") = Some((fraction.clamp(0.0, 1.0), message));
    }

    /// The progress reported since the last call, if any.
    pub fn take_progress(&self) -> Option<(f32, String)> {
        self.progress.lock().expect("progress lock").take()
    }

    /// Tells the job to stop for `reason` (unless it was already told to, for another).
    pub fn stop(&self, reason: StopReason) {
        let _ = self
            .stop
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Canceled, or the lease lost: the attempt no longer holds the job.
    pub fn request_stop(&self) {
        self.stop(StopReason::Released);
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        match self.stop.load(Ordering::SeqCst) {
            1 => Some(StopReason::Released),
            2 => Some(StopReason::TimedOut),
            3 => Some(StopReason::Shutdown),
            _ if self.abort.is_cancelled() => Some(StopReason::Shutdown),
            _ => None,
        }
    }

    pub fn should_stop(&self) -> bool {
        self.stop_reason().is_some()
    }

    /// `Err(stopped)` once the job must stop; every host loop and GPU submission of a job calls
    /// it (see [`pacing`] for how long a submission may take).
    pub fn check(&self) -> Result<(), JobError> {
        match self.stop_reason() {
            None => Ok(()),
            Some(reason) => Err(JobError::new(
                ErrorCode::Stopped,
                format!("the job was stopped ({reason:?})"),
            )),
        }
    }
}

/// Formats a class label the way it came in: `3` rather than `3.0`.
pub fn label_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

pub fn gpu_lost(e: GpuError) -> JobError {
    JobError::new(ErrorCode::GpuError, e.to_string())
}

pub fn too_large(what: &str, bytes: u64, limit: u64) -> JobError {
    JobError::new(
        ErrorCode::InputTooLarge,
        format!("{what} needs {bytes} bytes in one GPU binding; this device allows {limit}"),
    )
}

/// Refuses any buffer (given as a count of 4-byte elements) past the device's binding limit.
pub fn check_bindings(gpu: &Gpu, buffers: &[(&str, usize)]) -> Result<(), JobError> {
    let limit = gpu.max_binding_bytes();
    for &(what, len) in buffers {
        if (len as u64) * 4 > limit || len > u32::MAX as usize {
            return Err(too_large(what, len as u64 * 4, limit));
        }
    }
    Ok(())
}

/// A finished training run: the artifact to store and what the model row records.
pub struct Trained {
    pub artifact: Vec<u8>,
    pub n_features: usize,
    /// Classes (clusters for k-means; 0 for anomaly detectors).
    pub n_classes: usize,
    pub metrics: Value,
    /// A fleet's groups: each one's slot on the artifact's group axis, or why it failed.
    pub fleet: Option<Vec<fleet::GroupOutcome>>,
}

/// Trains the fleet `params` ask for (`params.group_column`) on `table`, read with its groups;
/// `base` is the artifact of the fleet it refreshes.
pub fn train_fleet(
    gpu: &Gpu,
    table: Table,
    params: &TrainParams,
    base: Option<&[u8]>,
    ctl: &Control,
) -> Result<Trained, JobError> {
    match (params, params.fleet()) {
        (TrainParams::Anomaly(p), Some(f)) => fleet::train(table, p, f, base, ctl),
        (TrainParams::Logreg(_) | TrainParams::Mlp(_), Some(f)) => {
            dense_fleet::train(gpu, table, params, f, base, ctl)
        }
        _ => Err(JobError::new(
            ErrorCode::InvalidParams,
            format!("{} does not train fleets", params.algorithm()),
        )),
    }
}

/// Which of a model's detectors score a job's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The model itself; for a fleet, each row's own group (its group column).
    Whole,
    /// One member of a fleet: the detector at this slot.
    Member(u32),
}

/// Trains the algorithm `params` are for on `table`.
pub fn train(
    gpu: &Gpu,
    table: Table,
    params: &TrainParams,
    ctl: &Control,
) -> Result<Trained, JobError> {
    match params {
        TrainParams::Logreg(p) => logreg::train(gpu, table, p, ctl),
        TrainParams::Mlp(p) => mlp::train(gpu, table, p, ctl),
        TrainParams::Kmeans(p) => kmeans::train(gpu, table, p, ctl),
        TrainParams::Knn(p) => knn::train(table, p, ctl),
        TrainParams::Anomaly(p) => anomaly::train(table, p, ctl),
    }
}

/// A model resident on the GPU.
pub enum LoadedModel {
    Classifier(classifier::GpuClassifier),
    Kmeans(kmeans::GpuKmeans),
    Knn(knn::GpuKnn),
    Anomaly(anomaly::GpuAnomaly),
    AnomalyFleet(fleet::GpuAnomalyFleet),
    ClassifierFleet(Box<dense_fleet::GpuDenseFleet>),
}

impl LoadedModel {
    /// Parses and validates an artifact (see each algorithm's `load`), then uploads what
    /// inference needs. A bad file is `model_corrupt`; one past the device's bindings is
    /// `input_too_large`; nothing reaches the GPU before both checks.
    pub fn load(gpu: &Gpu, bytes: &[u8]) -> Result<Self, JobError> {
        let a = Artifact::parse(bytes)?;
        // Every model takes at least one feature; a file that says otherwise is not ours.
        if a.meta::<Vec<String>>("feature_columns")?.is_empty() {
            return Err(artifact::corrupt("it names no feature columns"));
        }
        Ok(match a.algorithm()? {
            Algorithm::Kmeans => Self::Kmeans(kmeans::GpuKmeans::load(gpu, &a)?),
            Algorithm::Knn => Self::Knn(knn::GpuKnn::load(gpu, &a)?),
            Algorithm::Anomaly if fleet::GpuAnomalyFleet::is_fleet(&a)? => {
                Self::AnomalyFleet(fleet::GpuAnomalyFleet::load(gpu, &a)?)
            }
            Algorithm::Anomaly => Self::Anomaly(anomaly::GpuAnomaly::load(gpu, &a)?),
            Algorithm::Logreg | Algorithm::Mlp if dense_fleet::GpuDenseFleet::is_fleet(&a)? => {
                Self::ClassifierFleet(Box::new(dense_fleet::GpuDenseFleet::load(gpu, &a)?))
            }
            Algorithm::Logreg | Algorithm::Mlp => {
                let model = classifier::ClassifierModel::from_artifact(&a)?;
                let weights: Vec<(&str, usize)> = model
                    .layers
                    .iter()
                    .map(|l| ("a layer's weights", l.inputs * l.outputs))
                    .collect();
                check_bindings(gpu, &weights)?;
                Self::Classifier(classifier::GpuClassifier::upload(gpu, model))
            }
        })
    }

    pub fn n_features(&self) -> usize {
        match self {
            Self::Classifier(m) => m.model.n_features(),
            Self::Kmeans(m) => m.n_features(),
            Self::Knn(m) => m.n_features(),
            Self::Anomaly(m) => m.n_features(),
            Self::AnomalyFleet(m) => m.n_features(),
            Self::ClassifierFleet(m) => m.n_features(),
        }
    }

    /// A fleet's group column (its rows name their group in it).
    pub fn group_column(&self) -> Option<&str> {
        match self {
            Self::AnomalyFleet(m) => Some(&m.group_column),
            Self::ClassifierFleet(m) => Some(&m.group_column),
            _ => None,
        }
    }

    /// The bytes it holds, on the device and on the host (an estimate: buffers and weights).
    pub fn bytes(&self) -> u64 {
        match self {
            Self::Classifier(m) => m.bytes(),
            Self::Kmeans(m) => m.bytes(),
            Self::Knn(m) => m.bytes(),
            Self::Anomaly(m) => m.bytes(),
            Self::AnomalyFleet(m) => m.bytes(),
            Self::ClassifierFleet(m) => m.bytes(),
        }
    }

    /// Runs the model over `table`, its CSV kept in memory; `rows_json` asks for one JSON
    /// object per row as well. Returns `stopped` soon after `ctl` is told to stop.
    pub fn infer(
        &self,
        gpu: &Gpu,
        table: &Table,
        rows_json: bool,
        ctl: &Control,
    ) -> Result<Inference, JobError> {
        self.infer_to(gpu, table, rows_json, ctl, CsvOut::in_memory())
    }

    /// As [`infer_to`](Self::infer_to), by the detectors `scope` names: a fleet member's, or
    /// for a fleet as a whole each row's own group's (the table's `groups`; a group the fleet
    /// does not hold is `model_not_found`).
    pub fn infer_scoped(
        &self,
        gpu: &Gpu,
        table: &Table,
        scope: Scope,
        rows_json: bool,
        ctl: &Control,
        csv: CsvOut,
    ) -> Result<Inference, JobError> {
        let slot_of = |name: &str| match self {
            Self::AnomalyFleet(m) => m.slot(name),
            Self::ClassifierFleet(m) => m.slot(name),
            _ => None,
        };
        let Some(group_column) = self.group_column() else {
            return match scope {
                Scope::Whole => self.infer_to(gpu, table, rows_json, ctl, csv),
                Scope::Member(_) => Err(JobError::new(
                    ErrorCode::InternalError,
                    "a fleet member's model is not a fleet",
                )),
            };
        };
        self.check_width(table)?;
        let n = table.features.rows;
        let slots = match (scope, &table.groups) {
            (Scope::Member(slot), _) => vec![slot; n],
            (Scope::Whole, Some(groups)) => {
                let mut of_name = Vec::with_capacity(groups.names.len());
                for name in &groups.names {
                    of_name.push(slot_of(name).ok_or_else(|| {
                        JobError::new(
                            ErrorCode::ModelNotFound,
                            format!("the fleet has no model for group `{name}`"),
                        )
                    })?);
                }
                groups.of_row.iter().map(|&g| of_name[g as usize]).collect()
            }
            (Scope::Whole, None) => {
                return Err(JobError::invalid_input(format!(
                    "a fleet scores each row by its `{}` column: send a CSV or .npy input with \
                     it, or name one member (its model_id)",
                    group_column
                )));
            }
        };
        match self {
            Self::AnomalyFleet(m) => m.infer(gpu, table, &slots, rows_json, ctl, csv),
            Self::ClassifierFleet(m) => m.infer(gpu, table, &slots, rows_json, ctl, csv),
            _ => unreachable!("only fleets have a group column"),
        }
    }

    fn check_width(&self, table: &Table) -> Result<(), JobError> {
        let f = self.n_features();
        if table.features.cols != f {
            return Err(JobError::new(
                ErrorCode::ShapeMismatch,
                format!(
                    "input rows have {} features; the model takes {f}",
                    table.features.cols
                ),
            ));
        }
        Ok(())
    }

    /// As [`infer`](Self::infer), writing the CSV to `csv` as it is produced.
    pub fn infer_to(
        &self,
        gpu: &Gpu,
        table: &Table,
        rows_json: bool,
        ctl: &Control,
        csv: CsvOut,
    ) -> Result<Inference, JobError> {
        self.check_width(table)?;
        match self {
            Self::Classifier(m) => m.infer(gpu, table, rows_json, ctl, csv),
            Self::Kmeans(m) => m.infer(gpu, table, rows_json, ctl, csv),
            Self::Knn(m) => m.infer(gpu, table, rows_json, ctl, csv),
            Self::Anomaly(m) => m.infer(gpu, table, rows_json, ctl, csv),
            Self::AnomalyFleet(_) | Self::ClassifierFleet(_) => {
                self.infer_scoped(gpu, table, Scope::Whole, rows_json, ctl, csv)
            }
        }
    }
}

impl LoadedModel {
    /// Each table's inference by its scope, rows as JSON and no CSV, as
    /// [`infer_scoped`](Self::infer_scoped) would give it alone. A classifier (logreg, mlp) runs
    /// them all in one forward pass, and a fleet scores every member's rows in one dispatch; the
    /// other models run them one after another. A table of the wrong width gets its own
    /// `shape_mismatch`.
    pub fn infer_many(
        &self,
        gpu: &Gpu,
        tables: &[(&Table, Scope)],
        ctl: &Control,
    ) -> Vec<Result<Inference, JobError>> {
        let f = self.n_features();
        let (fits, _): (Vec<usize>, Vec<usize>) =
            (0..tables.len()).partition(|&i| tables[i].0.features.cols == f);
        let mut out: Vec<Option<Result<Inference, JobError>>> =
            tables.iter().map(|_| None).collect();
        let together = match self {
            Self::Classifier(m) if !fits.is_empty() => {
                let fitting: Vec<&Table> = fits.iter().map(|&i| tables[i].0).collect();
                Some((fits.clone(), m.infer_many(gpu, &fitting, ctl)))
            }
            Self::AnomalyFleet(_) | Self::ClassifierFleet(_) => {
                let members: Vec<usize> = fits
                    .iter()
                    .copied()
                    .filter(|&i| matches!(tables[i].1, Scope::Member(_)))
                    .collect();
                (!members.is_empty()).then(|| {
                    let each: Vec<(&Table, u32)> = members
                        .iter()
                        .map(|&i| match tables[i].1 {
                            Scope::Member(slot) => (tables[i].0, slot),
                            Scope::Whole => unreachable!("filtered to members"),
                        })
                        .collect();
                    let done = match self {
                        Self::AnomalyFleet(m) => m.infer_members(gpu, &each, ctl),
                        Self::ClassifierFleet(m) => m.infer_members(gpu, &each, ctl),
                        _ => unreachable!("a fleet"),
                    };
                    (members, done)
                })
            }
            _ => None,
        };
        if let Some((which, done)) = together {
            match done {
                Ok(each) => {
                    for (i, inference) in which.iter().zip(each) {
                        out[*i] = Some(Ok(inference));
                    }
                }
                Err(e) => {
                    for i in &which {
                        out[*i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        tables
            .iter()
            .zip(out)
            .map(|((t, scope), done)| {
                done.unwrap_or_else(|| {
                    self.infer_scoped(gpu, t, *scope, true, ctl, CsvOut::discard())
                })
            })
            .collect()
    }
}

/// `accuracy` and `error_rate` of predicted labels against the input's own labels.
pub fn accuracy_summary(predicted: &[f64], truth: &[f32]) -> Map<String, Value> {
    let right = predicted
        .iter()
        .zip(truth)
        .filter(|(p, t)| **p == **t as f64)
        .count();
    let n = predicted.len().max(1) as f64;
    let mut m = Map::new();
    m.insert("accuracy".into(), json!(right as f64 / n));
    m.insert("error_rate".into(), json!(1.0 - right as f64 / n));
    m.insert("labelled_rows".into(), json!(predicted.len()));
    m
}
