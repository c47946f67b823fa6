//! The admin API client: HTTP/1.1 over the server's unix socket, one typed method per
//! route of `ferry_api::routes`, answering with the `ferry_api` types.

use ferry_api::admin::{
    AddInventory, AddNodes, AddProfiles, AuditEntry, AuditQuery, BootInfo, Changed, InventoryAdded, KnownHost,
    MergedNodeView, Names, NodeQuery, NodeView, ProfileView, SecretScopeQuery, SecretSet, SecretView, ServerInfo,
    ServerView, SetNodes, SetProfiles, TokenCreate, TokenCreated, TokenInfo, TpmApprove, TpmLearn, TpmLearned,
    TpmQuery, TpmQuoteView, TpmRegister, TpmView, TunnelView,
};
use ferry_api::image::{AddImage, ImageRecord, ImageVerified};
use ferry_api::ssh::{
    SshCaRotate, SshCaView, SshCertificateQuery, SshCertificateView, SshKnownHosts, SshRevoked, SshUserCertificate,
    SshUserCertificateRequest,
};
use ferry_api::{routes, ApiError};
use ferry_core::{NodeName, ProfileName};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use tokio::net::UnixStream;

/// Why a call failed. The server's refusals keep its status and error kind
/// (`invalid`, `not-found`, `conflict`, `forbidden`, ...) for callers that tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the ferry server at {0}: is `ferry serve` running? (or set --admin-socket / FERRY_ADMIN_SOCKET)"
    )]
    NotRunning(String),
    #[error("permission denied on {0}: run as root or as a configured admin user")]
    PermissionDenied(String),
    #[error("cannot connect to {socket}: {error}")]
    Connect { socket: String, error: std::io::Error },
    #[error("admin socket handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error(transparent)]
    Request(#[from] hyper::http::Error),
    #[error(transparent)]
    Encode(serde_json::Error),
    #[error(transparent)]
    Query(#[from] serde_urlencoded::ser::Error),
    #[error("the ferry server closed the connection")]
    Closed(#[source] hyper::Error),
    #[error("reading the server's answer")]
    Read(#[source] hyper::Error),
    /// The server refused: its message, its status, and its error kind (`None` when the
    /// body was not ferry's error shape).
    #[error("{message}")]
    Api { status: u16, kind: Option<ferry_api::ErrorKind>, message: String },
    #[error("the server's answer is not the expected JSON (client and server versions differ?)")]
    Decode(#[source] serde_json::Error),
}

type Result<T> = std::result::Result<T, ClientError>;

pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    pub fn new(socket: PathBuf) -> Self {
        AdminClient { socket }
    }

    /// `path` may carry a query.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// One request, its JSON answer read as `T`. The typed methods below are built on it.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let (status, bytes) = self.send(method, path, body).await?;
        if !status.is_success() {
            let (kind, message) = match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => (Some(e.kind), e.error),
                Err(_) => (None, String::from_utf8_lossy(&bytes).into_owned()),
            };
            return Err(ClientError::Api { status: status.as_u16(), kind, message });
        }
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// The status of a GET whose answer is not JSON (`/readyz`, `/healthz`).
    pub async fn status(&self, path: &str) -> Result<hyper::StatusCode> {
        Ok(self.send(Method::GET, path, None::<&()>).await?.0)
    }

    /// One request, its status and body as they came.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(hyper::StatusCode, Bytes)> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|error| {
            let socket = self.socket.display().to_string();
            match error.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => ClientError::NotRunning(socket),
                std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(socket),
                _ => ClientError::Connect { socket, error },
            }
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(ClientError::Handshake)?;
        tokio::spawn(conn);
        let body = match body {
            Some(b) => Full::new(Bytes::from(serde_json::to_vec(b).map_err(ClientError::Encode)?)),
            None => Full::new(Bytes::new()),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "ferry")
            .header("content-type", "application/json")
            .body(body)?;
        let resp = sender.send_request(req).await.map_err(ClientError::Closed)?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(ClientError::Read)?.to_bytes();
        Ok((status, bytes))
    }
}

/// The typed methods, one line per route: `name(params) -> Answer = METHOD path[, body]`.
macro_rules! typed {
    (@body) => { None::<&()> };
    (@body $body:ident) => { Some($body) };
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $answer:ty = $method:ident $path:expr $(, $body:ident)?;)*) => {
        impl AdminClient {
            $($(#[$doc])* pub async fn $name(&self, $($arg: $ty),*) -> Result<$answer> {
                self.call(Method::$method, &$path, typed!(@body $($body)?)).await
            })*
        }
    };
}

