//! What providers tell us in response headers about when to come back: `Retry-After` in its
//! three spellings, and the rate-limit headers of OpenAI (relative Go-style durations) and
//! Anthropic (absolute RFC 3339 instants), folded into one [`RateHints`].
//!
//! Every parser here is lenient by design: a header we cannot read is ignored, never an error,
//! because the answer it came with is still good.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

use crate::RateHints;

/// How long the provider asked us to wait: `retry-after-ms` (milliseconds, possibly
/// fractional; OpenAI and Azure send it) wins over `retry-after` (seconds, integer or decimal,
/// or an HTTP-date). A negative value or a date in the past means "now" (zero).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = header_str(headers, "retry-after-ms").and_then(parse_number) {
        return secs_to_duration(ms / 1000.0);
    }
    let value = header_str(headers, "retry-after")?;
    if let Some(secs) = parse_number(value) {
        return secs_to_duration(secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Rate-limit hints of a response, relative to the current clock.
pub fn rate_hints(headers: &HeaderMap) -> RateHints {
    rate_hints_at(headers, SystemTime::now())
}

/// Rate-limit hints of a response, relative to `now` (Anthropic's resets are instants).
pub fn rate_hints_at(headers: &HeaderMap, now: SystemTime) -> RateHints {
    let count = |name: &str| header_str(headers, name).and_then(parse_count);
    let go = |name: &str| header_str(headers, name).and_then(parse_go_duration);
    let instant = |name: &str| {
        header_str(headers, name)
            .and_then(parse_rfc3339)
            .map(|when| when.duration_since(now).unwrap_or(Duration::ZERO))
    };

    // Anthropic splits the token budget into input and output when it is not shared; the
    // scarcer one is what limits the next call, and capacity is whole again only after the
    // later reset.
    let anthropic_tokens_remaining = count("anthropic-ratelimit-tokens-remaining").or_else(|| {
        min_some(
            count("anthropic-ratelimit-input-tokens-remaining"),
            count("anthropic-ratelimit-output-tokens-remaining"),
        )
    });
    let anthropic_tokens_reset = instant("anthropic-ratelimit-tokens-reset").or_else(|| {
        max_some(
            instant("anthropic-ratelimit-input-tokens-reset"),
            instant("anthropic-ratelimit-output-tokens-reset"),
        )
    });

    RateHints {
        remaining_requests: count("x-ratelimit-remaining-requests")
            .or_else(|| count("anthropic-ratelimit-requests-remaining")),
        remaining_tokens: count("x-ratelimit-remaining-tokens").or(anthropic_tokens_remaining),
        reset_requests: go("x-ratelimit-reset-requests")
            .or_else(|| instant("anthropic-ratelimit-requests-reset")),
        reset_tokens: go("x-ratelimit-reset-tokens").or(anthropic_tokens_reset),
        retry_after: retry_after(headers, now),
    }
}

/// Parses a Go `time.Duration` string as OpenAI sends it: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_end == 0 {
            return None;
        }
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_end..];
    }
    secs_to_duration(total)
}

/// Parses an RFC 3339 timestamp (`2024-05-01T12:00:30Z`, `…30.25+02:00`) into an instant.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.trim().as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = i64::from(digits(&b[0..4])?);
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = i64::from(digits(&b[11..13])?);
    let minute = i64::from(digits(&b[14..16])?);
    // A leap second (60) is read as the last second of the minute.
    let second = i64::from(digits(&b[17..19])?.min(59));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }

    let mut rest = &b[19..];
    let mut nanos: u32 = 0;
    if rest.first() == Some(&b'.') {
        let count = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if count == 0 {
            return None;
        }
        for (i, c) in rest[1..=count].iter().enumerate().take(9) {
            nanos += u32::from(c - b'0') * 10_u32.pow(8 - i as u32);
        }
        rest = &rest[1 + count..];
    }
    let offset_secs = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let magnitude =
                i64::from(digits(&[*h1, *h2])?) * 3600 + i64::from(digits(&[*m1, *m2])?) * 60;
            if *sign == b'+' { magnitude } else { -magnitude }
        }
        _ => return None,
    };

    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// A decimal number of seconds (or milliseconds); `inf` and `NaN` are not numbers here.
fn parse_number(text: &str) -> Option<f64> {
    let value: f64 = text.trim().parse().ok()?;
    value.is_finite().then_some(value)
}

/// A remaining count; some OpenAI-compatible servers send `59.0`.
fn parse_count(text: &str) -> Option<u64> {
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    let value = parse_number(text)?;
    // The float-to-int cast saturates, and the value is checked non-negative first.
    (value >= 0.0).then(|| value.floor() as u64)
}

/// Negative means "already due"; an absurdly large value is ignored rather than trusted.
fn secs_to_duration(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs.max(0.0)).ok()
}

