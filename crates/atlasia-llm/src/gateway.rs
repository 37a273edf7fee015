//! The call path: route (agent → model, cheaper past the soft budget) → cache → budget
//! reservation → for each endpoint of the model in order: breaker → rate limiter → provider
//! call → classify → retry transient failures with backoff → next endpoint. When every endpoint
//! fails, the error lists each one's cause. Streams get the same guarantees: a stream that fails
//! before its first event fails over; one that breaks later ends with an error event.

use crate::budget::{BudgetConfig, BudgetError, BudgetLevel, Budgets, Reservation};
use crate::cache::{CacheConfig, ResponseCache};
use crate::config::{
    AgentSettings, LlmSettings, REVIEWER_CLASS, RateLimitSettings, WireSetting, host_of,
};
use crate::limiter::{LimiterConfig, RateLimiter};
use crate::pricing::{PriceTable, estimate_tokens};
use crate::probe::{self, EndpointProbe};
use crate::provider::{Endpoint, ProviderClient, Wire};
use crate::record::{CallRecord, CallRecorder};
use crate::{ChatRequest, ChatResponse, ErrorKind, LlmError, StreamEvent, Usage, metrics};
use atlasia_resilience::{BreakerConfig, CircuitBreaker, Permit, RetryPolicy};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Output tokens assumed for the budget reservation when a request sets no `max_tokens`.
const DEFAULT_MAX_OUTPUT: u64 = 4096;

/// Who is calling and how much it matters.
#[derive(Debug, Clone, Default)]
pub struct CallMeta {
    /// The agent (`developer`, `review`, … or a proxy client's `X-Atlasia-Agent`).
    pub agent: String,
    /// The bolt the call belongs to, for budgets and records.
    pub run_id: Option<String>,
    /// 0–10, higher first in the rate limiter.
    pub priority: u8,
    /// The bolt's own cap, when it has one (overrides the per-bolt default).
    pub run_budget_usd: Option<f64>,
    /// Cache even when the request is not deterministic by itself.
    pub cache_opt_in: bool,
    /// The bolt's step (`DEVELOPER`, …), for the ledger and the replay journal.
    pub step: Option<String>,
    /// The agent's contract declares `model_class: cheap`: without a model of its own it runs
    /// on `llm.cheap_model`.
    pub cheap: bool,
}

/// The `[agents.<name>]` section that applies to `agent`: its own, else for the four reviewer
/// personas (`reviewer-security`, …) the runbook's shared `reviewer`.
pub fn agent_section<'a, V>(agents: &'a BTreeMap<String, V>, agent: &str) -> Option<&'a V> {
    agents.get(agent).or_else(|| {
        agent
            .starts_with(REVIEWER_PREFIX)
            .then(|| agents.get("reviewer"))
            .flatten()
    })
}

/// What the four review personas' names start with.
pub const REVIEWER_PREFIX: &str = "reviewer-";

/// `[agents.<name>]` keys as written in TOML or in the environment
/// (`ATLASIA_AGENTS__REVIEWER_SECURITY__LLM_MODEL`: variable names cannot hold `-`), as the
/// engine names its agents.
pub fn agent_key(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('_', "-")
}

/// Why a call produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "no LLM is configured (set LLM_ENDPOINT and LLM_MODEL, or [llm.models] in atlasia.toml)"
    )]
    NotConfigured,
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    #[error("{0}")]
    Budget(#[from] BudgetError),
    /// The request itself is wrong; other endpoints would refuse it too.
    #[error("{endpoint} refused the request: {error}")]
    Rejected { endpoint: String, error: LlmError },
    #[error("all {} endpoint(s) of model '{model}' failed: {}", causes.len(), list(causes))]
    AllFailed {
        model: String,
        causes: Vec<(String, LlmError)>,
    },
}

