//! In-process userspace backend: ferry's own WireGuard device loop around boringtun's
//! sans-IO Noise state machine (`noise::Tunn`), over a TUN interface and one UDP
//! socket, serving the standard UAPI socket so `wg show` and `wg set` work.
//!
//! Why not boringtun's `device` module (which ferry ran until the fifth performance
//! round): it demands cookies from every handshake beyond 100 per second, a constant,
//! so a boot storm's nodes beyond the first 100 each second waited WireGuard's 5 s
//! retransmission (56 nodes/s through real WireGuard in `ferry bench storm`); it
//! computes a Diffie-Hellman per added peer while holding its whole device locked, keeps
//! ~17 KiB per peer, panics when a peer is modified, and its sockets needed reaching
//! into from outside to get storm-sized buffers.
//!
//! Threads (named `wg-<role>-<interface>`, all in the network namespace of the caller
//! that created the device):
//! - `wg-udp`: receives datagrams in batches; decrypts data and writes it to TUN;
//!   checks handshake MACs, answers with cookies when under load, queues handshakes;
//! - `wg-tun`: reads packets from TUN, encrypts them for the peer that owns the
//!   destination, sends them;
//! - `wg-hs`: the handshakes (the Diffie-Hellman work), one queue, see [`load`];
//! - `wg-timers`: WireGuard's timers (retransmission, keepalive, rekey) every 250 ms,
//!   and the teardown: it deletes the interface, which wakes the TUN reader for good.
//! - `wg-uapi`: the UAPI socket (one short-lived thread per connection).

mod load;
mod patch;
mod peers;
mod tun;
mod uapi_server;
mod udp;
mod worker;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{DeviceStatus, DeviceUpdate, PeerStatus};
use crate::error::WgError;
use crate::keys::{PrivateKey, PublicKey};
use crate::{netlink, BackendKind, InterfaceSetup, WgDevice};
use load::{Counters, HandshakeQueue, Keys};
use patch::DevicePatch;
use peers::PeerTable;
use tun::Tun;
use udp::Udp;

/// How often WireGuard's timers run (as in boringtun's device and wireguard-go).
const TIMER_TICK: Duration = Duration::from_millis(250);
/// How long `close` waits for the device's threads.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// What the device's threads share.
pub(crate) struct Shared {
    name: String,
    keys: RwLock<Option<Arc<Keys>>>,
    peers: RwLock<PeerTable>,
    udp: RwLock<Arc<Udp>>,
    fwmark: AtomicU32,
    tun: Tun,
    queue: HandshakeQueue,
    counters: Counters,
    stopping: AtomicBool,
    /// Wakes the timer thread early (to stop).
    timer_wake: (Mutex<()>, Condvar),
    /// One configuration change at a time.
    config: Mutex<()>,
}

impl Shared {
    fn keys(&self) -> Option<Arc<Keys>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn peers(&self) -> std::sync::RwLockReadGuard<'_, PeerTable> {
        self.peers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn udp(&self) -> Arc<Udp> {
        self.udp.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Tells every thread to finish; the timer thread then deletes the interface.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.udp().shutdown();
        self.queue.close();
        let _guard = self.timer_wake.0.lock().unwrap_or_else(|p| p.into_inner());
        self.timer_wake.1.notify_all();
    }

