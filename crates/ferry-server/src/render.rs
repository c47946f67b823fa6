//! Renders a node's cloud-init NoCloud documents from its merged settings.

use ferry_api::admin::MergedNodeView;
use minijinja::{Environment, ErrorKind};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// The secrets a node's templates may use (`{{ secret("munge.key") }}`,
/// `{{ secret_base64("munge.key") }}`), and the names a rendering used, for the audit.
/// Only the tunnel datasource renders templates, so secrets never leave the tunnel.
#[derive(Default)]
pub struct TemplateSecrets {
    values: BTreeMap<String, Zeroizing<Vec<u8>>>,
    used: Mutex<BTreeSet<String>>,
}

impl TemplateSecrets {
    pub fn new(values: BTreeMap<String, Zeroizing<Vec<u8>>>) -> Arc<Self> {
        Arc::new(TemplateSecrets { values, used: Mutex::default() })
    }

    /// Names the templates asked for (each once).
    pub fn used(&self) -> Vec<String> {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    fn get(&self, name: &str) -> Result<&[u8], minijinja::Error> {
        let value = self.values.get(name).ok_or_else(|| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("no secret {name:?} for this node (see ferry secret list; set it with ferry secret set)"),
            )
        })?;
        self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned());
        Ok(value)
    }
}

/// Whether any of the node's templates may call `secret()` (saves opening them).
pub fn mentions_secrets(node: &MergedNodeView) -> bool {
    let ci = &node.settings.cloud_init;
    [&ci.user_data, &ci.vendor_data, &ci.network_config]
        .iter()
        .any(|t| t.as_deref().is_some_and(|t| t.contains("secret")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    MetaData,
    UserData,
    VendorData,
    NetworkConfig,
}

impl Document {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "meta-data" => Document::MetaData,
            "user-data" => Document::UserData,
            "vendor-data" => Document::VendorData,
            "network-config" => Document::NetworkConfig,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Document::MetaData => "meta-data",
            Document::UserData => "user-data",
            Document::VendorData => "vendor-data",
            Document::NetworkConfig => "network-config",
        }
    }
}

/// What templates see: `node.*`, plus `tags`, `interfaces`, `meta` and `ferry.*`.
#[derive(Serialize)]
struct Context<'a> {
    node: NodeContext<'a>,
    tags: &'a BTreeMap<String, String>,
    interfaces: &'a BTreeMap<String, ferry_core::Interface>,
    meta: &'a BTreeMap<String, serde_json::Value>,
    ferry: FerryContext<'a>,
}

#[derive(Serialize)]
struct NodeContext<'a> {
    name: &'a str,
    hostname: &'a str,
    /// The inventory's domain and `NAME.DOMAIN`, when a domain is set.
    domain: Option<&'a str>,
    fqdn: Option<String>,
    profiles: Vec<&'a str>,
    comment: Option<&'a str>,
    image: Option<&'a str>,
    kernel: Option<&'a str>,
    tags: &'a BTreeMap<String, String>,
    interfaces: &'a BTreeMap<String, ferry_core::Interface>,
}

#[derive(Serialize)]
pub struct FerryContext<'a> {
    pub tunnel_address: String,
    pub server_address: String,
    pub datasource_url: &'a str,
    pub phone_home_url: &'a str,
    /// The node's agent fetches the seed and phones home itself (fetch mode).
    pub fetch_mode: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the {doc} template of node {node} does not render: {source}")]
    Template { doc: &'static str, node: String, source: minijinja::Error },
}

/// The rendered document, or None when the node has none (network-config only).
pub fn render(
    doc: Document,
    node: &MergedNodeView,
    ferry: FerryContext<'_>,
    secrets: &Arc<TemplateSecrets>,
) -> Result<Option<String>, RenderError> {
    let s = &node.settings;
    match doc {
        Document::MetaData => {
            let mut meta = serde_json::Map::new();
            meta.insert("instance-id".into(), node.name.as_str().into());
            meta.insert("local-hostname".into(), node.name.as_str().into());
            for (k, v) in &s.cloud_init.meta_data {
                meta.insert(k.clone(), v.clone());
            }
            // JSON is YAML: cloud-init's NoCloud parser reads it as is.
            Ok(Some(serde_json::to_string_pretty(&meta).unwrap_or_default() + "\n"))
        }
        Document::UserData => Ok(Some(match &s.cloud_init.user_data {
            Some(t) => template(doc, node, t, ferry, secrets)?,
            None => "#cloud-config\n{}\n".into(),
        })),
        Document::VendorData => Ok(Some(match &s.cloud_init.vendor_data {
            Some(t) => template(doc, node, t, ferry, secrets)?,
            None => default_vendor_data(&node.name, &ferry),
        })),
        Document::NetworkConfig => {
            s.cloud_init.network_config.as_ref().map(|t| template(doc, node, t, ferry, secrets)).transpose()
        }
    }
}

