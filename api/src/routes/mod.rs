//! HTTP routes of the v1 API.

pub mod events;
pub mod files;
pub mod fleets;
pub mod health;
pub mod jobs;
pub mod models;

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use gpuq_shared::ErrorCode;
use std::collections::HashMap;

/// Turns a body that could not be read into the right error (413 for a body over the limit).
pub fn body_or_error(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadRequest {
                code: ErrorCode::UnreadableBody,
                message: r.body_text(),
            }
        }
    })
}

/// Query parameters, refusing any not in `known` so a typo is not silently ignored.
pub fn query_params(
    raw: Option<String>,
    known: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let raw = raw.unwrap_or_default();
    let mut out = HashMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k);
        if !known.contains(&k.as_str()) {
            return Err(ApiError::BadRequest {
                code: ErrorCode::UnknownParameter,
                message: format!(
                    "unknown query parameter `{k}` (known: {})",
                    known.join(", ")
                ),
            });
        }
        out.insert(k, percent_decode(v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a path id, answering 400 for one that is not a UUID.
pub fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::BadRequest {
        code: ErrorCode::InvalidId,
        message: format!("`{raw}` is not a valid {what} id (expected a UUID)"),
    })
}

/// Parses `limit` (1..=500, default 50).
pub fn parse_limit(q: &HashMap<String, String>) -> Result<i64, ApiError> {
    match q.get("limit") {
        None => Ok(50),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=500).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest {
                code: ErrorCode::InvalidParameter,
                message: format!("limit must be a whole number from 1 to 500, not `{v}`"),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode_and_refuse_unknown_keys() {
        let q = query_params(
            Some("status=queued&after=a%2Db".into()),
            &["status", "after"],
        )
        .unwrap();
        assert_eq!(q["status"], "queued");
        assert_eq!(q["after"], "a-b");
        assert!(query_params(Some("stat=x".into()), &["status"]).is_err());
    }
}
