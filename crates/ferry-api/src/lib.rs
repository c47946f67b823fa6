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
    pub kind: ErrorKind,
}

/// What kind of failure an error response reports; its word on the wire (`"kind"`) is
/// stable, for scripts. Every API of the server (admin, provisioning, datasource) uses
/// these words and no others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// 400 (or 413): the request is malformed or breaks a rule; nothing changed.
    Invalid,
    /// 404.
    NotFound,
    /// 409: it clashes with what exists (a duplicate name, MAC or address).
    Conflict,
    /// 403: the caller may not do this (admin socket uid, token role, datasource caller).
    Forbidden,
    /// 401 on the remote admin listener: no valid bearer token.
    Unauthorized,
    /// 401 on enrollment: the node did not prove who it is (the audit log says why).
    Refused,
    /// 429: over a rate limit; `Retry-After` says when to come back.
    RateLimited,
    /// 503: no capacity now (enrollment slots, tunnel addresses); retry later.
    Busy,
    /// 503 on `/readyz`: the store or the WireGuard device is not available.
    NotReady,
    /// 500: the server failed; its log says why.
    Internal,
    /// A word this version does not know (an answer from a newer server).
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words scripts match on stay what they were when the kind was a string, and
    /// an unknown word (a newer server) still reads.
    #[test]
    fn error_kinds_keep_their_wire_words() {
        let all = [
            (ErrorKind::Invalid, "invalid"),
            (ErrorKind::NotFound, "not-found"),
            (ErrorKind::Conflict, "conflict"),
            (ErrorKind::Forbidden, "forbidden"),
            (ErrorKind::Unauthorized, "unauthorized"),
            (ErrorKind::Refused, "refused"),
            (ErrorKind::RateLimited, "rate-limited"),
            (ErrorKind::Busy, "busy"),
            (ErrorKind::NotReady, "not-ready"),
            (ErrorKind::Internal, "internal"),
        ];
        for (kind, word) in all {
            let body = serde_json::to_value(ApiError { error: "e".into(), kind }).unwrap();
            assert_eq!(body, serde_json::json!({"error": "e", "kind": word}));
            let read: ApiError = serde_json::from_value(body).unwrap();
            assert_eq!(read.kind, kind);
        }
        let newer: ApiError = serde_json::from_str(r#"{"error":"e","kind":"something-new"}"#).unwrap();
        assert_eq!(newer.kind, ErrorKind::Unknown);
    }
}
