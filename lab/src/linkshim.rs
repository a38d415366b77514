//! The link shim: a userspace wire that adds a one-way delay to the frames a host sends.
//!
//! This kernel has no netem, so a delayed link is carried by this process: it reads every frame
//! from the host's switch port with an AF_PACKET socket, holds it for the delay, and writes it to
//! the veth whose peer sits on the bridge. Frames in the other direction pass straight through.
//! Frames are copied whole, so the lab turns off segmentation and checksum offloads on such links.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Frames waiting out their delay before the queue pushes back (and the socket drops).
const QUEUE_FRAMES: usize = 16_384;
/// Largest frame a veth carries: 64 KiB MTU plus the Ethernet header.
const MAX_FRAME: usize = 65_535 + 14;

/// A raw packet socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    interface: String,
}

impl PacketSocket {
    /// Opens an AF_PACKET socket receiving every protocol on `interface`, ignoring the frames
    /// it sends itself.
    pub fn bind(interface: &str) -> io::Result<Self> {
        let name = CString::new(interface)
            .map_err(|_| io::Error::other("interface name has a NUL byte"))?;
        // SAFETY: if_nametoindex reads a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::other(format!(
                "no interface {interface} in this namespace"
            )));
        }
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(all),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: the option value points at a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a valid sockaddr_ll and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket {
            fd,
            interface: interface.to_string(),
        })
    }

    /// Receives one frame into `buf`, returning its length.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is a valid writable region of the given length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends one whole frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid readable region of the given length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A second handle on the same socket, for a sending thread.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(PacketSocket {
            fd: self.fd.try_clone()?,
            interface: self.interface.clone(),
        })
    }
}

/// Carries frames between `host_port` and `bridge_side` forever: host→bridge after `delay`,
/// bridge→host at once. Returns only on a socket error.
pub fn run(host_port: &str, bridge_side: &str, delay: Duration) -> io::Result<()> {
    let from_host = PacketSocket::bind(host_port)?;
    let to_host = from_host.try_clone()?;
    let to_bridge = PacketSocket::bind(bridge_side)?;
    let from_bridge = to_bridge.try_clone()?;

    let (queue, due) = mpsc::sync_channel::<(Instant, Vec<u8>)>(QUEUE_FRAMES);
    let sender = thread::spawn(move || -> io::Result<()> {
        // Constant delay keeps the queue in deadline order: sleep until the head is due.
        for (deadline, frame) in due {
            if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            send_or_drop(&to_bridge, &frame)?;
        }
        Ok(())
    });
    let returning = thread::spawn(move || -> io::Result<()> {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let n = from_bridge.recv(&mut buf)?;
            send_or_drop(&to_host, &buf[..n])?;
        }
    });

    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let n = from_host.recv(&mut buf)?;
        if queue
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            break;
        }
        if sender.is_finished() || returning.is_finished() {
            break;
        }
    }
    drop(queue);
    sender
        .join()
        .map_err(|_| io::Error::other("sender thread panicked"))??;
    returning
        .join()
        .map_err(|_| io::Error::other("return thread panicked"))?
}

// A wire loses what it cannot carry: an oversized frame or a full device queue is a drop, not a
// reason to stop the link.
fn send_or_drop(socket: &PacketSocket, frame: &[u8]) -> io::Result<()> {
    match socket.send(frame) {
        Ok(()) => Ok(()),
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(libc::EMSGSIZE | libc::ENOBUFS | libc::EAGAIN)
            ) =>
        {
            Ok(())
        }
        Err(err) => Err(io::Error::other(format!(
            "sending on {}: {err}",
            socket.interface
        ))),
    }
}
