//! A simulated node's real WireGuard tunnel, inside the bench process: boringtun's
//! sans-IO Noise implementation (`noise::Tunn`) does the handshake and encrypts every
//! packet, smoltcp is the node's TCP/IP stack inside the tunnel, and each node has its
//! own UDP socket connected to the server's device.
//!
//! Why one UDP socket per node rather than a few shared ones demultiplexed by receiver
//! index: the kernel then does the demultiplexing, and the task that owns a node's state
//! reads its own datagrams; shared sockets would need a dispatcher task handing every
//! datagram to the node's task (a wake-up per packet) for no saving in system calls.
//! Only the nodes in flight hold a socket (at most `--concurrency`), and each node has
//! its own source port, so the server sees N endpoints as it would on a real network.

use boringtun::noise::{Tunn, TunnResult};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// The server device's MTU (ferry's default), so TCP segments fit one datagram.
const MTU: usize = ferry_wg::DEFAULT_MTU as usize;
/// Room for a packet plus WireGuard's overhead; at least a handshake message.
const DATAGRAM: usize = MTU + 80;
/// How often WireGuard's timers run (handshake retransmission, keepalives), as in
/// boringtun's and the kernel's devices.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// The largest HTTP response accepted (documents are a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// What the node's tunnel needs from its enrollment.
pub struct TunnelParams {
    pub node_key: [u8; 32],
    pub server_key: [u8; 32],
    /// The server's WireGuard device (UDP).
    pub endpoint: SocketAddr,
    pub node_address: Ipv4Addr,
    /// The datasource, inside the tunnel.
    pub datasource: SocketAddr,
    /// Sender index of this node's handshakes (unique per node, for the record only).
    pub index: u32,
}

/// IP packets between smoltcp and WireGuard.
#[derive(Default)]
struct Packets {
    /// Decrypted packets for smoltcp.
    rx: VecDeque<Vec<u8>>,
    /// Packets smoltcp sent, to encrypt.
    tx: Vec<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let r = f(&mut packet);
        self.0.push(packet);
        r
    }
}

impl Device for Packets {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((Rx(packet), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps
    }
}

/// The WireGuard half: the Noise state and the UDP socket.
struct Wire {
    udp: UdpSocket,
    /// The same socket for sending: a plain non-blocking send. (tokio's `try_send`
    /// refuses to try until the reactor has reported the new socket writable, which
    /// silently dropped every node's first handshake initiation.)
    sender: std::net::UdpSocket,
    tunn: Tunn,
    out: Box<[u8]>,
    /// Cookie replies received (the server is "under load" and wants a second try).
    cookies: u32,
    /// Handshake initiations sent, retransmissions included.
    initiations: u32,
    last_timers: Instant,
}

impl Wire {
    /// Sends without waiting: on loopback a full send buffer means the datagram is lost,
    /// which WireGuard and TCP recover from as on a real network.
    fn send(udp: &std::net::UdpSocket, initiations: &mut u32, datagram: &[u8]) {
        if datagram.first() == Some(&1) {
            *initiations += 1;
        }
        let _ = udp.send(datagram);
    }

    fn receive(&mut self, datagram: &[u8], packets: &mut Packets) {
        if datagram.first() == Some(&3) {
            self.cookies += 1;
        }
        match self.tunn.decapsulate(None, datagram, &mut self.out) {
            TunnResult::WriteToNetwork(reply) => {
                Self::send(&self.sender, &mut self.initiations, reply);
                // Packets queued while the handshake was under way.
                while let TunnResult::WriteToNetwork(p) = self.tunn.decapsulate(None, &[], &mut self.out) {
                    Self::send(&self.sender, &mut self.initiations, p);
                }
            }
            TunnResult::WriteToTunnelV4(packet, _) => packets.rx.push_back(packet.to_vec()),
            TunnResult::WriteToTunnelV6(..) | TunnResult::Done | TunnResult::Err(_) => {}
        }
    }

    fn encrypt(&mut self, packet: &[u8]) {
        if let TunnResult::WriteToNetwork(datagram) = self.tunn.encapsulate(packet, &mut self.out) {
            Self::send(&self.sender, &mut self.initiations, datagram);
        }
    }

