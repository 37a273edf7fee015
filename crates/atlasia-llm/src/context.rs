//! Measuring prompts against a model's context: a cheap token estimate. The gateway knows
//! each endpoint's context size ([`crate::Gateway::context_tokens`]); the caller decides what
//! to trim when the estimate plus the output bound does not fit.

use crate::ChatRequest;

/// Tokens a chat template adds around each message (role markers, separators), roughly.
const PER_MESSAGE: u64 = 4;

/// About how many tokens `req`'s prompt takes: a quarter of the UTF-8 bytes of its messages,
/// tool definitions and response schema, plus a few per message for the chat template.
/// An ESTIMATE (real tokenizers differ by ±30 % on English, more on code and other scripts):
/// keep a margin, and expect the provider's context error to remain possible.
pub fn estimate_tokens(req: &ChatRequest) -> u32 {
    let n = crate::pricing::estimate_tokens(req) + PER_MESSAGE * req.messages.len() as u64;
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Role};

    #[test]
    fn about_four_characters_a_token_plus_the_template() {
        let req = ChatRequest {
            messages: vec![
                Message::text(Role::System, "x".repeat(400)),
                Message::text(Role::User, "y".repeat(400)),
            ],
            ..ChatRequest::default()
        };
        assert_eq!(estimate_tokens(&req), 200 + 8);
    }
}
