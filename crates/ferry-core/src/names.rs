//! Names that can only exist in valid form: parsed once at the edge.

use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Checks an RFC 1123 host label: it becomes a hostname, a DNS name and part of URLs
/// and iPXE scripts, so nothing outside `[a-z0-9-]` may pass.
fn check_label(kind: &'static str, s: &str, extra: &[char]) -> Result<(), CoreError> {
    if s.is_empty() || s.len() > 63 {
        return Err(CoreError::invalid(kind, s, "must be 1 to 63 characters"));
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || extra.contains(&c);
    if let Some(bad) = s.chars().find(|c| !ok(*c)) {
        return Err(CoreError::invalid(
            kind,
            s,
            format!("character {bad:?} not allowed (use lowercase letters, digits and '-')"),
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(CoreError::invalid(kind, s, "must not start or end with '-'"));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, CoreError> {
                check_label($kind, s, $extra)?;
                Ok(Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = CoreError;
            fn try_from(s: String) -> Result<Self, CoreError> {
                Self::parse(&s)
            }
        }
        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, CoreError> {
                Self::parse(s)
            }
        }
    };
}

name_type!(
    /// A node name: also its hostname, so an RFC 1123 label.
    NodeName,
    "node name",
    &[]
);
name_type!(
    /// A profile name: like a node name, '_' also allowed.
    ProfileName,
    "profile name",
    &['_']
);

impl NodeName {
    /// Whether `fqdn` (what the node reported at phone-home) is one of this node's own
    /// names: a DNS name of RFC 1123 labels (any case, at most 253 characters) whose
    /// first label is the node's name. Only such a name is put next to the node's host
    /// key in `ferry known-hosts`, so a node cannot get its key vouched for another
    /// host (`login1.cluster`, `*`, or a list smuggled in with a comma).
    pub fn owns_fqdn(&self, fqdn: &str) -> bool {
        let lower = fqdn.to_ascii_lowercase();
        let mut labels = lower.split('.');
        fqdn.len() <= 253
            && labels.next() == Some(self.as_str())
            && labels.all(|l| check_label("DNS label", l, &[]).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_owns_only_fqdns_that_start_with_its_name() {
        let n1 = NodeName::parse("n1").unwrap();
        for own in ["n1", "n1.cluster", "N1.Cluster.Example.org"] {
            assert!(n1.owns_fqdn(own), "{own}");
        }
        for other in ["login1.cluster", "n10.cluster", "n1.cluster,login1", "*", "n1.*", "n1..x", "n1.x y", ""] {
            assert!(!n1.owns_fqdn(other), "{other:?}");
        }
        assert!(!n1.owns_fqdn(&format!("n1.{}", "a.".repeat(130))), "longer than 253");
    }

    #[test]
    fn node_names() {
        assert!(NodeName::parse("n001").is_ok());
        assert!(NodeName::parse("gpu-a1").is_ok());
        for bad in ["", "N001", "n 1", "-n", "n-", "a.b", "n/1", "ü", &"a".repeat(64)] {
            assert!(NodeName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ProfileName::parse("compute_gpu").is_ok());
        assert!(NodeName::parse("compute_gpu").is_err());
    }

    #[test]
    fn serde_rejects_invalid() {
        assert!(serde_json::from_str::<NodeName>("\"Bad Name\"").is_err());
        assert_eq!(serde_json::from_str::<NodeName>("\"n1\"").unwrap().as_str(), "n1");
    }
}
