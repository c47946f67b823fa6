-- The audit log is append-only: the database itself refuses to change or remove an
-- entry, whatever code (or an operator with psql) tries. Statement-level triggers, so
-- TRUNCATE (which skips row triggers) is refused too.
CREATE FUNCTION ferry_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_audit_append_only();

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_audit_append_only();

CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_audit_append_only();
