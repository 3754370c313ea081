//! Small inline inference jobs, claimed together, run as one forward pass per model, and
//! written in one statement. A batch of a hundred logins scored against one model costs one
//! claim, one upload, one dispatch chain, one readback, one completion `UPDATE` and one
//! wake-up, where it cost a hundred of each.

use super::retry::retry_db;
use super::{WorkerContext, blocking, inference_result};
use crate::algorithms::{Control, StopReason};
use gpuq_shared::dataset::{self, Table};
use gpuq_shared::db::{self, JobRecord, Succeeded};
use gpuq_shared::job::{Input, Work};
use gpuq_shared::{ErrorCode, JobError, JobId, ModelId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A job of the batch, ready to run.
struct Ready {
    job: JobRecord,
    table: Table,
    /// Its own stop flag: a cancel or a lost lease drops this job's result, not the batch's.
    ctl: Arc<Control>,
}

impl WorkerContext {
    /// Runs jobs this worker claimed together. The batchable ones (small inline inference, see
    /// [`gpuq_shared::job::JobSpec::batchable`]) run grouped by model; any other (the message's
    /// hint was stale) runs alone, as [`run`](Self::run) runs it.
    pub async fn run_batch(self: &Arc<Self>, jobs: Vec<JobRecord>) {
        let mut groups: HashMap<(String, ModelId), Vec<Ready>> = HashMap::new();
        let mut alone = Vec::new();
        let mut holds = Vec::with_capacity(jobs.len());
        for job in jobs {
            let spec = match job.spec() {
                Ok(spec) if spec.batchable() => spec,
                _ => {
                    alone.push(job);
                    continue;
                }
            };
            let (Work::Infer { model_id, .. }, Input::Inline { rows, labels }) =
                (&spec.work, &spec.input)
            else {
                unreachable!("batchable is inline inference");
            };
            let ctl = Arc::new(Control::new(self.abort.clone()));
            holds.push(self.leases.hold(job.id, job.attempt, ctl.clone()));
            match dataset::from_rows(rows, labels.as_deref()) {
                Ok(table) => groups
                    .entry((job.tenant_id.clone(), *model_id))
                    .or_default()
                    .push(Ready { job, table, ctl }),
                Err(e) => self.fail(&job, &e).await,
            }
        }
        let runs = groups
            .into_iter()
            .map(|((tenant, model_id), ready)| self.run_group(tenant, model_id, ready));
        let alone = alone.into_iter().map(|job| self.run(job));
        tokio::join!(
            futures_util::future::join_all(runs),
            futures_util::future::join_all(alone)
        );
        drop(holds);
    }

    /// One model's jobs: one forward pass, then every success in one statement.
    async fn run_group(self: &Arc<Self>, tenant: String, model_id: ModelId, ready: Vec<Ready>) {
        let model = match self.model(&tenant, model_id).await {
            Ok(m) => m,
            Err(e) => {
                for r in &ready {
                    self.fail(&r.job, &e).await;
                }
                return;
            }
        };
        // The batch's deadline is its tightest job's timeout.
        let timeout = ready
            .iter()
            .map(|r| r.job.timeout_s.max(1) as u64)
            .min()
            .unwrap_or(1);
        let batch_ctl = Arc::new(Control::new(self.abort.clone()));
        let (gpu, c) = (self.gpu.clone(), batch_ctl.clone());
        let (jobs, tables): (Vec<(JobRecord, Arc<Control>)>, Vec<Table>) =
            ready.into_iter().map(|r| ((r.job, r.ctl), r.table)).unzip();
        let work = blocking(move || {
            let refs: Vec<&Table> = tables.iter().collect();
            let each = model.model.infer_many(&gpu, &refs, &c);
            let rows: Vec<usize> = tables.iter().map(|t| t.features.rows).collect();
            Ok((each, rows))
        });
        let outcome = match tokio::time::timeout(Duration::from_secs(timeout), work).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                for (job, _) in &jobs {
                    self.fail(job, &e).await;
                }
                return;
            }
            Err(_) => {
                batch_ctl.stop(StopReason::TimedOut);
                let e = JobError::new(
                    ErrorCode::Timeout,
                    format!("the job's batch ran past its timeout_s of {timeout} s"),
                );
                for (job, _) in &jobs {
                    self.fail(job, &e).await;
                }
                return;
            }
        };
        let (each, rows) = outcome;
        let mut done = Vec::with_capacity(jobs.len());
        for (((job, ctl), inference), n) in jobs.iter().zip(each).zip(rows) {
            if ctl.stop_reason() == Some(StopReason::Released) {
                tracing::info!(job = %job.id, "stopped: canceled or lease lost; writing nothing");
                continue;
            }
            match inference {
                Ok(inference) => done.push(Succeeded {
                    id: job.id,
                    attempt: job.attempt,
                    result: inference_result(inference, n, None, true),
                }),
                Err(e) => self.fail(job, &e).await,
            }
        }
        match retry_db(|| db::jobs_set_succeeded(&self.pool, &done)).await {
            Ok(written) => {
                if written.len() < done.len() {
                    let lost: Vec<JobId> = done
                        .iter()
                        .map(|d| d.id)
                        .filter(|id| !written.contains(id))
                        .collect();
                    tracing::warn!(?lost, "finished after losing these jobs; results discarded");
                }
                tracing::debug!(model = %model_id, jobs = written.len(), "batch succeeded");
            }
            // The leases will expire and the reaper will hand the jobs on: nothing is lost.
            Err(e) => {
                tracing::error!(jobs = done.len(), error = %e, "could not record a batch's outcome")
            }
        }
    }

    async fn fail(&self, job: &JobRecord, e: &JobError) {
        if let Err(err) = self.write_failure(job.id, job.attempt, e).await {
            tracing::error!(job = %job.id, error = %err, "could not record the outcome");
        }
    }
}
