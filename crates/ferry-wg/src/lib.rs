//! WireGuard device management for ferry.
//!
//! The ferry server owns one WireGuard interface (default `ferry0`) and adds or removes
//! one peer per booting node. This crate gives it one interface, [`WgDevice`], over
//! three backends:
//!
//! - **kernel** ([`kernel::KernelDevice`], feature `kernel`): rtnetlink + the kernel's
//!   WireGuard generic netlink family;
//! - **userspace** ([`userspace::UserspaceDevice`]): ferry's own device loop in this
//!   process (boringtun's Noise state machine, TUN, one UDP socket), serving the
//!   standard UAPI socket so `wg show` and `wg set` work;
//! - **uapi** ([`uapi::UapiDevice`]): attach to an interface run by another process
//!   (wireguard-go) through `/var/run/wireguard/NAME.sock`.
//!
//! Every [`DeviceUpdate`] is applied as one request (one UAPI `set=1`), however many
//! peers it adds or removes.
//!
//! Devices are created in the network namespace of the calling thread.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_wg::WgError> {
//! use ferry_wg::{open_device, BackendChoice, DeviceUpdate, InterfaceSetup, PeerConfig, PrivateKey};
//! let setup = InterfaceSetup {
//!     addresses: vec!["100.64.0.1/16".parse().expect("literal")],
//!     private_key: Some(PrivateKey::generate()),
//!     listen_port: Some(51820),
//!     ..InterfaceSetup::default()
//! };
//! let dev = open_device("ferry0", BackendChoice::Auto, &setup).await?;
//! let node = PrivateKey::generate().public_key();
//! dev.apply(DeviceUpdate::new().add_peer(
//!     PeerConfig::new(node).allowed_ip("100.64.0.2/32".parse().expect("literal")),
//! )).await?;
//! println!("{} peers", dev.status().await?.peers.len());
//! dev.close().await
//! # }
//! ```

#![warn(missing_docs)]

mod config;
mod error;
#[cfg(feature = "kernel")]
pub mod kernel;
pub mod keys;
mod netlink;
pub mod uapi;
pub mod userspace;

use std::path::Path;

use async_trait::async_trait;

pub use config::{DeviceStatus, DeviceUpdate, PeerConfig, PeerStatus};
pub use error::WgError;
pub use ipnet::IpNet;
pub use keys::{KeyParseError, PrivateKey, PublicKey};

/// The interface name ferry uses by default.
pub const DEFAULT_INTERFACE: &str = "ferry0";
/// The default MTU: 1500 minus the largest WireGuard overhead (IPv6 outer header).
pub const DEFAULT_MTU: u16 = 1420;

/// Which implementation runs a device: what [`WgDevice::backend`] answers. Unlike
/// [`BackendChoice`] it is never `auto`: a device is one of these. Spelled `kernel`,
/// `userspace`, `uapi` (serde, feature `serde`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
pub enum BackendKind {
    /// The Linux kernel module.
    Kernel,
    /// ferry's userspace device, in this process.
    Userspace,
    /// Another process, reached over its UAPI socket.
    Uapi,
}

/// Which backend [`open_device`] should use. People write it as `auto`, `kernel`,
/// `userspace` or `uapi` (the server's `[wireguard] backend`, the agent's
/// `--wg-backend`); [`FromStr`](std::str::FromStr), [`Display`](std::fmt::Display),
/// serde (feature `serde`) and clap's `ValueEnum` (feature `clap`) all use those words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BackendChoice {
    /// Kernel WireGuard if the module is available, else userspace.
    #[default]
    Auto,
    /// The kernel module only.
    Kernel,
    /// ferry's userspace device inside this process (the interface lives as long as
    /// the process).
    Userspace,
    /// Attach to an interface run by another process (wireguard-go), through its UAPI socket.
    Uapi,
}

impl BackendChoice {
    /// Every choice, in the order they are documented.
    pub const ALL: [BackendChoice; 4] =
        [BackendChoice::Auto, BackendChoice::Kernel, BackendChoice::Userspace, BackendChoice::Uapi];

