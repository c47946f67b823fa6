//! Every admin API route, spelled once. The server registers its handlers under these
//! templates, the remote listener checks roles against [`ROUTES`], and the CLI's client
//! builds its request paths with the functions below, so a path renamed here is renamed
//! everywhere at compile time.

use std::fmt::Display;
use Access::{Administer, LocalOnly, Operate, Read};
use Method::{Delete, Get, Patch, Post, Put};

/// Declares the path templates (axum's `{param}` syntax) and [`ALL_PATHS`], the list the
/// tests check [`ROUTES`] against.
macro_rules! paths {
    ($($(#[$doc:meta])* $name:ident = $path:literal;)*) => {
        $($(#[$doc])* pub const $name: &str = $path;)*
        /// Every template above.
        pub const ALL_PATHS: &[&str] = &[$($name),*];
    };
}

paths! {
    NODES = "/v1/nodes";
    NODE = "/v1/nodes/{name}";
    /// What the node reported when it last phoned home.
    NODE_BOOT = "/v1/nodes/{name}/boot";
    NODE_TPM = "/v1/nodes/{name}/tpm";
    NODE_TPM_APPROVE = "/v1/nodes/{name}/tpm/approve";
    /// The PCR values of the node's latest quote that verified (`ferry node tpm learn`).
    NODE_TPM_QUOTE = "/v1/nodes/{name}/tpm/quote";
    /// POST pins an approved quote as the node's (or a profile's) PCR policy.
    NODE_TPM_LEARN = "/v1/nodes/{name}/tpm/learn";
    PROFILES = "/v1/profiles";
    /// Profiles and nodes in one transaction (`ferry import`).
    INVENTORY = "/v1/inventory";
    PROFILE = "/v1/profiles/{name}";
    TUNNELS = "/v1/tunnels";
    TUNNEL = "/v1/tunnels/{node}";
    KNOWN_HOSTS = "/v1/known-hosts";
    /// The server answering.
    SERVER = "/v1/server";
    /// Every server sharing the store.
    SERVERS = "/v1/servers";
    /// One server's record (DELETE: forget a server gone for good).
    SERVER_RECORD = "/v1/servers/{id}";
    IMAGES = "/v1/images";
    IMAGE = "/v1/images/{name}";
    /// The server's own check of an image: its sealed root opens with the key it holds.
    IMAGE_VERIFY = "/v1/images/{name}/verify";
    SECRETS = "/v1/secrets";
    SECRET = "/v1/secrets/{name}";
    TPMS = "/v1/tpm";
    AUDIT = "/v1/audit";
    STATUS = "/v1/status";
    /// OpenMetrics text.
    METRICS = "/metrics";
    HEALTHZ = "/healthz";
    READYZ = "/readyz";
    TOKENS = "/v1/tokens";
    TOKEN = "/v1/tokens/{name}";
    /// The host CAs, inventory host patterns and revoked host keys clients need.
    SSH_KNOWN_HOSTS = "/v1/ssh/known-hosts";
    /// The SSH CAs; POST rotates one.
    SSH_CAS = "/v1/ssh/cas";
    SSH_CERTIFICATES = "/v1/ssh/certificates";
    /// PUT revokes a node's host certificates (and holds new ones); DELETE lifts that.
    SSH_REVOCATION = "/v1/ssh/revocations/{node}";
    /// POST signs a short-lived SSH user certificate for an admin's key.
    SSH_USER_CERTIFICATES = "/v1/ssh/user-certificates";
}

/// A template with its one parameter filled in (as given: callers pass validated names).
fn fill(template: &str, value: impl Display) -> String {
    match template.split_once('{').and_then(|(head, rest)| Some((head, rest.split_once('}')?.1))) {
        Some((head, tail)) => format!("{head}{value}{tail}"),
        None => template.to_owned(),
    }
}

pub fn node(name: impl Display) -> String {
    fill(NODE, name)
}
pub fn node_boot(name: impl Display) -> String {
    fill(NODE_BOOT, name)
}
pub fn node_tpm(name: impl Display) -> String {
    fill(NODE_TPM, name)
}
pub fn node_tpm_approve(name: impl Display) -> String {
    fill(NODE_TPM_APPROVE, name)
}
pub fn node_tpm_quote(name: impl Display) -> String {
    fill(NODE_TPM_QUOTE, name)
}
pub fn node_tpm_learn(name: impl Display) -> String {
    fill(NODE_TPM_LEARN, name)
}
pub fn profile(name: impl Display) -> String {
    fill(PROFILE, name)
}
pub fn tunnel(node: impl Display) -> String {
    fill(TUNNEL, node)
}
pub fn server_record(id: impl Display) -> String {
    fill(SERVER_RECORD, id)
}
pub fn image(name: impl Display) -> String {
    fill(IMAGE, name)
}
pub fn image_verify(name: impl Display) -> String {
    fill(IMAGE_VERIFY, name)
}
pub fn secret(name: impl Display) -> String {
    fill(SECRET, name)
}
pub fn token(name: impl Display) -> String {
    fill(TOKEN, name)
}
pub fn ssh_revocation(node: impl Display) -> String {
    fill(SSH_REVOCATION, node)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// What a route needs of a remote caller's token role. Callers on the unix socket,
/// vouched for by the kernel, may call every route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads: every role.
    Read,
    /// Day-to-day operations (revoking a tunnel): operators and admins.
    Operate,
    /// Changes to inventory, secrets, images and identities: admins.
    Administer,
    /// Served on the unix socket only (token management): the remote listener has no
    /// such route.
    LocalOnly,
}

/// One method on one path template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

const fn route(method: Method, path: &'static str, access: Access) -> Route {
    Route { method, path, access }
}

/// Every admin route and what it needs (HEAD goes with GET).
pub const ROUTES: &[Route] = &[
    route(Get, NODES, Read),
    route(Post, NODES, Administer),
    route(Patch, NODES, Administer),
    route(Delete, NODES, Administer),
    route(Get, NODE, Read),
    route(Get, NODE_BOOT, Read),
    route(Put, NODE_TPM, Administer),
    route(Delete, NODE_TPM, Administer),
    // Approving a TPM makes a machine a node's identity.
    route(Post, NODE_TPM_APPROVE, Administer),
    route(Get, NODE_TPM_QUOTE, Read),
    // Learning pins what a boot must measure: as strong a change as approving a TPM.
    route(Post, NODE_TPM_LEARN, Administer),
    route(Get, PROFILES, Read),
    route(Post, PROFILES, Administer),
    route(Patch, PROFILES, Administer),
    route(Delete, PROFILES, Administer),
    route(Get, PROFILE, Read),
    route(Post, INVENTORY, Administer),
    route(Get, TUNNELS, Read),
    route(Delete, TUNNEL, Operate),
    route(Get, KNOWN_HOSTS, Read),
    route(Get, SERVER, Read),
    route(Get, SERVERS, Read),
    route(Delete, SERVER_RECORD, Administer),
    route(Get, IMAGES, Read),
    route(Post, IMAGES, Administer),
    route(Get, IMAGE, Read),
    route(Delete, IMAGE, Administer),
    route(Get, IMAGE_VERIFY, Read),
    route(Get, SECRETS, Read),
    route(Put, SECRET, Administer),
    route(Delete, SECRET, Administer),
    route(Get, TPMS, Read),
    route(Get, AUDIT, Read),
    route(Get, STATUS, Read),
    route(Get, METRICS, Read),
    route(Get, HEALTHZ, Read),
    route(Get, READYZ, Read),
    route(Get, SSH_KNOWN_HOSTS, Read),
    route(Get, SSH_CAS, Read),
    // A new CA changes what every client must trust.
    route(Post, SSH_CAS, Administer),
    route(Get, SSH_CERTIFICATES, Read),
    // Revoking a compromised node's host identity is day-to-day, like revoking a tunnel;
    // lifting it vouches for the node again.
    route(Put, SSH_REVOCATION, Operate),
    route(Delete, SSH_REVOCATION, Administer),
    // A user certificate logs in to every node that trusts the user CA.
    route(Post, SSH_USER_CERTIFICATES, Administer),
    route(Get, TOKENS, LocalOnly),
    route(Post, TOKENS, LocalOnly),
    route(Delete, TOKEN, LocalOnly),
];

/// Whether a request path (no query) matches a template: same segments, a `{param}`
/// matching any non-empty one.
pub fn matches(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts.starts_with('{') && ts.ends_with('}') && !ps.is_empty() => {}
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return false,
        }
    }
}

/// The route `method path` is, if any (`method` as HTTP spells it; HEAD finds GET).
pub fn find(method: &str, path: &str) -> Option<&'static Route> {
    let method = if method == "HEAD" { "GET" } else { method };
    ROUTES.iter().find(|r| r.method.as_str() == method && matches(r.path, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_a_route_and_every_route_a_declared_path() {
        for path in ALL_PATHS {
            assert!(ROUTES.iter().any(|r| r.path == *path), "{path} has no entry in ROUTES");
        }
        for r in ROUTES {
            assert!(ALL_PATHS.contains(&r.path), "{r:?} uses a path not declared with paths!");
            let twice = ROUTES.iter().filter(|o| o.method == r.method && o.path == r.path).count();
            assert_eq!(twice, 1, "{r:?} is listed {twice} times");
        }
    }

    #[test]
    fn templates_have_at_most_one_parameter_and_fill_it() {
        for path in ALL_PATHS {
            assert!(path.matches('{').count() <= 1 && path.matches('{').count() == path.matches('}').count(), "{path}");
        }
        assert_eq!(node("n1"), "/v1/nodes/n1");
        assert_eq!(node_tpm_approve("n1"), "/v1/nodes/n1/tpm/approve");
        assert_eq!(tunnel("n1"), "/v1/tunnels/n1");
        assert_eq!(fill(NODES, "x"), NODES, "a template without a parameter stays as it is");
    }

    #[test]
    fn requests_find_their_route() {
        let found = |m: &str, p: &str| find(m, p).map(|r| (r.method, r.path));
        assert_eq!(found("GET", "/v1/nodes"), Some((Get, NODES)));
        assert_eq!(found("GET", "/v1/nodes/n1"), Some((Get, NODE)));
        assert_eq!(found("HEAD", "/v1/nodes/n1"), Some((Get, NODE)));
        assert_eq!(found("POST", "/v1/nodes/n1/tpm/approve"), Some((Post, NODE_TPM_APPROVE)));
        assert_eq!(found("DELETE", "/v1/tunnels/n1"), Some((Delete, TUNNEL)));
        assert_eq!(found("DELETE", "/v1/tunnels/"), None, "a parameter is never empty");
        assert_eq!(found("DELETE", "/v1/tunnels/n1/x"), None);
        assert_eq!(found("POST", "/v1/nodes/n1"), None);
        assert_eq!(found("GET", "/v1/nodesx"), None);
        // Every route finds itself from a filled-in path.
        for r in ROUTES {
            assert_eq!(find(r.method.as_str(), &fill(r.path, "n1")), Some(r));
        }
    }
}
