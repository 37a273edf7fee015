//! Bearer-token authentication. Tokens are random strings that we store only as SHA-256 hashes;
//! the bootstrap `ORCHESTRATOR_TOKEN` is compared in constant time. Tokens never reach a log.

use crate::error::ApiError;
use crate::state::AppState;
use atlasia_core::Role;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rand::RngCore;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of tokens we issue, so a leaked one is recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "atl_";

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name (`orchestrator` for the bootstrap token).
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// `Forbidden` unless the caller has at least `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                needed,
                has: self.role,
            })
        }
    }
}

/// A fresh token: the prefix and 32 random bytes in hex.
pub fn generate_token() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time equality of two secrets of any length (compares their digests).
fn secrets_equal(a: &str, b: &str) -> bool {
    let (da, db) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    da[..].ct_eq(&db[..]).into()
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        if let Some(boot) = &state.settings.auth.orchestrator_token
            && secrets_equal(token, boot.expose_secret())
        {
            return Ok(Caller {
                name: "orchestrator".into(),
                role: Role::Admin,
            });
        }
        // The lookup is by hash (an index probe); the hash of a guess says nothing useful.
        match state.store.find_token(&hash_token(token)).await? {
            Some(t) => Ok(Caller {
                name: t.name,
                role: t.role,
            }),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// Extractors that authenticate *and* check the role before any other extractor (the body
/// included) runs, so a caller without the role gets 403 whatever it sent.
macro_rules! role_extractor {
    ($($(#[$doc:meta])* $name:ident => $role:expr;)+) => {$(
        $(#[$doc])*
        pub struct $name(pub Caller);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, ApiError> {
                let caller = Caller::from_request_parts(parts, state).await?;
                caller.require($role)?;
                Ok(Self(caller))
            }
        }
    )+};
}

role_extractor! {
    /// A caller with at least the viewer role.
    AsViewer => Role::Viewer;
    /// A caller with at least the operator role.
    AsOperator => Role::Operator;
    /// An admin.
    AsAdmin => Role::Admin;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hash_stably() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert!(secrets_equal("same-secret", "same-secret"));
        assert!(!secrets_equal("same-secret", "same-secreT"));
        assert!(!secrets_equal("short", "a-much-longer-secret"));
    }
}
