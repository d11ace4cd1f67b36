-- An admin can cancel a job that is still queued (`POST /jobs/{id}/cancel`): it stays in
-- the table, `cancelled`, and no worker runs it (claims require `queued`).
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'succeeded', 'dead', 'cancelled'));

-- A cancelled job is finished too: `job.cancelled` joins `job.succeeded` and `job.dead`.
DROP TRIGGER jobs_finished ON jobs;
CREATE TRIGGER jobs_finished AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'dead', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION keel_job_events();