    fn timers(&mut self) {
        if self.last_timers.elapsed() >= TIMER_TICK {
            self.last_timers = Instant::now();
            if let TunnResult::WriteToNetwork(p) = self.tunn.update_timers(&mut self.out) {
                Self::send(&self.sender, &mut self.initiations, p);
            }
        }
    }
}

/// One node's tunnel and TCP/IP stack.
pub struct Tunnel {
    wire: Wire,
    iface: Interface,
    sockets: SocketSet<'static>,
    packets: Packets,
    inbound: Box<[u8]>,
    datasource: IpEndpoint,
    epoch: Instant,
    next_port: u16,
}

/// A failed step: a short, fixed description (counted by kind in the report).
pub type WireResult<T> = Result<T, &'static str>;

impl Tunnel {
    pub async fn open(p: &TunnelParams) -> WireResult<Tunnel> {
        // Each node sends from an address of its own in 127.0.0.0/8 (all of it is local):
        // the server's device sees one endpoint per node, as on a real network, so its
        // per-source defences (cookies, wireguard-go's rate limit) apply per node.
        let i = p.index;
        let source = Ipv4Addr::new(127, 1 + ((i >> 16) % 254) as u8, (i >> 8) as u8, i as u8);
        let sender = std::net::UdpSocket::bind((source, 0)).map_err(|_| "udp bind")?;
        sender.connect(p.endpoint).map_err(|_| "udp connect")?;
        sender.set_nonblocking(true).map_err(|_| "udp socket")?;
        let udp = UdpSocket::from_std(sender.try_clone().map_err(|_| "udp socket")?).map_err(|_| "udp socket")?;
        let secret = boringtun::x25519::StaticSecret::from(p.node_key);
        let server = boringtun::x25519::PublicKey::from(p.server_key);
        let tunn = Tunn::new(secret, server, None, None, p.index & 0x00ff_ffff, None);
        let mut packets = Packets::default();
        let epoch = Instant::now();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand::random();
        let mut iface = Interface::new(config, &mut packets, smoltcp::time::Instant::from_micros(0));
        let own = p.node_address;
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(own), 32));
        });
        let std::net::IpAddr::V4(gateway) = p.datasource.ip() else {
            return Err("datasource is not IPv4");
        };
        iface.routes_mut().add_default_ipv4_route(gateway).map_err(|_| "route")?;
        Ok(Tunnel {
            wire: Wire {
                udp,
                sender,
                tunn,
                out: vec![0; DATAGRAM].into(),
                cookies: 0,
                initiations: 0,
                last_timers: Instant::now(),
            },
            iface,
            sockets: SocketSet::new(Vec::new()),
            packets,
            inbound: vec![0; DATAGRAM].into(),
            datasource: IpEndpoint::new(IpAddress::Ipv4(gateway), p.datasource.port()),
            epoch,
            next_port: 40_000,
        })
    }

    /// Cookie replies received so far.
    pub fn cookies(&self) -> u32 {
        self.wire.cookies
    }

    /// Handshake initiations sent so far, retransmissions included.
    pub fn initiations(&self) -> u32 {
        self.wire.initiations
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// The WireGuard handshake: the initiation now, retransmitted by WireGuard's own
    /// timers (every 5 s, as a real peer would, also after a cookie reply) until a
    /// session exists or `deadline`.
    pub async fn handshake(&mut self, deadline: Instant) -> WireResult<()> {
        if let TunnResult::WriteToNetwork(p) = self.wire.tunn.format_handshake_initiation(&mut self.wire.out, false) {
            Wire::send(&self.wire.sender, &mut self.wire.initiations, p);
        }
        while self.wire.tunn.stats().0.is_none() {
            self.step(deadline).await.map_err(|_| "handshake timeout")?;
        }
        Ok(())
    }

    /// Runs smoltcp and WireGuard once, then waits for a datagram, smoltcp's next timer,
    /// WireGuard's timer tick or `deadline` (an error), whichever comes first.
    async fn step(&mut self, deadline: Instant) -> WireResult<()> {
        self.poll();
        let now = Instant::now();
        if now >= deadline {
            return Err("timeout");
        }
        let smol = self.iface.poll_delay(self.now(), &self.sockets).map_or(TIMER_TICK, Duration::from);
        let wait = smol.min(TIMER_TICK).min(deadline - now);
        if let Ok(received) = tokio::time::timeout(wait, self.wire.udp.recv(&mut self.inbound)).await {
            // A refused datagram (ICMP port unreachable): the server's device is gone.
            let n = received.map_err(|_| "udp receive")?;
            self.wire.receive(&self.inbound[..n], &mut self.packets);
            while let Ok(n) = self.wire.udp.try_recv(&mut self.inbound) {
                self.wire.receive(&self.inbound[..n], &mut self.packets);
            }
            // Hand what arrived to the sockets before the caller looks at them.
            self.poll();
        }
        self.wire.timers();
        Ok(())
    }

    fn poll(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.packets, &mut self.sockets);
        for packet in std::mem::take(&mut self.packets.tx) {
            self.wire.encrypt(&packet);
        }
    }

    /// A TCP connection to the datasource through the tunnel.
    pub async fn connect(&mut self, deadline: Instant) -> WireResult<SocketHandle> {
        let mut socket =
            tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 64 * 1024]), tcp::SocketBuffer::new(vec![0; 8 * 1024]));
        let port = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(40_000);
        socket.connect(self.iface.context(), self.datasource, port).map_err(|_| "tcp connect")?;
        let handle = self.sockets.add(socket);
        loop {
            match self.sockets.get::<tcp::Socket>(handle).state() {
                tcp::State::Established => return Ok(handle),
                tcp::State::SynSent | tcp::State::SynReceived => {}
                _ => return Err("connection refused"),
            }
            self.step(deadline).await.map_err(|_| "connect timeout")?;
        }
    }

    /// Sends one HTTP/1.1 request on `conn` and reads its whole response.
    pub async fn exchange(
        &mut self,
        conn: SocketHandle,
        request: &[u8],
        deadline: Instant,
    ) -> WireResult<(u16, Vec<u8>)> {
        let (mut sent, mut response) = (0, Vec::new());
        loop {
            let socket = self.sockets.get_mut::<tcp::Socket>(conn);
            if sent < request.len() && socket.can_send() {
                sent += socket.send_slice(&request[sent..]).map_err(|_| "send")?;
            }
            while socket.can_recv() {
                socket
                    .recv(|b| {
                        response.extend_from_slice(b);
                        (b.len(), ())
                    })
                    .map_err(|_| "receive")?;
            }
            if let Some(parsed) = super::wire_http::parse_response(&response)? {
                return Ok(parsed);
            }
            if response.len() > MAX_RESPONSE {
                return Err("response too large");
            }
            if !socket.may_recv() && !socket.can_recv() {
                return Err("connection closed");
            }
            self.step(deadline).await.map_err(|_| "response timeout")?;
        }
    }

    /// Closes `conn` (our FIN goes out with the next poll); the connection finishes
    /// closing in the background while the tunnel is polled.
    pub fn close(&mut self, conn: SocketHandle) {
        self.sockets.get_mut::<tcp::Socket>(conn).close();
    }

    /// Gives the connections until `deadline` to finish closing (so the server sees a
    /// clean end, not a reset), without failing the node if they do not.
    pub async fn finish(&mut self, deadline: Instant) {
        let open = |s: &SocketSet| {
            s.iter().any(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(t) => !matches!(t.state(), tcp::State::Closed | tcp::State::TimeWait),
                #[allow(unreachable_patterns)]
                _ => false,
            })
        };
        while open(&self.sockets) {
            if self.step(deadline).await.is_err() {
                return;
            }
        }
        self.poll();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's first initiation leaves at once and a responder's answer completes the
    /// handshake: no 5 s wait for WireGuard's retransmission (tokio's `try_send` on a
    /// new socket used to drop that first datagram).
    #[tokio::test]
    async fn handshake_sends_its_first_initiation_at_once() {
        let server_secret = boringtun::x25519::StaticSecret::random_from_rng(rand::rngs::OsRng);
        let node_secret = boringtun::x25519::StaticSecret::random_from_rng(rand::rngs::OsRng);
        let server_public = boringtun::x25519::PublicKey::from(&server_secret);
        let node_public = boringtun::x25519::PublicKey::from(&node_secret);
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let params = TunnelParams {
            node_key: node_secret.to_bytes(),
            server_key: server_public.to_bytes(),
            endpoint: server.local_addr().expect("addr"),
            node_address: Ipv4Addr::new(100, 64, 0, 2),
            datasource: "100.64.0.1:8471".parse().expect("addr"),
            index: 7,
        };
        let mut tunnel = Tunnel::open(&params).await.expect("open");
        let node = tokio::spawn(async move {
            let r = tunnel.handshake(Instant::now() + Duration::from_secs(20)).await;
            (r, tunnel.initiations())
        });
        let mut responder = Tunn::new(server_secret, node_public, None, None, 1, None);
        let mut buf = vec![0; DATAGRAM];
        let (n, from) = tokio::time::timeout(Duration::from_secs(2), server.recv_from(&mut buf))
            .await
            .expect("the first initiation arrives within 2 s, not after the 5 s retransmission")
            .expect("recv");
        assert_eq!((buf[0], n), (1, 148), "a handshake initiation");
        let mut out = vec![0; DATAGRAM];
        match responder.decapsulate(Some(from.ip()), &buf[..n], &mut out) {
            TunnResult::WriteToNetwork(response) => server.send_to(response, from).await.expect("send"),
            other => panic!("the responder did not answer: {other:?}"),
        };
        let (result, initiations) = node.await.expect("node task");
        assert_eq!(result, Ok(()));
        assert_eq!(initiations, 1, "no retransmission was needed");
    }
}
