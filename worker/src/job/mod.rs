//! Running one job: claim it, hold its lease among the worker's [`Leases`], run the algorithm on
//! a blocking thread, write the outcome with a fenced update. Every outcome is turned into a
//! state transition here and only here. What an attempt writes to S3 goes under keys of its own
//! ([`gpuq_shared::objects`]); an attempt that loses the job deletes it. Reading a job's input is
//! [`input`]'s; the models kept on the GPU are [`models`]'; streaming an inference's CSV to S3 is
//! [`output`]'s.

pub mod batch;
mod input;
mod models;
mod output;
mod retry;

use models::ModelCache;
use retry::retry_db;

use crate::algorithms::{self, Control, Scope, StopReason, Trained};
use crate::gpu::Gpu;
use crate::leases::Leases;
use crate::presence::Presence;
use gpuq_shared::config::Settings;
use gpuq_shared::dataset::Columns;
use gpuq_shared::db::{self, JobRecord, NewMember, NewModel};
use gpuq_shared::job::{Input, Work};
use gpuq_shared::memory::MemoryBudget;
use gpuq_shared::params::{InferParams, TrainParams};
use gpuq_shared::queue::Publisher;
use gpuq_shared::storage::Storage;
use gpuq_shared::{ErrorCode, JobError, JobId, ModelId, S3Uri, objects};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Outputs up to this many rows are returned inline in the job's result.
pub const INLINE_PREDICTIONS: usize = 100;
pub use gpuq_shared::job::INLINE_ONLY_ROWS;
/// How long a job told to stop (timeout, shutdown) gets to reach its next check.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What every job of this worker shares.
pub struct WorkerContext {
    pub pool: sqlx::PgPool,
    pub storage: Storage,
    pub publisher: Arc<Publisher>,
    pub gpu: Arc<Gpu>,
    pub settings: Settings,
    pub worker_id: String,
    /// Stops the GPU work of every job in hand (shutdown past its drain deadline).
    pub abort: CancellationToken,
    /// The worker's row in `workers`, and its ECS task protection.
    pub presence: Arc<Presence>,
    /// The leases of the jobs in hand, renewed together ([`crate::leases::renew`]).
    pub leases: Arc<Leases>,
    /// Models already on the GPU, by id (models never change once written).
    models: ModelCache,
    /// What the inputs of the jobs in hand may hold of the host's memory, together.
    memory: Arc<MemoryBudget>,
    /// The size of each part of an output uploaded to S3.
    output_part_bytes: usize,
}

/// How a job ended well.
enum Completion {
    Trained {
        model_id: ModelId,
        trained: Trained,
        artifact: S3Uri,
    },
    Inferred {
        result: Value,
        /// The output written to S3, if any (small inline inputs get inline results only).
        output: Option<S3Uri>,
    },
}

impl Completion {
    /// The objects the attempt wrote.
    fn objects(&self) -> Vec<S3Uri> {
        match self {
            Completion::Trained { artifact, .. } => vec![artifact.clone()],
            Completion::Inferred { output, .. } => output.iter().cloned().collect(),
        }
    }
}

impl WorkerContext {
    pub fn new(
        pool: sqlx::PgPool,
        storage: Storage,
        publisher: Arc<Publisher>,
        gpu: Arc<Gpu>,
        settings: &crate::WorkerSettings,
        worker_id: String,
        abort: CancellationToken,
    ) -> Self {
        let lease = settings.shared.lifecycle.lease;
        let budgets = settings.budgets;
        Self {
            pool,
            storage,
            publisher,
            gpu,
            settings: settings.shared.clone(),
            worker_id,
            abort,
            presence: Arc::new(Presence::new(settings.ecs_agent_uri.as_deref(), lease)),
            leases: Arc::default(),
            models: ModelCache::new(budgets.model_cache_bytes),
            memory: MemoryBudget::new(budgets.memory_bytes),
            output_part_bytes: budgets.output_part_bytes,
        }
    }