/// Without a vendor-data of its own, a node gets:
/// - fetch mode: its agent phoned home and removed the tunnel before cloud-init runs, and
///   reported (and had certified) the host keys in /etc/ssh: cloud-init must keep them;
/// - cloud-init mode: a MIME multipart of cloud-init's `phone_home` pointed at ferry
///   (which closes the tunnel when configuration is done) and a vendor script that has
///   the node's SSH host keys certified through the tunnel first (`scripts-vendor` runs
///   before `phone-home`; user-data cannot override a vendor script, as it would a
///   vendor `runcmd`).
fn default_vendor_data(node: &ferry_core::NodeName, ferry: &FerryContext<'_>) -> String {
    if ferry.fetch_mode {
        return "#cloud-config\n# the agent reported (and had certified) these host keys: keep them\nssh_deletekeys: false\n"
            .into();
    }
    let boundary = "==ferry-vendor-data==";
    let part = |content_type: &str, extra: &str, body: &str| {
        format!("--{boundary}\nContent-Type: {content_type}; charset=\"utf-8\"\nMIME-Version: 1.0\n{extra}\n{body}\n")
    };
    let phone_home =
        format!("#cloud-config\nphone_home:\n  url: {}/$INSTANCE_ID\n  post: all\n  tries: 10\n", ferry.phone_home_url);
    format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n{}{}--{boundary}--\n",
        part("text/cloud-config", "", &phone_home),
        part(
            "text/x-shellscript",
            "Content-Disposition: attachment; filename=\"ferry-ssh-host-certificates\"\n",
            &crate::ssh_issue::vendor_script(ferry.datasource_url, node),
        ),
    )
}