fn list(causes: &[(String, LlmError)]) -> String {
    causes
        .iter()
        .map(|(ep, e)| format!("{ep}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl GatewayError {
    /// The runbook error type.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::NotConfigured | Self::UnknownModel(_) => "BAD_REQUEST",
            Self::Budget(_) => "BUDGET",
            Self::Rejected { error, .. } => error.kind.error_type(),
            Self::AllFailed { causes, .. } => causes
                .last()
                .map_or("SERVER_ERROR", |(_, e)| e.kind.error_type()),
        }
    }

    /// True when the prompt did not fit the context of any endpoint that was tried (the
    /// proxy answers OpenAI's `context_length_exceeded`).
    pub fn context_exceeded(&self) -> bool {
        match self {
            Self::Rejected { error, .. } => error.kind == ErrorKind::ContextLength,
            Self::AllFailed { causes, .. } => {
                !causes.is_empty()
                    && causes
                        .iter()
                        .all(|(_, e)| e.kind == ErrorKind::ContextLength)
            }
            _ => false,
        }
    }

    /// The status the proxy answers with.
    pub fn http_status(&self) -> u16 {
        if self.context_exceeded() {
            return 400;
        }
        match self {
            Self::NotConfigured => 503,
            Self::UnknownModel(_) => 404,
            Self::Budget(_) => 402,
            Self::Rejected { error, .. } => error.http_status(),
            Self::AllFailed { causes, .. } => {
                // Rate limited everywhere is a 429 the client can back off from; anything else
                // is the upstreams' failure.
                if causes.iter().all(|(_, e)| e.kind == ErrorKind::RateLimit) {
                    429
                } else {
                    502
                }
            }
        }
    }
}

/// A ledger record of one attempt by `meta`'s caller; the usage and outcome are the caller's.
#[expect(clippy::too_many_arguments, reason = "one flat row of the ledger")]
fn attempt_record(
    meta: &CallMeta,
    provider: &str,
    model: &str,
    usage: Usage,
    cost_usd: f64,
    took: Duration,
    outcome: &str,
    key: &str,
) -> CallRecord {
    CallRecord {
        run_id: meta.run_id.clone(),
        step: meta.step.clone(),
        agent: meta.agent.clone(),
        provider: provider.to_owned(),
        model: model.to_owned(),
        tokens_in: usage.input_tokens,
        tokens_out: usage.output_tokens,
        cost_usd,
        latency_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        outcome: outcome.to_owned(),
        cached: false,
        request_key: Some(key.to_owned()),
        response: None,
    }
}

/// Gives the breaker its verdict on a failed attempt: the request's own faults (invalid, too
/// long for the context) say nothing about the endpoint's health and are not counted.
fn settle_failure(permit: Permit, e: &LlmError) {
    if e.counts_against_endpoint() {
        permit.failure();
    } else {
        drop(permit);
    }
}

/// One endpoint with its own limiter and breaker.
struct EndpointState {
    ep: Endpoint,
    limiter: RateLimiter,
    breaker: CircuitBreaker,
    /// Context size in tokens, 0 while unknown: from the settings, else from what the
    /// endpoint's `GET /models` reported to [`Gateway::probe`].
    context: AtomicU32,
    /// The context size came from the settings (a probe does not override it).
    context_configured: bool,
}

/// How one endpoint's attempts ended.
enum Outcome<T> {
    Answer(T),
    /// Try the next endpoint.
    Next(LlmError),
    /// Stop: the request is at fault.
    Fatal(LlmError),
}

/// The gateway. Cheap to share (`Arc`).
pub struct Gateway {
    client: ProviderClient,
    models: HashMap<String, Vec<Arc<EndpointState>>>,
    endpoints: Vec<Arc<EndpointState>>,
    agents: BTreeMap<String, AgentSettings>,
    default_model: Option<String>,
    cheap_model: Option<String>,
    retry: RetryPolicy,
    cache: Option<ResponseCache>,
    budgets: Budgets,
    prices: PriceTable,
    recorder: Arc<dyn CallRecorder>,
}

fn limiter_config(r: &RateLimitSettings) -> LimiterConfig {
    LimiterConfig {
        limit_for_period: r.limit_for_period,
        limit_refresh_period: Duration::from_millis(r.limit_refresh_period_ms),
        tokens_per_minute: r.tokens_per_minute,
        timeout_duration: Duration::from_millis(r.timeout_duration_ms),
    }
}