    /// Runs a job this worker has just claimed, through to its recorded outcome.
    pub async fn run(self: &Arc<Self>, job: JobRecord) {
        let id = job.id;
        let attempt = job.attempt;
        tracing::info!(job = %id, attempt, kind = %job.job_type, algorithm = %job.algorithm, "running");
        let ctl = Arc::new(Control::new(self.abort.clone()));
        let lease = self.leases.hold(id, attempt, ctl.clone());
        let timeout = Duration::from_secs(job.timeout_s.max(1) as u64);
        let work = self.execute(&job, &ctl);
        tokio::pin!(work);
        let outcome = tokio::select! {
            outcome = &mut work => outcome,
            _ = tokio::time::sleep(timeout) => {
                ctl.stop(StopReason::TimedOut);
                finish_within_grace(&mut work).await
            }
            _ = self.abort.cancelled() => finish_within_grace(&mut work).await,
        };
        drop(lease);
        let written = match (ctl.stop_reason(), outcome) {
            (Some(StopReason::Released), outcome) => {
                tracing::info!(job = %id, "stopped: canceled or lease lost; writing nothing");
                if let Ok(done) = outcome {
                    self.discard(id, attempt, &done.objects()).await;
                }
                return;
            }
            // Finished just as it was told to stop: the result stands.
            (_, Ok(done)) => self.write_success(id, attempt, &job, done).await,
            (Some(StopReason::TimedOut), Err(_)) => {
                let e = JobError::new(
                    ErrorCode::Timeout,
                    format!("the job ran past its timeout_s of {} s", job.timeout_s),
                );
                self.write_failure(id, attempt, &e).await
            }
            (Some(StopReason::Shutdown), Err(_)) => self.hand_back(id, attempt).await,
            (None, Err(e)) => self.write_failure(id, attempt, &e).await,
        };
        if let Err(e) = written {
            // The lease will expire and the reaper will hand the job on: nothing is lost.
            tracing::error!(job = %id, error = %e, "could not record the outcome");
        }
    }

    /// The worker is shutting down and the job did not finish in time: queue it again at once
    /// for another worker, without spending one of its attempts.
    async fn hand_back(&self, id: JobId, attempt: i32) -> Result<(), db::DbError> {
        let reason = format!(
            "worker {} shut down before the job finished",
            self.worker_id
        );
        if db::job_release(&self.pool, id, attempt, &reason).await? {
            tracing::info!(job = %id, attempt, "handed back on shutdown");
            if let Err(e) = self.publisher.publish(id).await {
                tracing::warn!(job = %id, error = %e, "publish failed; the reaper will do it");
            }
        }
        Ok(())
    }

    async fn write_success(
        &self,
        id: JobId,
        attempt: i32,
        job: &JobRecord,
        done: Completion,
    ) -> Result<(), db::DbError> {
        let written = done.objects();
        let fenced = match done {
            Completion::Trained {
                model_id,
                trained,
                artifact,
            } => {
                let metrics = &trained.metrics;
                let members = trained.fleet.as_ref().map(|groups| members_of(groups));
                let result = match &members {
                    None => json!({ "model_id": model_id, "metrics": metrics }),
                    Some(_) => json!({
                        "fleet_id": model_id,
                        "groups": metrics["groups"],
                        "metrics": metrics,
                    }),
                };
                let new_model = NewModel {
                    id: model_id,
                    tenant: &job.tenant_id,
                    algorithm: job.algorithm,
                    n_features: trained.n_features as i32,
                    n_classes: trained.n_classes as i32,
                    params: &job.params,
                    metrics,
                    artifact_uri: &artifact.to_string(),
                    fleet: members.as_deref(),
                };
                retry_db(|| {
                    db::job_set_succeeded_with_model(&self.pool, id, attempt, &result, &new_model)
                })
                .await?
            }
            Completion::Inferred { result, .. } => {
                retry_db(|| db::job_set_succeeded(&self.pool, id, attempt, &result)).await?
            }
        };
        if fenced {
            tracing::info!(job = %id, attempt, "succeeded");
        } else {
            tracing::warn!(job = %id, attempt, "finished after losing the job; result discarded");
            self.discard(id, attempt, &written).await;
        }
        Ok(())
    }

