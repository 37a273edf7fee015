//! Just enough of the Prometheus text format for `atlasia doctor` to read the server's
//! `/api/metrics/prometheus`: samples with their labels, and quantiles from histogram buckets.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text`; comments and lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        // key="value" pairs; values may hold braces, commas and escaped quotes.
        let mut chars = body.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()? {
                            (_, '\\') => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            (_, '"') => break,
                            (_, c) => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
        rest = &body[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of every sample named `name` (all label sets).
pub fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// For histogram `name`, per value of label `by`: the request count and the upper bound of
/// the bucket holding quantile `q` (an upper estimate, as Prometheus' own would interpolate).
pub fn quantile_by(samples: &[Sample], name: &str, by: &str, q: f64) -> Vec<(String, u64, f64)> {
    let bucket = format!("{name}_bucket");
    // group → upper bound (as bits, for ordering) → cumulative count over the other labels.
    let mut groups: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == bucket) {
        let (Some(group), Some(le)) = (s.label(by), s.label("le")) else {
            continue;
        };
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let entry = groups
            .entry(group.to_owned())
            .or_default()
            .entry(le.to_bits())
            .or_insert((le, 0.0));
        entry.1 += s.value;
    }
    let mut out = Vec::new();
    for (group, buckets) in groups {
        let mut bounds: Vec<(f64, f64)> = buckets.into_values().collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = bounds.last().map_or(0.0, |b| b.1);
        if total <= 0.0 {
            continue;
        }
        let want = q * total;
        let at = bounds
            .iter()
            .find(|(_, cum)| *cum >= want)
            .map_or(f64::INFINITY, |(le, _)| *le);
        out.push((group, total as u64, at));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_braces_and_escapes() {
        let s = parse(
            "# HELP x y\nh_bucket{route=\"/api/runs/{id}\",le=\"0.5\"} 3\nc{a=\"q\\\"x\"} 2\nplain 7\n",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].label("route"), Some("/api/runs/{id}"));
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].label("a"), Some("q\"x"));
        assert_eq!(sum(&s, "plain"), 7.0);
    }

    #[test]
    fn quantile_from_buckets_summed_over_other_labels() {
        let text = "\
h_bucket{route=\"/a\",status=\"200\",le=\"0.1\"} 90
h_bucket{route=\"/a\",status=\"200\",le=\"1\"} 98
h_bucket{route=\"/a\",status=\"200\",le=\"+Inf\"} 98
h_bucket{route=\"/a\",status=\"500\",le=\"0.1\"} 0
h_bucket{route=\"/a\",status=\"500\",le=\"1\"} 0
h_bucket{route=\"/a\",status=\"500\",le=\"+Inf\"} 2
";
        let q = quantile_by(&parse(text), "h", "route", 0.99);
        assert_eq!(q, vec![("/a".to_owned(), 100, f64::INFINITY)]);
        let q = quantile_by(&parse(text), "h", "route", 0.9);
        assert_eq!(q, vec![("/a".to_owned(), 100, 0.1)]);
    }
}
