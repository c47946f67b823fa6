-- Several ferry servers (on PostgreSQL): each registers itself and beats a heartbeat;
-- a tunnel records which server's WireGuard device holds its peer, so a server that
-- stopped beating can have its tunnels closed by the others. One server: `local`.
CREATE TABLE servers (
    id            TEXT PRIMARY KEY,
    endpoint      TEXT NOT NULL,   -- host:port of its WireGuard listener
    public_key    TEXT NOT NULL,   -- its WireGuard public key, base64
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);
ALTER TABLE tunnels ADD COLUMN server TEXT NOT NULL DEFAULT 'local';
CREATE INDEX tunnels_server ON tunnels(server);
