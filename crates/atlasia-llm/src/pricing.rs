//! What a call costs: list prices per model (overridable from configuration), resolved for
//! dated and provider-qualified model ids, plus the token estimate used to reserve budget and
//! tokens-per-minute before the real usage is known.

use std::collections::HashMap;

use crate::{ChatRequest, Usage};

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// Public list prices (USD / MTok, standard tier, no caching or batch discounts). Providers
/// change them; configuration overrides any entry with `PriceTable::set`.
const DEFAULTS: &[(&str, f64, f64)] = &[
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("o3-mini", 1.10, 4.40),
    ("o4-mini", 1.10, 4.40),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-opus-4", 15.00, 75.00),
    // Opus 4.5 onwards dropped to $5/$25; without these the prefix would bill them at 4.0's rate.
    ("claude-opus-4-5", 5.00, 25.00),
    ("claude-opus-4-6", 5.00, 25.00),
    ("claude-opus-4-7", 5.00, 25.00),
    ("claude-haiku-4-5", 1.00, 5.00),
    // DeepSeek V3.2 (both modes), cache-miss input.
    ("deepseek-chat", 0.28, 0.42),
    ("deepseek-reasoner", 0.28, 0.42),
    ("llama-3.3-70b-versatile", 0.59, 0.79),
];

/// Model name → price.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    prices: HashMap<String, Price>,
}

impl PriceTable {
    /// An empty table: every model is unknown.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_defaults() -> Self {
        let mut table = Self::new();
        for &(model, input_per_mtok, output_per_mtok) in DEFAULTS {
            table.set(
                model,
                Price {
                    input_per_mtok,
                    output_per_mtok,
                },
            );
        }
        table
    }

    /// The defaults with `[llm.prices]` on top.
    pub fn from_settings(s: &crate::config::LlmSettings) -> Self {
        let mut table = Self::with_defaults();
        for (model, p) in &s.prices {
            table.set(
                model,
                Price {
                    input_per_mtok: p.input_per_mtok,
                    output_per_mtok: p.output_per_mtok,
                },
            );
        }
        table
    }

    /// The provider model ids of `s`'s endpoints that have no price: their calls cost 0 in the
    /// ledger, so no budget can stop them. Sorted, each once.
    pub fn unpriced(&self, s: &crate::config::LlmSettings) -> Vec<String> {
        let mut out: Vec<String> = s
            .models
            .iter()
            .flat_map(|m| {
                m.endpoints
                    .iter()
                    .map(|e| e.model.clone().unwrap_or_else(|| m.name.clone()))
            })
            .filter(|model| self.price(model).is_none())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Adds or replaces a model's price (a configuration override).
    pub fn set(&mut self, model: impl Into<String>, price: Price) {
        self.prices.insert(model.into(), price);
    }

    /// The price of `model`: its exact name, else the longest known name it extends at a
    /// `-`, `@` or `:` boundary (`gpt-4o-2024-08-06` → `gpt-4o`, never `gpt-4.10` →
    /// `gpt-4.1`), else the same for the part after a provider prefix (`openai/gpt-4o`).
    pub fn price(&self, model: &str) -> Option<Price> {
        self.resolve(model).or_else(|| {
            let (_, bare) = model.rsplit_once('/')?;
            self.resolve(bare)
        })
    }

    fn resolve(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.prices.get(model) {
            return Some(*p);
        }
        self.prices
            .iter()
            .filter(|(known, _)| {
                model
                    .strip_prefix(known.as_str())
                    .is_some_and(|rest| rest.starts_with(['-', '@', ':']))
            })
            .max_by_key(|(known, _)| known.len())
            .map(|(_, p)| *p)
    }

    /// USD for a call; 0.0 for an unknown model (the caller logs that once).
    pub fn cost(&self, model: &str, usage: Usage) -> f64 {
        self.price(model).map_or(0.0, |p| {
            // One division at the end keeps round prices exact (0.15 × 1000 = 150).
            (usage.input_tokens as f64 * p.input_per_mtok
                + usage.output_tokens as f64 * p.output_per_mtok)
                / 1_000_000.0
        })
    }

    /// The most a call can cost: the whole `max_output_tokens` generated.
    pub fn max_cost(&self, model: &str, est_input_tokens: u64, max_output_tokens: u64) -> f64 {
        self.cost(
            model,
            Usage {
                input_tokens: est_input_tokens,
                output_tokens: max_output_tokens,
            },
        )
    }
}