    /// The word a configuration or a flag uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Kernel => "kernel",
            BackendChoice::Userspace => "userspace",
            BackendChoice::Uapi => "uapi",
        }
    }
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no [`BackendChoice`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown WireGuard backend {0:?}: use auto, kernel, userspace or uapi")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for BackendChoice {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        BackendChoice::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| UnknownBackend(s.chars().take(32).collect()))
    }
}

/// How to set up an interface that [`open_device`] creates.
#[derive(Debug, Clone)]
pub struct InterfaceSetup {
    /// Addresses to assign, e.g. `100.64.0.1/16` (the prefix gives the route).
    pub addresses: Vec<IpNet>,
    /// Link MTU.
    pub mtu: u16,
    /// The device key; a random one is generated when `None`.
    pub private_key: Option<PrivateKey>,
    /// UDP listen port; a free one is picked when `None`.
    pub listen_port: Option<u16>,
}

impl Default for InterfaceSetup {
    fn default() -> Self {
        InterfaceSetup { addresses: Vec::new(), mtu: DEFAULT_MTU, private_key: None, listen_port: None }
    }
}

/// A WireGuard device.
#[async_trait]
pub trait WgDevice: Send + Sync + std::fmt::Debug {
    /// The interface name.
    fn name(&self) -> &str;
    /// The backend running it.
    fn backend(&self) -> BackendKind;
    /// Applies a batch of changes as one request.
    async fn apply(&self, update: DeviceUpdate) -> Result<(), WgError>;
    /// Reads the device's key, port and peers.
    async fn status(&self) -> Result<DeviceStatus, WgError>;
    /// Removes the interface (kernel, userspace) or just disconnects (uapi).
    async fn close(self: Box<Self>) -> Result<(), WgError>;
}

/// Opens the interface `name` with the chosen backend.
///
/// Kernel and userspace create the interface and apply `setup`. `Uapi` attaches to a
/// running one: of `setup` it applies only `private_key` and `listen_port`, if set
/// (addresses and MTU belong to whoever created the interface).
pub async fn open_device(
    name: &str,
    choice: BackendChoice,
    setup: &InterfaceSetup,
) -> Result<Box<dyn WgDevice>, WgError> {
    validate_interface_name(name)?;
    match choice {
        BackendChoice::Auto if cfg!(feature = "kernel") && kernel_module_available() => open_kernel(name, setup).await,
        BackendChoice::Auto | BackendChoice::Userspace => {
            Ok(Box::new(userspace::UserspaceDevice::create(name, setup).await?))
        }
        BackendChoice::Kernel => open_kernel(name, setup).await,
        BackendChoice::Uapi => {
            let dev = uapi::UapiDevice::attach(name).await?;
            let mut update = DeviceUpdate::new();
            if let Some(key) = &setup.private_key {
                update = update.private_key(key.clone());
            }
            if let Some(port) = setup.listen_port {
                update = update.listen_port(port);
            }
            if !update.is_empty() {
                dev.apply(update).await?;
            }
            Ok(Box::new(dev))
        }
    }
}

#[cfg(feature = "kernel")]
async fn open_kernel(name: &str, setup: &InterfaceSetup) -> Result<Box<dyn WgDevice>, WgError> {
    Ok(Box::new(kernel::KernelDevice::create(name, setup).await?))
}

#[cfg(not(feature = "kernel"))]
async fn open_kernel(_: &str, _: &InterfaceSetup) -> Result<Box<dyn WgDevice>, WgError> {
    Err(WgError::KernelUnavailable("ferry-wg was built without its `kernel` feature".into()))
}

/// Whether the kernel WireGuard module is loaded, built in, or loadable on demand.
///
/// Cheap: reads `/sys/module/wireguard` and the running kernel's `modules.dep` /
/// `modules.builtin`; it creates nothing.
pub fn kernel_module_available() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    module_available(Path::new("/sys/module"), &Path::new("/lib/modules").join(release.trim()))
}

