-- Audit retention: the database records how many days of entries it keeps (0: all),
-- and lets a DELETE remove only entries older than that, whoever runs it. Younger
-- entries stay undeletable, UPDATE stays refused (0008), and changing the retention is
-- itself written to the log by the database.
CREATE TABLE audit_retention (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    days BIGINT NOT NULL CHECK (days >= 0)
);
INSERT INTO audit_retention (id, days) VALUES (1, 0);

-- Pruning finds old entries without reading the whole log.
CREATE INDEX audit_at ON audit(at);

DROP TRIGGER audit_no_delete;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
WHEN NOT (
    COALESCE((SELECT days FROM audit_retention WHERE id = 1), 0) > 0
    AND old.at < CAST(strftime('%s', 'now') AS INTEGER)
        - (SELECT days FROM audit_retention WHERE id = 1) * 86400
)
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: only entries older than the audit retention may be deleted');
END;

CREATE TRIGGER audit_retention_changed AFTER UPDATE ON audit_retention
WHEN new.days <> old.days
BEGIN
    INSERT INTO audit (at, actor, action, subject, detail)
    VALUES (CAST(strftime('%s', 'now') AS INTEGER), 'database', 'audit.retention', 'audit',
            'days=' || new.days || ' (was ' || old.days || ')');
END;

CREATE TRIGGER audit_retention_kept BEFORE DELETE ON audit_retention
BEGIN
    SELECT RAISE(ABORT, 'the audit retention setting cannot be deleted');
END;