impl Gateway {
    /// Builds the gateway from settings. Endpoints with the same name share their limiter and
    /// breaker (they are the same upstream). Fails only when the HTTP client cannot be built.
    pub fn new(
        s: &LlmSettings,
        agents: BTreeMap<String, AgentSettings>,
        recorder: Arc<dyn CallRecorder>,
    ) -> Result<Self, LlmError> {
        let mut by_name: HashMap<String, Arc<EndpointState>> = HashMap::new();
        let mut endpoints = Vec::new();
        let mut models = HashMap::new();
        for m in &s.models {
            let mut list = Vec::new();
            for e in &m.endpoints {
                let name = e
                    .name
                    .clone()
                    .unwrap_or_else(|| host_of(&e.base_url).to_owned());
                let state = by_name.entry(name.clone()).or_insert_with(|| {
                    let wire = match e.wire.unwrap_or_else(|| {
                        if e.base_url.contains("anthropic") {
                            WireSetting::Anthropic
                        } else {
                            WireSetting::Openai
                        }
                    }) {
                        WireSetting::Openai => Wire::OpenAi,
                        WireSetting::Anthropic => Wire::Anthropic,
                    };
                    let context = s
                        .endpoint_context_tokens
                        .get(&name)
                        .copied()
                        .or(s.context_tokens);
                    let st = Arc::new(EndpointState {
                        ep: Endpoint {
                            name: name.clone(),
                            wire,
                            base_url: e.base_url.clone(),
                            api_key: e.api_key.clone(),
                            model: e.model.clone().unwrap_or_else(|| m.name.clone()),
                            timeout: Duration::from_millis(s.timeout_ms.unwrap_or(e.timeout_ms)),
                        },
                        context: AtomicU32::new(context.unwrap_or(0)),
                        context_configured: context.is_some(),
                        limiter: RateLimiter::new(limiter_config(
                            e.rate_limit.as_ref().unwrap_or(&s.rate_limit),
                        )),
                        breaker: CircuitBreaker::new(BreakerConfig {
                            window: s.breaker.window,
                            min_calls: s.breaker.min_calls,
                            failure_rate: s.breaker.failure_rate,
                            open_for: Duration::from_millis(s.breaker.open_for_ms),
                            half_open_probes: s.breaker.half_open_probes,
                        }),
                    });
                    endpoints.push(st.clone());
                    st
                });
                list.push(state.clone());
            }
            models.insert(m.name.clone(), list);
        }
        let prices = PriceTable::from_settings(s);
        // Logged once, at start: every call to these is free as far as budgets can tell.
        for model in prices.unpriced(s) {
            tracing::warn!(%model, "model has no price: its calls are recorded at $0 and no \
                budget can stop them; set [llm.prices.\"<model>\"] to price it");
        }
        metrics::zero(
            endpoints
                .iter()
                .map(|st: &Arc<EndpointState>| st.ep.name.as_str()),
        );
        let agents = agents
            .into_iter()
            .map(|(k, v)| (agent_key(&k), v))
            .collect();
        let cache = s.cache.enabled.then(|| {
            ResponseCache::new(CacheConfig {
                max_entries: s.cache.max_entries,
                ttl: Duration::from_secs(s.cache.ttl_secs),
                max_bytes: s.cache.max_bytes,
            })
        });
        Ok(Self {
            client: ProviderClient::new()?,
            models,
            endpoints,
            agents,
            default_model: s.default_model.clone(),
            cheap_model: s.cheap_model.clone(),
            retry: RetryPolicy {
                attempts: s.retry.attempts,
                base: Duration::from_millis(s.retry.base_ms),
                cap: Duration::from_millis(s.retry.cap_ms),
            },
            cache,
            budgets: Budgets::new(BudgetConfig {
                per_bolt_usd: s.budget.per_bolt_usd,
                per_day_usd: s.budget.per_day_usd,
                soft_ratio: s.budget.soft_ratio,
            }),
            prices,
            recorder,
        })
    }

    /// The logical model names clients may ask for.
    pub fn model_names(&self) -> Vec<String> {
        let mut v: Vec<_> = self.models.keys().cloned().collect();
        v.sort();
        v
    }

    /// True when at least one model is configured.
    pub fn is_configured(&self) -> bool {
        !self.models.is_empty()
    }

    /// The budgets (spent so far; seeding after a restart).
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Refreshes the limiter and breaker gauges (at scrape time).
    pub fn refresh_gauges(&self) {
        ::metrics::gauge!("llm_budget_tracked_runs").set(self.budgets.tracked_runs() as f64);
        for st in &self.endpoints {
            let p = st.ep.name.clone();
            ::metrics::gauge!("llm_ratelimiter_waiting", "provider" => p.clone())
                .set(st.limiter.waiting() as f64);
            ::metrics::gauge!("llm_circuit_state", "provider" => p)
                .set(st.breaker.state().as_gauge());
        }
    }