typed! {
    list_nodes() -> Vec<NodeView> = GET routes::NODES;
    node(name: &NodeName) -> NodeView = GET routes::node(name);
    /// The node's effective settings, each with the layer it comes from.
    merged_node(name: &NodeName) -> MergedNodeView = GET with_query(&routes::node(name), &NodeQuery { merged: true })?;
    add_nodes(nodes: &AddNodes) -> Changed = POST routes::NODES, nodes;
    set_nodes(change: &SetNodes) -> Changed = PATCH routes::NODES, change;
    delete_nodes(names: &Names) -> Changed = DELETE routes::NODES, names;
    /// What the node reported when it last phoned home; `None` if it never did.
    boot_info(name: &NodeName) -> Option<BootInfo> = GET routes::node_boot(name);
    list_profiles() -> Vec<ProfileView> = GET routes::PROFILES;
    profile(name: &ProfileName) -> ProfileView = GET routes::profile(name);
    add_profiles(profiles: &AddProfiles) -> Changed = POST routes::PROFILES, profiles;
    set_profiles(change: &SetProfiles) -> Changed = PATCH routes::PROFILES, change;
    delete_profiles(names: &Names) -> Changed = DELETE routes::PROFILES, names;
    /// Profiles and nodes in one transaction (or, with `dry_run`, checked only).
    add_inventory(inventory: &AddInventory) -> InventoryAdded = POST routes::INVENTORY, inventory;
    list_tunnels() -> Vec<TunnelView> = GET routes::TUNNELS;
    /// Closes the node's tunnel; `changed` is 0 if it had none.
    revoke_tunnel(node: &NodeName) -> Changed = DELETE routes::tunnel(node);
    known_hosts() -> Vec<KnownHost> = GET routes::KNOWN_HOSTS;
    server_info() -> ServerInfo = GET routes::SERVER;
    list_servers() -> Vec<ServerView> = GET routes::SERVERS;
    /// Forgets a server gone for good; refused while it is alive.
    remove_server(id: &str) -> Changed = DELETE routes::server_record(id);
    list_images() -> Vec<ImageRecord> = GET routes::IMAGES;
    image(name: &str) -> ImageRecord = GET routes::image(name);
    /// Registers an image whose artifacts are already in the server's object store.
    add_image(image: &AddImage) -> Changed = POST routes::IMAGES, image;
    /// The server's check that a sealed root opens with the key it holds.
    image_verify(name: &str) -> ImageVerified = GET routes::image_verify(name);
    delete_image(name: &str) -> Changed = DELETE routes::image(name);
    list_secrets() -> Vec<SecretView> = GET routes::SECRETS;
    set_secret(name: &str, secret: &SecretSet) -> Changed = PUT routes::secret(name), secret;
    delete_secret(name: &str, scope: &SecretScopeQuery) -> Changed = DELETE with_query(&routes::secret(name), scope)?;
    /// Every node's TPM, or one node's.
    list_tpms(only: &TpmQuery) -> Vec<TpmView> = GET with_query(routes::TPMS, only)?;
    register_tpm(node: &NodeName, tpm: &TpmRegister) -> Changed = PUT routes::node_tpm(node), tpm;
    clear_tpm(node: &NodeName) -> Changed = DELETE routes::node_tpm(node);
    approve_tpm(node: &NodeName, approval: &TpmApprove) -> TpmView = POST routes::node_tpm_approve(node), approval;
    tpm_quote(node: &NodeName) -> TpmQuoteView = GET routes::node_tpm_quote(node);
    learn_tpm(node: &NodeName, approval: &TpmLearn) -> TpmLearned = POST routes::node_tpm_learn(node), approval;
    audit(query: &AuditQuery) -> Vec<AuditEntry> = GET with_query(routes::AUDIT, query)?;
    /// The new token, shown this once.
    create_token(token: &TokenCreate) -> TokenCreated = POST routes::TOKENS, token;
    list_tokens() -> Vec<TokenInfo> = GET routes::TOKENS;
    revoke_token(name: &str) -> Changed = DELETE routes::token(name);
    /// The host CAs still trusted, the inventory's host patterns, the revoked host keys.
    ssh_known_hosts() -> SshKnownHosts = GET routes::SSH_KNOWN_HOSTS;
    ssh_cas() -> Vec<SshCaView> = GET routes::SSH_CAS;
    ssh_rotate_ca(rotate: &SshCaRotate) -> SshCaView = POST routes::SSH_CAS, rotate;
    ssh_certificates(query: &SshCertificateQuery) -> Vec<SshCertificateView> = GET with_query(routes::SSH_CERTIFICATES, query)?;
    ssh_revoke(node: &NodeName) -> SshRevoked = PUT routes::ssh_revocation(node);
    ssh_reinstate(node: &NodeName) -> Changed = DELETE routes::ssh_revocation(node);
    ssh_sign_user(req: &SshUserCertificateRequest) -> SshUserCertificate = POST routes::SSH_USER_CERTIFICATES, req;
}

/// `path?query`, or `path` when every field of the query is absent.
fn with_query(path: &str, query: &impl Serialize) -> Result<String> {
    let query = serde_urlencoded::to_string(query)?;
    Ok(if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_what_the_server_reads() {
        let audit = AuditQuery { subject: Some("node/n1".into()), limit: Some(20), since: None, after: Some(7) };
        let path = with_query(routes::AUDIT, &audit).unwrap();
        assert_eq!(path, "/v1/audit?subject=node%2Fn1&limit=20&after=7");
        let read: AuditQuery = serde_urlencoded::from_str(path.split_once('?').unwrap().1).unwrap();
        assert_eq!(read, audit);
        assert_eq!(with_query(routes::TPMS, &TpmQuery::default()).unwrap(), "/v1/tpm");
        let merged = with_query(&routes::node("n1"), &NodeQuery { merged: true }).unwrap();
        assert_eq!(merged, "/v1/nodes/n1?merged=true");
        let scope = SecretScopeQuery { node: None, profile: Some("compute".into()) };
        assert_eq!(with_query(&routes::secret("munge.key"), &scope).unwrap(), "/v1/secrets/munge.key?profile=compute");
    }
}
