//! Image records of the SQL store.

use crate::audit_rows::audit;
use crate::sql::SqlStore;
use crate::{format_time, now_secs, Actor, ImageStore, StoreError};
use async_trait::async_trait;
use ferry_api::image::{Artifact, ImageRecord, RootArchive};
use ferry_core::model::check_image_name;
use sqlx::Row;
use zeroize::Zeroizing;

const COLUMNS: &str = "name, kernel, kernel_size, initrd, initrd_size, rootfs_zst, rootfs_zst_size, rootfs_gz, \
     rootfs_gz_size, created_at, root, root_size, CAST(CASE WHEN root_key IS NULL THEN 0 ELSE 1 END AS BIGINT), \
     root_entries, root_xattrs, root_unpacked";
const INSERT_COLUMNS: &str = "name, kernel, kernel_size, initrd, initrd_size, rootfs_zst, rootfs_zst_size, rootfs_gz, \
     rootfs_gz_size, created_at, root, root_size, root_key, root_entries, root_xattrs, root_unpacked";
/// Length of an image root key (XChaCha20-Poly1305).
const ROOT_KEY_LEN: usize = 32;

/// What a sealed root key is bound to: its image's name.
fn root_key_aad(name: &str) -> Vec<u8> {
    format!("image-root-key:{name}").into_bytes()
}

fn artifact(sha: Option<String>, size: Option<i64>) -> Option<Artifact> {
    Some(Artifact { sha256: sha?, size: size.unwrap_or(0).max(0) as u64 })
}

#[async_trait]
impl ImageStore for SqlStore {
    async fn add_image(&self, image: &ImageRecord, root_key: Option<&[u8]>, actor: &Actor) -> Result<(), StoreError> {
        check_image_name(&image.name)?;
        let root = image.root.as_ref().map(|r| r.artifact());
        let all = [
            Some(&image.kernel),
            Some(&image.initrd),
            image.rootfs_zst.as_ref(),
            image.rootfs_gz.as_ref(),
            root.as_ref(),
        ];
        if all.iter().flatten().any(|a| !a.valid()) {
            return Err(StoreError::BadRequest("artifact digests must be 64 lowercase hex characters".into()));
        }
        if image.rootfs_zst.is_some() != image.rootfs_gz.is_some() {
            return Err(StoreError::BadRequest("a rootfs needs both its zstd and gzip archives".into()));
        }
        let sealed = image.root.as_ref().is_some_and(|r| r.sealed);
        if sealed != root_key.is_some() {
            return Err(StoreError::BadRequest("a sealed root needs its key, and only a sealed root has one".into()));
        }
        if root_key.is_some_and(|k| k.len() != ROOT_KEY_LEN) {
            return Err(StoreError::BadRequest(format!("an image root key is {ROOT_KEY_LEN} bytes")));
        }
        let sealed_key = root_key.map(|k| self.sealer.seal(k, &root_key_aad(&image.name)));
        let mut tx = self.begin_write().await?;
        let exists =
            sqlx::query("SELECT 1 FROM images WHERE name = $1").bind(&image.name).fetch_optional(&mut *tx).await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!(
                "image {} already exists; delete it first or import under a new name",
                image.name
            )));
        }
        let size = |a: &Artifact| a.size as i64;
        let count = |v: Option<u64>| v.map(|n| n.min(i64::MAX as u64) as i64);
        let r = image.root.as_ref();
        sqlx::query(&format!(
            "INSERT INTO images ({INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16)"
        ))
        .bind(&image.name)
        .bind(&image.kernel.sha256)
        .bind(size(&image.kernel))
        .bind(&image.initrd.sha256)
        .bind(size(&image.initrd))
        .bind(image.rootfs_zst.as_ref().map(|a| a.sha256.clone()))
        .bind(image.rootfs_zst.as_ref().map(size))
        .bind(image.rootfs_gz.as_ref().map(|a| a.sha256.clone()))
        .bind(image.rootfs_gz.as_ref().map(size))
        .bind(now_secs())
        .bind(r.map(|r| r.sha256.clone()))
        .bind(count(r.map(|r| r.size)))
        .bind(sealed_key)
        .bind(count(r.map(|r| r.entries)))
        .bind(count(r.map(|r| r.xattrs)))
        .bind(count(r.map(|r| r.unpacked_bytes)))
        .execute(&mut *tx)
        .await?;
        let mut detail = format!("kernel={} initrd={}", image.kernel.sha256, image.initrd.sha256);
        if let Some(r) = r {
            detail += &format!(" root={} sealed={}", r.sha256, r.sealed);
        }
        audit(&mut tx, actor, "image.add", &format!("image/{}", image.name), &detail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.images(None).await
    }

    async fn get_image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        Ok(self.images(Some(name)).await?.pop())
    }

    async fn image_root_key(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let row =
            sqlx::query("SELECT root_key FROM images WHERE name = $1").bind(name).fetch_optional(&self.read).await?;
        let Some(sealed) = row.and_then(|r| r.get::<Option<Vec<u8>>, _>(0)) else { return Ok(None) };
        Ok(Some(self.sealer.open(&sealed, &root_key_aad(name))?))
    }

    async fn delete_image(&self, name: &str, actor: &Actor) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Settings are JSON documents: find users by decoding them (portable SQL).
        let mut users = Vec::new();
        for (kind, sql) in
            [("node", "SELECT name, settings FROM nodes"), ("profile", "SELECT name, settings FROM profiles")]
        {
            for row in sqlx::query(sql).fetch_all(&mut *tx).await? {
                let settings: serde_json::Value = serde_json::from_str(row.get::<&str, _>(1)).unwrap_or_default();
                if settings["image"].as_str() == Some(name) {
                    users.push(format!("{kind} {}", row.get::<&str, _>(0)));
                }
            }
        }
        if !users.is_empty() {
            users.truncate(5);
            return Err(StoreError::Conflict(format!(
                "image {name} is used by {}; change them first",
                users.join(", ")
            )));
        }
        let done = sqlx::query("DELETE FROM images WHERE name = $1").bind(name).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { kind: "image", name: name.to_owned() });
        }
        audit(&mut tx, actor, "image.delete", &format!("image/{name}"), "").await?;
        tx.commit().await?;
        Ok(())
    }
}

impl SqlStore {
    /// Every image, or the one named.
    async fn images(&self, only: Option<&str>) -> Result<Vec<ImageRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM images {} ORDER BY name",
            if only.is_some() { "WHERE name = $1" } else { "" }
        );
        let mut q = sqlx::query(&sql);
        if let Some(n) = only {
            q = q.bind(n);
        }
        let rows = q.fetch_all(&self.read).await?;
        Ok(rows
            .into_iter()
            .map(|r| ImageRecord {
                name: r.get(0),
                kernel: Artifact { sha256: r.get(1), size: r.get::<i64, _>(2).max(0) as u64 },
                initrd: Artifact { sha256: r.get(3), size: r.get::<i64, _>(4).max(0) as u64 },
                rootfs_zst: artifact(r.get(5), r.get(6)),
                rootfs_gz: artifact(r.get(7), r.get(8)),
                created_at: format_time(r.get(9)),
                root: r.get::<Option<String>, _>(10).map(|sha256| {
                    let n = |i: usize| r.get::<Option<i64>, _>(i).unwrap_or(0).max(0) as u64;
                    RootArchive {
                        sha256,
                        size: n(11),
                        sealed: r.get::<i64, _>(12) != 0,
                        entries: n(13),
                        xattrs: n(14),
                        unpacked_bytes: n(15),
                    }
                }),
            })
            .collect())
    }
}
