//! The JSON bodies the API returns for jobs and models (design.md, "API (v1)").

use gpuq_shared::db::{JobRecord, ModelRecord};
use serde_json::{Value, json};

pub fn job(j: &JobRecord) -> Value {
    json!({
        "id": j.id,
        "type": j.job_type,
        "algorithm": j.algorithm,
        "model_id": j.model_id,
        "status": j.status,
        "attempt": j.attempt,
        "max_attempts": j.max_attempts,
        "timeout_s": j.timeout_s,
        "params": j.params,
        "input": j.input,
        "progress": j.progress.clone().unwrap_or_else(|| json!({"fraction": 0.0, "message": null})),
        "result": j.result,
        "error": j.error,
        "attempt_errors": j.attempt_errors,
        "created_at": j.created_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
    })
}

pub fn model(m: &ModelRecord) -> Value {
    json!({
        "id": m.id,
        "algorithm": m.algorithm,
        "job_id": m.job_id,
        "n_features": m.n_features,
        "n_classes": m.n_classes,
        "params": m.params,
        "metrics": m.metrics,
        "artifact_uri": m.artifact_uri,
        "created_at": m.created_at,
    })
}
