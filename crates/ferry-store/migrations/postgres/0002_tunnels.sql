-- Active tunnels only: a row exists from enrollment until phone-home, expiry,
-- replacement or revocation. The primary key makes "at most one tunnel per node" a
-- database fact; the unique address and key make double allocation impossible.
CREATE TABLE tunnels (
    node        TEXT COLLATE "C" PRIMARY KEY REFERENCES nodes(name) ON DELETE CASCADE,
    public_key  TEXT NOT NULL UNIQUE,
    address     TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX tunnels_expiry ON tunnels(expires_at);

-- The latest completed boot of each node (phone-home).
CREATE TABLE boots (
    node         TEXT COLLATE "C" PRIMARY KEY REFERENCES nodes(name) ON DELETE CASCADE,
    booted_at    BIGINT NOT NULL,
    address      TEXT NOT NULL,
    instance_id  TEXT,
    hostname     TEXT,
    fqdn         TEXT,
    boot_count   BIGINT NOT NULL
);

-- SSH host public keys reported at phone-home, for `ferry known-hosts`.
CREATE TABLE host_keys (
    node      TEXT COLLATE "C" NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    key_type  TEXT COLLATE "C" NOT NULL,
    key_text  TEXT NOT NULL,
    PRIMARY KEY (node, key_type)
);
