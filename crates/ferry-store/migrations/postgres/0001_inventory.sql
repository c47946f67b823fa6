-- Inventory: profiles and nodes (PostgreSQL twin of migrations/sqlite/0001). Settings are
-- JSON documents (validated by ferry-core before every write); the relations that need
-- integrity (profile use, address uniqueness) are real tables with keys.
--
-- Names sort by byte value (COLLATE "C"), as SQLite's BINARY collation sorts them,
-- whatever the database's locale: listings come out in the same order on both.

CREATE TABLE profiles (
    name        TEXT COLLATE "C" PRIMARY KEY,
    settings    TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE profile_parents (
    profile   TEXT COLLATE "C" NOT NULL REFERENCES profiles(name) ON DELETE CASCADE,
    position  BIGINT NOT NULL,
    parent    TEXT COLLATE "C" NOT NULL REFERENCES profiles(name),
    PRIMARY KEY (profile, position)
);

CREATE TABLE nodes (
    name        TEXT COLLATE "C" PRIMARY KEY,
    settings    TEXT NOT NULL,
    -- XChaCha20-Poly1305 sealed asset tag (nonce || ciphertext), NULL when unset.
    asset_tag   BYTEA,
    revision    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE node_profiles (
    node      TEXT COLLATE "C" NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    position  BIGINT NOT NULL,
    profile   TEXT COLLATE "C" NOT NULL REFERENCES profiles(name),
    PRIMARY KEY (node, position)
);
CREATE INDEX node_profiles_profile ON node_profiles(profile);

-- One row per MAC or IP a node's interfaces carry: the primary key makes a duplicate
-- across nodes impossible.
CREATE TABLE node_addresses (
    kind   TEXT NOT NULL,
    value  TEXT NOT NULL,
    node   TEXT COLLATE "C" NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    PRIMARY KEY (kind, value)
);
CREATE INDEX node_addresses_node ON node_addresses(node);

-- Append-only event log: who changed what.
CREATE TABLE audit (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX audit_subject ON audit(subject, id);
