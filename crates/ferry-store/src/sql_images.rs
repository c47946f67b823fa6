//! Image records of the SQL store.

use crate::audit_rows::audit;
use crate::sql::SqlStore;
use crate::{format_time, now_secs, Actor, ImageStore, StoreError};
use async_trait::async_trait;
use ferry_api::image::{Artifact, ImageRecord};
use ferry_core::model::check_image_name;
use sqlx::Row;

const COLUMNS: &str =
    "name, kernel, kernel_size, initrd, initrd_size, rootfs_zst, rootfs_zst_size, rootfs_gz, rootfs_gz_size, created_at";

fn artifact(sha: Option<String>, size: Option<i64>) -> Option<Artifact> {
    Some(Artifact { sha256: sha?, size: size.unwrap_or(0).max(0) as u64 })
}

#[async_trait]
impl ImageStore for SqlStore {
    async fn add_image(&self, image: &ImageRecord, actor: &Actor) -> Result<(), StoreError> {
        check_image_name(&image.name)?;
        let all = [Some(&image.kernel), Some(&image.initrd), image.rootfs_zst.as_ref(), image.rootfs_gz.as_ref()];
        if all.iter().flatten().any(|a| !a.valid()) {
            return Err(StoreError::BadRequest("artifact digests must be 64 lowercase hex characters".into()));
        }
        if image.rootfs_zst.is_some() != image.rootfs_gz.is_some() {
            return Err(StoreError::BadRequest("a rootfs needs both its zstd and gzip archives".into()));
        }
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
        sqlx::query(&format!("INSERT INTO images ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
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
            .execute(&mut *tx)
            .await?;
        let detail = format!("kernel={} initrd={}", image.kernel.sha256, image.initrd.sha256);
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
            })
            .collect())
    }
}
