//! `GET /v1/fleets`, `GET /v1/fleets/{id}`, `GET /v1/fleets/{id}/groups[/{group}]` and
//! `DELETE /v1/fleets/{id}`. A fleet is a model row with `groups` set (its artifact, params and
//! aggregate metrics); each group that trained is also a model of its own, answered by
//! `GET /v1/models/{model_id}` with `fleet_id` and `group`.

use super::{parse_id, parse_limit, query_params};
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::{AppState, view};
use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use gpuq_shared::db::{self, ModelRecord};
use gpuq_shared::{Algorithm, ErrorCode, ModelId};
use serde_json::{Value, json};

/// Failed groups listed with a fleet (the rest are counted in its metrics).
const FAILED_SHOWN: i64 = 100;

/// The tenant's fleet `id`, or `404`.
async fn fleet(s: &AppState, tenant: &Tenant, id: ModelId) -> Result<ModelRecord, ApiError> {
    db::model_get_for(&s.pool, &tenant.id, id)
        .await?
        .filter(|m| m.groups.is_some())
        .ok_or_else(|| ApiError::NotFound(format!("no fleet {id}")))
}

pub async fn get(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: ModelId = parse_id(&id, "fleet")?;
    let fleet = fleet(&s, &tenant, id).await?;
    let failed = db::fleet_failed_groups(&s.pool, id, FAILED_SHOWN).await?;
    let mut body = view::fleet(&fleet);
    body["failed"] = failed.iter().map(view::fleet_member).collect();
    Ok(Json(body))
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
    let fleets = db::fleet_list(&s.pool, &tenant.id, after, limit).await?;
    let next = (fleets.len() as i64 == limit)
        .then(|| fleets.last().map(|m| m.id))
        .flatten();
    Ok(Json(json!({
        "fleets": fleets.iter().map(view::fleet).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// The fleet's groups in order of their value (`after`: the last group of the previous page).
pub async fn groups(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let id: ModelId = parse_id(&id, "fleet")?;
    let q = query_params(raw, &["limit", "after"])?;
    let limit = parse_limit(&q)?;
    fleet(&s, &tenant, id).await?;
    let members =
        db::fleet_members_list(&s.pool, id, q.get("after").map(String::as_str), limit).await?;
    let next = (members.len() as i64 == limit)
        .then(|| members.last().map(|m| m.group_key.clone()))
        .flatten();
    Ok(Json(json!({
        "groups": members.iter().map(view::fleet_member).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// One group of the fleet: its model id and metrics, or why it failed.
pub async fn group(
    State(s): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path((id, group)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id: ModelId = parse_id(&id, "fleet")?;
    let member = db::fleet_member_get(&s.pool, &tenant.id, id, &group).await?;
    let Some(member) = member else {
        fleet(&s, &tenant, id).await?;
        return Err(no_group(id, &group));
    };
    let mut body = view::fleet_member(&member);
    body["fleet_id"] = json!(id);
    Ok(Json(body))
}

/// Deletes the fleet, its groups and its artifact (`204`), as `DELETE /v1/models/{id}` does.
pub async fn delete(
    state: State<AppState>,
    tenant: Extension<Tenant>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: ModelId = parse_id(&raw, "fleet")?;
    fleet(&state, &tenant, id).await?;
    super::models::delete(state, tenant, Path(raw)).await
}

fn no_group(fleet: ModelId, group: &str) -> ApiError {
    ApiError::Invalid {
        code: ErrorCode::ModelNotFound,
        field: "group".into(),
        message: format!("fleet {fleet} has no group `{group}`"),
    }
}

/// The model of group `group` of the tenant's fleet `fleet_id`: `404` (`model_not_found`) for a
/// group the fleet does not hold or that failed to train, `404` for a fleet that does not exist.
pub async fn member(
    s: &AppState,
    tenant: &Tenant,
    fleet_id: ModelId,
    group: &str,
) -> Result<ModelRecord, ApiError> {
    if let Some(m) = db::model_get_member(&s.pool, &tenant.id, fleet_id, group).await? {
        return Ok(m);
    }
    match db::fleet_member_get(&s.pool, &tenant.id, fleet_id, group).await? {
        Some(failed) => Err(ApiError::Invalid {
            code: ErrorCode::ModelNotFound,
            field: "group".into(),
            message: format!(
                "group `{group}` of fleet {fleet_id} failed to train: {}",
                failed
                    .error
                    .as_ref()
                    .map_or(Value::Null, |e| e["message"].clone())
            ),
        }),
        None => {
            fleet(s, tenant, fleet_id).await?;
            Err(no_group(fleet_id, group))
        }
    }
}

/// A refresh's base (`params.base_fleet`) is the tenant's fleet of the same algorithm.
pub async fn check_base(
    s: &AppState,
    tenant: &Tenant,
    base: ModelId,
    algorithm: Algorithm,
) -> Result<(), ApiError> {
    match db::model_get_for(&s.pool, &tenant.id, base).await? {
        Some(m) if m.groups.is_some() && m.algorithm == algorithm => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "params.base_fleet",
            format!("{base} is not a fleet of `{algorithm}` models"),
        )),
        None => Err(ApiError::Invalid {
            code: ErrorCode::ModelNotFound,
            field: "params.base_fleet".into(),
            message: format!("no fleet {base}"),
        }),
    }
}
