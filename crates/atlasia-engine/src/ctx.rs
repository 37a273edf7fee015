//! What a step runs with: the run, its lease holder, the gateway and the store, and the two
//! things every step does through it — call the LLM (journaled: an answer an earlier, crashed
//! attempt already paid for is replayed from `llm_calls` instead of being bought again) and
//! append events for watchers.

use crate::contracts::{AgentContract, Contracts};
use atlasia_core::{EventKind, Run};
use atlasia_llm::{CallMeta, ChatRequest, ChatResponse, Gateway};
use atlasia_resilience::{RetryPolicy, sleep_or_cancel};
use atlasia_store::Store;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Default of how long a step keeps retrying an LLM call that failed for a passing reason
/// (every endpoint rate-limited, overloaded, unreachable or behind an open breaker) before the
/// step fails: a burst of 429s must slow bolts down, not lose them.
pub const LLM_PATIENCE: Duration = Duration::from_secs(10 * 60);
/// The waits between such retries: jittered, their ceiling 2 s doubling up to 60 s.
const LLM_RETRY: RetryPolicy = RetryPolicy {
    attempts: u32::MAX,
    base: Duration::from_secs(2),
    cap: Duration::from_secs(60),
};

/// Where a simulator script starts and ends (`<!-- atlasia-sim … -->`). In a prompt the issue
/// body is a JSON string, so its line breaks are `\n` escapes; the markers have none.
const SIM_OPEN: &str = "<!-- atlasia-sim";
const SIM_CLOSE: &str = "-->";
/// What replaces a script.
const SIM_CUT: &str = "[atlasia-sim script removed: it is for the simulator only]";

/// `text` without its simulator scripts; `None` when it has none. An unclosed script is cut to
/// the end (better too much than the answer key).
pub fn without_sim_scripts(text: &str) -> Option<String> {
    if !text.contains(SIM_OPEN) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(SIM_OPEN) {
        out.push_str(&rest[..at]);
        out.push_str(SIM_CUT);
        let after = &rest[at + SIM_OPEN.len()..];
        rest = match after.find(SIM_CLOSE) {
            Some(end) => &after[end + SIM_CLOSE.len()..],
            None => "",
        };
    }
    out.push_str(rest);
    Some(out)
}

/// True when every endpoint failed for a reason that passes with time.
fn passing(e: &atlasia_llm::GatewayError) -> bool {
    match e {
        atlasia_llm::GatewayError::AllFailed { causes, .. } => {
            !causes.is_empty()
                && causes
                    .iter()
                    .all(|(_, c)| c.is_retryable() || c.kind == atlasia_llm::ErrorKind::CircuitOpen)
        }
        _ => false,
    }
}
use tokio_util::sync::CancellationToken;

/// The context of one step of one run.
#[derive(Clone, Copy)]
pub struct StepCtx<'a> {
    pub store: &'a Store,
    pub gateway: &'a Gateway,
    pub contracts: &'a Contracts,
    /// The run as the step started it.
    pub run: &'a Run,
    /// The lease holder; events are only written while it holds the lease.
    pub owner: &'a str,
    /// The step being run.
    pub step: atlasia_core::Step,
    /// Cancelled when the lease is lost, the run is paused or cancelled, or on shutdown.
    pub cancel: &'a CancellationToken,
    /// The bolt's bounds: LLM patience (see [`LLM_PATIENCE`]), output bounds per agent.
    pub limits: &'a crate::steps::BoltLimits,
    /// The LLM is the built-in simulator (it alone may read `atlasia-sim` scripts).
    pub simulator: bool,
}

/// Why an LLM call produced no answer.
#[derive(Debug)]
pub enum CallError {
    /// The step was cancelled while waiting.
    Cancelled,
    /// The gateway gave up; the message says why.
    Failed(String),
    /// The bolt's (or the day's) budget is spent: a human decides whether to go on.
    Budget(String),
}

