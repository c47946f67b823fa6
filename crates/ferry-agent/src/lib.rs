//! ferry's node agent (`ferry agent`): the node side of enrollment, the tunnel-only
//! datasource and phone-home.
//!
//! 1. Read `ferry.server=`, `ferry.pubkey=` (the server's WireGuard key, pinned) and
//!    `ferry.node=` from the kernel command line (pins baked into the initramfs override
//!    the command line's, see `baked`; flags override both), and the chassis asset tag
//!    from DMI.
//! 2. Generate a WireGuard key pair in memory; ask the server for a nonce; send the MAC
//!    of the interface that routes to the server, the public key, the nonce and, when
//!    the node name is known, the asset-tag proof (an HMAC keyed by the tag over the
//!    nonce, the public key and the node name: the tag itself never leaves the node).
//!    With a TPM (`ferry.tpm[=TCTI]`, `--tpm`), a round trip comes first: the EK, its
//!    certificate and a fresh AK go to the server, which answers with a credential
//!    bound to both and the PCRs to quote; the activated secret and the quote (its
//!    qualifying data binds the nonce, the public key and the node) join the proofs.
//!    See the `tpm` module and `attest.rs`.
//! 3. Refuse a server whose key is not the pinned one, or whose tunnel parameters no
//!    ferry server sends (an impostor echoing the key: `enroll.rs`); otherwise bring up
//!    the tunnel (peer = the pinned key, allowed IPs = the server's tunnel address only),
//!    kept to root by an nftables rule (`guard.rs`), every request into it bound to its
//!    interface.
//! 4. Fetch mode: fetch the NoCloud documents through the tunnel into a private seed
//!    directory, phone home, remove the tunnel, print `ds=nocloud;s=file://SEED/`.
//!    cloud-init mode: print `ds=nocloud-net;s=DATASOURCE_URL` and hold the tunnel until
//!    SIGTERM (`ferry agent teardown`).
//!
//! **Node name and the asset tag.** The server identifies the node by its MAC and checks
//! the proof with that node's name, so the agent must know its name to prove the tag: it
//! takes it from `--node`, else `ferry.node=`. With neither, no asset-tag proof is sent,
//! and the server refuses a node whose policy requires the asset tag — unless the TPM
//! round trip told the agent the name the server recognised (then that name is used).
//!
//! Standard output carries only the `ds=` line, which [`run`] prints itself (in
//! cloud-init mode it must appear before the agent starts holding the tunnel); logs go
//! to standard error via `tracing` (the caller installs the subscriber).
//!
//! `--timeout` bounds everything before the tunnel is released: MAC discovery,
//! enrollment retries, the tunnel probe, fetching and phone-home.
//!
//! **Several servers** (`ferry.server=URL1,URL2,...`, `ferry.pubkey=K1,K2,...`: every
//! server's key is pinned, and an answer must offer one of them). Enrollment retries go
//! round the list with back-off. A server lost after enrolling (its tunnel does not
//! answer within `--tunnel-timeout`, or phone-home fails) means: remove the tunnel,
//! make a fresh key and enroll at the next server. Re-enrolling replaces the node's
//! tunnel wherever it was, so the node never needs to know which server failed. A
//! cloud-init-mode agent holds the tunnel and watches its server; when it is lost it
//! moves the same interface to the next server (`watch.rs`).
//!
//! With `--image-root` (fetch mode), the node's image root comes between the seed and
//! phone-home: its key and digest through the tunnel, the archive from the provisioning
//! listener, checked, then unpacked with its extended attributes (`image.rs`).
//!
//! Exit codes ([`AgentError::exit_code`]): 0 ok, 2 usage or configuration, 3 refused by
//! the server, 4 impostor (key mismatch, or an answer pointing outside the tunnel), 5
//! server unreachable or timed out, 6 tunnel, fetch or image failure, 7 image refused
//! (not the image the tunnel vouched for; nothing unpacked), 1 anything else.

