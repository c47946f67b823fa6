//! Wire types of ferry's HTTP APIs. The server, the CLI and the node agent all
//! speak these, so a field renamed here is renamed everywhere at compile time.

pub mod admin;
pub mod enroll;
pub mod image;
pub mod routes;
mod secret;
pub mod ssh;

pub use secret::Secret;

use serde::{Deserialize, Serialize};

/// The body of every error response: a message for people and a stable kind for scripts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub kind: String,
}
