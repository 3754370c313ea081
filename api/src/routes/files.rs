//! Files without S3 credentials: `POST /v1/uploads` hands out a presigned `PUT` under the
//! tenant's prefix; `GET /v1/jobs/{id}/output` and `GET /v1/models/{id}/artifact` answer `302`
//! with a presigned `GET`. Every URL expires after `GPUQ_PRESIGN_SECONDS` (900 by default).

use super::{body_or_error, parse_id};
use crate::AppState;
use crate::auth::Tenant;
use crate::error::ApiError;
use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gpuq_shared::{ErrorCode, JobId, ModelId, S3Uri, db};
use serde_json::{Value, json};

/// The longest file name an upload may carry, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// Why a file name cannot name an upload, if it cannot: it must be one plain path segment.
fn bad_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("must be at most 255 bytes")
    } else if name.contains('/') || name.contains('\\') {
        Some("must be a file name, without `/` or `\\`")
    } else if name.contains("..") {
        Some("must not contain `..`")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

/// `POST /v1/uploads` `{"filename"}` → `201` with a presigned `PUT` URL for a fresh key under
/// the tenant's `uploads/`, and the `s3://` uri to submit once the file is there.
pub async fn create(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(body, s.max_body_bytes)?;
    let value = gpuq_shared::submit::parse_json(&body)?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::BadRequest {
            code: ErrorCode::MalformedJson,
            message: "the body must be a JSON object".into(),
        });
    };
    if let Some(k) = obj.keys().find(|k| *k != "filename") {
        return Err(ApiError::Invalid {
            code: ErrorCode::UnknownParameter,
            field: k.clone(),
            message: "unknown field (known: filename)".into(),
        });
    }
    let name = match obj.get("filename") {
        None => {
            return Err(ApiError::Invalid {
                code: ErrorCode::MissingField,
                field: "filename".into(),
                message: "give the file's name, e.g. {\"filename\": \"train.csv\"}".into(),
            });
        }
        Some(Value::String(n)) => n,
        Some(_) => return Err(ApiError::invalid("filename", "must be a string")),
    };
    if let Some(why) = bad_name(name) {
        return Err(ApiError::invalid("filename", why));
    }
    let key = format!(
        "{}uploads/{}/{name}",
        s.settings.tenant_prefix(&tenant.id),
        uuid::Uuid::now_v7()
    );
    let uri = S3Uri::new(&s.settings.bucket, key);
    let url = s
        .storage
        .presign_put(&uri, s.presign)
        .await
        .map_err(super::jobs::storage_unavailable)?;
    let expires_at = chrono::Utc::now() + s.presign;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "upload_url": url,
            "method": "PUT",
            "uri": uri.to_string(),
            "expires_in": s.presign.as_secs(),
            "expires_at": expires_at,
        })),
    )
        .into_response())
}

/// A `302` to a presigned `GET` of `uri`.
async fn redirect_to(s: &AppState, uri: &str) -> Result<Response, ApiError> {
    let uri: S3Uri = uri
        .parse()
        .map_err(|e: String| ApiError::Internal(anyhow::anyhow!("a recorded uri: {e}")))?;
    let url = s
        .storage
        .presign_get(&uri, s.presign)
        .await
        .map_err(super::jobs::storage_unavailable)?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, url),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response())
}

/// `GET /v1/jobs/{id}/output` → `302` to the job's output CSV; `404` while it has none.
pub async fn job_output(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: JobId = parse_id(&id, "job")?;
    let job = db::job_get_for(&s.pool, &tenant.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    let uri = job
        .result
        .as_ref()
        .and_then(|r| r.get("output_uri"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "job {id} has no output file ({}; an infer job that succeeded with an output has one)",
                job.status
            ))
        })?;
    redirect_to(&s, uri).await
}

/// `GET /v1/models/{id}/artifact` → `302` to the model's safetensors file (a fleet member's is
/// its fleet's).
pub async fn model_artifact(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: ModelId = parse_id(&id, "model")?;
    let model = db::model_get_for(&s.pool, &tenant.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no model {id}")))?;
    redirect_to(&s, &model.artifact_uri).await
}

#[cfg(test)]
mod tests {
    use super::bad_name;

    #[test]
    fn an_upload_name_is_one_plain_segment() {
        for good in ["train.csv", "x", "data.v2.npy", "été.csv"] {
            assert_eq!(bad_name(good), None, "{good}");
        }
        let long = "a".repeat(256);
        for bad in [
            "", "../x", "a/b", "a\\b", "..", "a..b", "a\u{7}b", "a\nb", &long,
        ] {
            assert!(bad_name(bad).is_some(), "{bad:?}");
        }
    }
}
