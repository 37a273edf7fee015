-- One active bolt per (repository, issue): a replayed webhook or a second POST must not start a
-- second run on the same issue. Existing duplicates (possible before this rule) keep their oldest
-- active run; the others are cancelled, with the event the log needs, before the index is built.
CREATE TEMP TABLE dup_runs AS
SELECT r.id FROM workflow_runs r
WHERE r.issue_number IS NOT NULL
  AND r.status IN ('PENDING','RUNNING','PAUSED','WAITING_GATE','ESCALATED')
  AND EXISTS (
      SELECT 1 FROM workflow_runs o
      WHERE o.repo = r.repo AND o.issue_number = r.issue_number
        AND o.status IN ('PENDING','RUNNING','PAUSED','WAITING_GATE','ESCALATED')
        AND o.id < r.id);

INSERT INTO run_events (run_id, seq, kind, data, created_at)
SELECT r.id, r.last_event_seq + 1, 'status_changed',
       jsonb_build_object('from', r.status, 'to', 'CANCELLED',
                          'reason', 'another run of the same issue is active (one active run per issue)'),
       (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT
FROM workflow_runs r WHERE r.id IN (SELECT id FROM dup_runs);

UPDATE workflow_runs
SET status = 'CANCELLED', last_event_seq = last_event_seq + 1,
    lease_owner = NULL, lease_expires_at = NULL,
    updated_at = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT,
    finished_at = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT,
    error = 'cancelled: another run of the same issue is active (one active run per issue)'
WHERE id IN (SELECT id FROM dup_runs);

DROP TABLE dup_runs;

CREATE UNIQUE INDEX workflow_runs_one_active ON workflow_runs (repo, issue_number)
WHERE issue_number IS NOT NULL
  AND status IN ('PENDING','RUNNING','PAUSED','WAITING_GATE','ESCALATED');
