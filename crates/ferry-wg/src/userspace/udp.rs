//! The network side of the userspace device: one UDP socket for IPv4 and IPv6 (dual
//! stack; IPv4 only where IPv6 is disabled), received in batches (`recvmmsg`).
//!
//! Buffers are set here, on our own socket: a boot storm sends bursts from hundreds of
//! nodes at once, and the system default (208 KiB on Debian) overflowed in the bench
//! (each lost datagram costs a node a TCP retransmission, ~1 s for a lost SYN).

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::libc;
use nix::sys::socket::{self, setsockopt, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6};

/// Receive and send buffer of the device's socket: room for a few thousand datagrams,
/// so a storm's burst waits in the queue instead of being dropped. Memory is used only
/// while datagrams wait.
pub(crate) const SOCKET_BUFFER: usize = 4 << 20;
/// Datagrams taken per `recvmmsg`.
const BATCH: usize = 32;
/// Room for the largest datagram (a peer may use a larger MTU than ours).
const SLOT: usize = 1 << 16;

/// The device's UDP socket.
#[derive(Debug)]
pub(crate) struct Udp {
    socket: UdpSocket,
    /// An IPv6 socket (IPv4 peers appear as v4-mapped addresses).
    v6: bool,
    port: u16,
}

impl Udp {
    /// Binds `port` (0: the kernel picks one) on every address, with [`SOCKET_BUFFER`]
    /// buffers (beyond `net.core.rmem_max` when the process may: `SO_RCVBUFFORCE`,
    /// CAP_NET_ADMIN) and `fwmark` if not 0.
    pub(crate) fn bind(port: u16, fwmark: u32) -> io::Result<Udp> {
        let (fd, v6) = match socket::socket(AddressFamily::Inet6, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None) {
            Ok(fd) => (fd, true),
            Err(nix::errno::Errno::EAFNOSUPPORT) => {
                (socket::socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?, false)
            }
            Err(e) => return Err(e.into()),
        };
        if v6 {
            setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
            let any = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
            socket::bind(fd.as_raw_fd(), &any)?;
        } else {
            let any = SockaddrIn::from(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port));
            socket::bind(fd.as_raw_fd(), &any)?;
        }
        set_buffers(&fd);
        if fwmark != 0 {
            setsockopt(&fd, sockopt::Mark, &fwmark)?;
        }
        let socket = UdpSocket::from(fd);
        let port = socket.local_addr()?.port();
        Ok(Udp { socket, v6, port })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Marks the socket's packets (policy routing), as `fwmark` asks.
    pub(crate) fn set_mark(&self, fwmark: u32) -> io::Result<()> {
        Ok(setsockopt(&self.socket, sockopt::Mark, &fwmark)?)
    }

    /// Sends one datagram; a full buffer or an unreachable peer loses it, as the
    /// network would (WireGuard and TCP recover).
    pub(crate) fn send_to(&self, datagram: &[u8], to: SocketAddr) {
        let to = match to {
            SocketAddr::V4(a) if self.v6 => SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0)),
            other => other,
        };
        let _ = self.socket.send_to(datagram, to);
    }

    /// Wakes a receiver blocked on this socket for good (its next receive returns empty
    /// datagrams at once).
    pub(crate) fn shutdown(&self) {
        let _ = socket::shutdown(self.socket.as_raw_fd(), socket::Shutdown::Both);
    }
}

fn set_buffers(fd: &OwnedFd) {
    if setsockopt(fd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(fd, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(fd, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(fd, sockopt::SndBuf, &SOCKET_BUFFER);
    }
}

/// Buffers for one `recvmmsg`: owned by the one thread that receives.
pub(crate) struct Batch {
    data: Box<[u8]>,
    names: Box<[libc::sockaddr_storage; BATCH]>,
    lens: [usize; BATCH],
    count: usize,
}

impl Batch {
    pub(crate) fn new() -> Batch {
        Batch {
            data: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            // SAFETY: `sockaddr_storage` is plain old data; all zeroes is a valid value.
            names: Box::new(unsafe { std::mem::zeroed() }),
            lens: [0; BATCH],
            count: 0,
        }
    }

    /// Blocks until at least one datagram is there, then takes what is queued (up to
    /// [`BATCH`]). Returns how many.
    pub(crate) fn receive(&mut self, udp: &Udp) -> io::Result<usize> {
        // SAFETY (both blocks): `mmsghdr` and `iovec` are plain old data; every pointer
        // set below points into `self.data` / `self.names`, which outlive the call, with
        // the lengths of those buffers.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, (iov, msg)) in iovs.iter_mut().zip(msgs.iter_mut()).enumerate() {
            iov.iov_base = self.data[i * SLOT..].as_mut_ptr().cast();
            iov.iov_len = SLOT;
            msg.msg_hdr.msg_name = std::ptr::from_mut(&mut self.names[i]).cast();
            msg.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        let n = loop {
            let n = unsafe {
                libc::recvmmsg(
                    udp.socket.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        for (len, msg) in self.lens.iter_mut().zip(&msgs).take(n) {
            // A truncated datagram (larger than a slot) is not one we can use.
            *len = if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 { 0 } else { msg.msg_len as usize };
        }
        self.count = n;
        Ok(n)
    }

    /// The `i`-th datagram of the last receive and where it came from.
    pub(crate) fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let start = i * SLOT;
        (&self.data[start..start + self.lens[i]], address(&self.names[i]))
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }
}

/// A received source address; IPv4-mapped IPv6 addresses as IPv4 (so `wg show`
/// prints them as the peer sent them).
fn address(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, which it is
            // large and aligned enough for.
            let a = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let a = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, a.sin6_flowinfo, a.sin6_scope_id)),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_carry_datagrams_and_their_sources() {
        let udp = Udp::bind(0, 0).expect("bind");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("sender");
        let to = SocketAddr::from(([127, 0, 0, 1], udp.port()));
        for i in 0..3u8 {
            sender.send_to(&[i; 7], to).expect("send");
        }
        let mut batch = Batch::new();
        let mut got = Vec::new();
        while got.len() < 3 {
            let n = batch.receive(&udp).expect("receive");
            for i in 0..n {
                let (data, from) = batch.get(i);
                assert_eq!(from, Some(sender.local_addr().expect("addr")), "IPv4 source, not v4-mapped");
                got.push(data.to_vec());
            }
        }
        assert_eq!(got, vec![vec![0u8; 7], vec![1u8; 7], vec![2u8; 7]]);
        // Replies to an IPv4 endpoint leave from the dual-stack socket.
        udp.send_to(b"back", sender.local_addr().expect("addr"));
        let mut buf = [0u8; 16];
        sender.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
        let (n, from) = sender.recv_from(&mut buf).expect("reply");
        assert_eq!((&buf[..n], from.port()), (&b"back"[..], udp.port()));
        // Shutting the socket down wakes a blocked receiver.
        let udp = std::sync::Arc::new(udp);
        let waiter = {
            let udp = udp.clone();
            std::thread::spawn(move || Batch::new().receive(&udp).map(|_| ()))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        udp.shutdown();
        waiter.join().expect("join").expect("woken");
    }
}
