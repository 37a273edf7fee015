//! A small JSON instance that is valid against a JSON Schema: what the simulator answers when a
//! request asks for structured output or a tool call. Handles the keywords LLM schemas use:
//! `type` (also lists), `properties`/`required`, `additionalProperties`, `minProperties`,
//! `items`/`prefixItems`/`minItems`/`uniqueItems`/`contains`, `enum`, `const`, string
//! `minLength`/`maxLength`/`pattern`/`format`, numeric bounds and `multipleOf`,
//! `allOf`/`anyOf`/`oneOf` (first branch) and local `$ref`s (`#/$defs/…`, `#/definitions/…`).
//! The output is deterministic: the same schema always gives the same instance.

use crate::pattern;
use serde_json::{Map, Value, json};

/// Below this depth every property is filled in; deeper, only required ones (so optional
/// recursive properties end).
const FULL_DEPTH: usize = 6;
/// Past this depth the generator gives up with `null` (a schema that requires infinite
/// recursion has no finite instance anyway).
const MAX_DEPTH: usize = 48;

/// A deterministic instance of `schema`.
pub fn instance(schema: &Value) -> Value {
    Gen { root: schema }.value(schema, 0, 0)
}

struct Gen<'a> {
    /// The document local `$ref`s point into.
    root: &'a Value,
}

impl Gen<'_> {
    /// An instance of `schema`; `k` asks for the k-th variant (to make array items distinct).
    fn value(&self, schema: &Value, depth: usize, k: usize) -> Value {
        let Value::Object(s) = schema else {
            // `true` allows anything and `false` nothing; null is as good as anything.
            return Value::Null;
        };
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let target = self.resolve(r).cloned().unwrap_or(json!({}));
            let merged = merge(&target, &without(s, &["$ref"]));
            return self.value(&merged, depth + 1, k);
        }
        if let Some(c) = s.get("const") {
            return c.clone();
        }
        if let Some(Value::Array(options)) = s.get("enum")
            && !options.is_empty()
        {
            return options[k % options.len()].clone();
        }
        if let Some(Value::Array(all)) = s.get("allOf") {
            let mut merged = without(s, &["allOf"]);
            for branch in all {
                merged = merge(&merged, &self.inline(branch));
            }
            return self.value(&merged, depth + 1, k);
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(Value::Array(branches)) = s.get(key)
                && let Some(first) = branches.first()
            {
                let merged = merge(&without(s, &[key]), &self.inline(first));
                return self.value(&merged, depth + 1, k);
            }
        }
        match type_of(s) {
            "object" => self.object(s, depth, k),
            "array" => self.array(s, depth, k),
            "integer" => number(s, true, k),
            "number" => number(s, false, k),
            "boolean" => Value::Bool(k % 2 == 1),
            "null" => Value::Null,
            _ => string(s, k),
        }
    }

    /// A branch with a top-level `$ref` replaced by its target, so that merging sees the
    /// target's keywords.
    fn inline(&self, branch: &Value) -> Value {
        match branch.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let target = self.resolve(r).cloned().unwrap_or(json!({}));
                let rest = branch.as_object().map(|o| without(o, &["$ref"]));
                merge(&target, &rest.unwrap_or(json!({})))
            }
            None => branch.clone(),
        }
    }

    /// A local reference (`#`, `#/$defs/x`, …); remote ones are not followed.
    fn resolve(&self, r: &str) -> Option<&Value> {
        let pointer = r.strip_prefix('#')?;
        if pointer.is_empty() {
            return Some(self.root);
        }
        let decoded = pointer.replace("%25", "%").replace("%22", "\"");
        self.root.pointer(&decoded)
    }

    fn object(&self, s: &Map<String, Value>, depth: usize, k: usize) -> Value {
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let extra_schema = match s.get("additionalProperties") {
            Some(Value::Bool(false)) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            _ => Some(json!({})),
        };
        let mut out = Map::new();
        if let Some(Value::Object(props)) = s.get("properties") {
            for (name, schema) in props {
                if depth < FULL_DEPTH || required.contains(&name.as_str()) {
                    out.insert(name.clone(), self.value(schema, depth + 1, k));
                }
            }
        }
        for name in required {
            if !out.contains_key(name) {
                let schema = extra_schema.clone().unwrap_or(json!({}));
                out.insert(name.to_owned(), self.value(&schema, depth + 1, k));
            }
        }
        let min = usize_of(s, "minProperties");
        if let Some(schema) = extra_schema {
            let mut i = 0;
            while out.len() < min {
                out.insert(format!("extra_{i}"), self.value(&schema, depth + 1, i));
                i += 1;
            }
        }
        Value::Object(out)
    }

    fn array(&self, s: &Map<String, Value>, depth: usize, k: usize) -> Value {
        // 2020-12 tuples are `prefixItems` + `items`; draft-07 tuples are `items: [..]` +
        // `additionalItems`.
        let (prefix, rest) = match (s.get("prefixItems"), s.get("items")) {
            (Some(Value::Array(p)), items) => (p.clone(), items.cloned()),
            (None, Some(Value::Array(p))) => (p.clone(), s.get("additionalItems").cloned()),
            (_, items) => (Vec::new(), items.cloned()),
        };
        let rest = rest.unwrap_or(json!({}));
        let contains = s.get("contains");
        let mut n = usize_of(s, "minItems");
        if contains.is_some() {
            n = n.max(usize_of(s, "minContains").max(1));
        }
        let unique = s.get("uniqueItems") == Some(&Value::Bool(true));
        let items = (0..n)
            .map(|i| {
                let variant = if unique { i } else { k };
                match (contains, prefix.get(i)) {
                    (_, Some(p)) => self.value(p, depth + 1, variant),
                    (Some(c), None) => self.value(c, depth + 1, variant),
                    (None, None) => self.value(&rest, depth + 1, variant),
                }
            })
            .collect();
        Value::Array(items)
    }
}

