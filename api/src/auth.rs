//! `Authorization: Bearer <key>` on every `/v1` route, then the tenant's rate limit. The tenant
//! goes into the request's extensions for the handlers; no route under `/v1` runs without one.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use gpuq_shared::{auth, db};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    /// `s3://` prefixes it may read besides its own.
    pub input_prefixes: Vec<String>,
}

pub async fn require_key(
    State(s): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::Unauthorized("send an API key: `Authorization: Bearer <key>`".into())
        })?;
    let invalid = || ApiError::Unauthorized("the API key is invalid or revoked".into());
    let (id, secret) = auth::parse(token).ok_or_else(invalid)?;
    let key = db::api_key_live(&s.pool, id).await?.ok_or_else(invalid)?;
    if !auth::secret_matches(secret, &key.secret_sha256) {
        return Err(invalid());
    }
    if let Err(wait) = s.rate.take(&key.tenant_id) {
        return Err(ApiError::RateLimited(wait));
    }
    request.extensions_mut().insert(Tenant {
        id: key.tenant_id,
        input_prefixes: key.input_prefixes,
    });
    Ok(next.run(request).await)
}

/// A token bucket per tenant: `burst` requests at once, refilled at `per_second`.
#[derive(Clone)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Arc::default(),
        }
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&self, tenant: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        let (tokens, at) = buckets
            .entry(tenant.to_string())
            .or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else if self.per_second > 0.0 {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        } else {
            Err(Duration::from_secs(3600))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_refills_per_tenant() {
        let limiter = RateLimiter::new(10.0, 3);
        for _ in 0..3 {
            assert!(limiter.take("a").is_ok());
        }
        let wait = limiter.take("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(limiter.take("b").is_ok(), "tenants have separate buckets");
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.take("a").is_ok());
    }
}
