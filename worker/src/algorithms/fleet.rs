//! Fleets of anomaly detectors: one detector per group of rows (a user), trained together in one
//! job and stored as one artifact, scored in one dispatch whatever mix of groups a batch holds.
//!
//! Each group's detector is fitted exactly as [`anomaly::fit`] fits one alone, on the group's
//! rows in input order, so a member is the detector its rows would train on their own. The
//! artifact stacks the groups' parameters on a leading group axis (the slot):
//!
//! | tensor | shape | for |
//! |---|---|---|
//! | `mean` | `[G, F]` f32 | every method |
//! | `scale` | `[G, F]` f32 | `scaled_manhattan` (mean absolute deviations), `zscore` (std) |
//! | `whitening` | `[G, F, F]` f32 | the Mahalanobis forms: `W` with `W Wᵀ = S⁺`, its columns past the group's rank zero |
//! | `rank` | `[G]` u32 | the Mahalanobis forms: each group's covariance rank |
//! | `references` | `[N, F]` f32 | `nearest_neighbor_mahalanobis`: every group's training rows, whitened, group after group |
//! | `reference_offsets` | `[G + 1]` u32 | group `s`'s references are rows `offsets[s]..offsets[s+1]` |
//! | `rows` | `[G]` u32 | training rows per group |
//!
//! Metadata (JSON values): `method`, `z_threshold`, `feature_columns`, `group_column` and
//! `groups`, the group values in slot order.

use super::anomaly::{self, Fitted};
use super::{Control, CsvOut, Inference, Trained, check_bindings, gpu_lost};
use crate::artifact::{self, Artifact, Tensor};
use crate::gpu::kernels::Kernel;
use crate::gpu::{Gpu, groups_1d};
use bytemuck::{Pod, Zeroable};
use gpuq_shared::dataset::Table;
use gpuq_shared::params::{AnomalyMethod, AnomalyParams, FleetParams};
use gpuq_shared::{Algorithm, ErrorCode, JobError};
use serde_json::{Value, json};
use std::collections::HashMap;

const FLEET_SRC: &str = include_str!("../../../shaders/fleet.wgsl");

/// One group's outcome in a trained fleet.
pub struct GroupOutcome {
    pub key: String,
    /// Its slot on the artifact's group axis, or why it failed.
    pub slot: Result<u32, JobError>,
    /// Its training rows.
    pub rows: u32,
    /// Carried over unchanged from the fleet a refresh started from.
    pub carried: bool,
    /// What training this group measured (an object), if anything.
    pub metrics: Value,
}

impl GroupOutcome {
    /// The group's own metrics, as its member records them.
    pub fn metrics(&self) -> Value {
        let mut m = match &self.metrics {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        m.insert("rows".into(), self.rows.into());
        if self.carried {
            m.insert("carried".into(), true.into());
        }
        Value::Object(m)
    }
}

/// A fleet's parameters, stacked on the group axis (see the module's table).
struct Stack {
    method: AnomalyMethod,
    z_threshold: f64,
    feature_columns: Vec<String>,
    group_column: String,
    groups: Vec<String>,
    mean: Vec<f32>,
    scale: Option<Vec<f32>>,
    whitening: Option<(Vec<f32>, Vec<u32>)>,
    references: Option<(Vec<f32>, Vec<u32>)>,
    rows: Vec<u32>,
}

impl Stack {
    fn new(p: &AnomalyParams, fleet: &FleetParams, feature_columns: Vec<String>) -> Self {
        let mahalanobis = matches!(
            p.method,
            AnomalyMethod::Mahalanobis | AnomalyMethod::NearestNeighborMahalanobis
        );
        Self {
            method: p.method,
            z_threshold: p.z_threshold,
            feature_columns,
            group_column: fleet.group_column.clone(),
            groups: Vec::new(),
            mean: Vec::new(),
            scale: matches!(
                p.method,
                AnomalyMethod::ScaledManhattan | AnomalyMethod::Zscore
            )
            .then(Vec::new),
            whitening: mahalanobis.then(|| (Vec::new(), Vec::new())),
            references: (p.method == AnomalyMethod::NearestNeighborMahalanobis)
                .then(|| (Vec::new(), vec![0])),
            rows: Vec::new(),
        }
    }

    fn f(&self) -> usize {
        self.feature_columns.len()
    }