    /// Applies a change, all or nothing: the only step that can fail (binding a new
    /// listen port) comes before anything is changed.
    fn apply(&self, patch: DevicePatch) -> Result<(), WgError> {
        let _one_at_a_time = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.udp();
        let fwmark = patch.fwmark.unwrap_or_else(|| self.fwmark.load(Ordering::Relaxed));
        let socket = match patch.listen_port {
            Some(port) if port != current.port() => Some(Arc::new(
                Udp::bind(port, fwmark)
                    .map_err(|e| WgError::rejected("set", &self.name, e.raw_os_error().unwrap_or(5)))?,
            )),
            _ => None,
        };
        if let (Some(mark), None) = (patch.fwmark, &socket) {
            current.set_mark(mark).map_err(|e| WgError::rejected("set", &self.name, e.raw_os_error().unwrap_or(5)))?;
        }
        self.fwmark.store(fwmark, Ordering::Relaxed);
        // The key first, then every session ends: a Noise state created meanwhile by a
        // worker with the old key is dropped by the reset below.
        let new_key = patch.private_key.as_ref().map(|k| k.public_key()).filter(|pk| Some(*pk) != self.public_key());
        if let (Some(_), Some(key)) = (new_key, &patch.private_key) {
            let secret = boringtun::x25519::StaticSecret::from(*key.as_bytes());
            *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Keys::new(secret)));
        }
        {
            let mut table = self.peers.write().unwrap_or_else(|p| p.into_inner());
            if new_key.is_some() {
                table.reset_sessions();
            }
            if patch.replace_peers {
                let named: HashSet<PublicKey> = patch.peers.iter().map(|p| p.public_key).collect();
                table.retain(|k| named.contains(k));
            }
            for peer in &patch.peers {
                table.apply(peer);
            }
        }
        if let Some(socket) = socket {
            let old = std::mem::replace(&mut *self.udp.write().unwrap_or_else(|p| p.into_inner()), socket);
            old.shutdown(); // the receiver wakes and picks up the new socket
        }
        Ok(())
    }

    fn public_key(&self) -> Option<PublicKey> {
        self.keys().map(|k| PublicKey(*k.public.as_bytes()))
    }

    fn status(&self) -> DeviceStatus {
        let peers: Vec<PeerStatus> = self.peers().iter().map(|p| p.status()).collect();
        DeviceStatus { public_key: self.public_key(), listen_port: Some(self.udp().port()), peers }
    }
}

/// An in-process WireGuard interface (see the module docs).
pub struct UserspaceDevice {
    shared: Arc<Shared>,
    threads: Mutex<Option<Vec<JoinHandle<()>>>>,
    api: Mutex<Option<uapi_server::ApiServer>>,
}

impl std::fmt::Debug for UserspaceDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceDevice").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

/// What the device's handshake defences did so far (see the module docs of `load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandshakeCounters {
    /// Handshake initiations the handshake thread took (one Diffie-Hellman each).
    pub initiations_processed: u64,
    /// Handshake initiations answered with a response.
    pub handshakes: u64,
    /// Cookie replies sent (under load, to initiations without a valid cookie).
    pub cookie_replies: u64,
    /// Handshake messages dropped (queue full, over the per-source rate, bad MAC).
    pub dropped: u64,
    /// Noise states created (each one Diffie-Hellman with a peer's key).
    pub sessions_created: u64,
}