fn digits(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_some(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "a test fails loudly")]

    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_seconds_integer_and_decimal() {
        let now = SystemTime::now();
        assert_eq!(
            retry_after(&map(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&map(&[("retry-after", "1.5")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&map(&[("retry-after", " 7 ")]), now),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn retry_after_ms_wins_and_may_be_fractional() {
        let now = SystemTime::now();
        let h = map(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(1500)));
        let h = map(&[("retry-after-ms", "20.5")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_micros(20_500)));
        // An unreadable retry-after-ms falls back to retry-after.
        let h = map(&[("retry-after-ms", "soon"), ("retry-after", "3")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
    }

    #[test]
    fn retry_after_http_date() {
        // 1994-11-06T08:49:37Z is the RFC 9110 example date.
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        let h = map(&[("retry-after", date)]);
        assert_eq!(
            retry_after(&h, at(784_111_777 - 30)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(retry_after(&h, at(784_111_777 + 30)), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_negative_is_zero_and_garbage_is_none() {
        let now = SystemTime::now();
        assert_eq!(
            retry_after(&map(&[("retry-after", "-4")]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&map(&[("retry-after-ms", "-1")]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&map(&[("retry-after", "later")]), now), None);
        assert_eq!(retry_after(&map(&[("retry-after", "inf")]), now), None);
        assert_eq!(retry_after(&map(&[("retry-after", "1e300")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s);
        assert_eq!(d("1s"), Some(Duration::from_secs(1)));
        assert_eq!(d("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(d("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(d("1h2m3.5s"), Some(Duration::from_millis(3_723_500)));
        assert_eq!(d("7.66s"), Some(Duration::from_millis(7660)));
        assert_eq!(d("0s"), Some(Duration::ZERO));
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("150us"), Some(Duration::from_micros(150)));
        assert_eq!(d(""), None);
        assert_eq!(d("5"), None);
        assert_eq!(d("5x"), None);
        assert_eq!(d("-1s"), None);
        assert_eq!(d("s"), None);
    }

    #[test]
    fn rfc3339_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(parse_rfc3339("1994-11-06T08:49:37Z"), Some(at(784_111_777)));
        assert_eq!(parse_rfc3339("1994-11-06t08:49:37z"), Some(at(784_111_777)));
        assert_eq!(
            parse_rfc3339("1994-11-06T10:49:37+02:00"),
            Some(at(784_111_777))
        );
        assert_eq!(
            parse_rfc3339("1994-11-06T07:49:37-01:00"),
            Some(at(784_111_777))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00.25Z"),
            Some(at(1_709_208_000) + Duration::from_millis(250))
        );
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(at(951_868_800)));
        assert_eq!(
            parse_rfc3339("2024-02-29 12:00:00Z"),
            Some(at(1_709_208_000))
        );
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00.Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn openai_rate_limit_headers() {
        let h = map(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        let hints = rate_hints(&h);
        assert_eq!(
            hints,
            RateHints {
                remaining_requests: Some(59),
                remaining_tokens: Some(149_984),
                reset_requests: Some(Duration::from_secs(1)),
                reset_tokens: Some(Duration::from_secs(360)),
                retry_after: None,
            }
        );
    }

    #[test]
    fn anthropic_rate_limit_headers() {
        let now = at(1_714_564_800); // 2024-05-01T12:00:00Z
        let h = map(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:30Z"),
            ("anthropic-ratelimit-tokens-remaining", "39000"),
            ("anthropic-ratelimit-tokens-reset", "2024-05-01T12:00:01.5Z"),
            ("retry-after", "5"),
        ]);
        assert_eq!(
            rate_hints_at(&h, now),
            RateHints {
                remaining_requests: Some(49),
                remaining_tokens: Some(39_000),
                reset_requests: Some(Duration::from_secs(30)),
                reset_tokens: Some(Duration::from_millis(1500)),
                retry_after: Some(Duration::from_secs(5)),
            }
        );
    }

    #[test]
    fn anthropic_split_token_limits_take_the_scarcer() {
        let now = at(1_714_564_800);
        let h = map(&[
            ("anthropic-ratelimit-input-tokens-remaining", "20000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2024-05-01T12:00:10Z",
            ),
            ("anthropic-ratelimit-output-tokens-remaining", "800"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2024-05-01T12:00:20Z",
            ),
            // A reset already past reads as zero.
            ("anthropic-ratelimit-requests-reset", "2024-05-01T11:59:00Z"),
        ]);
        let hints = rate_hints_at(&h, now);
        assert_eq!(hints.remaining_tokens, Some(800));
        assert_eq!(hints.reset_tokens, Some(Duration::from_secs(20)));
        assert_eq!(hints.reset_requests, Some(Duration::ZERO));
        assert_eq!(hints.remaining_requests, None);
    }

    #[test]
    fn unreadable_headers_are_ignored() {
        let h = map(&[
            ("x-ratelimit-remaining-requests", "many"),
            ("x-ratelimit-remaining-tokens", "59.0"),
            ("x-ratelimit-reset-requests", "soon"),
        ]);
        let hints = rate_hints(&h);
        assert_eq!(hints.remaining_requests, None);
        assert_eq!(hints.remaining_tokens, Some(59));
        assert_eq!(hints.reset_requests, None);
    }
}
