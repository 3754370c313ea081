//! Small inline inference jobs, run together as one forward pass per model and written in one
//! statement. A batch of a hundred logins scored against one model costs one read, one upload,
//! one dispatch chain, one readback, one completion `UPDATE` and one wake-up, where it cost a
//! hundred of each.
//!
//! A batch is held one of two ways ([`Hold`]). Delivered for the first time, its jobs are read
//! while still `queued` and each success is written `queued → succeeded` in one step: one row
//! version per job, not two, since a claim would only guard a few milliseconds of work. A
//! duplicate delivery or a cancel meanwhile is fenced by that step's condition. Delivered again
//! (the worker that had it died), the batch is claimed first, as any job is, so that its attempts
//! are counted and a job that kills every worker that runs it ends `failed`.

use super::models::Resolved;
use super::retry::retry_db;
use super::{WorkerContext, blocking, inference_result};
use crate::algorithms::{Control, Scope, StopReason};
use chrono::{DateTime, Utc};
use gpuq_shared::dataset::{self, Table};
use gpuq_shared::db::{self, JobRecord, Succeeded};
use gpuq_shared::job::{Input, Work};
use gpuq_shared::{ErrorCode, JobError, JobId, ModelId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How the jobs of a batch are held.
#[derive(Debug, Clone, Copy)]
pub enum Hold {
    /// Claimed (`running`, leased): outcomes are written as for any running job.
    Claimed,
    /// Read while `queued`, at `started_at`: a success goes `queued → succeeded` in one step;
    /// any other outcome is claimed first, then recorded as for a running job.
    Unclaimed { started_at: DateTime<Utc> },
}

/// A job of the batch, ready to run.
struct Ready {
    job: JobRecord,
    table: Table,
    /// Which of its model's detectors score it (a fleet member's, or all of the model).
    scope: Scope,
    /// Its own stop flag: a cancel or a lost lease drops this job's result, not the batch's.
    ctl: Arc<Control>,
}

impl WorkerContext {
    /// Runs jobs this worker took together. The batchable ones (small inline inference, see
    /// [`gpuq_shared::job::JobSpec::batchable`]) run grouped by model; any other (the message's
    /// hint was stale) runs alone, as [`run`](Self::run) runs it. Returns whether every outcome
    /// was recorded (for [`Hold::Unclaimed`], the caller acks only then; otherwise the messages
    /// go back to the queue, and come again as [`Hold::Claimed`]).
    pub async fn run_batch(self: &Arc<Self>, jobs: Vec<JobRecord>, hold: Hold) -> bool {
        let mut groups: HashMap<(String, ModelId), Vec<Ready>> = HashMap::new();
        let mut alone = Vec::new();
        let mut unreadable: Vec<(JobRecord, JobError)> = Vec::new();
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
            if let Hold::Claimed = hold {
                holds.push(self.leases.hold(job.id, job.attempt, ctl.clone()));
            }
            match dataset::from_rows(rows, labels.as_deref()) {
                Ok(table) => groups
                    .entry((job.tenant_id.clone(), *model_id))
                    .or_default()
                    .push(Ready {
                        job,
                        table,
                        scope: Scope::Whole,
                        ctl,
                    }),
                Err(e) => unreadable.push((job, e)),
            }
        }
        // The members of one fleet run together, whichever member each job names; each
        // tenant's models are read in one statement.
        let mut by_tenant: HashMap<String, Vec<(ModelId, Vec<Ready>)>> = HashMap::new();
        for ((tenant, model_id), ready) in groups {
            by_tenant.entry(tenant).or_default().push((model_id, ready));
        }
        let mut resolved = Vec::new();
        for (tenant, wanted) in by_tenant {
            let ids: Vec<ModelId> = wanted.iter().map(|(id, _)| *id).collect();
            let models = self.models(&tenant, &ids).await;
            for (model, (_, ready)) in models.into_iter().zip(wanted) {
                resolved.push((model, tenant.clone(), ready));
            }
        }
        let mut by_artifact: HashMap<(String, ModelId), (Resolved, Vec<Ready>)> = HashMap::new();
        for (model, tenant, mut ready) in resolved {
            match model {
                Ok(model) => {
                    for r in &mut ready {
                        r.scope = model.scope;
                    }
                    by_artifact
                        .entry((tenant, model.loaded_as))
                        .or_insert_with(|| (model, Vec::new()))
                        .1
                        .extend(ready);
                }
                Err(e) => unreadable.extend(ready.into_iter().map(|r| (r.job, e.clone()))),
            }
        }
        let runs = by_artifact
            .into_values()
            .map(|(model, ready)| self.run_group(model, ready, hold));
        let (recorded, alone_recorded, unreadable_recorded) = tokio::join!(
            futures_util::future::join_all(runs),
            self.run_each(alone, hold),
            self.fail_each(unreadable, hold),
        );
        drop(holds);
        recorded.into_iter().all(|r| r) && alone_recorded && unreadable_recorded
    }

    /// Jobs that run alone: claimed first if they are not yet.
    async fn run_each(self: &Arc<Self>, jobs: Vec<JobRecord>, hold: Hold) -> bool {
        let Some(jobs) = self.claimed(jobs, hold).await else {
            return false;
        };
        futures_util::future::join_all(jobs.into_iter().map(|job| self.run(job))).await;
        true
    }

    /// Records each job's failure (claimed first if it is not yet).
    async fn fail_each(&self, failed: Vec<(JobRecord, JobError)>, hold: Hold) -> bool {
        let mut errors: HashMap<JobId, JobError> =
            failed.iter().map(|(j, e)| (j.id, e.clone())).collect();
        let jobs = failed.into_iter().map(|(j, _)| j).collect();
        let Some(jobs) = self.claimed(jobs, hold).await else {
            return false;
        };
        for job in jobs {
            let e = errors
                .remove(&job.id)
                .expect("each failed job has its error");
            if let Err(err) = self.write_failure(job.id, job.attempt, &e).await {
                tracing::error!(job = %job.id, error = %err, "could not record the outcome");
            }
        }
        true
    }

    /// `jobs` as claimed jobs: as they are, or claimed now (those another worker or a cancel
    /// took meanwhile are left out). `None` if the claim could not be made.
    async fn claimed(&self, jobs: Vec<JobRecord>, hold: Hold) -> Option<Vec<JobRecord>> {
        if jobs.is_empty() || matches!(hold, Hold::Claimed) {
            return Some(jobs);
        }
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        let lease = self.settings.lifecycle.lease;
        match retry_db(|| db::jobs_set_running(&self.pool, &ids, &self.worker_id, lease)).await {
            Ok(claimed) => Some(claimed),
            Err(e) => {
                tracing::warn!(jobs = ids.len(), error = %e, "could not claim jobs to record their outcome");
                None
            }
        }
    }

    /// One model's jobs (one fleet's, for members): one forward pass, then every success in
    /// one statement.
    async fn run_group(self: &Arc<Self>, model: Resolved, ready: Vec<Ready>, hold: Hold) -> bool {
        let model_id = model.loaded_as;
        let model = model.model;
        // The batch's deadline is its tightest job's timeout.
        let timeout = ready
            .iter()
            .map(|r| r.job.timeout_s.max(1) as u64)
            .min()
            .unwrap_or(1);
        let batch_ctl = Arc::new(Control::new(self.abort.clone()));
        let (gpu, c) = (self.gpu.clone(), batch_ctl.clone());
        type Held = (JobRecord, Arc<Control>);
        let (jobs, tables): (Vec<Held>, Vec<(Table, Scope)>) = ready
            .into_iter()
            .map(|r| ((r.job, r.ctl), (r.table, r.scope)))
            .unzip();
        let began = std::time::Instant::now();
        let work = blocking(move || {
            let refs: Vec<(&Table, Scope)> = tables.iter().map(|(t, s)| (t, *s)).collect();
            let each = model.model.infer_many(&gpu, &refs, &c);
            let rows: Vec<usize> = tables.iter().map(|(t, _)| t.features.rows).collect();
            Ok((each, rows))
        });
        let outcome = match tokio::time::timeout(Duration::from_secs(timeout), work).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                let failed = jobs.into_iter().map(|(j, _)| (j, e.clone())).collect();
                return self.fail_each(failed, hold).await;
            }
            Err(_) => {
                batch_ctl.stop(StopReason::TimedOut);
                let e = JobError::new(
                    ErrorCode::Timeout,
                    format!("the job's batch ran past its timeout_s of {timeout} s"),
                );
                let failed = jobs.into_iter().map(|(j, _)| (j, e.clone())).collect();
                return self.fail_each(failed, hold).await;
            }
        };
        let (each, rows) = outcome;
        let mut done = Vec::with_capacity(jobs.len());
        let mut failed = Vec::new();
        for (((job, ctl), inference), n) in jobs.into_iter().zip(each).zip(rows) {
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
                Err(e) => failed.push((job, e)),
            }
        }
        let failures_recorded = self.fail_each(failed, hold).await;
        let computed = began.elapsed();
        let written = retry_db(|| async {
            match hold {
                Hold::Claimed => db::jobs_set_succeeded(&self.pool, &done).await,
                Hold::Unclaimed { started_at } => {
                    db::jobs_set_succeeded_unclaimed(&self.pool, &self.worker_id, started_at, &done)
                        .await
                }
            }
        })
        .await;
        match written {
            Ok(written) => {
                if written.len() < done.len() {
                    let lost: Vec<JobId> = done
                        .iter()
                        .map(|d| d.id)
                        .filter(|id| !written.contains(id))
                        .collect();
                    tracing::info!(
                        ?lost,
                        "these jobs were canceled or run elsewhere meanwhile; results discarded"
                    );
                }
                tracing::debug!(model = %model_id, jobs = written.len(), ?computed,
                    written_in = ?(began.elapsed() - computed), "batch succeeded");
                failures_recorded
            }
            // Claimed: the leases will expire and the reaper will hand the jobs on. Unclaimed:
            // the jobs are still queued and their messages go back. Nothing is lost.
            Err(e) => {
                tracing::error!(jobs = done.len(), error = %e, "could not record a batch's outcome");
                false
            }
        }
    }
}