impl UserspaceDevice {
    /// Creates the interface in the calling thread's network namespace, sets its key
    /// (`setup.private_key`, or a new random one), listen port, addresses, MTU, and up.
    pub async fn create(name: &str, setup: &InterfaceSetup) -> Result<Self, WgError> {
        crate::validate_interface_name(name)?;
        let api_path = crate::uapi::socket_path(name);
        // Refuse to take over the socket of a live implementation (maybe in another namespace).
        match crate::uapi::UapiClient::new(name).connect().await {
            Ok(_) => return Err(WgError::InUse { interface: name.to_string(), path: api_path }),
            Err(WgError::SocketNotFound { .. }) => {}
            Err(_) => {} // a stale socket: replaced below
        }
        let userspace = |message: String| WgError::Userspace { interface: name.to_string(), message };
        let tun = Tun::create(name).map_err(|e| userspace(format!("opening /dev/net/tun: {e}")))?;
        let udp = Udp::bind(setup.listen_port.unwrap_or(0), 0)
            .map_err(|e| WgError::rejected("set", name, e.raw_os_error().unwrap_or(5)))?;
        let key = setup.private_key.clone().unwrap_or_else(PrivateKey::generate);
        let secret = boringtun::x25519::StaticSecret::from(*key.as_bytes());
        drop(key);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            keys: RwLock::new(Some(Arc::new(Keys::new(secret)))),
            peers: RwLock::new(PeerTable::default()),
            udp: RwLock::new(Arc::new(udp)),
            fwmark: AtomicU32::new(0),
            tun,
            queue: HandshakeQueue::default(),
            counters: Counters::default(),
            stopping: AtomicBool::new(false),
            timer_wake: (Mutex::new(()), Condvar::new()),
            config: Mutex::new(()),
        });
        let device =
            UserspaceDevice { threads: Mutex::new(Some(Vec::new())), api: Mutex::new(None), shared: shared.clone() };
        // From here on an error drops `device`, which stops the threads and deletes the interface.
        device.spawn(worker::udp_loop, "udp")?;
        device.spawn(worker::tun_loop, "tun")?;
        device.spawn(worker::handshake_loop, "hs")?;
        device.spawn(worker::timer_loop, "timers")?;
        let api = uapi_server::serve(&api_path, shared)?;
        *device.api.lock().unwrap_or_else(|p| p.into_inner()) = Some(api);
        let nl = netlink::connect(name)?;
        netlink::configure_link(&nl, name, &setup.addresses, setup.mtu).await?;
        Ok(device)
    }

    fn spawn(&self, body: fn(Arc<Shared>), role: &str) -> Result<(), WgError> {
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("wg-{role}-{}", self.shared.name))
            .spawn(move || body(shared))
            .map_err(|e| WgError::io(format!("starting the {role} thread of {}", self.shared.name), e))?;
        if let Some(threads) = self.threads.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            threads.push(handle);
        }
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.threads.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// What the handshake defences did so far.
    pub fn handshake_counters(&self) -> HandshakeCounters {
        let c = &self.shared.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        HandshakeCounters {
            initiations_processed: get(&c.initiations_processed),
            handshakes: get(&c.handshakes),
            cookie_replies: get(&c.cookie_replies),
            dropped: get(&c.dropped),
            sessions_created: get(&c.sessions_created),
        }
    }
}

impl Drop for UserspaceDevice {
    fn drop(&mut self) {
        // Without `close`: the threads finish (and the interface goes) on their own.
        if self.threads.lock().unwrap_or_else(|p| p.into_inner()).take().is_some() {
            self.shared.stop();
        }
    }
}

#[async_trait]
impl WgDevice for UserspaceDevice {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn backend(&self) -> BackendKind {
        BackendKind::Userspace
    }

    async fn apply(&self, update: DeviceUpdate) -> Result<(), WgError> {
        if !self.is_open() {
            return Err(WgError::Closed(self.shared.name.clone()));
        }
        update.validate()?;
        self.shared.apply(update.into())
    }

    async fn status(&self) -> Result<DeviceStatus, WgError> {
        if !self.is_open() {
            return Err(WgError::Closed(self.shared.name.clone()));
        }
        Ok(self.shared.status())
    }

    async fn close(self: Box<Self>) -> Result<(), WgError> {
        let Some(threads) = self.threads.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err(WgError::Closed(self.shared.name.clone()));
        };
        drop(self.api.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.shared.stop();
        let name = self.shared.name.clone();
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        match tokio::time::timeout(CLOSE_LIMIT, joined).await {
            Ok(_) => Ok(()),
            Err(_) => Err(WgError::Timeout {
                what: format!("the threads of interface {name} to finish"),
                secs: CLOSE_LIMIT.as_secs(),
            }),
        }
    }
}

/// Deletes the interface (from the timer thread, which lives in its namespace): the
/// kernel then detaches the TUN queue and wakes its blocked reader.
fn teardown(name: &str) {
    let deleted = tokio::runtime::Builder::new_current_thread().enable_all().build().map(|rt| {
        rt.block_on(async {
            let nl = netlink::connect(name)?;
            netlink::delete_link(&nl, name).await
        })
    });
    match deleted {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(interface = name, error = %e, "could not delete the interface"),
        Err(e) => tracing::warn!(interface = name, error = %e, "could not delete the interface"),
    }
}