    /// Appends a group fitted on `rows` rows; returns its slot.
    fn push(&mut self, key: &str, fitted: Fitted, rows: usize) -> u32 {
        let f = self.f();
        self.groups.push(key.to_string());
        self.mean.extend_from_slice(&fitted.mean);
        if let (Some(scale), Some(s)) = (&mut self.scale, fitted.scale) {
            scale.extend_from_slice(&s);
        }
        if let (Some((w, ranks)), Some((fw, r))) = (&mut self.whitening, fitted.whitening) {
            w.extend(padded(&fw, f, r, f));
            ranks.push(r as u32);
            if let (Some((refs, offsets)), Some(fr)) = (&mut self.references, fitted.references) {
                refs.extend(padded(&fr, rows, r, f));
                offsets.push((refs.len() / f) as u32);
            }
        }
        self.rows.push(rows as u32);
        (self.groups.len() - 1) as u32
    }

    /// Appends `other`'s group at `slot` as it is; returns its new slot.
    fn carry(&mut self, other: &Stack, slot: usize) -> u32 {
        let f = self.f();
        let range = |v: &[f32], per: usize| v[slot * per..(slot + 1) * per].to_vec();
        self.groups.push(other.groups[slot].clone());
        self.mean.extend(range(&other.mean, f));
        if let (Some(scale), Some(s)) = (&mut self.scale, &other.scale) {
            scale.extend(range(s, f));
        }
        if let (Some((w, ranks)), Some((ow, oranks))) = (&mut self.whitening, &other.whitening) {
            w.extend(range(ow, f * f));
            ranks.push(oranks[slot]);
        }
        if let (Some((refs, offsets)), Some((orefs, ooff))) =
            (&mut self.references, &other.references)
        {
            let (a, b) = (ooff[slot] as usize, ooff[slot + 1] as usize);
            refs.extend_from_slice(&orefs[a * f..b * f]);
            offsets.push((refs.len() / f) as u32);
        }
        self.rows.push(other.rows[slot]);
        (self.groups.len() - 1) as u32
    }

    fn write(&self) -> Vec<u8> {
        let (g, f) = (self.groups.len(), self.f());
        let mut tensors = vec![
            Tensor::F32("mean", vec![g, f], &self.mean),
            Tensor::U32("rows", vec![g], &self.rows),
        ];
        if let Some(scale) = &self.scale {
            tensors.push(Tensor::F32("scale", vec![g, f], scale));
        }
        if let Some((w, ranks)) = &self.whitening {
            tensors.push(Tensor::F32("whitening", vec![g, f, f], w));
            tensors.push(Tensor::U32("rank", vec![g], ranks));
        }
        if let Some((refs, offsets)) = &self.references {
            tensors.push(Tensor::F32("references", vec![refs.len() / f, f], refs));
            tensors.push(Tensor::U32("reference_offsets", vec![g + 1], offsets));
        }
        artifact::write(
            Algorithm::Anomaly.as_str(),
            &tensors,
            &[
                ("method", json!(self.method)),
                ("z_threshold", json!(self.z_threshold)),
                ("feature_columns", json!(self.feature_columns)),
                ("group_column", json!(self.group_column)),
                ("groups", json!(self.groups)),
            ],
        )
    }

