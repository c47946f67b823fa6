-- Secrets for templates (`{{ secret("munge.key") }}`): sealed with the store's key,
-- bound to (scope, target, name). A node's own secret wins over its profiles' (later
-- profiles over earlier), which win over a global one. Deleting the node or profile
-- deletes its secrets.
CREATE TABLE secrets (
    name        TEXT NOT NULL,
    scope       TEXT NOT NULL CHECK (scope IN ('global', 'profile', 'node')),
    target      TEXT NOT NULL,
    node        TEXT REFERENCES nodes(name) ON DELETE CASCADE,
    profile     TEXT REFERENCES profiles(name) ON DELETE CASCADE,
    value       BLOB NOT NULL,
    size        BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (name, scope, target)
);
