//! `GET /v1/models/{id}`, `GET /v1/models` and `DELETE /v1/models/{id}`.

use super::{parse_id, parse_limit, query_params};
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::{AppState, view};
use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use gpuq_shared::{ModelId, S3Uri, db};
use serde_json::{Value, json};

pub async fn get(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: ModelId = parse_id(&id, "model")?;
    let model = db::model_get_for(&s.pool, &tenant.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no model {id}")))?;
    Ok(Json(view::model(&model)))
}

pub async fn list(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = query_params(raw, &["limit", "after"])?;
    let limit = parse_limit(&q)?;
    let after = q
        .get("after")
        .map(|a| parse_id::<ModelId>(a, "cursor"))
        .transpose()?;
    let models = db::model_list(&s.pool, &tenant.id, after, limit).await?;
    let next = (models.len() as i64 == limit)
        .then(|| models.last().map(|m| m.id))
        .flatten();
    Ok(Json(json!({
        "models": models.iter().map(view::model).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// Deletes the model and its artifact (`204`). Infer jobs naming it are refused from then on
/// (`404`), and a queued one fails `model_not_found`: workers check the model still exists
/// before using a copy they hold.
pub async fn delete(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: ModelId = parse_id(&id, "model")?;
    let model = db::model_get_for(&s.pool, &tenant.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no model {id}")))?;
    if let Some(fleet) = model.fleet_id {
        return Err(ApiError::Conflict(format!(
            "model {id} is group `{}` of fleet {fleet}, whose artifact it shares: delete the \
             fleet (DELETE /v1/fleets/{fleet})",
            model.group_key.as_deref().unwrap_or_default()
        )));
    }
    // The artifact first: should the row's delete then fail, a retry finds the row and finishes,
    // where the other order could leave an object nothing points to.
    let own = s.settings.tenant_prefix(&tenant.id);
    match model.artifact_uri.parse::<S3Uri>() {
        Ok(uri) if uri.bucket == s.settings.bucket && uri.key.starts_with(&own) => s
            .storage
            .delete(&uri)
            .await
            .map_err(super::jobs::storage_unavailable)?,
        _ => {
            tracing::warn!(model = %id, uri = %model.artifact_uri, "artifact outside the tenant's prefix; left in place")
        }
    }
    db::model_delete(&s.pool, &tenant.id, id).await?;
    s.models_seen.forget(&tenant.id, id);
    Ok(StatusCode::NO_CONTENT)
}
