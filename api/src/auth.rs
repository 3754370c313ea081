//! `Authorization: Bearer <key>` on every `/v1` route, then the tenant's rate limit. Before the
//! key is looked up, the client's address must have failed attempts to spare, so a flood of
//! unknown keys is answered `429` without touching the database. The tenant goes into the
//! request's extensions for the handlers; no route under `/v1` runs without one.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use gpuq_shared::{auth, db};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client = bucket_of(client_address(
        peer,
        request.headers(),
        s.trusted_proxy_hops,
    ));
    s.attempts.check(&client).map_err(ApiError::RateLimited)?;
    let tenant = match authenticate(&s, request.headers()).await {
        Err(e @ ApiError::Unauthorized(_)) => {
            s.attempts.charge(&client);
            return Err(e);
        }
        other => other?,
    };
    if let Err(wait) = s.rate.take(&tenant.id) {
        return Err(ApiError::RateLimited(wait));
    }
    request.extensions_mut().insert(tenant);
    Ok(next.run(request).await)
}

/// The tenant of a live key in `Authorization` (scheme case-insensitive, RFC 9110 §11.1).
async fn authenticate(s: &AppState, headers: &HeaderMap) -> Result<Tenant, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| {
            ApiError::Unauthorized("send an API key: `Authorization: Bearer <key>`".into())
        })?;
    let invalid = || ApiError::Unauthorized("the API key is invalid or revoked".into());
    let (id, secret) = auth::parse(token).ok_or_else(invalid)?;
    let key = db::api_key_live(&s.pool, id).await?.ok_or_else(invalid)?;
    if !auth::secret_matches(secret, &key.secret_sha256) {
        return Err(invalid());
    }
    Ok(Tenant {
        id: key.tenant_id,
        input_prefixes: key.input_prefixes,
    })
}

/// Where the request comes from: the peer, or behind `trusted_hops` proxies that each append
/// the address they received from to `X-Forwarded-For`, the entry the outermost one wrote
/// (entries further left are the client's to forge). Unknown when neither says.
pub fn client_address(peer: Option<IpAddr>, headers: &HeaderMap, trusted_hops: usize) -> IpAddr {
    let unknown = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    if trusted_hops == 0 {
        return peer.unwrap_or(unknown);
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let Some(entry) = forwarded
        .len()
        .checked_sub(trusted_hops)
        .map(|i| forwarded[i])
    else {
        // Fewer hops than configured: the request did not come through every proxy.
        return peer.unwrap_or(unknown);
    };
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .unwrap_or(unknown)
}

/// The bucket an address counts against: IPv4 as it is, IPv6 by its /64 (what one host is
/// usually given, so a client cannot hop between its own addresses).
pub fn bucket_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_client_address_is_the_peer_unless_proxies_are_trusted() {
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let h = forwarded(&["1.1.1.1, 2.2.2.2"]);
        assert_eq!(
            client_address(Some(peer), &h, 0),
            peer,
            "a forged header is ignored"
        );
        assert_eq!(client_address(Some(peer), &h, 1).to_string(), "2.2.2.2");
        assert_eq!(client_address(Some(peer), &h, 2).to_string(), "1.1.1.1");
        assert_eq!(
            client_address(Some(peer), &h, 3),
            peer,
            "fewer hops than configured"
        );
        let split = forwarded(&["1.1.1.1", "[2001:db8::1]:443"]);
        assert_eq!(client_address(None, &split, 1).to_string(), "2001:db8::1");
        assert!(client_address(None, &forwarded(&["junk"]), 1).is_unspecified());
        assert!(client_address(None, &HeaderMap::new(), 0).is_unspecified());
    }

    #[test]
    fn ipv6_addresses_share_a_bucket_per_slash_64() {
        let a = bucket_of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = bucket_of("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = bucket_of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            bucket_of("::ffff:192.0.2.7".parse().unwrap()).to_string(),
            "192.0.2.7"
        );
    }
}
