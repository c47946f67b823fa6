-- Boot images. Artifacts are content-addressed files under data_dir/objects/sha256/;
-- rows name them by digest, so an artifact is never changed in place.
CREATE TABLE images (
    name         TEXT COLLATE "C" PRIMARY KEY,
    kernel       TEXT NOT NULL,
    kernel_size  BIGINT NOT NULL,
    initrd       TEXT NOT NULL,
    initrd_size  BIGINT NOT NULL,
    -- The root file system as a cpio newc archive, zstd- and gzip-compressed.
    rootfs_zst   TEXT,
    rootfs_zst_size BIGINT,
    rootfs_gz    TEXT,
    rootfs_gz_size BIGINT,
    created_at   BIGINT NOT NULL
);
