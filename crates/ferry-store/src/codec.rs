//! Values as the database holds them: names and JSON documents read back (a row that
//! does not parse is reported as corrupt, naming the record), and request checks shared
//! by several subjects.

use crate::StoreError;
use std::collections::HashSet;

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(what.to_owned(), e.to_string()))
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// A stored value parsed from its text (a name, a key, a mode), or `Corrupt` naming
/// `what`.
pub(crate) fn parse_name<T>(what: &str, s: &str) -> Result<T, StoreError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| StoreError::Corrupt(what.to_owned(), e.to_string()))
}

/// Refuses a request that names one thing twice.
pub(crate) fn check_unique<T: std::hash::Hash + Eq + std::fmt::Display>(
    names: impl IntoIterator<Item = T>,
) -> Result<(), StoreError> {
    let mut seen = HashSet::new();
    for n in names {
        if seen.contains(&n) {
            return Err(StoreError::BadRequest(format!("{n} is listed twice in one request")));
        }
        seen.insert(n);
    }
    Ok(())
}