/// The type to generate: the declared one (the first non-null of a list), else guessed from
/// the keywords present.
fn type_of(s: &Map<String, Value>) -> &str {
    match s.get("type") {
        Some(Value::String(t)) => return t,
        Some(Value::Array(ts)) => {
            let mut names = ts.iter().filter_map(Value::as_str);
            let first = names.clone().next();
            return names.find(|t| *t != "null").or(first).unwrap_or("null");
        }
        _ => {}
    }
    let has = |keys: &[&str]| keys.iter().any(|k| s.contains_key(*k));
    if has(&[
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
    ]) {
        "object"
    } else if has(&["items", "prefixItems", "minItems", "contains"]) {
        "array"
    } else if has(&[
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    ]) {
        "number"
    } else {
        "string"
    }
}

fn string(s: &Map<String, Value>, k: usize) -> Value {
    let min = usize_of(s, "minLength");
    let max = s.get("maxLength").and_then(Value::as_u64).map(to_usize);
    let fits = |t: &str| {
        let n = t.chars().count();
        n >= min && max.is_none_or(|m| n <= m)
    };
    if let Some(f) = s.get("format").and_then(Value::as_str)
        && let Some(t) = format_sample(f)
    {
        return Value::String(t.to_owned());
    }
    if let Some(p) = s.get("pattern").and_then(Value::as_str) {
        // Grow unbounded repetitions until the sample is long enough.
        let limit = min.max(k) + 8;
        if let Some(t) = (k..=limit).find_map(|extra| pattern::sample(p, extra).filter(|t| fits(t)))
        {
            return Value::String(t);
        }
    }
    let mut t = if k == 0 {
        "sim".to_owned()
    } else {
        format!("sim{k}")
    };
    while t.chars().count() < min {
        t.push('x');
    }
    if let Some(m) = max {
        t = t.chars().take(m).collect();
    }
    Value::String(t)
}

