//! Running one job: claim it, keep its lease alive from a task of its own, run the algorithm on
//! a blocking thread, write the outcome with a fenced update. Every outcome is turned into a
//! state transition here and only here.

use crate::algorithms::{self, Control, LoadedModel, Trained};
use crate::gpu::Gpu;
use gpuq_shared::config::Settings;
use gpuq_shared::dataset::{self, Table};
use gpuq_shared::db::{self, JobRecord, NewModel};
use gpuq_shared::queue::Publisher;
use gpuq_shared::storage::Storage;
use gpuq_shared::{Algorithm, JobError, JobId, JobStatus, ModelId, S3Uri};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Outputs up to this many rows are returned inline in the job's result.
pub const INLINE_PREDICTIONS: usize = 100;
/// Inline inputs up to this many rows get inline results only (no S3 object).
pub const INLINE_ONLY_ROWS: usize = 1000;

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
    /// Models already on the GPU, by id (models never change once written).
    models: Mutex<HashMap<ModelId, Arc<CachedModel>>>,
}

/// A model on the GPU and the training parameters recorded with it.
struct CachedModel {
    model: LoadedModel,
    params: Value,
}

/// How a job ended well.
enum Completion {
    Trained {
        model_id: ModelId,
        trained: Trained,
        artifact_uri: String,
    },
    Inferred {
        result: Value,
    },
}

impl WorkerContext {
    pub fn new(
        pool: sqlx::PgPool,
        storage: Storage,
        publisher: Arc<Publisher>,
        gpu: Arc<Gpu>,
        settings: Settings,
        worker_id: String,
        abort: CancellationToken,
    ) -> Self {
        Self {
            pool,
            storage,
            publisher,
            gpu,
            settings,
            worker_id,
            abort,
            models: Mutex::new(HashMap::new()),
        }
    }

    /// Runs a job this worker has just claimed, through to its recorded outcome.
    pub async fn run(self: &Arc<Self>, job: JobRecord) {
        let id = JobId(job.id);
        let attempt = job.attempt;
        tracing::info!(job = %id, attempt, kind = %job.job_type, algorithm = %job.algorithm, "running");
        let ctl = Arc::new(Control::new(self.abort.clone()));
        let heartbeat = tokio::spawn(heartbeat(
            self.pool.clone(),
            id,
            attempt,
            self.settings.lifecycle.lease,
            ctl.clone(),
        ));
        let outcome = self.execute(&job, &ctl).await;
        heartbeat.abort();
        if ctl.should_stop() {
            tracing::info!(job = %id, "stopped: canceled or lease lost; writing nothing");
            return;
        }
        let written = match outcome {
            Ok(done) => self.write_success(id, attempt, &job, done).await,
            Err(e) => self.write_failure(id, attempt, &e).await,
        };
        if let Err(e) = written {
            // The lease will expire and the reaper will hand the job on: nothing is lost.
            tracing::error!(job = %id, error = %e, "could not record the outcome");
        }
    }

    async fn write_success(
        &self,
        id: JobId,
        attempt: i32,
        job: &JobRecord,
        done: Completion,
    ) -> Result<(), db::DbError> {
        let fenced = match done {
            Completion::Trained {
                model_id,
                trained,
                artifact_uri,
            } => {
                let metrics = &trained.metrics;
                let result = json!({ "model_id": model_id, "metrics": metrics });
                let new_model = NewModel {
                    id: model_id,
                    algorithm: &job.algorithm,
                    n_features: trained.n_features as i32,
                    n_classes: trained.n_classes as i32,
                    params: &job.params,
                    metrics,
                    artifact_uri: &artifact_uri,
                };
                retry_db(|| {
                    db::job_set_succeeded_with_model(&self.pool, id, attempt, &result, &new_model)
                })
                .await?
            }
            Completion::Inferred { result } => {
                retry_db(|| db::job_set_succeeded(&self.pool, id, attempt, &result)).await?
            }
        };
        if fenced {
            tracing::info!(job = %id, attempt, "succeeded");
        } else {
            tracing::warn!(job = %id, attempt, "finished after losing the job; result discarded");
        }
        Ok(())
    }

    async fn write_failure(
        &self,
        id: JobId,
        attempt: i32,
        e: &JobError,
    ) -> Result<(), db::DbError> {
        tracing::warn!(job = %id, attempt, code = %e.code, message = %e.message, "attempt failed");
        let status = retry_db(|| db::job_set_failed_or_retry(&self.pool, id, attempt, e)).await?;
        if status == Some(JobStatus::Queued)
            && let Err(err) = self.publisher.publish(id).await
        {
            tracing::warn!(job = %id, error = %err, "republish failed; the reaper will do it");
        }
        Ok(())
    }

    async fn execute(&self, job: &JobRecord, ctl: &Arc<Control>) -> Result<Completion, JobError> {
        match job.job_type.as_str() {
            "train" => self.train(job, ctl).await,
            _ => self.infer(job).await,
        }
    }

    async fn load_input(
        &self,
        input: &Value,
        label_column: &str,
        require_label: bool,
    ) -> Result<Table, JobError> {
        if let Some(uri) = input.get("uri").and_then(Value::as_str) {
            let uri: S3Uri = uri.parse().map_err(JobError::invalid_input)?;
            return self
                .storage
                .read_table(&uri, label_column, require_label)
                .await;
        }
        let rows: Vec<Vec<f64>> =
            serde_json::from_value(input.get("rows").cloned().unwrap_or(Value::Null))
                .map_err(|e| JobError::invalid_input(format!("input.rows: {e}")))?;
        let labels: Option<Vec<f64>> =
            serde_json::from_value(input.get("labels").cloned().unwrap_or(Value::Null))
                .map_err(|e| JobError::invalid_input(format!("input.labels: {e}")))?;
        if require_label && labels.is_none() {
            return Err(JobError::invalid_input(
                "training needs `labels` beside the inline rows",
            ));
        }
        dataset::from_rows(&rows, labels.as_deref())
    }