/// About how many input tokens a request has: a quarter of the UTF-8 bytes of its messages,
/// tool definitions and response schema, rounded up, at least 1. Bytes rather than
/// characters, so non-Latin scripts (nearer a token per character) are over- rather than
/// under-estimated: this estimate reserves budget.
pub fn estimate_tokens(req: &ChatRequest) -> u64 {
    let json_len = |v: &serde_json::Value| v.to_string().len();
    let messages: usize = req
        .messages
        .iter()
        .map(|m| {
            m.content.as_deref().map_or(0, str::len)
                + m.tool_calls
                    .iter()
                    .map(|c| c.name.len() + c.arguments.len())
                    .sum::<usize>()
        })
        .sum();
    let tools: usize = req
        .tools
        .iter()
        .map(|t| {
            t.name.len() + t.description.as_deref().map_or(0, str::len) + json_len(&t.parameters)
        })
        .sum();
    let schema = req
        .response_format
        .as_ref()
        .map_or(0, |f| f.name.len() + json_len(&f.schema));
    let bytes = (messages + tools + schema) as u64;
    bytes.div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)]
    use super::*;
    use crate::{JsonSchema, Message, Role, Tool};

    fn usage(input_tokens: u64, output_tokens: u64) -> Usage {
        Usage {
            input_tokens,
            output_tokens,
        }
    }

    #[test]
    fn cost_is_exact_for_list_prices() {
        let t = PriceTable::with_defaults();
        assert_eq!(t.cost("gpt-4o-mini", usage(1_000, 500)), 0.00045);
        assert_eq!(t.cost("gpt-4o", usage(1_000_000, 1_000_000)), 12.5);
        assert_eq!(t.cost("claude-opus-4", usage(2_000, 1_000)), 0.105);
        assert_eq!(t.max_cost("gpt-4.1", 10_000, 2_000), 0.036);
    }

    #[test]
    fn dated_and_qualified_ids_resolve_to_the_longest_prefix() {
        let t = PriceTable::with_defaults();
        let p = |m| t.price(m).map(|p| p.input_per_mtok);
        assert_eq!(p("gpt-4o-2024-08-06"), Some(2.50));
        assert_eq!(p("gpt-4o-mini-2024-07-18"), Some(0.15));
        assert_eq!(p("gpt-4.1-nano-2025-04-14"), Some(0.10));
        assert_eq!(p("claude-3-5-sonnet-20241022"), Some(3.00));
        assert_eq!(p("claude-3-5-sonnet@20241022"), Some(3.00));
        assert_eq!(p("claude-opus-4-20250514"), Some(15.00));
        assert_eq!(p("claude-opus-4-5-20251101"), Some(5.00));
        assert_eq!(p("openai/gpt-4o-mini"), Some(0.15));
        assert_eq!(p("gpt-4.10"), None);
        assert_eq!(p("gpt-4"), None);
        assert_eq!(t.cost("mystery-model", usage(1_000, 1_000)), 0.0);
    }

    #[test]
    fn overrides_win_and_add_models() {
        let mut t = PriceTable::with_defaults();
        let price = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
        };
        t.set("gpt-4o", price);
        t.set("local-llama", price);
        assert_eq!(t.price("gpt-4o-2024-08-06"), Some(price));
        assert_eq!(t.cost("local-llama", usage(1_000_000, 500_000)), 2.0);
    }

    #[test]
    fn tokens_are_estimated_from_everything_the_model_reads() {
        let empty = ChatRequest::default();
        assert_eq!(estimate_tokens(&empty), 1);

        let mut req = ChatRequest {
            messages: vec![Message::text(Role::User, "abcde")], // 5 bytes
            ..ChatRequest::default()
        };
        assert_eq!(estimate_tokens(&req), 2);
        req.tools.push(Tool {
            name: "f".into(),
            description: None,
            parameters: serde_json::json!({}), // "{}"
        });
        assert_eq!(estimate_tokens(&req), 2); // 8 bytes
        req.response_format = Some(JsonSchema {
            name: "s".into(),
            schema: serde_json::json!({}),
            strict: true,
        });
        assert_eq!(estimate_tokens(&req), 3); // 11 bytes
    }
}