/// Fixed, valid examples of the formats schemas ask for.
fn format_sample(format: &str) -> Option<&'static str> {
    Some(match format {
        "date-time" => "2024-01-01T00:00:00Z",
        "date" => "2024-01-01",
        "time" => "00:00:00Z",
        "duration" => "PT1S",
        "email" | "idn-email" => "sim@example.com",
        "hostname" | "idn-hostname" => "example.com",
        "ipv4" => "127.0.0.1",
        "ipv6" => "::1",
        "uri" | "iri" | "url" => "https://example.com/sim",
        "uri-reference" | "iri-reference" => "/sim",
        "uuid" => "00000000-0000-4000-8000-000000000000",
        "regex" => "^sim$",
        "json-pointer" => "/sim",
        _ => return None,
    })
}

/// The smallest-magnitude number near `k` that honours the bounds and `multipleOf`.
fn number(s: &Map<String, Value>, integer: bool, k: usize) -> Value {
    let (lo, lo_excl) = bound(s, "minimum", "exclusiveMinimum", true);
    let (hi, hi_excl) = bound(s, "maximum", "exclusiveMaximum", false);
    let within = |v: f64| {
        lo.is_none_or(|lo| if lo_excl { v > lo } else { v >= lo })
            && hi.is_none_or(|hi| if hi_excl { v < hi } else { v <= hi })
    };
    let step = |from: f64, up: bool| -> f64 {
        match (integer, up) {
            (true, true) => from.floor() + 1.0,
            (true, false) => from.ceil() - 1.0,
            (false, true) => match hi {
                Some(hi) if hi - from <= 1.0 => (from + hi) / 2.0,
                _ => from + 1.0,
            },
            (false, false) => match lo {
                Some(lo) if from - lo <= 1.0 => (from + lo) / 2.0,
                _ => from - 1.0,
            },
        }
    };
    let mut v = 0.0;
    if let Some(l) = lo
        && !within(v)
        && v <= l
    {
        v = if lo_excl { step(l, true) } else { l };
    }
    if let Some(h) = hi
        && !within(v)
        && v >= h
    {
        v = if hi_excl { step(h, false) } else { h };
    }
    if integer {
        let c = v.ceil();
        v = if within(c) { c } else { v.floor() };
    }
    let multiple = s
        .get("multipleOf")
        .and_then(Value::as_f64)
        .filter(|m| *m > 0.0);
    if let Some(m) = multiple {
        let up = (v / m).ceil() * m;
        let down = (v / m).floor() * m;
        if within(up) {
            v = up;
        } else if within(down) {
            v = down;
        }
    }
    // Variants step away from the minimal value by whole multiples, staying in bounds.
    if k > 0 {
        let d = multiple.unwrap_or(1.0) * k as f64;
        if within(v + d) {
            v += d;
        } else if within(v - d) {
            v -= d;
        }
    }
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// A lower or upper bound and whether it is exclusive, from either the 2019+ form (numeric
/// `exclusiveMinimum`) or the draft-04 form (boolean next to `minimum`); the tighter wins.
fn bound(
    s: &Map<String, Value>,
    inclusive: &str,
    exclusive: &str,
    lower: bool,
) -> (Option<f64>, bool) {
    let inc = s.get(inclusive).and_then(Value::as_f64);
    match s.get(exclusive) {
        Some(Value::Bool(true)) => (inc, inc.is_some()),
        Some(Value::Number(n)) => {
            let exc = n.as_f64();
            match (inc, exc) {
                (Some(i), Some(e)) if (lower && i > e) || (!lower && i < e) => (Some(i), false),
                (_, Some(e)) => (Some(e), true),
                (i, None) => (i, false),
            }
        }
        _ => (inc, false),
    }
}

fn usize_of(s: &Map<String, Value>, key: &str) -> usize {
    s.get(key).and_then(Value::as_u64).map_or(0, to_usize)
}

/// Caps absurd sizes (`minItems: 1e9`) at something that still fits in a response.
fn to_usize(n: u64) -> usize {
    usize::try_from(n.min(1000)).unwrap_or(1000)
}

fn without(s: &Map<String, Value>, keys: &[&str]) -> Value {
    let mut out = s.clone();
    for k in keys {
        out.remove(*k);
    }
    Value::Object(out)
}

/// `overlay` on top of `base`: `properties` are united (overlay wins per property),
/// `required` lists are joined, any other keyword is taken from the overlay when present.
fn merge(base: &Value, overlay: &Value) -> Value {
    let (Value::Object(b), Value::Object(o)) = (base, overlay) else {
        return overlay.clone();
    };
    let mut out = b.clone();
    for (key, value) in o {
        match (key.as_str(), out.get_mut(key), value) {
            ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => {
                for (p, ps) in theirs {
                    mine.insert(p.clone(), ps.clone());
                }
            }
            ("required", Some(Value::Array(mine)), Value::Array(theirs)) => {
                for r in theirs {
                    if !mine.contains(r) {
                        mine.push(r.clone());
                    }
                }
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_get_every_property_with_sensible_values() {
        let schema = json!({
            "type": "object",
            "properties": {
                "title": {"type": "string", "minLength": 5},
                "count": {"type": "integer", "minimum": 3, "maximum": 9},
                "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "kind": {"enum": ["bug", "feature"]},
                "done": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "note": {"type": ["null", "string"]},
            },
            "required": ["title", "count"],
            "additionalProperties": false
        });
        let v = instance(&schema);
        assert_eq!(v["title"], "simxx");
        assert_eq!(v["count"], 3);
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["kind"], "bug");
        assert_eq!(v["done"], false);
        assert_eq!(v["tags"], json!(["sim", "sim"]));
        assert_eq!(v["note"], "sim");
    }

    #[test]
    fn follows_local_refs_and_combinators() {
        let schema = json!({
            "$defs": {
                "step": {"type": "object", "properties": {"name": {"const": "build"}}, "required": ["name"]},
                "id": {"type": "string", "pattern": "^[A-Z]{2}-\\d+$"}
            },
            "type": "object",
            "properties": {
                "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "minItems": 1},
                "id": {"$ref": "#/$defs/id"},
                "either": {"oneOf": [{"type": "integer", "minimum": -5, "maximum": -2}, {"type": "string"}]},
                "both": {"allOf": [
                    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}
                ]}
            },
            "required": ["steps", "id", "either", "both"]
        });
        let v = instance(&schema);
        assert_eq!(v["steps"], json!([{"name": "build"}]));
        assert_eq!(v["id"], "AA-0");
        assert_eq!(v["either"], -2);
        assert_eq!(v["both"], json!({"a": 0, "b": false}));
    }

    #[test]
    fn recursive_schemas_end() {
        let schema = json!({
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "next": {"$ref": "#"}
            },
            "required": ["value"]
        });
        let v = instance(&schema);
        let mut depth = 0;
        let mut cur = &v;
        while let Some(next) = cur.get("next") {
            depth += 1;
            cur = next;
        }
        assert!(depth > 0 && depth < FULL_DEPTH, "depth {depth}");
    }

    #[test]
    fn unique_items_differ_and_numbers_honour_multiple_of() {
        let v = instance(&json!({
            "type": "array", "minItems": 3, "uniqueItems": true,
            "items": {"type": "integer", "minimum": 10, "multipleOf": 5}
        }));
        assert_eq!(v, json!([10, 15, 20]));
        let strings = instance(&json!({
            "type": "array", "minItems": 3, "uniqueItems": true, "items": {"type": "string"}
        }));
        assert_eq!(strings, json!(["sim", "sim1", "sim2"]));
    }

    #[test]
    fn formats_and_lengths() {
        assert_eq!(
            instance(&json!({"type": "string", "format": "date"})),
            "2024-01-01"
        );
        assert_eq!(instance(&json!({"type": "string", "maxLength": 2})), "si");
        assert_eq!(instance(&json!({"type": "integer", "maximum": -7})), -7);
        assert_eq!(
            instance(&json!({"type": "integer", "exclusiveMaximum": 0})),
            -1
        );
        assert_eq!(instance(&json!({"const": {"x": 1}})), json!({"x": 1}));
        assert_eq!(instance(&json!(true)), Value::Null);
    }
}