fn module_available(sys_module: &Path, modules_dir: &Path) -> bool {
    if sys_module.join("wireguard").exists() {
        return true;
    }
    ["modules.dep", "modules.builtin"].iter().any(|f| {
        std::fs::read_to_string(modules_dir.join(f)).is_ok_and(|text| {
            text.lines().any(|l| {
                l.split(':').next().is_some_and(|m| m.ends_with("/wireguard.ko") || m.contains("/wireguard.ko."))
            })
        })
    })
}

/// Checks an interface name by ferry's one rule ([`ferry_core::net::interface_name_problem`]).
pub(crate) fn validate_interface_name(name: &str) -> Result<(), WgError> {
    match ferry_core::net::interface_name_problem(name) {
        Some(reason) => Err(WgError::InvalidName { name: name.chars().take(32).collect(), reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_choices_read_and_print_as_configured() {
        for (word, choice) in [
            ("auto", BackendChoice::Auto),
            ("kernel", BackendChoice::Kernel),
            ("userspace", BackendChoice::Userspace),
            ("uapi", BackendChoice::Uapi),
        ] {
            assert_eq!(word.parse::<BackendChoice>(), Ok(choice));
            assert_eq!(choice.to_string(), word);
        }
        assert_eq!(BackendChoice::default(), BackendChoice::Auto);
        for bad in ["", "Kernel", "wireguard-go", "kernel "] {
            let e = bad.parse::<BackendChoice>().expect_err(bad).to_string();
            assert!(e.contains("use auto, kernel, userspace or uapi"), "{e}");
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_the_same_words() {
        #[derive(serde::Deserialize)]
        struct Section {
            backend: BackendChoice,
        }
        for choice in BackendChoice::ALL {
            let json = format!("{{\"backend\":\"{choice}\"}}");
            assert_eq!(serde_json::from_str::<Section>(&json).expect("known word").backend, choice);
        }
        assert!(serde_json::from_str::<Section>(r#"{"backend":"wireguard-go"}"#).is_err());
        assert_eq!(serde_json::to_string(&BackendKind::Userspace).expect("json"), r#""userspace""#);
    }

    #[cfg(feature = "clap")]
    #[test]
    fn clap_offers_the_same_words() {
        use clap::ValueEnum;
        let words: Vec<String> = BackendChoice::value_variants()
            .iter()
            .filter_map(|b| b.to_possible_value())
            .map(|v| v.get_name().into())
            .collect();
        assert_eq!(words, BackendChoice::ALL.map(|b| b.to_string()));
    }

    #[test]
    /// The rule itself is ferry-core's (its tests list the names); here, its refusal
    /// as a `WgError`.
    fn interface_names() {
        assert!(validate_interface_name("ferry0").is_ok());
        let err = validate_interface_name("wg/0").expect_err("refused").to_string();
        assert!(err.starts_with("invalid interface name \"wg/0\": it contains a character"), "{err}");
    }

    #[test]
    fn kernel_module_detection() {
        let root = std::env::temp_dir().join(format!("ferry-wg-mod-{}", std::process::id()));
        let sys = root.join("sys");
        let lib = root.join("lib");
        std::fs::create_dir_all(&sys).expect("mkdir");
        std::fs::create_dir_all(&lib).expect("mkdir");
        assert!(!module_available(&sys, &lib), "nothing there");
        std::fs::write(lib.join("modules.dep"), "kernel/net/tun.ko:\n").expect("write");
        assert!(!module_available(&sys, &lib), "other modules only");
        std::fs::write(
            lib.join("modules.dep"),
            "kernel/drivers/net/wireguard/wireguard.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz\n",
        )
        .expect("write");
        assert!(module_available(&sys, &lib), "loadable module");
        std::fs::remove_file(lib.join("modules.dep")).expect("rm");
        std::fs::create_dir_all(sys.join("wireguard")).expect("mkdir");
        assert!(module_available(&sys, &lib), "loaded module");
        std::fs::remove_dir_all(&root).expect("cleanup");
        // This machine has no WireGuard module (see RECIPES.md): a cheap `false`.
        if !Path::new("/sys/module/wireguard").exists() {
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let dep = Path::new("/lib/modules").join(kernel.trim()).join("modules.dep");
            if !dep.exists() {
                assert!(!kernel_module_available());
            }
        }
    }
}
