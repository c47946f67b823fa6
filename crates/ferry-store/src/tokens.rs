//! Admin tokens: the store keeps their SHA-256, role, expiry and revocation, never the
//! token ([`TokenStore`]).

use crate::{Actor, StoreError};
use async_trait::async_trait;
pub use ferry_core::access::Role;

#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Records a token by the SHA-256 (hex) of its value.
    async fn create_token(
        &self,
        name: &str,
        role: Role,
        hash: &str,
        expires_at: Option<i64>,
        actor: &Actor,
    ) -> Result<(), StoreError>;
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError>;
    async fn revoke_token(&self, name: &str, actor: &Actor) -> Result<(), StoreError>;
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>, StoreError>;
}

/// An admin token as listings show it (never the token or its hash): the admin API's shape.
pub use ferry_api::admin::TokenInfo;
