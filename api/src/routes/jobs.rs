//! `POST /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs`, `POST /v1/jobs/{id}/cancel`.

use super::{body_or_error, parse_id, parse_limit, query_params};
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::waiters::parse_wait;
use crate::{AppState, view};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gpuq_shared::db::{self, Idempotent, JobFilter, JobRecord, NewJob};
use gpuq_shared::job::{Input, Work};
use gpuq_shared::{ErrorCode, JobId, JobStatus, JobType, auth, retention, submit};
use serde_json::{Value, json};
use std::time::Duration;

/// Records the job, publishes it, answers `202` with the job and its `Location`. With
/// `Prefer: wait=N` it first waits up to N seconds for the job to finish. With an
/// `Idempotency-Key`, a repeat of the same request answers with the job the first one made.
pub async fn submit(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body, s.max_body_bytes)?;
    let value = submit::parse_json(&body)?;
    let sub = submit::validate(&value, &s.settings.limits)?;
    let wait = prefer_wait(&headers);
    let idempotency_key = idempotency_key(&headers)?;
    check_input_allowed(&s, &tenant, &sub.spec.input)?;

    let algorithm = match &sub.spec.work {
        Work::Infer { model_id, .. } => {
            let model = db::model_get_for(&s.pool, &tenant.id, *model_id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no model {model_id}")))?;
            if let Some(a) = sub.infer_algorithm.filter(|a| *a != model.algorithm) {
                return Err(ApiError::invalid(
                    "algorithm",
                    format!(
                        "model {model_id} is a `{}` model, not `{a}`",
                        model.algorithm
                    ),
                ));
            }
            if let Some((_, width)) = sub
                .spec
                .input
                .inline_shape()
                .filter(|(_, w)| *w as i32 != model.n_features)
            {
                return Err(ApiError::Invalid {
                    code: ErrorCode::ShapeMismatch,
                    field: "input.rows".into(),
                    message: format!(
                        "rows have {width} features; the model takes {}",
                        model.n_features
                    ),
                });
            }
            model.algorithm
        }
        Work::Train(params) => params.algorithm(),
    };

    // A place among the tenant's waiters before anything is recorded; then subscribe before
    // the job exists, so its finishing cannot be missed.
    let waiting = match wait {
        Some(w) if !w.is_zero() => Some((w, s.waiters.admit(&tenant.id)?, s.waiters.subscribe())),
        _ => None,
    };
    let max_attempts = sub
        .max_attempts
        .unwrap_or(s.settings.lifecycle.max_attempts);
    let timeout_s = sub
        .timeout_s
        .unwrap_or(s.settings.lifecycle.default_timeout_s) as i32;
    // The same request, whatever its JSON spacing or key order: hash its parsed form (objects
    // serialise with sorted keys).
    let idempotency = idempotency_key.map(|k| (k, auth::body_sha256(value.to_string().as_bytes())));
    // Recording and publishing run in a task of their own, which this handler awaits: a client
    // that hangs up drops the handler, never the work, so no job is left recorded but unpublished.
    let (state, tenant_id, spec) = (s.clone(), tenant.id.clone(), sub.spec);
    let recording = tokio::spawn(async move {
        let new_job = NewJob {
            id: JobId::new(),
            tenant: &tenant_id,
            spec: &spec,
            algorithm,
            max_attempts,
            timeout_s,
        };
        record_and_publish(&state, &new_job, idempotency).await
    });
    let (job, created) = recording
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("recording the job failed: {e}")))??;
    let id = job.id;
    let job = match waiting {
        Some((w, _slot, rx)) => s
            .waiters
            .wait_with(&s.pool, id, w, rx, Some(job.clone()))
            .await?
            .unwrap_or(job),
        None => job,
    };
    let mut response = (StatusCode::ACCEPTED, Json(view::job(&job))).into_response();
    let location = HeaderValue::from_str(&format!("/v1/jobs/{id}")).expect("ascii");
    response.headers_mut().insert(header::LOCATION, location);
    if !created {
        let replayed = HeaderValue::from_static("true");
        response
            .headers_mut()
            .insert("idempotent-replayed", replayed);
    }
    if let Some(w) = wait {
        let applied = HeaderValue::from_str(&format!("wait={}", w.as_secs_f64())).expect("ascii");
        response.headers_mut().insert("preference-applied", applied);
    }
    Ok(response)
}

/// Records the job (once per `Idempotency-Key` and request digest) and publishes it; says
/// whether this request created it.
async fn record_and_publish(
    s: &AppState,
    new_job: &NewJob<'_>,
    idempotency: Option<(String, [u8; 32])>,
) -> Result<(JobRecord, bool), ApiError> {
    let (job, created) = match &idempotency {
        None => (db::job_insert(&s.pool, new_job).await?, true),
        Some((key, digest)) => {
            match db::job_insert_idempotent(&s.pool, new_job, key, digest).await? {
                Idempotent::Created(job) => (job, true),
                Idempotent::Existing(job) => (job, false),
                Idempotent::KeyReused => {
                    return Err(ApiError::Conflict(format!(
                        "Idempotency-Key `{key}` was used for a different request"
                    )));
                }
            }
        }
    };
    // The job is safe in Postgres: if the broker is down the reaper publishes it later, so a
    // failed publish does not fail the request. A replayed request publishes nothing.
    if created {
        publish_recorded(s, job.id).await;
    }
    Ok((job, created))
}

