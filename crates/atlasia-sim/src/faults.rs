//! Fault injection: the fault spec language (`X-Sim-Fault` header and `--fault` flag), and the
//! decision, per model request, of what goes wrong with it. Every random choice is drawn from
//! the seed and the request's sequence number, so a run repeats exactly.

use crate::config::SimConfig;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What a fault does to the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP error status, in the route's provider error format (`auth` is 401).
    Status(u16),
    /// Accept the request, send the headers (streams) or nothing, then never answer.
    Stall,
    /// Streams: send this many events, then close the connection without the terminal event.
    /// Plain answers: send this many bytes of the body, then close.
    Cut(usize),
    /// 200 with a body that is not valid JSON (or an SSE stream with a broken JSON event).
    Malformed,
    /// The answer cut by the output limit: at this many tokens (`length=<n>`), else at the
    /// request's `max_tokens`, else at 16; `finish_reason: "length"` (Anthropic `max_tokens`).
    /// A tool call is cut too: its arguments come back as truncated text.
    Length(Option<u32>),
    /// The prompt does not fit the context: a 400 in the provider's words (llama-server's
    /// `exceed_context_size_error` on the OpenAI route, "prompt is too long" on Anthropic's).
    /// With a size (`context=<n>`), only prompts of more than n tokens are refused.
    Context(Option<u32>),
    /// Prose instead of the tool call (or the JSON) the request asked for, as small models do.
    Prose,
}

/// A parsed fault spec: comma-separated items, at most one fault plus an optional latency, e.g.
/// `503`, `latency=250`, `latency=100,cut=3`, `stall`, `malformed`, `auth`, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultSpec {
    /// Delay before answering (replaces the server's latency settings for this request).
    pub latency: Option<Duration>,
    /// The fault, if any.
    pub fault: Option<Fault>,
}

/// Why a fault spec could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad fault spec '{0}': expected items like 429, 500, 502, 503, 529, auth, stall, malformed, \
     cut=<n>, length[=<n>], context[=<n>], prose, latency=<ms> or none, comma-separated"
)]
pub struct BadFaultSpec(pub String);

impl FromStr for FaultSpec {
    type Err = BadFaultSpec;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadFaultSpec(s.to_owned());
        let mut spec = FaultSpec::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let item = item.to_ascii_lowercase();
            let fault = match item.as_str() {
                "none" => None,
                "auth" => Some(Fault::Status(401)),
                "stall" => Some(Fault::Stall),
                "malformed" => Some(Fault::Malformed),
                "length" => Some(Fault::Length(None)),
                "context" => Some(Fault::Context(None)),
                "prose" => Some(Fault::Prose),
                other => {
                    if let Some(ms) = other.strip_prefix("latency=") {
                        let ms: u64 = ms.parse().map_err(|_| bad())?;
                        spec.latency = Some(Duration::from_millis(ms));
                        continue;
                    }
                    if let Some(n) = other.strip_prefix("cut=") {
                        Some(Fault::Cut(n.parse().map_err(|_| bad())?))
                    } else if let Some(n) = other.strip_prefix("length=") {
                        Some(Fault::Length(Some(n.parse().map_err(|_| bad())?)))
                    } else if let Some(n) = other.strip_prefix("context=") {
                        Some(Fault::Context(Some(n.parse().map_err(|_| bad())?)))
                    } else {
                        match other.parse::<u16>() {
                            Ok(code) if (400..=599).contains(&code) => Some(Fault::Status(code)),
                            _ => return Err(bad()),
                        }
                    }
                }
            };
            if fault.is_some() {
                if spec.fault.is_some() {
                    return Err(bad());
                }
                spec.fault = fault;
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(401) => f.write_str("auth"),
            Self::Status(code) => write!(f, "{code}"),
            Self::Stall => f.write_str("stall"),
            Self::Cut(n) => write!(f, "cut={n}"),
            Self::Malformed => f.write_str("malformed"),
            Self::Length(None) => f.write_str("length"),
            Self::Length(Some(n)) => write!(f, "length={n}"),
            Self::Context(None) => f.write_str("context"),
            Self::Context(Some(n)) => write!(f, "context={n}"),
            Self::Prose => f.write_str("prose"),
        }
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if let Some(l) = self.latency {
            items.push(format!("latency={}", l.as_millis()));
        }
        if let Some(x) = self.fault {
            items.push(x.to_string());
        }
        if items.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

/// What happens to one model request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Wait this long first.
    pub delay: Duration,
    /// Then this (no fault: answer normally).
    pub fault: Option<Fault>,
    /// Whether `delay` came from a fault spec (counted as an injected fault) rather than the
    /// server's steady latency.
    pub injected_latency: bool,
}

/// Decides the fate of the model request number `seq` (1-based). A header spec wins over all
/// the server's fault settings; otherwise `--fault`, then `--fail-first`, then `--fail-rate`.
pub(crate) fn plan(cfg: &SimConfig, header: Option<FaultSpec>, seq: u64) -> Plan {
    if let Some(spec) = header {
        return Plan {
            delay: spec.latency.unwrap_or_default(),
            fault: spec.fault,
            injected_latency: spec.latency.is_some(),
        };
    }
    let steady = cfg.latency + jitter(cfg, seq);
    let (delay, injected_latency) = match cfg.fault.and_then(|f| f.latency) {
        Some(l) => (l, true),
        None => (steady, false),
    };
    let fault = if let Some(f) = cfg.fault.and_then(|f| f.fault) {
        Some(f)
    } else if seq <= cfg.fail_first || draw(cfg.seed, seq, SALT_FAIL) < cfg.fail_rate {
        Some(Fault::Status(cfg.fail_status))
    } else {
        None
    };
    Plan {
        delay,
        fault,
        injected_latency,
    }
}

