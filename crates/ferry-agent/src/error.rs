//! The agent's error type. Every message says what went wrong and what to do about it,
//! and every variant maps to a documented exit code ([`AgentError::exit_code`]).

use std::io;
use std::path::Path;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration (flags, kernel command line, files) is missing or invalid.
    #[error("{0}")]
    Config(String),

    /// The server refused to enroll this node (HTTP 401). Not retried: it is a policy decision.
    #[error(
        "the ferry server refused to enroll this node (MAC {mac}{node}): on the server, \
         `ferry audit --node NAME` says why (unknown MAC, missing or wrong asset tag, network \
         policy); fix the inventory or the node, then boot again"
    )]
    Refused {
        /// The MAC the node presented.
        mac: String,
        /// `", node NAME"` when the node name was known.
        node: String,
    },

    /// The server's WireGuard key is not the pinned one: possibly an impostor.
    #[error(
        "the server offered WireGuard key {offered}, but this node pins {pinned} (ferry.pubkey=): \
         refusing to bring up a tunnel to a server that may be an impostor; if the ferry \
         server's key really changed, update ferry.pubkey= on the kernel command line"
    )]
    KeyMismatch {
        /// The pinned key.
        pinned: String,
        /// The key in the enrollment response.
        offered: String,
    },

    /// The answer carried a pinned key but tunnel parameters no ferry server sends
    /// (addresses outside the announced tunnel network, a local address, URLs elsewhere):
    /// whoever sent it echoed the key without holding it, to point the agent's fetches
    /// somewhere of its choosing. Same exit code as a key mismatch.
    #[error(
        "refusing the enrollment answer as an impostor's: {0}; a ferry server announces its tunnel \
         address and the node's inside one tunnel network and its URLs at its tunnel address: check \
         that ferry.server= points at a ferry server, and who else answers on the provisioning network"
    )]
    Impostor(String),

    /// The server could not be reached (or stayed busy) within `--timeout`.
    #[error(
        "could not enroll with the ferry server at {server} within {secs} s (last error: {last}): \
         check the network, the ferry.server= URL, and that `ferry serve` is running; raise \
         --timeout if the server is busy"
    )]
    Unreachable {
        /// The server URL.
        server: String,
        /// The time limit in seconds.
        secs: u64,
        /// The last error seen.
        last: String,
    },

    /// The WireGuard tunnel could not be brought up or did not carry traffic.
    #[error("WireGuard tunnel: {0}")]
    Tunnel(String),

    /// The cloud-init documents could not be fetched through the tunnel.
    #[error("fetching the cloud-init documents through the tunnel failed: {0}")]
    Fetch(String),

    /// The server answered something this agent does not understand.
    #[error("unexpected answer from the ferry server: {0} (are the agent and server versions compatible?)")]
    Protocol(String),

    /// A local file or system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        source: io::Error,
    },

    /// The TPM failed (opening it, reading the EK, activating the credential, quoting).
    #[error("{0}")]
    Tpm(String),

    /// The image root did not match what the server said inside the tunnel (digest,
    /// size, key): substituted, altered or truncated. Nothing was unpacked.
    #[error("refusing the node image: {0}")]
    ImageRefused(String),

    /// The image root could not be fetched or unpacked (network, space, file system).
    #[error("the node image: {0}")]
    Image(String),

    /// `ferry agent teardown` could not finish.
    #[error("teardown: {0}")]
    Teardown(String),
}

impl AgentError {
    /// The process exit code: 0 ok (not an error), 2 usage, 3 refused, 4 impostor server
    /// (key mismatch, or an answer pointing outside the tunnel), 5 server unreachable or
    /// timed out, 6 tunnel, fetch or image failure, 7 image refused (not the image the
    /// tunnel vouched for), 1 other.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_) => 2,
            AgentError::Refused { .. } => 3,
            AgentError::KeyMismatch { .. } | AgentError::Impostor(_) => 4,
            AgentError::Unreachable { .. } => 5,
            AgentError::Tunnel(_) | AgentError::Fetch(_) | AgentError::Image(_) => 6,
            AgentError::ImageRefused(_) => 7,
            AgentError::Protocol(_) | AgentError::Io { .. } | AgentError::Tpm(_) | AgentError::Teardown(_) => 1,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        AgentError::Io { context: context.into(), source }
    }

    pub(crate) fn io_path(what: &str, path: &Path, source: io::Error) -> Self {
        let hint = match source.kind() {
            io::ErrorKind::PermissionDenied => " (run the agent as root)",
            io::ErrorKind::NotFound => " (check the path given on the command line)",
            _ => "",
        };
        AgentError::Io { context: format!("cannot {what} {}{hint}", path.display()), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_stable() {
        assert_eq!(AgentError::Config("x".into()).exit_code(), 2);
        assert_eq!(AgentError::Refused { mac: "m".into(), node: String::new() }.exit_code(), 3);
        assert_eq!(AgentError::KeyMismatch { pinned: "a".into(), offered: "b".into() }.exit_code(), 4);
        assert_eq!(AgentError::Impostor("i".into()).exit_code(), 4);
        assert_eq!(AgentError::Unreachable { server: "s".into(), secs: 1, last: "l".into() }.exit_code(), 5);
        assert_eq!(AgentError::Tunnel("t".into()).exit_code(), 6);
        assert_eq!(AgentError::Fetch("f".into()).exit_code(), 6);
        assert_eq!(AgentError::Image("i".into()).exit_code(), 6);
        assert_eq!(AgentError::ImageRefused("r".into()).exit_code(), 7);
        assert_eq!(AgentError::Protocol("p".into()).exit_code(), 1);
        assert_eq!(AgentError::Tpm("t".into()).exit_code(), 1);
        assert_eq!(AgentError::io("c", io::Error::other("e")).exit_code(), 1);
    }
}
