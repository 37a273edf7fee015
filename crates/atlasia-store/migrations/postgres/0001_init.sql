-- Atlasia schema, PostgreSQL. Times are Unix milliseconds (BIGINT) on both backends so the
-- same queries compare them; ids are UUID v7 text, which sorts by creation time.

CREATE TABLE workflow_runs (
    id               TEXT PRIMARY KEY,
    repo             TEXT NOT NULL,
    issue_number     BIGINT,
    title            TEXT NOT NULL,
    body             TEXT NOT NULL DEFAULT '',
    status           TEXT NOT NULL DEFAULT 'PENDING' CHECK (status IN
                     ('PENDING','RUNNING','PAUSED','WAITING_GATE','ESCALATED','DONE','FAILED','CANCELLED')),
    priority         INTEGER NOT NULL DEFAULT 5 CHECK (priority BETWEEN 0 AND 10),
    autonomy         TEXT NOT NULL DEFAULT 'autonomous' CHECK (autonomy IN ('autonomous','confirm','observe')),
    current_step     TEXT,
    review_loops     INTEGER NOT NULL DEFAULT 0,
    fix_loops        INTEGER NOT NULL DEFAULT 0,
    budget_usd       DOUBLE PRECISION,
    cost_usd         DOUBLE PRECISION NOT NULL DEFAULT 0,
    tokens_in        BIGINT NOT NULL DEFAULT 0,
    tokens_out       BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    last_event_seq   BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    error            TEXT
);
-- The queue: highest priority, oldest first, among PENDING runs only.
CREATE INDEX workflow_runs_pending ON workflow_runs (priority DESC, created_at, id) WHERE status = 'PENDING';
CREATE INDEX workflow_runs_leases ON workflow_runs (lease_expires_at) WHERE status = 'RUNNING';
CREATE INDEX workflow_runs_status ON workflow_runs (status, id);
CREATE INDEX workflow_runs_repo ON workflow_runs (repo, id);

CREATE TABLE run_events (
    run_id     TEXT NOT NULL REFERENCES workflow_runs(id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    data       JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE run_steps (
    run_id      TEXT NOT NULL REFERENCES workflow_runs(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    step        TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 1,
    status      TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    error       TEXT,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE run_artifacts (
    run_id     TEXT NOT NULL REFERENCES workflow_runs(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    step       TEXT NOT NULL,
    payload    JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, kind, version)
);

CREATE TABLE llm_calls (
    id            BIGSERIAL PRIMARY KEY,
    run_id        TEXT REFERENCES workflow_runs(id) ON DELETE SET NULL,
    step          TEXT,
    agent         TEXT NOT NULL,
    provider      TEXT NOT NULL,
    model         TEXT NOT NULL,
    request_key   TEXT,
    tokens_in     BIGINT NOT NULL DEFAULT 0,
    tokens_out    BIGINT NOT NULL DEFAULT 0,
    cost_usd      DOUBLE PRECISION NOT NULL DEFAULT 0,
    latency_ms    BIGINT NOT NULL DEFAULT 0,
    outcome       TEXT NOT NULL,
    cached        BOOLEAN NOT NULL DEFAULT FALSE,
    response      JSONB,
    created_at    BIGINT NOT NULL
);
CREATE INDEX llm_calls_run ON llm_calls (run_id, step, request_key);

CREATE TABLE pull_requests (
    run_id     TEXT PRIMARY KEY REFERENCES workflow_runs(id) ON DELETE CASCADE,
    forge      TEXT NOT NULL,
    number     BIGINT,
    url        TEXT,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    base       TEXT NOT NULL,
    head       TEXT NOT NULL,
    diff_stat  TEXT NOT NULL DEFAULT '',
    state      TEXT NOT NULL DEFAULT 'open',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('viewer','operator','admin')),
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,
    event       TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    run_id      TEXT,
    received_at BIGINT NOT NULL
);