    /// Reads and checks a fleet artifact: every tensor its method needs, of the shapes its
    /// groups and features say; anything else is `model_corrupt`.
    fn parse(a: &Artifact) -> Result<Self, JobError> {
        let method: AnomalyMethod = a.meta("method")?;
        let feature_columns: Vec<String> = a.meta("feature_columns")?;
        let groups: Vec<String> = a.meta("groups")?;
        let (g, f) = (groups.len(), feature_columns.len());
        if g == 0 || f == 0 {
            return Err(artifact::corrupt("a fleet with no groups or no features"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = groups.iter().find(|k| !seen.insert(k.as_str())) {
            return Err(artifact::corrupt(format!("group `{dup}` appears twice")));
        }
        let scaled = matches!(
            method,
            AnomalyMethod::ScaledManhattan | AnomalyMethod::Zscore
        );
        let whitening = if scaled {
            None
        } else {
            let ranks = a.u32("rank", &[g])?;
            if ranks.iter().any(|&r| r as usize > f) {
                return Err(artifact::corrupt("a rank past the feature count"));
            }
            Some((a.f32("whitening", &[g, f, f])?, ranks))
        };
        let references = if method == AnomalyMethod::NearestNeighborMahalanobis {
            let offsets = a.u32("reference_offsets", &[g + 1])?;
            let (n, cols) = a.matrix_shape("references")?;
            let ordered = offsets.windows(2).all(|w| w[0] < w[1]);
            if cols != f || offsets[0] != 0 || offsets[g] as usize != n || !ordered {
                return Err(artifact::corrupt(
                    "references and their offsets do not match",
                ));
            }
            Some((a.f32("references", &[n, f])?, offsets))
        } else {
            None
        };
        Ok(Self {
            method,
            z_threshold: a.meta("z_threshold")?,
            group_column: a.meta("group_column")?,
            mean: a.f32("mean", &[g, f])?,
            scale: scaled.then(|| a.f32("scale", &[g, f])).transpose()?,
            rows: a.u32("rows", &[g])?,
            whitening,
            references,
            feature_columns,
            groups,
        })
    }
}

/// `rows` rows of `cols` values, each padded with zeros to `width`.
fn padded(m: &[f32], rows: usize, cols: usize, width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * width);
    for i in 0..rows {
        out.extend_from_slice(&m[i * cols..(i + 1) * cols]);
        out.resize((i + 1) * width, 0.0);
    }
    out
}

/// The groups a fleet's input was read with.
pub(super) fn groups_of(table: &Table) -> Result<&gpuq_shared::dataset::Groups, JobError> {
    table.groups.as_ref().ok_or_else(|| {
        JobError::new(
            ErrorCode::InternalError,
            "the input was read without its groups",
        )
    })
}

/// Why a refresh cannot start from its `base_fleet`.
pub(super) fn refused_base(why: String) -> JobError {
    JobError::new(
        ErrorCode::InvalidParams,
        format!("params.base_fleet: {why}"),
    )
}

/// `work` on each group's rows, the groups shared out over every core, the results in group
/// order; `doing` names the work in the progress it reports. Stops (`stopped`) soon after `ctl`
/// says so.
pub(super) fn each_group<T: Send>(
    by_group: &[Vec<usize>],
    ctl: &Control,
    doing: &str,
    work: impl Fn(&[usize]) -> T + Sync,
) -> Result<Vec<T>, JobError> {
    let total = by_group.len();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, total.max(1));
    let work = &work;
    let parts: Vec<Result<Vec<T>, JobError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = by_group
            .chunks(total.div_ceil(threads).max(1))
            .enumerate()
            .map(|(part, groups)| {
                scope.spawn(move || {
                    let mut out = Vec::with_capacity(groups.len());
                    for (i, rows) in groups.iter().enumerate() {
                        ctl.check()?;
                        if part == 0 && i % 1024 == 0 {
                            let done = (i * threads).min(total);
                            ctl.report(
                                done as f32 / total as f32,
                                format!("{doing} about {done} of {total} groups"),
                            );
                        }
                        out.push(work(rows));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a fleet thread panicked"))
            .collect()
    });
    let mut all = Vec::with_capacity(total);
    for part in parts {
        all.extend(part?);
    }
    Ok(all)
}

/// Trains one detector per group of `table` (its `groups`, read from `fleet.group_column`). A
/// group that cannot train (too few rows) fails alone; the fleet fails only when none trains.
/// With `base` (the artifact of `fleet.base_fleet`), the base's groups absent from the input are
/// carried over unchanged.
pub fn train(
    table: Table,
    p: &AnomalyParams,
    fleet: &FleetParams,
    base: Option<&[u8]>,
    ctl: &Control,
) -> Result<Trained, JobError> {
    let groups = groups_of(&table)?;
    let x = &table.features;
    let f = x.cols;
    let base = base
        .map(|bytes| Artifact::parse(bytes).and_then(|a| Stack::parse(&a)))
        .transpose()?;
    if let Some(b) = &base {
        if b.method != p.method {
            return Err(refused_base(format!(
                "its detectors are `{}`, not `{}`",
                b.method, p.method
            )));
        }
        if b.feature_columns != x.columns {
            return Err(refused_base(format!(
                "it takes the features {:?}; the input has {:?}",
                b.feature_columns, x.columns
            )));
        }
    }
    // The groups are independent: fitted on every core, then stacked in order.
    let by_group = groups.rows_by_group();
    let total = by_group.len();
    let fitted = each_group(&by_group, ctl, "trained", |rows| {
        let mut rows_x = Vec::with_capacity(rows.len() * f);
        for &r in rows {
            rows_x.extend_from_slice(x.row(r));
        }
        anomaly::fit(&rows_x, f, p, ctl)
    })?;
    // A fit stopped midway is the job's stop, not its group's failure.
    if let Some(Err(e)) = fitted
        .iter()
        .find(|r| matches!(r, Err(e) if e.code == ErrorCode::Stopped))
    {
        return Err(e.clone());
    }
    let mut stack = Stack::new(p, fleet, x.columns.clone());
    let mut outcomes = Vec::with_capacity(total);
    for (g, (rows, fit)) in by_group.iter().zip(fitted).enumerate() {
        let key = &groups.names[g];
        outcomes.push(GroupOutcome {
            key: key.clone(),
            slot: fit.map(|fitted| stack.push(key, fitted, rows.len())),
            rows: rows.len() as u32,
            carried: false,
            metrics: Value::Null,
        });
    }
    let trained = stack.groups.len();
    if trained == 0 {
        let (key, e) = outcomes
            .iter()
            .find_map(|o| o.slot.as_ref().err().map(|e| (&o.key, e)))
            .expect("a group failed");
        return Err(JobError::new(
            e.code,
            format!(
                "no group trained ({total} failed); group `{key}`: {}",
                e.message
            ),
        ));
    }
    let mut carried = 0usize;
    if let Some(b) = &base {
        let present: std::collections::HashSet<&str> =
            groups.names.iter().map(String::as_str).collect();
        for slot in 0..b.groups.len() {
            if present.contains(b.groups[slot].as_str()) {
                continue;
            }
            let new_slot = stack.carry(b, slot);
            outcomes.push(GroupOutcome {
                key: b.groups[slot].clone(),
                slot: Ok(new_slot),
                rows: b.rows[slot],
                carried: true,
                metrics: Value::Null,
            });
            carried += 1;
        }
    }
    let mut rows: Vec<u32> = stack.rows[..trained].to_vec();
    rows.sort_unstable();
    let metrics = json!({
        "method": p.method,
        "features": f,
        "groups": stack.groups.len(),
        "trained_groups": trained,
        "failed_groups": total - trained,
        "carried_groups": carried,
        "rows": x.rows,
        "rows_per_group": {
            "min": rows[0], "median": rows[rows.len() / 2], "max": rows[rows.len() - 1],
        },
    });
    Ok(Trained {
        artifact: stack.write(),
        n_features: f,
        n_classes: 0,
        metrics,
        fleet: Some(outcomes),
    })
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct FleetParamsGpu {
    rows: u32,
    cols: u32,
    mode: u32,
    threshold: f32,
}

/// A fleet's detectors resident on the GPU.
pub struct GpuAnomalyFleet {
    method: AnomalyMethod,
    threshold: f32,
    feature_columns: Vec<String>,
    pub group_column: String,
    /// Slot of each group value.
    slots: HashMap<String, u32>,
    mean: wgpu::Buffer,
    /// `scale` [G, F] for the scaled methods, `whitening` [G, F, F] for the Mahalanobis forms.
    per_group: wgpu::Buffer,
    references: Option<(wgpu::Buffer, wgpu::Buffer)>,
}

impl GpuAnomalyFleet {
    /// Whether an artifact holds a fleet (it names its group column).
    pub fn is_fleet(a: &Artifact) -> Result<bool, JobError> {
        Ok(a.meta_opt::<String>("group_column")?.is_some())
    }

    pub fn load(gpu: &Gpu, a: &Artifact) -> Result<Self, JobError> {
        let s = Stack::parse(a)?;
        let (g, f) = (s.groups.len(), s.f());
        let per_group = match (&s.scale, &s.whitening) {
            (Some(scale), _) => scale,
            (None, Some((w, _))) => w,
            (None, None) => return Err(artifact::corrupt("a fleet without detectors")),
        };
        check_bindings(
            gpu,
            &[
                ("the fleet's means", g * f),
                ("the fleet's detectors", per_group.len()),
                (
                    "the fleet's references",
                    s.references.as_ref().map_or(0, |r| r.0.len()),
                ),
            ],
        )?;
        Ok(Self {
            method: s.method,
            threshold: s.z_threshold as f32,
            mean: gpu.upload("fleet means", &s.mean),
            per_group: gpu.upload("fleet detectors", per_group),
            references: s.references.as_ref().map(|(refs, offsets)| {
                (
                    gpu.upload("fleet reference offsets", offsets),
                    gpu.upload("fleet references", refs),
                )
            }),
            slots: s
                .groups
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), i as u32))
                .collect(),
            feature_columns: s.feature_columns,
            group_column: s.group_column,
        })
    }

    pub fn n_features(&self) -> usize {
        self.feature_columns.len()
    }

    pub fn slot(&self, group: &str) -> Option<u32> {
        self.slots.get(group).copied()
    }

    /// Device bytes held, and the group index on the host.
    pub fn bytes(&self) -> u64 {
        let refs = self
            .references
            .as_ref()
            .map_or(0, |(o, r)| o.size() + r.size());
        let index: usize = self.slots.keys().map(|k| k.len() + 32).sum();
        self.mean.size() + self.per_group.size() + refs + index as u64
    }

    /// The score of each row of `x` by the detector at its `slots` entry: one dispatch (two
    /// for the Mahalanobis forms) per chunk of rows that fits a binding.
    pub fn scores(
        &self,
        gpu: &Gpu,
        x: &[f32],
        slots: &[u32],
        ctl: &Control,
    ) -> Result<Vec<f32>, JobError> {
        let f = self.n_features();
        let n = slots.len();
        let chunk = n
            .min(gpu.max_binding_bytes() as usize / (4 * f))
            .clamp(1, 1 << 14);
        let kernel =
            |name: &'static str, entry: &str| Kernel::from_source(gpu, name, FLEET_SRC, entry);
        let mode = match self.method {
            AnomalyMethod::Zscore => 1,
            _ => 0,
        };
        let out = gpu.zeros("scores", chunk);
        let mut scores = Vec::with_capacity(n);
        for off in (0..n).step_by(chunk) {
            ctl.check()?;
            let rows = chunk.min(n - off);
            let xb = gpu.upload("features", &x[off * f..(off + rows) * f]);
            let sb = gpu.upload("slots", &slots[off..off + rows]);
            let u = gpu.uniform(&FleetParamsGpu {
                rows: rows as u32,
                cols: f as u32,
                mode,
                threshold: self.threshold,
            });
            let mut enc = gpu.encoder();
            // The first pass reads the rows with their groups' parameters: scores for the
            // scaled methods, whitened rows for the Mahalanobis forms.
            let scaled = matches!(
                self.method,
                AnomalyMethod::ScaledManhattan | AnomalyMethod::Zscore
            );
            let z = (!scaled).then(|| gpu.zeros("whitened", rows * f));
            let (k, target, threads) = match &z {
                None => (kernel("fleet_scaled", "scaled"), &out, rows),
                Some(z) => (kernel("fleet_whiten", "whiten"), z, rows * f),
            };
            let bind = k.bind_at(
                gpu,
                &[
                    (0, &xb),
                    (1, &sb),
                    (2, &self.mean),
                    (3, &self.per_group),
                    (4, target),
                    (5, &u),
                ],
            );
            k.encode(&mut enc, &bind, groups_1d(threads, 64));
            if let Some(z) = &z {
                match &self.references {
                    None => {
                        let k = kernel("fleet_norm", "norm");
                        let bind = k.bind_at(gpu, &[(0, z), (4, &out), (5, &u)]);
                        k.encode(&mut enc, &bind, groups_1d(rows, 64));
                    }
                    Some((offsets, refs)) => {
                        let k = kernel("fleet_nearest", "nearest");
                        let bind = k.bind_at(
                            gpu,
                            &[
                                (0, z),
                                (1, &sb),
                                (4, &out),
                                (5, &u),
                                (6, offsets),
                                (7, refs),
                            ],
                        );
                        k.encode(&mut enc, &bind, groups_1d(rows, 64));
                    }
                }
            }
            gpu.submit(enc);
            scores.extend(gpu.read(&out, rows).map_err(gpu_lost)?);
        }
        Ok(scores)
    }

    /// Scores `table`, each row by the detector at its `slots` entry.
    pub fn infer(
        &self,
        gpu: &Gpu,
        table: &Table,
        slots: &[u32],
        rows_json: bool,
        ctl: &Control,
        csv: CsvOut,
    ) -> Result<Inference, JobError> {
        let scores = self.scores(gpu, &table.features.data, slots, ctl)?;
        anomaly::inference_of(&scores, self.method, table, rows_json, ctl, csv)
    }
}

impl GpuAnomalyFleet {
    /// Each member's table scored by that member (rows as JSON, no CSV): every row of every
    /// table in one call of [`scores`](Self::scores).
    pub fn infer_members(
        &self,
        gpu: &Gpu,
        tables: &[(&Table, u32)],
        ctl: &Control,
    ) -> Result<Vec<Inference>, JobError> {
        let rows: usize = tables.iter().map(|(t, _)| t.features.rows).sum();
        let mut x = Vec::with_capacity(rows * self.n_features());
        let mut slots = Vec::with_capacity(rows);
        for (t, slot) in tables {
            x.extend_from_slice(&t.features.data);
            slots.extend(std::iter::repeat_n(*slot, t.features.rows));
        }
        let scores = self.scores(gpu, &x, &slots, ctl)?;
        let mut at = 0;
        tables
            .iter()
            .map(|(t, _)| {
                let n = t.features.rows;
                at += n;
                anomaly::inference_of(
                    &scores[at - n..at],
                    self.method,
                    t,
                    true,
                    ctl,
                    CsvOut::discard(),
                )
            })
            .collect()
    }
}