const SALT_FAIL: u64 = 0x6661_696c; // "fail"
const SALT_JITTER: u64 = 0x6a69_7474; // "jitt"

/// Extra latency for request `seq`, uniform in `0..=latency_jitter` (millisecond steps).
fn jitter(cfg: &SimConfig, seq: u64) -> Duration {
    let max = u64::try_from(cfg.latency_jitter.as_millis()).unwrap_or(u64::MAX);
    if max == 0 {
        return Duration::ZERO;
    }
    let r = splitmix64(cfg.seed ^ splitmix64(seq ^ SALT_JITTER));
    Duration::from_millis(r % (max.saturating_add(1)).max(1))
}

/// A number in `[0, 1)` that depends only on seed, sequence number and purpose.
fn draw(seed: u64, seq: u64, salt: u64) -> f64 {
    let r = splitmix64(seed ^ splitmix64(seq ^ salt));
    // The top 53 bits fill an f64 mantissa exactly.
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// SplitMix64: tiny, well-mixed and stable across versions (unlike a library RNG whose
/// algorithm may change), which is what makes `--seed` reproducible for good.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::*;

    fn spec(s: &str) -> FaultSpec {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_fault_kind() {
        assert_eq!(spec("429").fault, Some(Fault::Status(429)));
        assert_eq!(spec(" 529 ").fault, Some(Fault::Status(529)));
        assert_eq!(spec("auth").fault, Some(Fault::Status(401)));
        assert_eq!(spec("stall").fault, Some(Fault::Stall));
        assert_eq!(spec("Malformed").fault, Some(Fault::Malformed));
        assert_eq!(spec("cut=3").fault, Some(Fault::Cut(3)));
        assert_eq!(spec("length").fault, Some(Fault::Length(None)));
        assert_eq!(spec("length=8").fault, Some(Fault::Length(Some(8))));
        assert_eq!(spec("context").fault, Some(Fault::Context(None)));
        assert_eq!(spec("context=2048").fault, Some(Fault::Context(Some(2048))));
        assert_eq!(spec("prose").fault, Some(Fault::Prose));
        for s in ["length", "length=8", "context", "context=2048", "prose"] {
            assert_eq!(spec(s).to_string(), s);
        }
        assert_eq!(spec("none"), FaultSpec::default());
        let both = spec("latency=250,cut=2");
        assert_eq!(both.latency, Some(Duration::from_millis(250)));
        assert_eq!(both.fault, Some(Fault::Cut(2)));
        assert_eq!(both.to_string(), "latency=250,cut=2");
    }

    #[test]
    fn refuses_nonsense() {
        for s in [
            "200",
            "teapot",
            "cut=x",
            "latency=",
            "500,503",
            "99999",
            "length=-1",
            "context=x",
            "prose,length",
        ] {
            assert!(s.parse::<FaultSpec>().is_err(), "{s}");
        }
    }

    #[test]
    fn header_wins_over_server_settings() {
        let cfg = SimConfig {
            fail_first: 10,
            latency: Duration::from_millis(500),
            ..SimConfig::default()
        };
        let p = plan(&cfg, Some(FaultSpec::default()), 1);
        assert_eq!(p.fault, None);
        assert_eq!(p.delay, Duration::ZERO);
        assert_eq!(plan(&cfg, None, 1).fault, Some(Fault::Status(503)));
        assert_eq!(plan(&cfg, None, 11).fault, None);
        assert_eq!(plan(&cfg, None, 11).delay, Duration::from_millis(500));
    }

    #[test]
    fn fail_rate_is_seeded_and_roughly_right() {
        let cfg = SimConfig {
            fail_rate: 0.25,
            seed: 7,
            ..SimConfig::default()
        };
        let fails = |cfg: &SimConfig| -> Vec<bool> {
            (1..=2000)
                .map(|n| plan(cfg, None, n).fault.is_some())
                .collect()
        };
        let a = fails(&cfg);
        assert_eq!(a, fails(&cfg), "same seed, same draws");
        let share = a.iter().filter(|f| **f).count() as f64 / a.len() as f64;
        assert!((0.2..0.3).contains(&share), "share {share}");
        let other = SimConfig { seed: 8, ..cfg };
        assert_ne!(a, fails(&other), "another seed, other draws");
    }

    #[test]
    fn jitter_stays_in_range_and_repeats() {
        let cfg = SimConfig {
            latency: Duration::from_millis(100),
            latency_jitter: Duration::from_millis(50),
            seed: 3,
            ..SimConfig::default()
        };
        let delays: Vec<_> = (1..200).map(|n| plan(&cfg, None, n).delay).collect();
        assert!(delays.iter().all(|d| (100..=150).contains(&d.as_millis())));
        assert!(delays.iter().any(|d| *d != delays[0]), "jitter varies");
        let again: Vec<_> = (1..200).map(|n| plan(&cfg, None, n).delay).collect();
        assert_eq!(delays, again);
    }
}
