//! Boot images: the store records them; their artifacts live in the object store
//! ([`ImageStore`]).

use crate::{Actor, StoreError};
use async_trait::async_trait;
use ferry_api::image::ImageRecord;
use zeroize::Zeroizing;

#[async_trait]
pub trait ImageStore: Send + Sync {
    /// Registers an image whose artifacts are already in the object store. A sealed
    /// root's key is sealed at rest, bound to the image's name.
    async fn add_image(&self, image: &ImageRecord, root_key: Option<&[u8]>, actor: &Actor) -> Result<(), StoreError>;
    async fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError>;
    async fn get_image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError>;
    /// The key of the image's sealed root, opened; `None` when its root is not sealed.
    async fn image_root_key(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;
    /// Deletes an image; refused while a node or profile names it.
    async fn delete_image(&self, name: &str, actor: &Actor) -> Result<(), StoreError>;
}