fn template(
    doc: Document,
    node: &MergedNodeView,
    source: &str,
    ferry: FerryContext<'_>,
    secrets: &Arc<TemplateSecrets>,
) -> Result<String, RenderError> {
    let err = |source| RenderError::Template { doc: doc.name(), node: node.name.to_string(), source };
    let s = &node.settings;
    let mut env = Environment::new();
    let text = secrets.clone();
    env.add_function("secret", move |name: &str| -> Result<String, minijinja::Error> {
        String::from_utf8(text.get(name)?.to_vec()).map_err(|_| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("secret {name:?} is not UTF-8 text; use secret_base64({name:?})"),
            )
        })
    });
    let binary = secrets.clone();
    env.add_function("secret_base64", move |name: &str| -> Result<String, minijinja::Error> {
        use base64::Engine;
        Ok(base64::engine::general_purpose::STANDARD.encode(binary.get(name)?))
    });
    let tmpl = env.template_from_str(source).map_err(err)?;
    let ctx = Context {
        node: NodeContext {
            name: node.name.as_str(),
            hostname: node.name.as_str(),
            domain: s.domain.as_deref(),
            fqdn: ferry_core::ssh::fqdn(&node.name, s),
            profiles: node.profiles.iter().map(|p| p.as_str()).collect(),
            comment: s.comment.as_deref(),
            image: s.image.as_deref(),
            kernel: s.kernel.as_deref(),
            tags: &s.tags,
            interfaces: &s.interfaces,
        },
        tags: &s.tags,
        interfaces: &s.interfaces,
        meta: &s.cloud_init.meta_data,
        ferry,
    };
    let mut out = tmpl.render(ctx).map_err(err)?;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::admin::SecretState;

    fn node(settings: serde_json::Value) -> MergedNodeView {
        MergedNodeView {
            name: ferry_core::NodeName::parse("n001").unwrap(),
            profiles: vec![ferry_core::ProfileName::parse("compute").unwrap()],
            settings: serde_json::from_value(settings).unwrap(),
            fields: vec![],
            asset_tag: SecretState::Unset,
        }
    }

    fn none() -> Arc<TemplateSecrets> {
        TemplateSecrets::new(BTreeMap::new())
    }

    fn ctx() -> FerryContext<'static> {
        FerryContext {
            tunnel_address: "100.64.0.2".into(),
            server_address: "100.64.0.1".into(),
            datasource_url: "http://100.64.0.1:8471/",
            phone_home_url: "http://100.64.0.1:8471/phone-home",
            fetch_mode: false,
        }
    }

    #[test]
    fn documents_render_per_node() {
        let n = node(serde_json::json!({
            "tags": {"rack": "r7"},
            "cloud_init": {
                "meta_data": {"region": "hq"},
                "user_data": "#cloud-config\nhostname: {{ node.name }}\nwrite_files:\n- path: /etc/rack\n  content: \"{{ tags.rack }} {{ ferry.tunnel_address }}\"",
            }
        }));
        let meta = render(Document::MetaData, &n, ctx(), &none()).unwrap().unwrap();
        let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
        assert_eq!((meta["instance-id"].as_str(), meta["region"].as_str()), (Some("n001"), Some("hq")));
        let user = render(Document::UserData, &n, ctx(), &none()).unwrap().unwrap();
        assert!(user.contains("hostname: n001") && user.contains("\"r7 100.64.0.2\""), "{user}");
        let vendor = render(Document::VendorData, &n, ctx(), &none()).unwrap().unwrap();
        assert!(vendor.contains("url: http://100.64.0.1:8471/phone-home/$INSTANCE_ID"), "{vendor}");
        assert!(vendor.starts_with("Content-Type: multipart/mixed;"), "{vendor}");
        assert!(vendor.contains("Content-Type: text/x-shellscript;") && vendor.contains("#!/usr/bin/python3"));
        assert!(vendor.contains(r#"\"certify\":\"/ssh/host-certificates?node=n001\""#), "{vendor}");
        let fetch =
            render(Document::VendorData, &n, FerryContext { fetch_mode: true, ..ctx() }, &none()).unwrap().unwrap();
        assert!(!fetch.contains("phone_home"), "fetch-mode nodes have phoned home already: {fetch}");
        assert!(fetch.contains("ssh_deletekeys: false"), "cloud-init keeps the keys the agent reported: {fetch}");
        assert!(render(Document::NetworkConfig, &n, ctx(), &none()).unwrap().is_none());
    }

    #[test]
    fn secrets_render_as_text_or_base64_and_are_recorded() {
        let n = node(serde_json::json!({"cloud_init": {
            "user_data": "#cloud-config\npassword: {{ secret('root.pw') }}\nkey: {{ secret_base64('munge.key') }}",
            "vendor_data": "{{ secret('missing') }}",
            "network_config": "{{ secret('munge.key') }}",
        }}));
        assert!(mentions_secrets(&n));
        let values = BTreeMap::from([
            ("root.pw".to_string(), Zeroizing::new(b"s3cret".to_vec())),
            ("munge.key".to_string(), Zeroizing::new(vec![0xff, 0x00, 0x10])),
        ]);
        let secrets = TemplateSecrets::new(values);
        let user = render(Document::UserData, &n, ctx(), &secrets).unwrap().unwrap();
        assert!(user.contains("password: s3cret") && user.contains("key: /wAQ"), "{user}");
        assert_eq!(secrets.used(), ["munge.key", "root.pw"]);
        let missing = render(Document::VendorData, &n, ctx(), &secrets).unwrap_err().to_string();
        assert!(missing.contains("no secret \"missing\""), "{missing}");
        let binary = render(Document::NetworkConfig, &n, ctx(), &secrets).unwrap_err().to_string();
        assert!(binary.contains("not UTF-8") && !binary.contains('\u{ff}'), "{binary}");
        assert!(!mentions_secrets(&node(serde_json::json!({}))));
    }

    #[test]
    fn broken_templates_are_errors() {
        let n = node(serde_json::json!({"cloud_init": {"user_data": "{% if %}"}}));
        assert!(render(Document::UserData, &n, ctx(), &none()).is_err());
    }
}
