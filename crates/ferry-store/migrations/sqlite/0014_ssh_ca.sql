-- ferry as the cluster's SSH certificate authority (issue 18). Each CA's private key is
-- sealed with the store's sealing key (bound to the CA's id and purpose), so several
-- servers on one store sign with the same CA. Exactly one CA per purpose signs
-- (retired_at IS NULL); a rotated-out CA stays trusted by clients until trusted_until.
CREATE TABLE ssh_cas (
    id            BIGINT PRIMARY KEY,
    purpose       TEXT NOT NULL CHECK (purpose IN ('host', 'user')),
    public_key    TEXT NOT NULL,
    private_key   BLOB NOT NULL,
    created_at    BIGINT NOT NULL,
    retired_at    BIGINT,
    trusted_until BIGINT
);
CREATE UNIQUE INDEX ssh_cas_one_signing ON ssh_cas (purpose) WHERE retired_at IS NULL;

-- Every host certificate issued (serials are random 63-bit numbers, so servers need no
-- shared counter). The certified public key is kept for the revocation list; a key
-- certified for one node is never certified for another (shared host keys would let
-- one node impersonate the other). Rows are pruned 30 days after they expire.
CREATE TABLE ssh_certificates (
    serial        BIGINT PRIMARY KEY,
    node          TEXT NOT NULL,
    ca_id         BIGINT NOT NULL REFERENCES ssh_cas (id),
    key_id        TEXT NOT NULL,
    key_type      TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    principals    TEXT NOT NULL,
    issued_at     BIGINT NOT NULL,
    valid_before  BIGINT NOT NULL,
    revoked_at    BIGINT
);
CREATE INDEX ssh_certificates_node ON ssh_certificates (node);
CREATE INDEX ssh_certificates_fingerprint ON ssh_certificates (fingerprint);
CREATE INDEX ssh_certificates_valid_before ON ssh_certificates (valid_before);

-- Nodes whose host certificates an admin revoked (`ferry ssh revoke`): no new ones are
-- issued until `ferry ssh reinstate`.
CREATE TABLE ssh_revoked_nodes (
    node        TEXT PRIMARY KEY REFERENCES nodes (name) ON DELETE CASCADE,
    revoked_at  BIGINT NOT NULL
);
