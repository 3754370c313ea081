//! `GET /v1/models/{id}` and `GET /v1/models`.

use super::{parse_id, parse_limit, query_params};
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::{AppState, view};
use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use gpuq_shared::{ModelId, db};
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