    async fn train(&self, job: &JobRecord, ctl: &Arc<Control>) -> Result<Completion, JobError> {
        let algorithm: Algorithm = job
            .algorithm
            .parse()
            .map_err(|e: String| JobError::fatal("invalid_params", e))?;
        let label_column = job
            .params
            .get("label_column")
            .and_then(Value::as_str)
            .unwrap_or("label")
            .to_string();
        ctl.report(0.0, "reading input".into());
        let table = self
            .load_input(&job.input, &label_column, algorithm.needs_labels())
            .await?;
        ctl.report(
            0.0,
            format!(
                "training on {} rows × {} features",
                table.features.rows, table.features.cols
            ),
        );
        let (gpu, c, params) = (self.gpu.clone(), ctl.clone(), job.params.clone());
        let mut trained =
            blocking(move || algorithms::train(algorithm, &gpu, table, &params, &c)).await?;
        let model_id = ModelId::new();
        // A fresh key per attempt: a late attempt can never overwrite the winner's artifact.
        let uri = S3Uri::new(
            &self.settings.bucket,
            self.settings
                .object_key(&format!("models/{model_id}.safetensors")),
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
            artifact_uri: uri.to_string(),
        })
    }

    async fn infer(&self, job: &JobRecord) -> Result<Completion, JobError> {
        let model_id = ModelId(
            job.model_id
                .ok_or_else(|| JobError::invalid_input("infer job without model_id"))?,
        );
        let model = self.model(model_id).await?;
        let label_column = job
            .params
            .get("label_column")
            .or_else(|| model.params.get("label_column"))
            .and_then(Value::as_str)
            .unwrap_or("label")
            .to_string();
        let table = self.load_input(&job.input, &label_column, false).await?;
        let n = table.features.rows;
        let inline_only = job.input.get("rows").is_some() && n <= INLINE_ONLY_ROWS;
        let rows_json = inline_only || n <= INLINE_PREDICTIONS;
        let (gpu, m) = (self.gpu.clone(), model.clone());
        let inference = blocking(move || m.model.infer(&gpu, &table, rows_json)).await?;

        let output_uri = if inline_only {
            None
        } else {
            let uri = S3Uri::new(
                &self.settings.bucket,
                self.settings
                    .object_key(&format!("outputs/{}/predictions.csv", job.id)),
            );
            self.storage
                .put(&uri, inference.csv.into_bytes(), "text/csv")
                .await?;
            Some(uri.to_string())
        };
        let mut result = json!({ "output_uri": output_uri, "rows": n });
        for (k, v) in inference.summary {
            result[k] = v;
        }
        if rows_json {
            result["predictions"] = Value::Array(inference.rows);
        }
        Ok(Completion::Inferred { result })
    }

    /// The model on the GPU, loading its record and artifact on first use.
    async fn model(&self, id: ModelId) -> Result<Arc<CachedModel>, JobError> {
        if let Some(m) = self.models.lock().expect("model cache").get(&id) {
            return Ok(m.clone());
        }
        let record = db::model_get(&self.pool, id)
            .await
            .map_err(|e| JobError::transient("database_error", e.to_string()))?
            .ok_or_else(|| {
                JobError::fatal("model_not_found", format!("model {id} does not exist"))
            })?;
        let uri: S3Uri = record
            .artifact_uri
            .parse()
            .map_err(|e: String| JobError::fatal("model_corrupt", e))?;
        let bytes = self
            .storage
            .get_bytes(&uri)
            .await
            .map_err(|e| match e.code.as_str() {
                "input_not_found" => {
                    JobError::fatal("model_not_found", format!("the artifact {uri} is gone"))
                }
                _ => e,
            })?;
        let gpu = self.gpu.clone();
        let params = record.params;
        let model = blocking(move || LoadedModel::load(&gpu, &bytes)).await?;
        let loaded = Arc::new(CachedModel { model, params });
        let mut cache = self.models.lock().expect("model cache");
        if cache.len() >= 256 {
            cache.clear();
        }
        cache.insert(id, loaded.clone());
        Ok(loaded)
    }
}

/// Runs GPU work on a blocking thread; a panic there fails the attempt (retryably) instead of
/// taking the worker down.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(JobError::transient(
            "internal_error",
            format!("the GPU task panicked: {e}"),
        ))
    })
}

/// Retries a database write a few times across a brief outage.
async fn retry_db<T, F, Fut>(mut f: F) -> Result<T, db::DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, db::DbError>>,
{
    let mut delay = Duration::from_millis(100);
    for _ in 0..5 {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(error = %e, "database write failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    f().await
}

/// Renews the lease every third of it (at least every second, to pass progress and notice a
/// cancel promptly); tells the job to stop when the attempt no longer holds the job.
async fn heartbeat(
    pool: sqlx::PgPool,
    id: JobId,
    attempt: i32,
    lease: Duration,
    ctl: Arc<Control>,
) {
    let every = (lease / 3).min(Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let progress = ctl
            .take_progress()
            .map(|(fraction, message)| json!({"fraction": fraction, "message": message}));
        match db::job_heartbeat(&pool, id, attempt, lease, progress.as_ref()).await {
            Ok(true) => {}
            Ok(false) => {
                ctl.request_stop();
                return;
            }
            Err(e) => tracing::warn!(job = %id, error = %e, "lease renewal failed; retrying"),
        }
    }
}
