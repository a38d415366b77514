//! The system calls the probes need that neither std nor socket2 wraps: socket options by
//! number, poll, the socket error queue, binding a packet socket and reading it, finding a device's
//! index, and random nonces. Every `unsafe` of the module is here.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::errqueue::{parse_extended_err, SockErr};

/// Sets an integer socket option.
pub fn set_int_opt(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the descriptor is open for the borrow, and the value pointer and length describe
    // one c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Queues ICMP errors (and local ones) on the socket's error queue, with their details, and
/// reports soft errors (host unreachable) at once instead of only on timeouts.
pub fn enable_recverr(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_opt(fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1)
}

/// Sets DF on every packet and ignores the kernel's cached path MTU (only the device MTU
/// limits a send), so each probe tests the path anew.
pub fn set_pmtudisc_probe(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_opt(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    )
}

/// What `poll` saw on one descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Readable (or, with `POLLOUT` asked, writable), or hung up.
    pub ready: bool,
    /// An error is pending (`POLLERR`).
    pub error: bool,
}

/// Polls `fds` for `events` until one is ready or `deadline` passes (None: forever).
pub fn poll(
    fds: &[BorrowedFd<'_>],
    events: i16,
    deadline: Option<Instant>,
) -> io::Result<Vec<Readiness>> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        })
        .collect();
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Round up so a sub-millisecond wait does not spin.
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
        };
        // SAFETY: `pollfds` is a valid array of its length, and every descriptor in it is
        // borrowed for the whole call.
        let rc = unsafe {
            libc::poll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(pollfds
            .iter()
            .map(|p| Readiness {
                ready: p.revents & (events | libc::POLLHUP) != 0,
                error: p.revents & libc::POLLERR != 0,
            })
            .collect());
    }
}

/// Reads one entry of the socket's error queue (without blocking), or None when it is empty.
pub fn recv_errqueue(fd: BorrowedFd<'_>) -> io::Result<Option<SockErr>> {
    // The offending packet's bytes are not needed: the sockets are per probe run.
    let mut data = [0u8; 64];
    // Room for one IP_RECVERR message: the header, sock_extended_err (16) and the offender
    // (sockaddr_in, 16), with alignment to spare; u64s keep it aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points to the iovec and control buffers above, which outlive the call and
    // whose lengths are given; the descriptor is open for the borrow.
    let rc = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            io::ErrorKind::Interrupted => recv_errqueue(fd),
            _ => Err(err),
        };
    }
    // SAFETY: `msg` was filled by recvmsg, its control pointer and length describe `control`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return null or a header inside `control`.
        let header = unsafe { std::ptr::read_unaligned(cmsg) };
        let header_len = std::mem::size_of::<libc::cmsghdr>();
        if header.cmsg_level == libc::SOL_IP && header.cmsg_type == libc::IP_RECVERR {
            let len = (header.cmsg_len as usize).saturating_sub(header_len);
            // SAFETY: CMSG_DATA points inside `control`, and the kernel wrote `len` bytes of
            // data there (cmsg_len covers them and lies within msg_controllen).
            let bytes = unsafe { std::slice::from_raw_parts(libc::CMSG_DATA(cmsg), len) };
            return Ok(parse_extended_err(bytes));
        }
        // SAFETY: `msg` and `cmsg` are valid as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(None)
}

/// The index of the device `name` in the calling thread's network namespace, or None when
/// there is none.
pub fn if_index(name: &str) -> io::Result<Option<u32>> {
    let Ok(name) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: `name` is a NUL-terminated string that outlives the call, which only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index != 0 {
        return Ok(Some(index));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENODEV) => Ok(None),
        _ => Err(err),
    }
}

/// Receives one datagram (without blocking) into `buf`, cut to its size, and returns its
/// whole length (MSG_TRUNC: on a packet socket, the length of the frame as received).
pub fn recv_trunc(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the whole call; the descriptor is
    // open for the borrow.
    let rc = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// Binds a packet socket to one protocol on one interface.
pub fn bind_packet(fd: BorrowedFd<'_>, protocol: u16, ifindex: u32) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the given length; the descriptor is open.
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
    Ok(())
}

/// A random 64-bit number from the kernel (nonces: a reply must not be guessable by someone
/// who did not see the request).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for its length; getrandom writes at most that much.
    let rc = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if rc != 8 {
        // Only before the entropy pool is ready at boot: fall back to the clock, which is
        // still unique per probe.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        return nanos.as_nanos() as u64 ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(bytes)
}
