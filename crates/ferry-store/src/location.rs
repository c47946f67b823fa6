//! Where the store lives: a SQLite file or a PostgreSQL database.

use crate::StoreError;
use std::fmt;
use std::path::PathBuf;

/// A store location. [`fmt::Display`] never shows a password.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite database file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://user:password@host:port/database?...`).
    Postgres(String),
}

impl StoreLocation {
    /// `postgres://…` or `postgresql://…` is PostgreSQL; `sqlite:PATH`, `sqlite://PATH`
    /// or a plain path is SQLite. Another `scheme://` is refused rather than taken for a
    /// file name.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(StoreError::BadRequest("empty database location".into()));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(s.to_owned()));
        }
        if let Some(path) = s.strip_prefix("sqlite://").or_else(|| s.strip_prefix("sqlite:")) {
            if path.is_empty() {
                return Err(StoreError::BadRequest(format!("{s:?} names no database file")));
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            let looks_like_scheme = !scheme.is_empty()
                && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && scheme.as_bytes()[0].is_ascii_alphabetic();
            if looks_like_scheme {
                return Err(StoreError::BadRequest(format!(
                    "unsupported database URL scheme {scheme:?}: use postgres://..., sqlite:PATH or a file path"
                )));
            }
        }
        Ok(StoreLocation::Sqlite(PathBuf::from(s)))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreLocation::Postgres(_))
    }
}

impl std::str::FromStr for StoreLocation {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<PathBuf> for StoreLocation {
    fn from(p: PathBuf) -> Self {
        StoreLocation::Sqlite(p)
    }
}

/// A PostgreSQL URL with the password of its user info (and a `password=` query
/// parameter) replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut out = String::from(&url[..scheme_end]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_end..];
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
        None => out.push_str(tail),
    }
    out
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => write!(f, "{}", p.display()),
            StoreLocation::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

/// Like `Display`: the password stays hidden in logs and panics too.
impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            StoreLocation::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let pg = |s: &str| StoreLocation::Postgres(s.into());
        let lite = |s: &str| StoreLocation::Sqlite(s.into());
        assert_eq!(StoreLocation::parse("postgres://u@h/db").unwrap(), pg("postgres://u@h/db"));
        assert_eq!(StoreLocation::parse("postgresql://h:5433/db").unwrap(), pg("postgresql://h:5433/db"));
        assert_eq!(StoreLocation::parse("sqlite:/var/lib/ferry/ferry.db").unwrap(), lite("/var/lib/ferry/ferry.db"));
        assert_eq!(StoreLocation::parse("sqlite:///var/lib/ferry/ferry.db").unwrap(), lite("/var/lib/ferry/ferry.db"));
        assert_eq!(StoreLocation::parse("sqlite://ferry.db").unwrap(), lite("ferry.db"));
        assert_eq!(StoreLocation::parse("/tmp/x y/ferry.db").unwrap(), lite("/tmp/x y/ferry.db"));
        assert_eq!(StoreLocation::parse("ferry.db").unwrap(), lite("ferry.db"));
        assert!(StoreLocation::parse("").is_err());
        assert!(StoreLocation::parse("sqlite:").is_err());
        assert!(StoreLocation::parse("mysql://h/db").is_err());
    }

    #[test]
    fn display_hides_the_password() {
        let cases = [
            ("postgres://ferry:s3cret@db:5432/ferry", "postgres://ferry:***@db:5432/ferry"),
            ("postgres://ferry:p%40ss@db/ferry?sslmode=require", "postgres://ferry:***@db/ferry?sslmode=require"),
            ("postgres://ferry@db/ferry", "postgres://ferry@db/ferry"),
            ("postgres://db/ferry?user=f&password=s3cret", "postgres://db/ferry?user=f&password=***"),
            ("postgresql://a:b@h", "postgresql://a:***@h"),
        ];
        for (url, shown) in cases {
            let loc = StoreLocation::parse(url).unwrap();
            assert_eq!(loc.to_string(), shown);
            assert!(!format!("{loc:?}").contains("s3cret"));
        }
    }
}
