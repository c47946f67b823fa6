-- Several ferry servers on one database: each registers itself and beats a heartbeat;
-- a tunnel records which server's WireGuard device holds its peer, so a server that
-- stopped beating can have its tunnels closed by the others. One server: `local`.
CREATE TABLE servers (
    id            TEXT COLLATE "C" PRIMARY KEY,
    endpoint      TEXT NOT NULL,   -- host:port of its WireGuard listener
    public_key    TEXT NOT NULL,   -- its WireGuard public key, base64
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);
ALTER TABLE tunnels ADD COLUMN server TEXT COLLATE "C" NOT NULL DEFAULT 'local';
CREATE INDEX tunnels_server ON tunnels(server);