mod args;
mod attest;
pub mod baked;
pub mod cmdline;
mod config;
mod enroll;
mod error;
mod guard;
mod host_keys;
mod http;
mod http_pool;
mod image;
mod image_download;
mod mac;
mod machine;
mod netlink;
mod network_config;
mod phone_home;
mod retry;
mod seed;
mod selinux;
mod session;
mod state;
pub mod tcti;
#[cfg(feature = "tpm")]
pub mod tpm;
mod tunnel;
mod watch;

#[cfg(test)]
mod failover_tests;
#[cfg(test)]
mod machine_tests;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod test_fakes;
#[cfg(test)]
mod watch_tests;

pub use args::{AgentArgs, Mode, TeardownArgs};
pub use error::AgentError;
pub use host_keys::HostKeys;
pub use machine::Outcome;
pub use state::{AgentState, STATE_FILE};

/// The agent's parsers of outside input (the kernel command line's server URLs and
/// certificate pins, the server's answers), for the cargo-fuzz targets in `fuzz/`
/// (docs/fuzzing.md) and nothing else: re-exported here so that their modules stay private.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::attest::{decode as decode_credential_challenge, CredentialChallenge, PCR_COUNT};
    pub use crate::config::{parse_pin, ServerUrl};
    pub use crate::enroll::check_inside_tunnel;
    pub use crate::host_keys::check_certificates;
    pub use crate::http::{parse_retry_after, Response, MAX_ERROR_TEXT, MAX_RETRY_AFTER};
}

use config::Config;
use mac::MacError;
use retry::{Deadline, RetryPolicy};

/// Runs the agent. In fetch mode it returns once the seed is written and the tunnel is
/// removed; in cloud-init mode once the tunnel is released (SIGTERM/SIGINT, TTL) or,
/// with kernel WireGuard and no `--hold`, right after the datasource line is printed.
pub async fn run(args: AgentArgs) -> Result<Outcome, AgentError> {
    let cfg = Config::from_args(&args)?;
    let deadline = Deadline::after(cfg.timeout);
    // Opened first, so a missing or broken TPM is reported at once.
    let tpm = match &cfg.tpm {
        Some(tcti) => Some(attest::open(tcti).await?),
        None => None,
    };
    let mac = match cfg.mac {
        Some(mac) => mac,
        None => discover_mac(&cfg, &deadline).await?,
    };
    let transport = http::HyperTransport::new(cfg.tls_pins.clone());
    let mut agent = machine::Agent::new(cfg, mac, transport, tunnel::WgTunnels, Box::new(std::io::stdout()));
    if let Some(tpm) = tpm {
        agent = agent.with_tpm(tpm);
    }
    agent.deadline = deadline;
    agent.run().await
}

/// `ferry agent teardown`: stops a holding cloud-init mode agent (SIGTERM, then waits),
/// or removes the kernel interface a detached one left, and removes the state file.
/// Succeeds when there is nothing to do.
pub async fn teardown(args: TeardownArgs) -> Result<(), AgentError> {
    state::teardown(args).await
}

/// Finds the MAC, retrying while the network is not ready, within `--timeout`.
async fn discover_mac(cfg: &Config, deadline: &Deadline) -> Result<ferry_core::MacAddr, AgentError> {
    let mut retry = RetryPolicy::new(cfg.tuning.retry_initial, cfg.tuning.retry_max);
    loop {
        match mac::discover(cfg.first_server(), &cfg.sys_class_net).await {
            Ok(mac) => return Ok(mac),
            Err(MacError::Fatal(e)) => return Err(e),
            Err(MacError::NotYet(why)) => {
                // No server answered: there is no Retry-After to honour.
                let wait = retry.delay(None);
                tracing::warn!("network not ready: {why}; retrying in {:.1} s", wait.as_secs_f64());
                if !deadline.sleep_within(wait).await {
                    return Err(AgentError::Unreachable {
                        server: cfg.first_server().base.clone(),
                        secs: deadline.total().as_secs(),
                        last: why,
                    });
                }
            }
        }
    }
}
