-- Bearer tokens of the remote admin listener. Only a SHA-256 of each token is kept; the
-- token itself is shown once, at creation.
CREATE TABLE tokens (
    name        TEXT COLLATE "C" PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    hash        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
