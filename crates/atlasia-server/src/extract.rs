//! Request extractors whose rejections are [`ApiError`]s, so malformed input gets the same JSON
//! error shape as everything else and names the offending field.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// A JSON body: 415 without a JSON content type, 413 over the limit, 400 for broken JSON,
/// 422 naming the field for well-formed JSON of the wrong shape (unknown fields included).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(BODY_LIMIT)
            } else {
                ApiError::BadRequest(r.body_text())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deserializes `bytes`, telling syntax errors (400) from shape errors (422 with the path).
/// Every request body of this API is an object; serde would otherwise accept a struct written
/// as a positional array, which no client means.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::Invalid {
            field: "body".into(),
            message: "must be a JSON object".into(),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            let message = inner.to_string();
            let field = field_of(&path, &message);
            ApiError::Invalid { field, message }
        } else {
            ApiError::BadRequest(format!("malformed JSON: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// The field a serde message is about: the path when there is one, else the name serde quotes
/// (unknown or missing field at the top level).
fn field_of(path: &str, message: &str) -> String {
    if path != "." && !path.is_empty() {
        return path.to_owned();
    }
    message
        .split('`')
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_else(|| "body".into())
}

/// Query parameters, with 400 naming the parameter on failure.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or_default();
        parse_query(q).map(ApiQuery)
    }
}

fn parse_query<T: DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{q}")
            .parse()
            .map_err(|_| ApiError::BadRequest("malformed query string".into()))?,
    )
    .map(|axum::extract::Query(v)| v)
    .map_err(|e| ApiError::BadRequest(format!("query: {}", e.body_text())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use atlasia_core::run::RunRequest;

    #[test]
    fn shape_errors_name_the_field() {
        let e = parse_json::<RunRequest>(br#"{"repo":"a/b","prioritty":3}"#).err();
        assert!(matches!(e, Some(ApiError::Invalid { ref field, .. }) if field == "prioritty"));
        let e = parse_json::<RunRequest>(br#"{"repo":"a/b","priority":"high"}"#).err();
        assert!(matches!(e, Some(ApiError::Invalid { ref field, .. }) if field == "priority"));
        let e = parse_json::<RunRequest>(br#"{"title":"x"}"#).err();
        assert!(matches!(e, Some(ApiError::Invalid { ref field, .. }) if field == "repo"));
        let e = parse_json::<RunRequest>(br#"["a/b", null, "t", null, null, null, null]"#).err();
        assert!(matches!(e, Some(ApiError::Invalid { ref field, .. }) if field == "body"));
        let e = parse_json::<RunRequest>(br#"{"repo": "#).err();
        assert!(matches!(e, Some(ApiError::BadRequest(_))));
    }
}
