//! `POST /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs`, `POST /v1/jobs/{id}/cancel`.

use super::{body_or_error, parse_id, parse_limit, query_params};
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::waiters::parse_wait;
use crate::{AppState, intake, view};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gpuq_shared::db::{
    self, BatchRecorded, Idempotent, JobFilter, JobRecord, Key, ModelRecord, NewJob,
};
use gpuq_shared::job::{Input, Work};
use gpuq_shared::{ErrorCode, JobId, JobStatus, JobType, ModelId, auth, retention, submit};
use serde_json::{Value, json};
use std::collections::HashMap;
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
    let wait = prefer_wait(&headers);
    let idempotency_key = idempotency_key(&headers)?;
    let new_job = prepare(&s, &tenant, &value, &mut HashMap::new()).await?;
    // A place among the tenant's waiters before anything is recorded; then watch the job before
    // it exists, so its finishing cannot be missed.
    let waiting = match wait {
        Some(w) if !w.is_zero() => Some((
            w,
            s.waiters.admit(&tenant.id)?,
            s.waiters.watch(&[new_job.id]),
        )),
        _ => None,
    };
    // The same request, whatever its JSON spacing or key order: hash its parsed form (objects
    // serialise with sorted keys).
    let key = idempotency_key.map(|key| Key {
        key,
        request_sha256: auth::body_sha256(value.to_string().as_bytes()),
    });
    let key_name = key.as_ref().map(|k| k.key.clone());
    // Recorded with whatever else arrives meanwhile (group commit); the intake task publishes
    // it even if this client hangs up.
    let (job, created) = match s.intake.submit(new_job, key).await? {
        Idempotent::Created(job) => (job, true),
        Idempotent::Existing(job) => (job, false),
        Idempotent::KeyReused => return Err(key_reused(key_name.as_deref())),
    };
    let id = job.id;
    let job = match waiting {
        Some((w, _slot, watch)) => watch
            .wait(&s.pool, w, vec![job])
            .await?
            .pop()
            .expect("the job it was given"),
        None => job,
    };
    let mut response = (StatusCode::ACCEPTED, Json(view::job(&job))).into_response();
    let location = HeaderValue::from_str(&format!("/v1/jobs/{id}")).expect("ascii");
    response.headers_mut().insert(header::LOCATION, location);
    if !created {
        mark_replayed(&mut response);
    }
    if let Some(w) = wait {
        mark_wait_applied(&mut response, w);
    }
    Ok(response)
}

/// `POST /v1/jobs/batch`: `{"jobs": [submit body, …]}`. Answers `200` with `{"jobs": [...]}` in
/// the request's order, each item the job (as `POST /v1/jobs` returns it) or
/// `{"error": {"code", "message", "field"}}`: one bad item does not refuse the others. The valid
/// items are recorded in one transaction and published together. An `Idempotency-Key` covers
/// the whole batch; `Prefer: wait=N` waits for all of its jobs; each job counts against the
/// tenant's rate limit.
pub async fn submit_batch(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body, s.max_body_bytes)?;
    let value = submit::parse_json(&body)?;
    let items = batch_items(&value, s.max_batch_jobs)?;
    let wait = prefer_wait(&headers);
    let idempotency_key = idempotency_key(&headers)?;
    // The request took one token on its way in; its other jobs take theirs.
    s.rate.charge_n(&tenant.id, items.len() - 1);
    let mut models = HashMap::new();
    let mut prepared = Vec::with_capacity(items.len());
    for item in items {
        prepared.push(prepare(&s, &tenant, item, &mut models).await);
    }
    let answer: Vec<Value> = prepared
        .iter()
        .map(|p| match p {
            Ok(job) => json!({ "job_id": job.id }),
            Err(e) => json!({ "error": e.body() }),
        })
        .collect();
    let jobs: Vec<NewJob> = prepared.into_iter().filter_map(Result::ok).collect();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let waiting = match wait {
        Some(w) if !w.is_zero() => Some((w, s.waiters.admit(&tenant.id)?)),
        _ => None,
    };
    let mut watch = waiting.as_ref().map(|_| s.waiters.watch(&ids));
    // A batch's digest differs from any single submit's, so a key cannot serve both.
    let key = idempotency_key.clone().map(|key| Key {
        key,
        request_sha256: auth::body_sha256(format!("batch:{value}").as_bytes()),
    });
    let answer = Value::Array(answer);
    let state = s.clone();
    let tenant_id = tenant.id.clone();
    // Recorded and published in a task of its own, which this handler awaits: a client that
    // hangs up drops the handler, never the work, so no job is left recorded but unpublished.
    let recorded = tokio::spawn(async move {
        let idempotency = key.as_ref().map(|k| (k, &answer));
        let recorded = db::jobs_insert_batch(&state.pool, &tenant_id, &jobs, idempotency).await?;
        if let BatchRecorded::Created(_, messages) = &recorded {
            intake::publish_recorded(&state.pool, &state.publisher, messages).await;
        }
        Ok::<_, ApiError>((recorded, answer))
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("recording the batch failed: {e}")))??;
    let (items, jobs, replayed) = match recorded {
        (BatchRecorded::Created(rows, _), answer) => (answer, rows, false),
        (BatchRecorded::Replayed(items), _) => {
            let ids = item_ids(&items);
            if waiting.is_some() {
                watch = Some(s.waiters.watch(&ids));
            }
            (items, db::jobs_get(&s.pool, &ids).await?, true)
        }
        (BatchRecorded::KeyReused, _) => return Err(key_reused(idempotency_key.as_deref())),
    };
    let jobs = match (waiting, watch) {
        (Some((w, _slot)), Some(watch)) => watch.wait(&s.pool, w, jobs).await?,
        _ => jobs,
    };
    let mut by_id: HashMap<JobId, JobRecord> = jobs.into_iter().map(|j| (j.id, j)).collect();
    let out: Vec<Value> = items
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|item| match item_id(item) {
            Some(id) => match by_id.remove(&id) {
                Some(job) => view::job(&job),
                None => {
                    json!({ "error": ApiError::NotFound(format!("job {id} was deleted")).body() })
                }
            },
            None => item.clone(),
        })
        .collect();
    let mut response = (StatusCode::OK, Json(json!({ "jobs": out }))).into_response();
    if replayed {
        mark_replayed(&mut response);
    }
    if let Some(w) = wait {
        mark_wait_applied(&mut response, w);
    }
    Ok(response)
}

