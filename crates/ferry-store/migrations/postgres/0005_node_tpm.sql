-- A node's TPM identity: its endorsement key (SubjectPublicKeyInfo DER, the normal form
-- whatever the admin supplied) and EK certificate. `pending` rows come from
-- trust-on-first-use discovery and count for nothing until an admin approves them.
-- One TPM belongs to one node: the fingerprint is unique.
CREATE TABLE node_tpm (
    node         TEXT COLLATE "C" PRIMARY KEY REFERENCES nodes(name) ON DELETE CASCADE,
    state        TEXT NOT NULL CHECK (state IN ('registered', 'pending')),
    fingerprint  TEXT NOT NULL UNIQUE,
    ek_spki      BYTEA NOT NULL,
    ek_cert      BYTEA,
    updated_at   BIGINT NOT NULL
);
