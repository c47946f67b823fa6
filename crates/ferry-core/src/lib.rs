//! ferry's domain core: the inventory model (nodes, profiles), validation, Warewulf-style
//! profile merging with provenance, hostlists and address sequences.
//!
//! This crate performs no I/O: everything here is a pure function of its inputs, so every
//! rule can be unit-tested and reused by the server, the store and the CLI alike.

pub mod access;
pub mod boot;
pub mod enroll;
pub mod error;
pub mod hostlist;
pub mod identity;
pub mod merge;
pub mod model;
pub mod names;
pub mod net;
pub mod patch;
pub mod ssh;
pub mod tunnel;
pub mod wgkey;
mod words;

pub use error::CoreError;
pub use model::{IdentityFactor, Interface, Node, Profile, RootMode, Settings};
pub use names::{NodeName, ProfileName};
pub use net::MacAddr;
