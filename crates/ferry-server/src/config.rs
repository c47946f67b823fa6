//! Server configuration: built-in defaults, then an optional TOML file, then `FERRY_*`
//! environment variables and command-line flags (applied by the CLI).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/ferry";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/ferry/admin.sock";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where ferry keeps its state: the database, the secrets key, later the WireGuard key.
    pub data_dir: PathBuf,
    /// The admin API's unix socket (mode 0600).
    pub admin_socket: PathBuf,
    /// Users besides root and the server's own user that may use the admin socket
    /// (names or numeric uids). The socket's mode must also let them connect.
    pub admin_users: Vec<String>,
    /// `text` or `json` log lines on stderr.
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: DEFAULT_DATA_DIR.into(),
            admin_socket: DEFAULT_ADMIN_SOCKET.into(),
            admin_users: Vec::new(),
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is invalid: {source}")]
    Parse { path: String, source: toml::de::Error },
}

impl Config {
    /// Reads a TOML config file; keys not in the file keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: shown, source })
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("ferry.db")
    }

    pub fn secrets_key_path(&self) -> PathBuf {
        self.data_dir.join("secrets.key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_unknown_keys_fail() {
        let example = include_str!("../../../docs/ferry.example.toml");
        let c: Config = toml::from_str(example).unwrap();
        assert_eq!(c, Config { admin_users: vec!["ferryadm".into()], ..Config::default() });
        assert!(toml::from_str::<Config>("data_dri = \"/x\"").is_err());
    }
}