/// The items of a batch body: `{"jobs": [...]}` with 1 to `max` of them.
fn batch_items(value: &Value, max: usize) -> Result<&[Value], ApiError> {
    let Some(obj) = value.as_object() else {
        return Err(ApiError::BadRequest {
            code: ErrorCode::MalformedJson,
            message: "the body must be a JSON object: {\"jobs\": [...]}".into(),
        });
    };
    if let Some(k) = obj.keys().find(|k| k.as_str() != "jobs") {
        return Err(ApiError::invalid(k.clone(), "unknown field (known: jobs)"));
    }
    let jobs = match obj.get("jobs") {
        None => {
            return Err(ApiError::Invalid {
                code: ErrorCode::MissingField,
                field: "jobs".into(),
                message: "a batch needs `jobs`: an array of submit bodies".into(),
            });
        }
        Some(Value::Array(jobs)) => jobs,
        Some(_) => {
            return Err(ApiError::invalid(
                "jobs",
                "must be an array of submit bodies",
            ));
        }
    };
    if jobs.is_empty() {
        return Err(ApiError::invalid("jobs", "a batch needs at least one job"));
    }
    if jobs.len() > max {
        return Err(ApiError::Invalid {
            code: ErrorCode::OverLimit,
            field: "jobs".into(),
            message: format!("a batch holds at most {max} jobs, not {}", jobs.len()),
        });
    }
    Ok(jobs)
}

/// The job ids among a batch's recorded items.
fn item_ids(items: &Value) -> Vec<JobId> {
    items
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(item_id)
        .collect()
}

/// A recorded item's job id (`None` for a refused item).
fn item_id(item: &Value) -> Option<JobId> {
    item.get("job_id")?.as_str()?.parse().ok()
}

/// Validates one submit body into the job to record: its params and limits, its input against
/// what the tenant may read, and an infer job's model (looked up once per batch in `models`).
async fn prepare(
    s: &AppState,
    tenant: &Tenant,
    value: &Value,
    models: &mut HashMap<ModelId, Option<ModelRecord>>,
) -> Result<NewJob, ApiError> {
    let mut sub = submit::validate(value, &s.settings.limits)?;
    check_input_allowed(s, tenant, &sub.spec.input)?;
    if let (Some(group), Work::Infer { model_id, .. }) =
        (sub.member_group.take(), &mut sub.spec.work)
    {
        let member = super::fleets::member(s, tenant, *model_id, &group).await?;
        *model_id = member.id;
        s.models_seen.remember(&tenant.id, &member);
        models.insert(member.id, Some(member));
    }
    if let Work::Train(p) = &sub.spec.work
        && let Some(base) = p.fleet().and_then(|f| f.base_fleet)
    {
        super::fleets::check_base(s, tenant, base, p.algorithm()).await?;
    }
    let algorithm = match &sub.spec.work {
        Work::Infer { model_id, .. } => {
            let model = match models.get(model_id) {
                Some(m) => m.clone(),
                None => {
                    let m = match s.models_seen.get(&tenant.id, *model_id) {
                        Some(m) => Some(m),
                        None => {
                            let m = db::model_get_for(&s.pool, &tenant.id, *model_id).await?;
                            if let Some(m) = &m {
                                s.models_seen.remember(&tenant.id, m);
                            }
                            m
                        }
                    };
                    models.insert(*model_id, m.clone());
                    m
                }
            }
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
            if model.groups.is_some() && sub.spec.input.uri().is_none() {
                let column = model.params["group_column"].as_str().unwrap_or_default();
                return Err(ApiError::invalid(
                    "input",
                    format!(
                        "fleet {model_id} scores each row by its `{column}` column: upload a CSV \
                         or .npy with it and pass its `uri`, or name one member (`group`)"
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
    let lifecycle = &s.settings.lifecycle;
    Ok(NewJob {
        id: JobId::new(),
        tenant: tenant.id.clone(),
        spec: sub.spec,
        algorithm,
        max_attempts: sub.max_attempts.unwrap_or(lifecycle.max_attempts),
        timeout_s: sub.timeout_s.unwrap_or(lifecycle.default_timeout_s) as i32,
    })
}

fn key_reused(key: Option<&str>) -> ApiError {
    ApiError::Conflict(format!(
        "Idempotency-Key `{}` was used for a different request",
        key.unwrap_or_default()
    ))
}

fn mark_replayed(response: &mut Response) {
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
}

fn mark_wait_applied(response: &mut Response, wait: Duration) {
    let applied = HeaderValue::from_str(&format!("wait={}", wait.as_secs_f64())).expect("ascii");
    response.headers_mut().insert("preference-applied", applied);
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