    /// Which model serves this call: the one asked for when known; else the agent's own, else
    /// the class default (reviewer-class agents get the cheap model); past the soft budget
    /// threshold, the agent's cheaper model.
    pub fn route(&self, meta: &CallMeta, requested: &str) -> Result<String, GatewayError> {
        if self.models.is_empty() {
            return Err(GatewayError::NotConfigured);
        }
        let agent = agent_section(&self.agents, &meta.agent);
        let cheap = meta.cheap
            || REVIEWER_CLASS.contains(&meta.agent.as_str())
            || meta.agent.starts_with(REVIEWER_PREFIX);
        let mut model = if !requested.is_empty() {
            requested.to_owned()
        } else if let Some(m) = agent.and_then(|a| a.llm_model.clone()) {
            m
        } else if cheap && self.cheap_model.is_some() {
            self.cheap_model.clone().unwrap_or_default()
        } else {
            self.default_model
                .clone()
                .or_else(|| self.model_names().into_iter().next())
                .unwrap_or_default()
        };
        let soft = self
            .budgets
            .level(meta.run_id.as_deref(), meta.run_budget_usd)
            == BudgetLevel::Soft;
        if soft
            && let Some(cheaper) = agent
                .and_then(|a| a.cheaper_model.clone())
                .or_else(|| self.cheap_model.clone())
                .filter(|c| self.models.contains_key(c))
        {
            tracing::info!(agent = %meta.agent, from = %model, to = %cheaper, "soft budget reached; using the cheaper model");
            model = cheaper;
        }
        if !self.models.contains_key(&model) {
            return Err(GatewayError::UnknownModel(model));
        }
        Ok(model)
    }

    fn reserve(
        &self,
        meta: &CallMeta,
        route: &[Arc<EndpointState>],
        req: &ChatRequest,
    ) -> Result<(Reservation, u64), GatewayError> {
        let est_in = estimate_tokens(req);
        let max_out = req.max_tokens.map_or(DEFAULT_MAX_OUTPUT, u64::from);
        // Reserve the worst case over the endpoints that might answer.
        let amount = route
            .iter()
            .map(|st| self.prices.max_cost(&st.ep.model, est_in, max_out))
            .fold(0.0, f64::max);
        match self
            .budgets
            .reserve(meta.run_id.as_deref(), meta.run_budget_usd, amount)
        {
            Ok(r) => Ok((r, est_in)),
            Err(e) => {
                metrics::error("-", "BUDGET");
                Err(GatewayError::Budget(e))
            }
        }
    }

    async fn record(&self, rec: CallRecord) {
        self.recorder.record(rec).await;
    }

    /// Waits until every call record handed to the recorder so far is stored.
    pub async fn flush_records(&self) {
        self.recorder.flush().await;
    }

    /// What `usage` on `model` (a provider's model id) costs, in USD (0 when unpriced).
    pub fn cost(&self, model: &str, usage: Usage) -> f64 {
        self.prices.cost(model, usage)
    }

    /// The journal key of `req` as `meta`'s caller would send it (after routing): equal keys
    /// mean equal requests, so a resumed step can find an answer it already paid for.
    pub fn journal_key(&self, meta: &CallMeta, req: &ChatRequest) -> Result<String, GatewayError> {
        let mut req = req.clone();
        req.model = self.route(meta, &req.model)?;
        Ok(ResponseCache::key(&req))
    }