impl StepCtx<'_> {
    /// The gateway metadata of `contract`'s calls in this run.
    pub fn meta(&self, contract: &AgentContract) -> CallMeta {
        CallMeta {
            agent: contract.name.clone(),
            run_id: Some(self.run.id.to_string()),
            priority: u8::try_from(self.run.priority.clamp(0, 10)).unwrap_or(5),
            run_budget_usd: self.run.budget_usd,
            cache_opt_in: false,
            step: Some(self.step.as_str().to_owned()),
            cheap: contract.model_class == crate::contracts::ModelClass::Cheap,
        }
    }

    /// Appends an event; a failure is logged, never fails the step (events are for watchers).
    pub async fn emit(&self, kind: EventKind, data: Value) {
        if let Err(e) = self
            .store
            .append_event(self.run.id, self.owner, kind, data)
            .await
        {
            tracing::warn!(run = %self.run.id, kind = kind.as_str(), error = %e, "event not written");
        }
    }

    /// One LLM call for `contract`, replayed from the journal when this run already received
    /// an answer to exactly this request.
    pub async fn chat(
        &self,
        contract: &AgentContract,
        req: ChatRequest,
    ) -> Result<ChatResponse, CallError> {
        let meta = self.meta(contract);
        let req = self.hygienic(req);
        if let Some(resp) = self.replay(&meta, &req).await {
            self.emit(
                EventKind::LlmCallCompleted,
                json!({"step": self.step, "agent": contract.name, "model": resp.model,
                       "tokens_in": resp.usage.input_tokens,
                       "tokens_out": resp.usage.output_tokens,
                       "cost_usd": 0.0, "latency_ms": 0, "replayed": true}),
            )
            .await;
            return Ok(resp);
        }
        self.emit(
            EventKind::LlmCallStarted,
            json!({"step": self.step, "agent": contract.name,
                   "messages": req.messages.len()}),
        )
        .await;
        let started = Instant::now();
        let mut retries = 0u32;
        let answer = loop {
            let answer = tokio::select! {
                r = self.gateway.chat(&meta, req.clone()) => r,
                () = self.cancel.cancelled() => return Err(CallError::Cancelled),
            };
            let wait = LLM_RETRY.backoff(retries);
            match answer {
                Err(e) if passing(&e) && started.elapsed() + wait < self.limits.llm_patience => {
                    tracing::warn!(run = %self.run.id, agent = %contract.name, error = %e,
                        retry_in_s = wait.as_secs(), "LLM unavailable; the step waits");
                    self.emit(
                        EventKind::LlmCallFailed,
                        json!({"step": self.step, "agent": contract.name,
                               "error": e.to_string(), "retry_in_ms": wait.as_millis()}),
                    )
                    .await;
                    if !sleep_or_cancel(wait, self.cancel).await {
                        return Err(CallError::Cancelled);
                    }
                    retries = retries.saturating_add(1);
                }
                other => break other,
            }
        };
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match answer {
            Ok(resp) => {
                let cost = self.gateway.cost(&resp.model, resp.usage);
                self.emit(
                    EventKind::LlmCallCompleted,
                    json!({"step": self.step, "agent": contract.name, "model": resp.model,
                           "tokens_in": resp.usage.input_tokens,
                           "tokens_out": resp.usage.output_tokens,
                           "cost_usd": cost, "latency_ms": latency_ms, "replayed": false}),
                )
                .await;
                Ok(resp)
            }
            Err(e) => {
                let budget = matches!(e, atlasia_llm::GatewayError::Budget(_));
                let error = format!("{}: LLM call failed: {e}", contract.name);
                self.emit(
                    EventKind::LlmCallFailed,
                    json!({"step": self.step, "agent": contract.name, "error": error}),
                )
                .await;
                Err(if budget {
                    CallError::Budget(error)
                } else {
                    CallError::Failed(error)
                })
            }
        }
    }

    /// The request with the server's own secrets redacted from every message: a file the
    /// Developer read, a command's output or a prompt built from the repository may hold one,
    /// and it must not leave for the provider (nor come back in an answer that is published).
    ///
    /// The simulator's `atlasia-sim` script (the whole scripted fix, in the bundled example
    /// issues) is cut from every message unless the model is the simulator itself: a real
    /// model must solve the issue, not copy its answer key.
    fn hygienic(&self, mut req: ChatRequest) -> ChatRequest {
        let redactor = self.store.redactor();
        // Message texts, and the arguments of earlier tool calls sent back as history.
        let texts = req.messages.iter_mut().flat_map(|m| {
            m.content
                .iter_mut()
                .chain(m.tool_calls.iter_mut().map(|c| &mut c.arguments))
        });
        for text in texts {
            if !redactor.is_empty() && redactor.contains_secret(text) {
                *text = redactor.clean(text).into_owned();
            }
            if !self.simulator
                && let Some(cut) = without_sim_scripts(text)
            {
                *text = cut;
            }
        }
        req
    }

    async fn replay(&self, meta: &CallMeta, req: &ChatRequest) -> Option<ChatResponse> {
        let key = self.gateway.journal_key(meta, req).ok()?;
        match self.store.journaled_response(self.run.id, &key).await {
            Ok(Some(v)) => serde_json::from_value(v).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(run = %self.run.id, error = %e, "journal lookup failed; calling");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_scripts_are_cut_whole_and_everything_else_is_kept() {
        let issue =
            "Fix add().\n<!-- atlasia-sim\ndeveloper:\n  - write: {path: a.py}\n-->\nThanks";
        assert_eq!(
            without_sim_scripts(issue).as_deref(),
            Some(format!("Fix add().\n{SIM_CUT}\nThanks").as_str())
        );
        // As a JSON string inside a prompt, and twice.
        let prompt = serde_json::to_string(&format!("{issue} {issue}")).unwrap_or_default();
        let cut = without_sim_scripts(&prompt).unwrap_or_default();
        assert!(
            !cut.contains("atlasia-sim\\n") && !cut.contains("a.py"),
            "{cut}"
        );
        assert_eq!(cut.matches(SIM_CUT).count(), 2, "{cut}");
        // Unclosed: cut to the end.
        assert_eq!(
            without_sim_scripts("x <!-- atlasia-sim secret fix").as_deref(),
            Some(format!("x {SIM_CUT}").as_str())
        );
        assert_eq!(without_sim_scripts("no script <!-- a comment -->"), None);
    }
}
