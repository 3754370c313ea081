//! The one error vocabulary of gpuq: every code the API answers with and every code a failed job
//! carries, each with its kind (may the job be retried?) and its HTTP status. The API and the
//! worker both speak it, so a code means the same thing wherever it appears; the README's table
//! of codes is held to [`ErrorCode::ALL`] by a test.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a failure means for the job that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Transient (a dependency out of reach, a lost device, a dead worker): the job goes back to
    /// the queue while attempts remain.
    Retryable,
    /// The request or its data is wrong, or a limit was reached: retrying changes nothing.
    Fatal,
    /// The attempt was stopped from outside (cancel, lease lost, shutdown): its outcome is
    /// decided by whoever stopped it, not by this error.
    Stopped,
}

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $wire:literal, $kind:ident, $status:literal;)*) => {
        /// A machine-readable error code, `snake_case` on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of the README's table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $wire,)*
                }
            }

            pub fn kind(self) -> ErrorKind {
                match self {
                    $(ErrorCode::$variant => ErrorKind::$kind,)*
                }
            }

            /// The status the API answers with when a request meets this error.
            pub fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }
        }
    };
}

error_codes! {
    // Requests the API refuses.
    /// The body is not JSON, or not a JSON object.
    MalformedJson = "malformed_json", Fatal, 400;
    /// The body could not be read (cut off, wrong encoding).
    UnreadableBody = "unreadable_body", Fatal, 400;
    /// A path id is not a UUID.
    InvalidId = "invalid_id", Fatal, 400;
    /// A query parameter has a value it cannot take.
    InvalidParameter = "invalid_parameter", Fatal, 400;
    /// A query parameter the route does not know.
    UnknownParameter = "unknown_parameter", Fatal, 400;
    /// `Idempotency-Key` is not 1 to 255 visible ASCII characters.
    InvalidIdempotencyKey = "invalid_idempotency_key", Fatal, 400;
    /// No API key, or one that is unknown or revoked.
    Unauthorized = "unauthorized", Fatal, 401;
    /// A required field of the body is missing.
    MissingField = "missing_field", Fatal, 422;
    /// A field of the body is wrong (`field` names it).
    InvalidField = "invalid_field", Fatal, 422;
    /// A field asks for more than the deployment allows (epochs, iterations).
    OverLimit = "over_limit", Fatal, 422;
    /// No such job, model or route (or another tenant's).
    NotFound = "not_found", Fatal, 404;
    /// The method is not served on this route.
    MethodNotAllowed = "method_not_allowed", Fatal, 405;
    /// The job's state forbids it (cancel after finish), or an `Idempotency-Key` was reused.
    Conflict = "conflict", Fatal, 409;
    /// The body is over the deployment's size limit.
    BodyTooLarge = "body_too_large", Fatal, 413;
    /// Too many requests (per tenant) or unauthenticated attempts (per address).
    RateLimited = "rate_limited", Retryable, 429;
    /// Too many requests of this tenant are waiting on jobs at once.
    TooManyWaiters = "too_many_waiters", Retryable, 429;
    /// Postgres, RabbitMQ or S3 (for a delete) is out of reach; try again.
    Unavailable = "unavailable", Retryable, 503;
    /// A bug: the API logged it.
    Internal = "internal", Retryable, 500;

    // Failures of a job (its `error.code`), some of which the API also answers with.
    /// The input names an object that does not exist.
    InputNotFound = "input_not_found", Fatal, 422;
    /// The input cannot be read as the table it should be (line and column named).
    InvalidInput = "invalid_input", Fatal, 422;
    /// The input is outside what the tenant may read.
    ForbiddenInput = "forbidden_input", Fatal, 403;
    /// Over a size limit: rows, features, cells, the worker's memory budget, a device binding.
    InputTooLarge = "input_too_large", Fatal, 422;
    /// The input's width is not the model's.
    ShapeMismatch = "shape_mismatch", Fatal, 422;
    /// Recorded params that no longer parse (a job not made through the API).
    InvalidParams = "invalid_params", Fatal, 422;
    /// The model (or its artifact) does not exist, or was deleted.
    ModelNotFound = "model_not_found", Fatal, 404;
    /// The model artifact is not a valid gpuq model.
    ModelCorrupt = "model_corrupt", Fatal, 422;
    /// Training produced non-finite weights (lower the learning rate).
    Diverged = "diverged", Fatal, 422;
    /// An output or model could not be written where the tenant's objects go (denied, no bucket).
    OutputWriteFailed = "output_write_failed", Fatal, 500;
    /// The attempt ran past its `timeout_s`.
    Timeout = "timeout", Fatal, 504;
    /// The input could not be read to the end (connection dropped mid-stream).
    InputReadFailed = "input_read_failed", Retryable, 503;
    /// The worker's memory budget was held by other jobs; the job goes back to the queue.
    MemoryBusy = "memory_busy", Retryable, 503;
    /// S3 answered 5xx or timed out.
    StorageUnavailable = "storage_unavailable", Retryable, 503;
    /// Postgres failed during the attempt.
    DatabaseError = "database_error", Retryable, 503;
    /// The GPU device was lost or failed.
    GpuError = "gpu_error", Retryable, 503;
    /// The worker's code failed (a panic on the GPU thread).
    InternalError = "internal_error", Retryable, 500;
    /// The worker stopped renewing the attempt's lease (crashed or frozen).
    LeaseExpired = "lease_expired", Retryable, 503;
    /// The worker shut down before the attempt finished; handed back without spending an attempt.
    WorkerShutdown = "worker_shutdown", Stopped, 503;
    /// The attempt was told to stop (cancel, lease lost, shutdown) and did.
    Stopped = "stopped", Stopped, 409;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown error code `{s}`"))
    }
}

/// Why a job (or one attempt of it) failed, as stored in the job's `error` and shown to clients.
/// Whether it may be retried follows from its code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    /// Transient failures (lost connections, S3 5xx) go back to the queue; input errors do not.
    pub fn retryable(&self) -> bool {
        self.code.kind() == ErrorKind::Retryable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_wire_names_and_serde() {
        for &c in ErrorCode::ALL {
            assert_eq!(c.as_str().parse::<ErrorCode>().unwrap(), c);
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert!((400..=599).contains(&c.http_status()), "{c}");
        }
        assert!("input_forbidden".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn retryability_follows_the_code() {
        assert!(JobError::new(ErrorCode::StorageUnavailable, "x").retryable());
        assert!(!JobError::new(ErrorCode::InputNotFound, "x").retryable());
        assert!(!JobError::new(ErrorCode::Stopped, "x").retryable());
    }

    /// The README's table of codes lists exactly the enum's codes, with their kinds and statuses.
    #[test]
    fn the_readme_lists_every_code_with_its_kind_and_status() {
        let readme = include_str!("../../README.md");
        let rows: Vec<(String, String, String)> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let code = cells.first()?.strip_suffix('`')?;
                let (kind, status) = (cells.get(1)?, cells.get(2)?);
                code.parse::<ErrorCode>().ok()?;
                Some((code.into(), kind.to_string(), status.to_string()))
            })
            .collect();
        let want: Vec<(String, String, String)> = ErrorCode::ALL
            .iter()
            .map(|c| {
                let kind = serde_json::to_value(c.kind()).unwrap();
                (
                    c.as_str().into(),
                    kind.as_str().unwrap().into(),
                    c.http_status().to_string(),
                )
            })
            .collect();
        assert_eq!(
            rows, want,
            "README.md's error code table and ErrorCode disagree"
        );
    }
}
