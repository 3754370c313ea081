//! `POST /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs`, `POST /v1/jobs/{id}/cancel`.

use super::{body_or_error, parse_id, parse_limit, query_params};
use crate::error::ApiError;
use crate::waiters::parse_wait;
use crate::{AppState, submit, view};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gpuq_shared::db::{self, JobFilter, NewJob};
use gpuq_shared::{JobId, JobStatus, JobType};
use serde_json::{Value, json};
use std::time::Duration;

/// Records the job, publishes it, answers `202` with the job and its `Location`. With
/// `Prefer: wait=N` it first waits up to N seconds for the job to finish.
pub async fn submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body, s.max_body_bytes)?;
    let sub = submit::parse(&body)?;
    let wait = prefer_wait(&headers);

    let algorithm = match (sub.job_type, sub.model_id) {
        (JobType::Infer, Some(model_id)) => {
            let model = db::model_get(&s.pool, model_id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no model {model_id}")))?;
            if let Some(a) = sub.algorithm.filter(|a| a.as_str() != model.algorithm) {
                return Err(ApiError::invalid(
                    "algorithm",
                    format!(
                        "model {model_id} is a `{}` model, not `{}`",
                        model.algorithm,
                        a.as_str()
                    ),
                ));
            }
            if let Some(width) = sub.inline_width.filter(|w| *w as i32 != model.n_features) {
                return Err(ApiError::Invalid {
                    code: "shape_mismatch",
                    field: "input.rows".into(),
                    message: format!(
                        "rows have {width} features; the model takes {}",
                        model.n_features
                    ),
                });
            }
            model.algorithm
        }
        _ => sub
            .algorithm
            .expect("train jobs name their algorithm")
            .as_str()
            .to_string(),
    };

    // Subscribe before the job exists, so its finishing cannot be missed.
    let waiting = wait.map(|w| (w, s.waiters.subscribe()));
    let job = db::job_insert(
        &s.pool,
        &NewJob {
            id: JobId::new(),
            job_type: sub.job_type.as_str(),
            algorithm: &algorithm,
            model_id: sub.model_id,
            max_attempts: sub.max_attempts.unwrap_or(s.default_max_attempts),
            params: &sub.params,
            input: &sub.input,
        },
    )
    .await?;
    let id = JobId(job.id);
    // The job is safe in Postgres: if the broker is down the reaper publishes it later, so a
    // failed publish does not fail the request.
    if let Err(e) = s.publisher.publish(id).await {
        tracing::warn!(job = %id, error = %e, "publish failed; the reaper will publish the job");
    }
    let job = match waiting {
        Some((w, rx)) => s
            .waiters
            .wait_with(&s.pool, id, w, rx, Some(job.clone()))
            .await?
            .unwrap_or(job),
        None => job,
    };
    let mut response = (StatusCode::ACCEPTED, Json(view::job(&job))).into_response();
    let location = HeaderValue::from_str(&format!("/v1/jobs/{id}")).expect("ascii");
    response.headers_mut().insert(header::LOCATION, location);
    if let Some(w) = wait {
        let applied = HeaderValue::from_str(&format!("wait={}", w.as_secs_f64())).expect("ascii");
        response.headers_mut().insert("preference-applied", applied);
    }
    Ok(response)
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
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let id: JobId = parse_id(&id, "job")?;
    let q = query_params(raw, &["wait"])?;
    let job = match q.get("wait") {
        Some(w) => {
            let wait = parse_wait(w).ok_or_else(|| ApiError::BadRequest {
                code: "invalid_parameter",
                message: format!("wait must be a number of seconds, not `{w}`"),
            })?;
            s.waiters.wait_for(&s.pool, id, wait).await?
        }
        None => db::job_get(&s.pool, id).await?,
    };
    let job = job.ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    Ok(Json(view::job(&job)))
}

/// Newest first, filtered by `status` and `type`, paged by the `after` cursor.
pub async fn list(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = query_params(raw, &["status", "type", "limit", "after"])?;
    let bad = |m: String| ApiError::BadRequest {
        code: "invalid_parameter",
        message: m,
    };
    let filter = JobFilter {
        status: q
            .get("status")
            .map(|v| v.parse::<JobStatus>())
            .transpose()
            .map_err(bad)?,
        job_type: q
            .get("type")
            .map(|v| v.parse::<JobType>().map(|t| t.as_str().to_string()))
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
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: JobId = parse_id(&id, "job")?;
    match db::job_set_canceled(&s.pool, id).await? {
        None => Err(ApiError::NotFound(format!("no job {id}"))),
        Some((job, true)) => Ok(Json(view::job(&job))),
        Some((job, false)) => Err(ApiError::Conflict(format!(
            "job {id} has already finished ({})",
            job.status
        ))),
    }
}
