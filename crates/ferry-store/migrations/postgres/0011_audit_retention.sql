-- Audit retention: the database records how many days of entries it keeps (0: all),
-- and lets a DELETE remove only entries older than that, whoever runs it. Younger
-- entries stay undeletable, UPDATE and TRUNCATE stay refused (0008), and changing the
-- retention is itself written to the log by the database.
CREATE TABLE audit_retention (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    days BIGINT NOT NULL CHECK (days >= 0)
);
INSERT INTO audit_retention (id, days) VALUES (1, 0);

-- Pruning finds old entries without reading the whole log.
CREATE INDEX audit_at ON audit(at);

-- The statement-level refusal of 0008 becomes a per-entry check.
DROP TRIGGER audit_no_delete ON audit;

CREATE FUNCTION ferry_audit_prune_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    keep_days BIGINT;
BEGIN
    SELECT days INTO keep_days FROM audit_retention WHERE id = 1;
    IF COALESCE(keep_days, 0) > 0
       AND OLD.at < extract(epoch FROM now())::bigint - keep_days * 86400 THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only: only entries older than the audit retention may be deleted';
END;
$$;

CREATE TRIGGER audit_prune_only BEFORE DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION ferry_audit_prune_only();

CREATE FUNCTION ferry_audit_retention_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit (at, actor, action, subject, detail)
    VALUES (extract(epoch FROM now())::bigint, 'database:' || current_user, 'audit.retention', 'audit',
            format('days=%s (was %s)', NEW.days, OLD.days));
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_retention_changed AFTER UPDATE ON audit_retention
    FOR EACH ROW WHEN (NEW.days IS DISTINCT FROM OLD.days)
    EXECUTE FUNCTION ferry_audit_retention_changed();

CREATE FUNCTION ferry_audit_retention_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit retention setting cannot be deleted';
END;
$$;

CREATE TRIGGER audit_retention_no_delete BEFORE DELETE ON audit_retention
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_audit_retention_kept();

CREATE TRIGGER audit_retention_no_truncate BEFORE TRUNCATE ON audit_retention
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_audit_retention_kept();
