//! The TUN side of the userspace device: one queue, blocking reads and writes.
//!
//! Reads block in the kernel (one system call per packet, no poll): the reader is woken
//! for good when the interface is deleted, which detaches every queue and makes `read`
//! return 0 (see [`super::teardown`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);

/// An open TUN interface (IP packets, no packet-information header).
#[derive(Debug)]
pub(crate) struct Tun {
    fd: OwnedFd,
}

/// What a read brought.
pub(crate) enum Read {
    Packet(usize),
    /// The interface is gone (deleted): nothing more will come.
    Gone,
}

impl Tun {
    /// Creates the interface `name` (1 to 15 characters, checked by the caller) in the
    /// calling thread's network namespace.
    pub(crate) fn create(name: &str) -> io::Result<Tun> {
        let path = c"/dev/net/tun";
        // SAFETY: a plain open(2) of a NUL-terminated path; the result is checked.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.len() >= request.ifr_name.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
        }
        for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads one `ifreq`, which lives until the call returns.
        unsafe { tun_set_iff(fd.as_raw_fd(), &request) }.map_err(io::Error::from)?;
        Ok(Tun { fd })
    }

    /// Blocks until a packet comes (or the interface is deleted).
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<Read> {
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                0 => return Ok(Read::Gone),
                n if n > 0 => return Ok(Read::Packet(n as usize)),
                _ => {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        // The queue was detached (interface deleted) before this read.
                        Some(libc::EBADFD) | Some(libc::EIO) => return Ok(Read::Gone),
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    /// Hands one IP packet to the kernel. Errors (interface down or gone, a full
    /// queue) lose the packet, as a full link would: TCP inside recovers.
    pub(crate) fn write(&self, packet: &[u8]) -> bool {
        // SAFETY: writes `packet.len()` bytes from `packet`.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        n == packet.len() as isize
    }
}
