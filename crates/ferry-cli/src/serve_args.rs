//! `ferry serve`'s flags: each sets (over its `FERRY_*` variable, which clap reads too)
//! what the configuration file says.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/ferry.example.toml).
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory [default: /var/lib/ferry].
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log line format.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// The sealing key file (32 bytes, mode 0600) [default: DATA_DIR/secrets.key], e.g.
    /// on a separate, encrypted or removable volume.
    #[arg(long, env = "FERRY_SECRETS_KEY")]
    pub secrets_key: Option<PathBuf>,
    /// The store: an SQLite file [default: DATA_DIR/ferry.db] or postgres://USER@HOST/DB
    /// (several servers may share one PostgreSQL database; see [cluster]).
    #[arg(long, env = "FERRY_STORE", value_name = "URL|PATH")]
    pub store: Option<String>,
    /// This server's id among those sharing the store [default: the host name].
    #[arg(long, env = "FERRY_SERVER_ID")]
    pub server_id: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl ServeArgs {
    /// What these flags (or, for each flag not given, its `FERRY_*` variable: clap reads
    /// both) set over the configuration file; `socket` is the global `--socket`.
    pub fn overrides(self, socket: Option<PathBuf>) -> ferry_server::Overrides {
        ferry_server::Overrides {
            config_file: self.config,
            data_dir: self.data_dir,
            admin_socket: socket,
            log_format: self.log_format.map(|f| match f {
                LogFormatArg::Text => ferry_server::LogFormat::Text,
                LogFormatArg::Json => ferry_server::LogFormat::Json,
            }),
            secrets_key: self.secrets_key,
            store: self.store,
            server_id: self.server_id,
        }
    }
}