    /// The endpoint as `meta`'s agent calls it: with the agent's own per-attempt timeout when
    /// its `[agents.<name>]` section sets one.
    fn endpoint_for<'a>(&self, st: &'a EndpointState, meta: &CallMeta) -> Cow<'a, Endpoint> {
        match agent_section(&self.agents, &meta.agent).and_then(|a| a.timeout_ms) {
            Some(ms) => Cow::Owned(Endpoint {
                timeout: Duration::from_millis(ms),
                ..st.ep.clone()
            }),
            None => Cow::Borrowed(&st.ep),
        }
    }

    /// The context size, in tokens, of the model that would serve `meta`'s call for
    /// `requested` (empty: the agent's model): the largest known among its endpoints, since
    /// a prompt too long for one is tried on the next. `None` when no endpoint's size is known
    /// (not configured, and not reported by a [`Gateway::probe`]) or the model is unknown.
    /// Compare with [`crate::context::estimate_tokens`] plus the output bound.
    pub fn context_tokens(&self, meta: &CallMeta, requested: &str) -> Option<u32> {
        let model = self.route(meta, requested).ok()?;
        self.models
            .get(&model)?
            .iter()
            .map(|st| st.context.load(Ordering::Relaxed))
            .filter(|n| *n > 0)
            .max()
    }

    /// Checks every configured endpoint with `GET {base}/models` (a short timeout, no retry,
    /// no breaker or limiter): refused, bad key, wrong path, or fine. An answer that states the
    /// context size (llama-server's `meta.n_ctx`, vLLM's `max_model_len`, …) fills in the
    /// endpoint's size unless the settings give one.
    pub async fn probe(&self) -> Vec<EndpointProbe> {
        let checks = self.endpoints.iter().map(|st| async move {
            let (result, context) = probe::check(&self.client, &st.ep).await;
            if let Some(n) = context
                && !st.context_configured
            {
                st.context.store(n, Ordering::Relaxed);
            }
            EndpointProbe {
                endpoint: st.ep.name.clone(),
                url: st.ep.display_url(),
                result,
            }
        });
        futures::future::join_all(checks).await
    }

    /// A complete (non-streaming) call.
    pub async fn chat(
        &self,
        meta: &CallMeta,
        mut req: ChatRequest,
    ) -> Result<ChatResponse, GatewayError> {
        let model = self.route(meta, &req.model)?;
        req.model = model.clone();
        let key = ResponseCache::key(&req);
        let cache = self
            .cache
            .as_ref()
            .filter(|_| ResponseCache::cacheable(&req, meta.cache_opt_in));
        if let Some(hit) = match cache {
            Some(c) => c.get(&key).await,
            None => None,
        } {
            metrics::answered(&meta.agent, "cache", &hit.model, 0.0);
            self.record(CallRecord {
                cached: true,
                ..attempt_record(
                    meta,
                    "cache",
                    &hit.model,
                    hit.usage,
                    0.0,
                    Duration::ZERO,
                    "ok",
                    &key,
                )
            })
            .await;
            return Ok(hit);
        }
        let route = self.models.get(&model).cloned().unwrap_or_default();
        let (reservation, est_in) = self.reserve(meta, &route, &req)?;
        let mut causes = Vec::new();
        for st in &route {
            match self.try_endpoint(st, meta, &req, est_in, &key).await {
                Outcome::Answer((resp, cost)) => {
                    reservation.settle(cost);
                    if let Some(c) = cache {
                        c.insert(key, resp.clone()).await;
                    }
                    return Ok(resp);
                }
                Outcome::Fatal(error) => {
                    return Err(GatewayError::Rejected {
                        endpoint: st.ep.name.clone(),
                        error,
                    });
                }
                Outcome::Next(e) => causes.push((st.ep.name.clone(), e)),
            }
        }
        Err(GatewayError::AllFailed { model, causes })
    }

    /// Admission to one endpoint: breaker, then limiter. `Err` means skip to the next endpoint.
    async fn admit(
        &self,
        st: &EndpointState,
        meta: &CallMeta,
        est_in: u64,
    ) -> Result<Permit, LlmError> {
        let permit = st.breaker.try_acquire().map_err(|open| {
            LlmError::new(
                ErrorKind::CircuitOpen,
                format!(
                    "circuit open; next probe in {} ms",
                    open.retry_in.as_millis()
                ),
            )
        })?;
        st.limiter
            .acquire(meta.priority, est_in)
            .await
            .map_err(|e| LlmError::new(ErrorKind::RateLimit, format!("local rate limiter: {e}")))?;
        Ok(permit)
    }

    /// After a failed attempt: whether and how long to wait before the next attempt here.
    async fn after_failure(&self, e: &LlmError, attempt: u32) -> bool {
        if !e.is_retryable() || attempt + 1 >= self.retry.attempts {
            return false;
        }
        // The RNG is not Send: compute the delay before awaiting.
        let delay = self.retry.delay(attempt, e.retry_after, &mut rand::rng());
        match delay {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }

    /// Notes a failed attempt everywhere it must be noted.
    async fn note_failure(
        &self,
        st: &EndpointState,
        meta: &CallMeta,
        e: &LlmError,
        took: Duration,
        key: &str,
    ) {
        metrics::error(&st.ep.name, e.kind.error_type());
        metrics::attempt(
            &st.ep.name,
            &st.ep.model,
            &meta.agent,
            e.kind.error_type(),
            took,
            None,
        );
        tracing::warn!(endpoint = %st.ep.name, model = %st.ep.model, agent = %meta.agent, error = %e, "LLM attempt failed");
        self.record(attempt_record(
            meta,
            &st.ep.name,
            &st.ep.model,
            Usage::default(),
            0.0,
            took,
            e.kind.error_type(),
            key,
        ))
        .await;
    }

    async fn try_endpoint(
        &self,
        st: &EndpointState,
        meta: &CallMeta,
        req: &ChatRequest,
        est_in: u64,
        key: &str,
    ) -> Outcome<(ChatResponse, f64)> {
        let mut attempt = 0;
        loop {
            let permit = match self.admit(st, meta, est_in).await {
                Ok(p) => p,
                Err(e) => {
                    metrics::error(&st.ep.name, e.kind.error_type());
                    return Outcome::Next(e);
                }
            };
            let started = Instant::now();
            let res = self.client.chat(&self.endpoint_for(st, meta), req).await;
            let took = started.elapsed();
            match res {
                Ok((resp, hints)) => {
                    st.limiter.observe(&hints);
                    permit.success();
                    let cost = self.prices.cost(&st.ep.model, resp.usage);
                    metrics::attempt(
                        &st.ep.name,
                        &st.ep.model,
                        &meta.agent,
                        "ok",
                        took,
                        Some(resp.usage),
                    );
                    metrics::answered(&meta.agent, &st.ep.name, &st.ep.model, cost);
                    self.record(CallRecord {
                        response: serde_json::to_value(&resp).ok(),
                        ..attempt_record(
                            meta,
                            &st.ep.name,
                            &resp.model,
                            resp.usage,
                            cost,
                            took,
                            "ok",
                            key,
                        )
                    })
                    .await;
                    return Outcome::Answer((resp, cost));
                }
                Err((e, hints)) => {
                    st.limiter.observe(&hints);
                    self.note_failure(st, meta, &e, took, key).await;
                    settle_failure(permit, &e);
                    if !e.tries_next_endpoint() {
                        return Outcome::Fatal(e);
                    }
                    if !self.after_failure(&e, attempt).await {
                        return Outcome::Next(e);
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// A streamed call. Fails over like `chat` until the first event arrives; after that the
    /// stream is committed to its endpoint and a break ends it with an `Err` item.
    pub async fn chat_stream(
        &self,
        meta: &CallMeta,
        mut req: ChatRequest,
    ) -> Result<BoxStream<'static, Result<StreamEvent, LlmError>>, GatewayError> {
        let model = self.route(meta, &req.model)?;
        req.model = model.clone();
        let key = ResponseCache::key(&req);
        let route = self.models.get(&model).cloned().unwrap_or_default();
        let (reservation, est_in) = self.reserve(meta, &route, &req)?;
        let mut causes = Vec::new();
        for st in &route {
            let mut attempt = 0;
            let cause = loop {
                let permit = match self.admit(st, meta, est_in).await {
                    Ok(p) => p,
                    Err(e) => {
                        metrics::error(&st.ep.name, e.kind.error_type());
                        break e;
                    }
                };
                let started = Instant::now();
                let first = match self
                    .client
                    .chat_stream(&self.endpoint_for(st, meta), &req)
                    .await
                {
                    Ok((mut stream, hints)) => {
                        st.limiter.observe(&hints);
                        match stream.next().await {
                            Some(Ok(ev)) => Ok((ev, stream)),
                            Some(Err(e)) => Err(e),
                            None => Err(LlmError::new(
                                ErrorKind::StreamCut,
                                "stream ended before its first event",
                            )),
                        }
                    }
                    Err((e, hints)) => {
                        st.limiter.observe(&hints);
                        Err(e)
                    }
                };
                match first {
                    Ok((ev, rest)) => {
                        return Ok(self.forward(
                            st.clone(),
                            meta.clone(),
                            key,
                            started,
                            permit,
                            reservation,
                            ev,
                            rest,
                        ));
                    }
                    Err(e) => {
                        self.note_failure(st, meta, &e, started.elapsed(), &key)
                            .await;
                        settle_failure(permit, &e);
                        if !e.tries_next_endpoint() {
                            return Err(GatewayError::Rejected {
                                endpoint: st.ep.name.clone(),
                                error: e,
                            });
                        }
                        if !self.after_failure(&e, attempt).await {
                            break e;
                        }
                        attempt += 1;
                    }
                }
            };
            causes.push((st.ep.name.clone(), cause));
        }
        Err(GatewayError::AllFailed { model, causes })
    }

    /// Relays a committed stream through a bounded channel (a slow reader slows the upstream
    /// read instead of growing memory) and settles cost, breaker and records when it ends.
    #[expect(
        clippy::too_many_arguments,
        reason = "everything the relay task owns once the stream is committed"
    )]
    fn forward(
        &self,
        st: Arc<EndpointState>,
        meta: CallMeta,
        key: String,
        started: Instant,
        permit: Permit,
        reservation: Reservation,
        first: StreamEvent,
        mut rest: BoxStream<'static, Result<StreamEvent, LlmError>>,
    ) -> BoxStream<'static, Result<StreamEvent, LlmError>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<StreamEvent, LlmError>>(32);
        let recorder = self.recorder.clone();
        let prices_cost = {
            let model = st.ep.model.clone();
            let table = self.prices.clone();
            move |u: Usage| table.cost(&model, u)
        };
        tokio::spawn(async move {
            let mut usage: Option<Usage> = None;
            let mut out_chars = 0_u64;
            let mut outcome: Result<(), LlmError> =
                Err(LlmError::new(ErrorKind::StreamCut, "client went away"));
            let mut next: Option<Result<StreamEvent, LlmError>> = Some(Ok(first));
            while let Some(item) = next.take() {
                let end = match &item {
                    Ok(StreamEvent::Done { usage: u, .. }) => {
                        usage = *u;
                        outcome = Ok(());
                        true
                    }
                    Ok(StreamEvent::Text { text }) => {
                        out_chars += text.len() as u64;
                        false
                    }
                    Ok(StreamEvent::ToolCallDelta { arguments, .. }) => {
                        out_chars += arguments.len() as u64;
                        false
                    }
                    Err(e) => {
                        outcome = Err(e.clone());
                        true
                    }
                };
                if tx.send(item).await.is_err() || end {
                    break;
                }
                next = match rest.next().await {
                    Some(i) => Some(i),
                    None => Some(Err(LlmError::new(
                        ErrorKind::StreamCut,
                        "stream ended without its final event",
                    ))),
                };
            }
            let took = started.elapsed();
            let usage = usage.unwrap_or(Usage {
                input_tokens: 0,
                output_tokens: out_chars.div_ceil(4),
            });
            let cost = prices_cost(usage);
            reservation.settle(cost);
            let outcome_label = match &outcome {
                Ok(()) => {
                    permit.success();
                    "ok"
                }
                Err(e) => {
                    if e.kind != ErrorKind::StreamCut || !tx.is_closed() {
                        permit.failure();
                    }
                    metrics::error(&st.ep.name, e.kind.error_type());
                    e.kind.error_type()
                }
            };
            metrics::attempt(
                &st.ep.name,
                &st.ep.model,
                &meta.agent,
                outcome_label,
                took,
                Some(usage),
            );
            if outcome.is_ok() {
                metrics::answered(&meta.agent, &st.ep.name, &st.ep.model, cost);
            }
            recorder
                .record(attempt_record(
                    &meta,
                    &st.ep.name,
                    &st.ep.model,
                    usage,
                    cost,
                    took,
                    outcome_label,
                    &key,
                ))
                .await;
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::NoRecorder;
    use crate::config::{EndpointSettings, ModelSettings};

    fn settings(models: &[&str]) -> LlmSettings {
        LlmSettings {
            default_model: Some("big".into()),
            cheap_model: Some("small".into()),
            models: models
                .iter()
                .map(|m| ModelSettings {
                    name: (*m).to_owned(),
                    endpoints: vec![EndpointSettings {
                        name: Some(format!("ep-{m}")),
                        wire: None,
                        base_url: "http://127.0.0.1:9".into(),
                        api_key: None,
                        model: None,
                        timeout_ms: 1_000,
                        rate_limit: None,
                    }],
                })
                .collect(),
            ..LlmSettings::default()
        }
    }

    fn meta(agent: &str) -> CallMeta {
        CallMeta {
            agent: agent.into(),
            ..CallMeta::default()
        }
    }

    #[tokio::test]
    async fn agents_route_by_setting_then_class() {
        let mut agents = BTreeMap::new();
        agents.insert(
            "architect".to_owned(),
            AgentSettings {
                llm_model: Some("special".into()),
                ..AgentSettings::default()
            },
        );
        let g = Gateway::new(
            &settings(&["big", "small", "special"]),
            agents,
            Arc::new(NoRecorder),
        )
        .unwrap();
        assert_eq!(g.route(&meta("developer"), "").unwrap(), "big");
        assert_eq!(
            g.route(&meta("review"), "").unwrap(),
            "small",
            "reviewer class"
        );
        assert_eq!(g.route(&meta("judge"), "").unwrap(), "small");
        assert_eq!(g.route(&meta("architect"), "").unwrap(), "special");
        assert_eq!(
            g.route(&meta("developer"), "small").unwrap(),
            "small",
            "asked for"
        );
        assert!(matches!(
            g.route(&meta("developer"), "nope"),
            Err(GatewayError::UnknownModel(_))
        ));
    }

    #[tokio::test]
    async fn reviewer_covers_the_four_personas_and_contract_cheap_class_is_honoured() {
        let mut agents = BTreeMap::new();
        let model = |m: &str| AgentSettings {
            llm_model: Some(m.into()),
            ..AgentSettings::default()
        };
        agents.insert("reviewer".to_owned(), model("special"));
        // The environment's spelling of `reviewer-sre`.
        agents.insert("REVIEWER_SRE".to_owned(), model("big"));
        let mut s = settings(&["big", "small", "special"]);
        s.default_model = Some("big".into());
        s.cheap_model = Some("small".into());
        let g = Gateway::new(&s, agents, Arc::new(NoRecorder)).unwrap();
        for persona in [
            "reviewer-security",
            "reviewer-code-quality",
            "reviewer-frontend-ux",
        ] {
            assert_eq!(g.route(&meta(persona), "").unwrap(), "special", "{persona}");
        }
        assert_eq!(
            g.route(&meta("reviewer-sre"), "").unwrap(),
            "big",
            "own section wins"
        );
        // The tester declares `model_class: cheap` in its contract.
        assert_eq!(
            g.route(&meta("tester"), "").unwrap(),
            "big",
            "no class given"
        );
        let cheap = CallMeta {
            cheap: true,
            ..meta("tester")
        };
        assert_eq!(g.route(&cheap, "").unwrap(), "small");
        // Without a section of their own, personas are reviewer class.
        let g = Gateway::new(&s, BTreeMap::new(), Arc::new(NoRecorder)).unwrap();
        assert_eq!(g.route(&meta("reviewer-sre"), "").unwrap(), "small");
        assert_eq!(g.route(&meta("developer"), "").unwrap(), "big");
    }

    #[test]
    fn unpriced_models_are_listed_once() {
        let mut s = settings(&["gpt-4o", "sim-model", "other"]);
        s.prices.insert(
            "other".into(),
            crate::config::PriceSettings {
                input_per_mtok: 1.0,
                output_per_mtok: 1.0,
            },
        );
        let twin = s.models[1].endpoints[0].clone();
        s.models[1].endpoints.push(twin);
        let table = PriceTable::from_settings(&s);
        assert_eq!(table.unpriced(&s), vec!["sim-model".to_owned()]);
    }

    #[tokio::test]
    async fn soft_budget_switches_to_the_cheaper_model_and_the_cap_refuses() {
        let mut s = settings(&["big", "small"]);
        s.budget.per_bolt_usd = Some(1.0);
        let g = Gateway::new(&s, BTreeMap::new(), Arc::new(NoRecorder)).unwrap();
        let m = CallMeta {
            run_id: Some("run-1".into()),
            ..meta("developer")
        };
        assert_eq!(g.route(&m, "").unwrap(), "big");
        g.budgets()
            .reserve(Some("run-1"), None, 0.85)
            .unwrap()
            .settle(0.85);
        assert_eq!(g.route(&m, "").unwrap(), "small", "past 80 % of the cap");
        let req = ChatRequest {
            messages: vec![crate::Message::text(crate::Role::User, "x".repeat(4000))],
            max_tokens: Some(100_000),
            ..ChatRequest::default()
        };
        // The reservation for this call's worst case no longer fits under the cap.
        let mut priced = settings(&["big", "small"]);
        priced.budget.per_bolt_usd = Some(1.0);
        priced.prices.insert(
            "small".into(),
            crate::config::PriceSettings {
                input_per_mtok: 100.0,
                output_per_mtok: 100.0,
            },
        );
        let g2 = Gateway::new(&priced, BTreeMap::new(), Arc::new(NoRecorder)).unwrap();
        g2.budgets()
            .reserve(Some("run-1"), None, 0.85)
            .unwrap()
            .settle(0.85);
        let err = g2.chat(&m, req).await.unwrap_err();
        assert!(matches!(err, GatewayError::Budget(_)), "{err}");
        assert_eq!(err.http_status(), 402);
    }

    #[tokio::test]
    async fn nothing_configured_says_so() {
        let g = Gateway::new(
            &LlmSettings::default(),
            BTreeMap::new(),
            Arc::new(NoRecorder),
        )
        .unwrap();
        let err = g
            .chat(&meta("developer"), ChatRequest::default())
            .await
            .unwrap_err();
        assert!(matches!(err, GatewayError::NotConfigured));
        assert_eq!(err.http_status(), 503);
    }
}
