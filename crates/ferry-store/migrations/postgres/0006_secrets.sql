-- Secrets for templates (`{{ secret("munge.key") }}`): sealed with the store's key,
-- bound to (scope, target, name). A node's own secret wins over its profiles' (later
-- profiles over earlier), which win over a global one. Deleting the node or profile
-- deletes its secrets.
CREATE TABLE secrets (
    name        TEXT COLLATE "C" NOT NULL,
    scope       TEXT COLLATE "C" NOT NULL CHECK (scope IN ('global', 'profile', 'node')),
    target      TEXT COLLATE "C" NOT NULL,
    node        TEXT COLLATE "C" REFERENCES nodes(name) ON DELETE CASCADE,
    profile     TEXT COLLATE "C" REFERENCES profiles(name) ON DELETE CASCADE,
    value       BYTEA NOT NULL,
    size        BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (name, scope, target)
);