    /// Deletes what an attempt that lost its job wrote: nothing records it, and the winner's
    /// objects are under keys of their own. One that cannot be deleted is left to the sweep.
    async fn discard(&self, id: JobId, attempt: i32, objects: &[S3Uri]) {
        for uri in objects {
            match self.storage.delete(uri).await {
                Ok(()) => {
                    tracing::info!(job = %id, attempt, %uri, "deleted the lost attempt's object")
                }
                Err(e) => tracing::warn!(job = %id, attempt, %uri, error = %e,
                    "could not delete the lost attempt's object; the orphan sweep will"),
            }
        }
    }

    async fn write_failure(
        &self,
        id: JobId,
        attempt: i32,
        e: &JobError,
    ) -> Result<(), db::DbError> {
        tracing::warn!(job = %id, attempt, code = %e.code, message = %e.message, "attempt failed");
        let backoff = self.settings.lifecycle.backoff;
        // Back to the queue: the reaper publishes it once its backoff is over.
        let status =
            retry_db(|| db::job_set_failed_or_retry(&self.pool, id, attempt, e, backoff)).await?;
        tracing::info!(job = %id, attempt, status = ?status, "failure recorded");
        Ok(())
    }

    /// The job's typed spec decides what runs; a row that does not parse fails the job.
    async fn execute(&self, job: &JobRecord, ctl: &Arc<Control>) -> Result<Completion, JobError> {
        let spec = job.spec()?;
        match spec.work {
            Work::Train(params) => self.train(job, params, &spec.input, ctl).await,
            Work::Infer { model_id, params } => {
                self.infer(job, model_id, &params, &spec.input, ctl).await
            }
        }
    }

    async fn train(
        &self,
        job: &JobRecord,
        params: TrainParams,
        input: &Input,
        ctl: &Arc<Control>,
    ) -> Result<Completion, JobError> {
        ctl.report(0.0, "reading input".into());
        let base = match params.fleet().and_then(|f| f.base_fleet) {
            Some(base) => Some(self.base_fleet(&job.tenant_id, base, &params).await?),
            None => None,
        };
        let columns = Columns {
            label: params.label_column(),
            require_label: params.algorithm().needs_labels(),
            group: params.fleet().map(|f| f.group_column.as_str()),
        };
        let (table, memory) = self.load_input(job, input, columns).await?;
        ctl.report(
            0.0,
            format!(
                "training on {} rows × {} features",
                table.features.rows, table.features.cols
            ),
        );
        let (gpu, c) = (self.gpu.clone(), ctl.clone());
        let mut trained = blocking(move || {
            let _memory = memory;
            match params.fleet() {
                Some(_) => algorithms::train_fleet(&gpu, table, &params, base.as_deref(), &c),
                None => algorithms::train(&gpu, table, &params, &c),
            }
        })
        .await?;
        let model_id = ModelId::new();
        let uri = objects::model_uri(
            &self.settings,
            &job.tenant_id,
            job.id,
            job.attempt,
            model_id,
        );
        self.storage
            .put(
                &uri,
                std::mem::take(&mut trained.artifact),
                "application/octet-stream",
            )
            .await?;
        Ok(Completion::Trained {
            model_id,
            trained,
            artifact: uri,
        })
    }

