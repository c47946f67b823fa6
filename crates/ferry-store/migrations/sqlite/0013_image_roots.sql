-- Image root archives (sealed images): a tar stream with every extended attribute,
-- zstd-compressed, stored content-addressed like the other artifacts; for a sealed
-- root, its per-image key sealed with the store's sealing key, bound to the image's
-- name (a sealed root is one whose root_key is set). The cpio rootfs_* columns stay
-- for images imported before.
ALTER TABLE images ADD COLUMN root TEXT;
ALTER TABLE images ADD COLUMN root_size BIGINT;
ALTER TABLE images ADD COLUMN root_key BLOB;
ALTER TABLE images ADD COLUMN root_entries BIGINT;
ALTER TABLE images ADD COLUMN root_xattrs BIGINT;
ALTER TABLE images ADD COLUMN root_unpacked BIGINT;
