use thiserror::Error;

/// Every way inventory input can be wrong. Messages name the offending value and say
/// what is expected, because they reach the administrator unchanged.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    #[error("invalid {kind} {value:?}: {reason}")]
    Invalid { kind: &'static str, value: String, reason: String },
    #[error("invalid hostlist {input:?}: {reason}")]
    Hostlist { input: String, reason: String },
    #[error("profile cycle: {0}; remove one of these parent links")]
    ProfileCycle(String),
    #[error("unknown profile {0:?}: create it with `ferry profile add {0}` first")]
    UnknownProfile(String),
    #[error("unknown field {0:?} (see `ferry node unset --help` for the list of fields)")]
    UnknownField(String),
}

impl CoreError {
    pub(crate) fn invalid(kind: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        CoreError::Invalid { kind, value: value.into(), reason: reason.into() }
    }
}
