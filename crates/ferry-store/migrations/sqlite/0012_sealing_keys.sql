-- The sealing key (secrets.key) the store's sealed values belong to. One row per key id
-- (a public name derived from the key), holding a value sealed under that key: a server
-- proves at start-up that its key opens it, so a server given another key (several
-- servers without the shared secrets_key, a regenerated key) refuses to start instead
-- of joining and failing every delivery of a secret.
CREATE TABLE sealing_keys (
    key_id       TEXT PRIMARY KEY,
    check_value  BLOB NOT NULL,
    recorded_at  BIGINT NOT NULL,
    -- 'new': recorded on an empty store; 'adopted': it opened the sealed values of a
    -- store made before keys were recorded.
    origin       TEXT NOT NULL
);
-- The key id each server runs with (`ferry server list`).
ALTER TABLE servers ADD COLUMN sealing_key_id TEXT NOT NULL DEFAULT '';
