-- Poison runs: how many times a worker died (its lease expired and the run was reclaimed) at
-- the run's current step. Reset when current_step changes; a clean handover (release to
-- PENDING on shutdown) does not count. At engine.max_attempts the run fails instead.
ALTER TABLE workflow_runs ADD COLUMN step_deaths INTEGER NOT NULL DEFAULT 0;
