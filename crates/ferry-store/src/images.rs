//! Boot images: the store records them; their artifacts live in the object store
//! ([`ImageStore`]).

use crate::{Actor, StoreError};
use async_trait::async_trait;
use ferry_api::image::ImageRecord;

#[async_trait]
pub trait ImageStore: Send + Sync {
    /// Registers an image whose artifacts are already in the object store.
    async fn add_image(&self, image: &ImageRecord, actor: &Actor) -> Result<(), StoreError>;
    async fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError>;
    async fn get_image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError>;
    /// Deletes an image; refused while a node or profile names it.
    async fn delete_image(&self, name: &str, actor: &Actor) -> Result<(), StoreError>;
}
