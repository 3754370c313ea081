//! API keys and what a tenant may read.
//!
//! A key is `gpuq_<id>_<secret>`: `id` (64 random bits, hex) finds its row, `secret` (256 random
//! bits, hex) is stored only as its SHA-256 and compared in constant time. A tenant's jobs read
//! inputs only under its own prefix of the deployment's bucket, or under prefixes an operator
//! granted it; anything else is refused before any S3 call.

use crate::domain::S3Uri;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "gpuq_";

/// A freshly made key: give `token` to the client once, store `id` and `secret_sha256`.
pub struct NewKey {
    pub id: String,
    pub token: String,
    pub secret_sha256: [u8; 32],
}

pub fn generate() -> NewKey {
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    NewKey {
        token: format!("{PREFIX}{id}_{secret}"),
        secret_sha256: sha256(&secret),
        id,
    }
}

/// Splits a presented token into its id and secret; `None` if it is not shaped like a key.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 16) && hex_of(secret, 64)).then_some((id, secret))
}

/// Whether `secret` is the one whose hash was stored, in time independent of where they differ.
pub fn secret_matches(secret: &str, stored_sha256: &[u8]) -> bool {
    sha256(secret).as_slice().ct_eq(stored_sha256).into()
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// The SHA-256 of a request body, for idempotency checks.
pub fn body_sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether a tenant may read `uri`: inside its own prefix (`s3://bucket/<own_prefix>`) or one of
/// `granted` (`s3://bucket/prefix/`). Keys with `..`, `.` or empty segments, backslashes or
/// control characters are refused outright: some S3-protocol servers map keys onto a file
/// system, where such a key would climb out of the prefix.
pub fn may_read(uri: &S3Uri, bucket: &str, own_prefix: &str, granted: &[String]) -> bool {
    let key = &uri.key;
    let segments: Vec<&str> = key.split('/').collect();
    let odd_segment = segments
        .iter()
        .enumerate()
        .any(|(i, seg)| matches!(*seg, ".." | ".") || (seg.is_empty() && i + 1 < segments.len()));
    if odd_segment || key.contains('\\') || key.chars().any(char::is_control) {
        return false;
    }
    let inside = |b: &str, prefix: &str| {
        uri.bucket == b
            && prefix.ends_with('/')
            && key.starts_with(prefix)
            && key.len() > prefix.len()
    };
    inside(bucket, own_prefix)
        || granted
            .iter()
            .any(|g| g.parse::<S3Uri>().is_ok_and(|p| inside(&p.bucket, &p.key)))
}

/// Whether `tenant` is a valid tenant name (it becomes part of S3 keys).
pub fn valid_tenant(tenant: &str) -> bool {
    let b = tenant.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_and_only_its_own_secret_matches() {
        let k = generate();
        let (id, secret) = parse(&k.token).unwrap();
        assert_eq!(id, k.id);
        assert!(secret_matches(secret, &k.secret_sha256));
        let other = generate();
        let (_, other_secret) = parse(&other.token).unwrap();
        assert!(!secret_matches(other_secret, &k.secret_sha256));
        assert_ne!(k.token, other.token);
        for bad in [
            "",
            "gpuq_",
            "gpuq_abc_def",
            "Bearer x",
            &k.token[1..],
            &format!("{}x", k.token),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn inputs_are_confined_to_the_tenant_prefix_or_granted_ones() {
        let ok = |u: &str, granted: &[String]| {
            may_read(&u.parse().unwrap(), "data", "tenants/acme/", granted)
        };
        assert!(ok("s3://data/tenants/acme/train.csv", &[]));
        assert!(ok("s3://data/tenants/acme/sub/x.npy", &[]));
        assert!(!ok("s3://data/tenants/acme-evil/x.csv", &[]));
        assert!(!ok("s3://data/tenants/other/x.csv", &[]));
        assert!(!ok("s3://other/tenants/acme/x.csv", &[]));
        assert!(!ok("s3://data/tenants/acme/../other/x.csv", &[]));
        assert!(!ok("s3://data/tenants/acme//x.csv", &[]));
        assert!(!ok("s3://data/tenants/acme/./x.csv", &[]));
        assert!(!ok("s3://data/tenants/acme/", &[]));
        let granted = vec!["s3://shared-sets/public/".to_string()];
        assert!(ok("s3://shared-sets/public/digits.csv", &granted));
        assert!(!ok("s3://shared-sets/private/digits.csv", &granted));
    }

    #[test]
    fn tenant_names_are_safe_in_keys() {
        assert!(valid_tenant("acme"));
        assert!(valid_tenant("team-7_b"));
        for bad in ["", "Acme", "-x", "a/b", "a..b", "ä", &"x".repeat(64)] {
            assert!(!valid_tenant(bad), "{bad}");
        }
    }
}
