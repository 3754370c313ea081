//! The JSON bodies the API returns for jobs and models (design.md, "API (v1)").

use gpuq_shared::db::{FleetMember, JobRecord, ModelRecord};
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
    let mut v = json!({
        "id": m.id,
        "algorithm": m.algorithm,
        "job_id": m.job_id,
        "n_features": m.n_features,
        "n_classes": m.n_classes,
        "params": m.params,
        "metrics": m.metrics,
        "artifact_uri": m.artifact_uri,
        "created_at": m.created_at,
    });
    if let Some(groups) = m.groups {
        v["groups"] = json!(groups);
    }
    if let Some(fleet) = m.fleet_id {
        v["fleet_id"] = json!(fleet);
        v["group"] = json!(m.group_key);
    }
    v
}

/// A fleet: the model row that holds its artifact, `groups` the groups it trained.
pub fn fleet(m: &ModelRecord) -> Value {
    json!({
        "id": m.id,
        "algorithm": m.algorithm,
        "job_id": m.job_id,
        "groups": m.groups,
        "group_column": m.params["group_column"],
        "n_features": m.n_features,
        "params": m.params,
        "metrics": m.metrics,
        "artifact_uri": m.artifact_uri,
        "created_at": m.created_at,
    })
}

/// One group of a fleet: trained (its model id, slot and metrics) or failed (its error).
pub fn fleet_member(m: &FleetMember) -> Value {
    json!({
        "group": m.group_key,
        "status": if m.error.is_some() { "failed" } else { "trained" },
        "model_id": m.model_id,
        "slot": m.slot,
        "metrics": m.metrics,
        "error": m.error,
    })
}
