//! The one place an API error becomes an HTTP status and `{"error": {"code", "message"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gpuq_shared::ErrorCode;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: ErrorCode, message: String },
    /// A field of a well-formed request is wrong; `field` is its dotted path.
    #[error("{field}: {message}")]
    Invalid {
        code: ErrorCode,
        field: String,
        message: String,
    },
    #[error("{0}")]
    Unauthorized(String),
    /// The tenant may not read this input; `field` is where it was named.
    #[error("{field}: {message}")]
    Forbidden {
        code: ErrorCode,
        field: String,
        message: String,
    },
    #[error("too many requests: try again in {0:.1?}")]
    RateLimited(std::time::Duration),
    #[error(
        "this tenant already has {0} requests waiting on jobs, as many as it may; \
         try again once one has returned"
    )]
    TooManyWaiters(usize),
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
            code: ErrorCode::InvalidField,
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

impl From<crate::waiters::TooManyWaiters> for ApiError {
    fn from(e: crate::waiters::TooManyWaiters) -> Self {
        ApiError::TooManyWaiters(e.0)
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

impl ApiError {
    /// The code the client sees; its HTTP status comes with it ([`ErrorCode::http_status`]).
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Invalid { code, .. }
            | ApiError::Forbidden { code, .. } => *code,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::RateLimited(_) => ErrorCode::RateLimited,
            ApiError::TooManyWaiters(_) => ErrorCode::TooManyWaiters,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::TooLarge(_) => ErrorCode::BodyTooLarge,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl ApiError {
    /// `{"code", "message"}`, with `field` where one is named: the body's `error`, and a
    /// refused batch item's.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        if let ApiError::Invalid { field, .. } | ApiError::Forbidden { field, .. } = self {
            error["field"] = json!(field);
        }
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = ?e, "internal error");
        }
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(json!({ "error": self.body() }))).into_response();
        let extra = match &self {
            ApiError::RateLimited(wait) => Some((
                header::RETRY_AFTER,
                (wait.as_secs_f64().ceil() as u64).max(1).to_string(),
            )),
            ApiError::Unauthorized(_) => Some((header::WWW_AUTHENTICATE, "Bearer".to_string())),
            ApiError::Unavailable(_) | ApiError::TooManyWaiters(_) => {
                Some((header::RETRY_AFTER, "1".to_string()))
            }
            _ => None,
        };
        if let Some((name, value)) = extra {
            let value = HeaderValue::from_str(&value).expect("ascii");
            response.headers_mut().insert(name, value);
        }
        response
    }
}
