//! Hygiene of text before it is stored, shown or logged. Two rules, applied together by
//! [`Redactor::clean`]: every secret value the server knows (tokens, API keys, the webhook
//! secret, the GitHub App key, the database password) is replaced by `[redacted]`, and NUL
//! characters — which PostgreSQL cannot store in TEXT or JSONB — become U+FFFD, on every backend
//! alike so both stores hold the same text. Secrets shorter than [`MIN_SECRET_LEN`] are refused
//! when the redactor is built: replacing a short value would mangle ordinary words.

use serde_json::Value;
use std::borrow::Cow;

/// The shortest secret accepted; shorter ones would redact ordinary words.
pub const MIN_SECRET_LEN: usize = 8;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// What a NUL character is replaced with (PostgreSQL cannot store NUL).
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// A secret too short to redact safely; `name` is the setting it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name}: a secret must be at least {MIN_SECRET_LEN} characters (it is redacted from all output)"
)]
pub struct ShortSecret {
    /// The setting or variable that holds the secret, e.g. `LLM_API_KEY`.
    pub name: String,
}

/// Replaces known secret values (and NUL) in text and JSON. Cheap to clone; the empty
/// redactor still replaces NUL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    /// Longest first, so a secret containing another is replaced whole.
    needles: Vec<String>,
}

impl Redactor {
    /// A redactor for `secrets` (`(setting name, value)`); an error names the first secret
    /// shorter than [`MIN_SECRET_LEN`] characters. Each value is also matched reversed (a
    /// script that writes the environment backwards must not slip past).
    pub fn new<N, V>(secrets: impl IntoIterator<Item = (N, V)>) -> Result<Self, ShortSecret>
    where
        N: Into<String>,
        V: AsRef<str>,
    {
        let mut r = Self::default();
        for (name, value) in secrets {
            let value = value.as_ref();
            if value.chars().count() < MIN_SECRET_LEN {
                return Err(ShortSecret { name: name.into() });
            }
            r.push(value);
        }
        Ok(r)
    }

    /// Adds a multi-line key (PEM): the whole text and each line long enough to be part of
    /// the key body (the `-----BEGIN…` armour lines are public and left alone).
    pub fn with_pem(mut self, pem: &str) -> Self {
        let whole = pem.trim();
        if whole.chars().count() >= MIN_SECRET_LEN {
            self.push(whole);
        }
        for line in pem.lines().map(str::trim) {
            if line.chars().count() >= MIN_SECRET_LEN && !line.starts_with("-----") {
                self.push(line);
            }
        }
        self
    }

    fn push(&mut self, value: &str) {
        for v in [value.to_owned(), value.chars().rev().collect()] {
            if !self.needles.contains(&v) {
                self.needles.push(v);
            }
        }
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// The secret values matched (each also reversed). For checks such as the path policy's
    /// refusal to write a file holding one.
    pub fn needles(&self) -> &[String] {
        &self.needles
    }

    /// True when no secret is known (NUL is still replaced).
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Whether `text` holds a known secret.
    pub fn contains_secret(&self, text: &str) -> bool {
        self.needles.iter().any(|n| text.contains(n.as_str()))
    }

    fn needs_cleaning(&self, text: &str) -> bool {
        text.contains('\0') || self.contains_secret(text)
    }

    /// `text` with every known secret replaced by `[redacted]` and NUL by U+FFFD; borrowed
    /// when nothing had to change.
    pub fn clean<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.needs_cleaning(text) {
            return Cow::Borrowed(text);
        }
        let mut out = text.replace('\0', &NUL_REPLACEMENT.to_string());
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), REDACTED);
            }
        }
        Cow::Owned(out)
    }

    /// [`Redactor::clean`] over every string (values and keys) of a JSON value; borrowed when
    /// nothing had to change.
    pub fn clean_json<'a>(&self, value: &'a Value) -> Cow<'a, Value> {
        if !self.json_needs_cleaning(value) {
            return Cow::Borrowed(value);
        }
        let mut v = value.clone();
        self.clean_json_in_place(&mut v);
        Cow::Owned(v)
    }

    /// [`Redactor::clean_json`] on an owned value.
    pub fn clean_json_in_place(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                if let Cow::Owned(c) = self.clean(s) {
                    *s = c;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.clean_json_in_place(v)),
            Value::Object(map) => {
                if map.keys().any(|k| self.needs_cleaning(k)) {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(self.clean(&k).into_owned(), v);
                    }
                }
                map.values_mut().for_each(|v| self.clean_json_in_place(v));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn json_needs_cleaning(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => self.needs_cleaning(s),
            Value::Array(items) => items.iter().any(|v| self.json_needs_cleaning(v)),
            Value::Object(map) => map
                .iter()
                .any(|(k, v)| self.needs_cleaning(k) || self.json_needs_cleaning(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn short_secrets_are_refused_by_name() {
        let e = Redactor::new([("LLM_API_KEY", "x")]).unwrap_err();
        assert_eq!(e.name, "LLM_API_KEY");
        assert!(
            e.to_string()
                .starts_with("LLM_API_KEY: a secret must be at least 8")
        );
        assert!(Redactor::new([("K", "12345678")]).is_ok());
    }

    #[test]
    fn secrets_forwards_and_backwards_are_replaced_and_words_are_not() {
        let r = Redactor::new([("A", "hunter2-long"), ("B", "hunter2-longer-still")]).unwrap();
        assert_eq!(r.clean("x hunter2-longer-still y"), "x [redacted] y");
        assert_eq!(r.clean("gnol-2retnuh"), "[redacted]");
        assert_eq!(
            r.clean("an ordinary text with x"),
            "an ordinary text with x"
        );
        assert!(matches!(r.clean("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn nul_is_replaced_even_without_secrets() {
        let r = Redactor::default();
        assert_eq!(r.clean("a\0b"), "a\u{FFFD}b");
        let v = json!({"k\u{0}": ["x\u{0}", {"n": 1}]});
        assert_eq!(
            r.clean_json(&v).into_owned(),
            json!({"k\u{FFFD}": ["x\u{FFFD}", {"n": 1}]})
        );
    }

    #[test]
    fn json_strings_are_walked() {
        let r = Redactor::new([("T", "tok-0123456789")]).unwrap();
        let v = json!({"a": {"b": ["see tok-0123456789 here"]}, "n": 3});
        let c = r.clean_json(&v);
        assert_eq!(
            c.into_owned(),
            json!({"a": {"b": ["see [redacted] here"]}, "n": 3})
        );
        assert!(matches!(r.clean_json(&json!({"a": "b"})), Cow::Borrowed(_)));
    }

    #[test]
    fn pem_body_lines_are_secrets_and_armour_is_not() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAabcdefgh\nZZZZ\n-----END RSA PRIVATE KEY-----\n";
        let r = Redactor::default().with_pem(pem);
        assert_eq!(r.clean("x MIIEowIBAAKCAQEAabcdefgh"), "x [redacted]");
        assert_eq!(
            r.clean("-----BEGIN RSA PRIVATE KEY-----"),
            "-----BEGIN RSA PRIVATE KEY-----"
        );
    }
}
