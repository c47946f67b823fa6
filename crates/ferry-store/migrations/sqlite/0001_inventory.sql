-- Inventory: profiles and nodes. Settings are stored as JSON documents (validated by
-- ferry-core before every write); the relations that need integrity (profile use,
-- address uniqueness) are real tables with keys, so the database enforces them even
-- under concurrent writers.

CREATE TABLE profiles (
    name        TEXT PRIMARY KEY,
    settings    TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE profile_parents (
    profile   TEXT NOT NULL REFERENCES profiles(name) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    parent    TEXT NOT NULL REFERENCES profiles(name),
    PRIMARY KEY (profile, position)
);

CREATE TABLE nodes (
    name        TEXT PRIMARY KEY,
    settings    TEXT NOT NULL,
    -- XChaCha20-Poly1305 sealed asset tag (nonce || ciphertext), NULL when unset.
    asset_tag   BLOB,
    revision    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE node_profiles (
    node      TEXT NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    profile   TEXT NOT NULL REFERENCES profiles(name),
    PRIMARY KEY (node, position)
);
CREATE INDEX node_profiles_profile ON node_profiles(profile);

-- One row per MAC or IP a node's interfaces carry: the primary key makes a duplicate
-- across nodes impossible (Warewulf accepts them).
CREATE TABLE node_addresses (
    kind   TEXT NOT NULL,
    value  TEXT NOT NULL,
    node   TEXT NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    PRIMARY KEY (kind, value)
);
CREATE INDEX node_addresses_node ON node_addresses(node);

-- Append-only event log: who changed what, and (later) enrollments and tunnels.
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX audit_subject ON audit(subject, id);