/// Publishes a job just recorded and, once the broker confirms, marks it published, so the
/// reaper counts its message as in the queue. Unmarked (the publish failed, or the mark did), the
/// reaper publishes it within seconds.
async fn publish_recorded(s: &AppState, id: JobId) {
    match s.publisher.publish(id).await {
        Ok(()) => {
            if let Err(e) = db::job_set_published(&s.pool, id).await {
                tracing::warn!(job = %id, error = %e, "could not mark the job published; the reaper will publish it again");
            }
        }
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "publish failed; the reaper will publish the job")
        }
    }
}

/// `Idempotency-Key`: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match raw.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(k.to_string()))
        }
        _ => Err(ApiError::BadRequest {
            code: ErrorCode::InvalidIdempotencyKey,
            message: "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        }),
    }
}

/// An `s3://` input must lie inside what the tenant may read; refused before anything else
/// happens, and checked again by the worker.
fn check_input_allowed(s: &AppState, tenant: &Tenant, input: &Input) -> Result<(), ApiError> {
    let Some(uri) = input.uri() else {
        return Ok(());
    };
    let own = s.settings.tenant_prefix(&tenant.id);
    if auth::may_read(uri, &s.settings.bucket, &own, &tenant.input_prefixes) {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        code: ErrorCode::ForbiddenInput,
        field: "input.uri".into(),
        message: format!(
            "this tenant may only read inputs under s3://{}/{own}{}",
            s.settings.bucket,
            if tenant.input_prefixes.is_empty() {
                String::new()
            } else {
                format!(" or {}", tenant.input_prefixes.join(", "))
            }
        ),
    })
}

/// `Prefer: wait=N` (RFC 7240), N in seconds.
fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|p| p.trim().strip_prefix("wait=").and_then(parse_wait))
}

/// The job; with `?wait=N`, once it is finished or N seconds have passed.
pub async fn get(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let id: JobId = parse_id(&id, "job")?;
    let q = query_params(raw, &["wait"])?;
    let job = match q.get("wait") {
        Some(w) => {
            let wait = parse_wait(w).ok_or_else(|| ApiError::BadRequest {
                code: ErrorCode::InvalidParameter,
                message: format!("wait must be a number of seconds, not `{w}`"),
            })?;
            let _slot = (!wait.is_zero())
                .then(|| s.waiters.admit(&tenant.id))
                .transpose()?;
            s.waiters.wait_for(&s.pool, &tenant.id, id, wait).await?
        }
        None => db::job_get_for(&s.pool, &tenant.id, id).await?,
    };
    let job = job.ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    Ok(Json(view::job(&job)))
}

/// Newest first, filtered by `status` and `type`, paged by the `after` cursor.
pub async fn list(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = query_params(raw, &["status", "type", "limit", "after"])?;
    let bad = |m: String| ApiError::BadRequest {
        code: ErrorCode::InvalidParameter,
        message: m,
    };
    let filter = JobFilter {
        tenant: tenant.id,
        status: q
            .get("status")
            .map(|v| v.parse::<JobStatus>())
            .transpose()
            .map_err(bad)?,
        job_type: q
            .get("type")
            .map(|v| v.parse::<JobType>())
            .transpose()
            .map_err(bad)?,
        after: q
            .get("after")
            .map(|a| parse_id::<JobId>(a, "cursor"))
            .transpose()?,
        limit: parse_limit(&q)?,
    };
    let jobs = db::job_list(&s.pool, &filter).await?;
    let next = (jobs.len() as i64 == filter.limit)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    Ok(Json(json!({
        "jobs": jobs.iter().map(view::job).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// Cancels a queued or running job; `409` if it had already finished. A running job's worker
/// sees the cancel at its next lease renewal and stops.
pub async fn cancel(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: JobId = parse_id(&id, "job")?;
    match db::job_set_canceled(&s.pool, &tenant.id, id).await? {
        None => Err(ApiError::NotFound(format!("no job {id}"))),
        Some((job, true)) => Ok(Json(view::job(&job))),
        Some((job, false)) => Err(ApiError::Conflict(format!(
            "job {id} has already finished ({})",
            job.status.as_str()
        ))),
    }
}

/// Deletes a finished job and its output objects (`204`); `409` while it is queued or running
/// (cancel it first). A train job's model stays: delete it with `DELETE /v1/models/{id}`.
pub async fn delete(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: JobId = parse_id(&id, "job")?;
    let job = db::job_get_for(&s.pool, &tenant.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    if !job.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "job {id} is {}: only a finished job can be deleted (cancel it first)",
            job.status
        )));
    }
    let finished = db::FinishedJob {
        id: job.id,
        tenant_id: job.tenant_id,
        job_type: job.job_type,
        result: job.result,
    };
    retention::delete_job_outputs(&s.storage, &s.settings, &finished)
        .await
        .map_err(storage_unavailable)?;
    db::job_delete_finished(&s.pool, &tenant.id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// S3 failed while deleting: nothing of the row was touched, so the client may simply retry.
pub(crate) fn storage_unavailable(e: gpuq_shared::JobError) -> ApiError {
    tracing::warn!(error = %e, "S3 failed during a delete");
    ApiError::Unavailable(format!("storage failed ({}); try again", e.code))
}