    async fn infer(
        &self,
        job: &JobRecord,
        model_id: ModelId,
        params: &InferParams,
        input: &Input,
        ctl: &Arc<Control>,
    ) -> Result<Completion, JobError> {
        let resolved = self.model(&job.tenant_id, model_id).await?;
        let model = resolved.model;
        let label_column = params
            .label_column
            .as_deref()
            .unwrap_or(&model.label_column);
        let group = match resolved.scope {
            Scope::Whole => model.model.group_column(),
            Scope::Member(_) => None,
        };
        let columns = Columns {
            label: label_column,
            require_label: false,
            group,
        };
        let (table, memory) = self.load_input(job, input, columns).await?;
        ctl.check()?;
        let n = table.features.rows;
        let inline_only = input.uri().is_none() && n <= INLINE_ONLY_ROWS;
        let rows_json = inline_only || n <= INLINE_PREDICTIONS;
        let output = (!inline_only)
            .then(|| objects::output_uri(&self.settings, &job.tenant_id, job.id, job.attempt));
        let inference = self
            .run_inference(
                model,
                resolved.scope,
                (table, memory),
                rows_json,
                ctl,
                output.as_ref(),
            )
            .await?;
        let result = inference_result(inference, n, output.as_ref(), rows_json);
        Ok(Completion::Inferred { result, output })
    }
}

/// A fleet's groups as recorded: each trained one a model of its own.
fn members_of(groups: &[algorithms::fleet::GroupOutcome]) -> Vec<NewMember> {
    groups
        .iter()
        .map(|g| NewMember {
            group_key: g.key.clone(),
            outcome: match &g.slot {
                Ok(slot) => Ok((ModelId::new(), *slot)),
                Err(e) => Err(json!({ "code": e.code, "message": e.message })),
            },
            metrics: Some(g.metrics()),
        })
        .collect()
}

impl WorkerContext {
    /// The artifact of the tenant's fleet `id`, which a refresh of it (`params.base_fleet`)
    /// starts from: the same algorithm, and a fleet, or the job fails.
    async fn base_fleet(
        &self,
        tenant: &str,
        id: ModelId,
        params: &TrainParams,
    ) -> Result<Vec<u8>, JobError> {
        let record = db::model_get_for(&self.pool, tenant, id)
            .await
            .map_err(|e| JobError::new(ErrorCode::DatabaseError, e.to_string()))?
            .ok_or_else(|| {
                JobError::new(
                    ErrorCode::ModelNotFound,
                    format!("params.base_fleet: fleet {id} does not exist"),
                )
            })?;
        if record.groups.is_none() || record.algorithm != params.algorithm() {
            return Err(JobError::new(
                ErrorCode::InvalidParams,
                format!(
                    "params.base_fleet: {id} is not a fleet of `{}` models",
                    params.algorithm()
                ),
            ));
        }
        let uri: S3Uri = record
            .artifact_uri
            .parse()
            .map_err(|e: String| JobError::new(ErrorCode::ModelCorrupt, e))?;
        self.model_bytes(&uri).await
    }
}

/// An infer job's result: its output object (if any), row count, summary and, with
/// `rows_json`, its predictions inline.
fn inference_result(
    inference: algorithms::Inference,
    rows: usize,
    output: Option<&S3Uri>,
    rows_json: bool,
) -> Value {
    let mut result = json!({ "output_uri": output.map(S3Uri::to_string), "rows": rows });
    for (k, v) in inference.summary {
        result[k] = v;
    }
    if rows_json {
        result["predictions"] = Value::Array(inference.rows);
    }
    result
}

/// Once a job has been told to stop: its outcome if it gets there within [`STOP_GRACE`].
async fn finish_within_grace(
    work: &mut std::pin::Pin<&mut impl Future<Output = Result<Completion, JobError>>>,
) -> Result<Completion, JobError> {
    tokio::time::timeout(STOP_GRACE, work.as_mut())
        .await
        .unwrap_or_else(|_| {
            Err(JobError::new(
                ErrorCode::Stopped,
                "did not stop within the grace period",
            ))
        })
}

/// Runs GPU work on a blocking thread; a panic there fails the attempt (retryably) instead of
/// taking the worker down.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(JobError::new(
            ErrorCode::InternalError,
            format!("the GPU task panicked: {e}"),
        ))
    })
}
