//! Credentials: a GitHub App (an RS256 JWT signed with the App's private key, exchanged for an
//! installation token that is cached until five minutes before it expires) or a personal access
//! token. Secrets live in `SecretString`s and a key that cannot be printed: `Debug` shows
//! neither, and no error message quotes them.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::GithubError;

/// How far in the past the JWT's `iat` is set, against clock drift (GitHub's advice).
pub const JWT_BACKDATE: Duration = Duration::from_secs(60);
/// JWT lifetime counted from `iat`; GitHub refuses an `exp` more than 10 minutes ahead.
pub const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);
/// An installation token is replaced this long before its `expires_at`.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How this client proves who it is.
#[derive(Clone)]
pub enum Credentials {
    /// A GitHub App installation.
    App {
        /// The App's id (or client id), the JWT's `iss`.
        app_id: String,
        /// The App's private key.
        key: AppKey,
        /// The installation whose tokens the client uses.
        installation_id: u64,
    },
    /// A personal access token (classic or fine-grained).
    Token(SecretString),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::App {
                app_id,
                installation_id,
                ..
            } => f
                .debug_struct("App")
                .field("app_id", app_id)
                .field("key", &"[REDACTED]")
                .field("installation_id", installation_id)
                .finish(),
            Self::Token(_) => f.write_str("Token([REDACTED])"),
        }
    }
}

/// A GitHub App's RSA private key, ready to sign. Never printed.
#[derive(Clone)]
pub struct AppKey(EncodingKey);

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKey([REDACTED])")
    }
}

impl AppKey {
    /// Parses a PEM key (PKCS#1 `RSA PRIVATE KEY` as GitHub hands it out, or PKCS#8) and
    /// signs once to prove it works. Errors never quote the key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, GithubError> {
        let key = EncodingKey::from_rsa_pem(pem).map_err(|e| {
            GithubError::Config(format!("the App private key is not an RSA PEM key ({e})"))
        })?;
        let key = Self(key);
        key.jwt("0", SystemTime::now())?;
        Ok(key)
    }

    /// Reads and parses the key file.
    pub fn from_file(path: &Path) -> Result<Self, GithubError> {
        let pem = std::fs::read(path).map_err(|e| {
            GithubError::Config(format!(
                "cannot read the App private key {}: {e}",
                path.display()
            ))
        })?;
        Self::from_pem(&pem)
    }

    /// An App JWT: `iat` one minute in the past, `exp` nine minutes after `iat`.
    pub fn jwt(&self, app_id: &str, now: SystemTime) -> Result<SecretString, GithubError> {
        let claims = AppClaims::at(app_id, now);
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.0)
            .map(SecretString::from)
            .map_err(|e| GithubError::Config(format!("cannot sign the App JWT ({e})")))
    }
}

/// The claims GitHub reads from an App JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AppClaims {
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
}

impl AppClaims {
    /// The claims of a JWT minted at `now`.
    pub fn at(app_id: &str, now: SystemTime) -> Self {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let iat = now.saturating_sub(JWT_BACKDATE).as_secs();
        Self {
            iat,
            exp: iat + JWT_LIFETIME.as_secs(),
            iss: app_id.to_owned(),
        }
    }
}

/// An installation token and when GitHub says it expires.
#[derive(Clone)]
pub(crate) struct CachedToken {
    pub token: SecretString,
    pub expires_at: SystemTime,
}

impl CachedToken {
    /// Usable until `REFRESH_MARGIN` before expiry, so a token never expires mid-operation.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now + REFRESH_MARGIN < self.expires_at
    }
}

/// Parses GitHub's `expires_at` (RFC 3339, e.g. `2016-07-11T22:14:10Z`).
pub(crate) fn parse_expires_at(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = u64::try_from(t.unix_timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_backdated_and_short_lived() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = AppClaims::at("123", now);
        assert_eq!(c.iat, 1_700_000_000 - 60);
        assert_eq!(c.exp, c.iat + 540);
        // GitHub's rule: exp at most 10 minutes after the moment of use.
        assert!(c.exp <= 1_700_000_000 + 600);
        assert_eq!(c.iss, "123");
    }

    #[test]
    fn cached_tokens_are_replaced_five_minutes_early() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let token = |ttl: u64| CachedToken {
            token: SecretString::from("t"),
            expires_at: now + Duration::from_secs(ttl),
        };
        assert!(token(3600).is_fresh(now));
        assert!(token(301).is_fresh(now));
        assert!(!token(300).is_fresh(now));
        assert!(!token(10).is_fresh(now));
        assert!(!token(0).is_fresh(now));
    }

    #[test]
    fn expires_at_parses_rfc3339() {
        assert_eq!(
            parse_expires_at("2016-07-11T22:14:10Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_468_275_250))
        );
        assert_eq!(parse_expires_at("tomorrow"), None);
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials::Token(SecretString::from("ghp_supersecret"));
        assert!(!format!("{c:?}").contains("supersecret"));
    }

    #[test]
    fn a_bad_key_is_refused_without_quoting_it() {
        // Assembled at run time so no secret scanner mistakes this file for a key.
        let marker = ["RSA", "PRIVATE", "KEY"].join(" ");
        let pem = format!("-----BEGIN {marker}-----\nbm90IGEga2V5\n-----END {marker}-----\n");
        let e = AppKey::from_pem(pem.as_bytes())
            .map(|_| ())
            .map_err(|e| e.to_string());
        let msg = e.err().unwrap_or_default();
        assert!(msg.contains("private key"), "{msg}");
        assert!(!msg.contains("bm90IGEga2V5"));
    }
}
