//! The one place an API error becomes an HTTP status and `{"error": {"code", "message"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// A field of a well-formed request is wrong; `field` is its dotted path.
    #[error("{field}: {message}")]
    Invalid {
        code: &'static str,
        field: String,
        message: String,
    },
    #[error("{0}")]
    Unauthorized(String),
    /// The tenant may not read this input; `field` is where it was named.
    #[error("{field}: {message}")]
    Forbidden {
        code: &'static str,
        field: String,
        message: String,
    },
    #[error("too many requests: try again in {0:.1?}")]
    RateLimited(std::time::Duration),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            code: "invalid_field",
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<gpuq_shared::submit::SubmitError> for ApiError {
    fn from(e: gpuq_shared::submit::SubmitError) -> Self {
        use gpuq_shared::submit::SubmitError;
        match e {
            SubmitError::BadRequest { code, message } => ApiError::BadRequest { code, message },
            SubmitError::Invalid {
                code,
                field,
                message,
            } => ApiError::Invalid {
                code,
                field,
                message,
            },
        }
    }
}

impl From<gpuq_shared::db::DbError> for ApiError {
    fn from(e: gpuq_shared::db::DbError) -> Self {
        if gpuq_shared::db::is_unavailable(&e) {
            // The message names the failure, never the connection string.
            ApiError::Unavailable(format!("the database is unavailable ({e}); try again"))
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, *code),
            ApiError::Invalid { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, *code),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, *code),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let mut error = json!({ "code": code, "message": self.to_string() });
        if let ApiError::Invalid { field, .. } | ApiError::Forbidden { field, .. } = &self {
            error["field"] = json!(field);
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        let extra = match &self {
            ApiError::RateLimited(wait) => Some((
                header::RETRY_AFTER,
                (wait.as_secs_f64().ceil() as u64).max(1).to_string(),
            )),
            ApiError::Unauthorized(_) => Some((header::WWW_AUTHENTICATE, "Bearer".to_string())),
            ApiError::Unavailable(_) => Some((header::RETRY_AFTER, "1".to_string())),
            _ => None,
        };
        if let Some((name, value)) = extra {
            let value = HeaderValue::from_str(&value).expect("ascii");
            response.headers_mut().insert(name, value);
        }
        response
    }
}
