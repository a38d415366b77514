//! The two ways a prober asks and hears back: a VXLAN probe over UDP to a responder, and an
//! ICMP echo to a host's kernel. Both send a packet of a given IPv4 size tagged with a nonce,
//! and report replies by nonce and errors from the socket's error queue; the retry and MTU
//! logic above them does not care which it drives.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::Instant;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::error::ProbeError;
use super::errqueue::SockErr;
use super::ipv4::checksum;
use super::sys;
use super::wire::{ProbeKind, ProbePacket, ProbeRepr, MIN_PROBE_SIZE};
use crate::overlay::netns::Netns;

/// What a transport heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A reply to the probe that carried `nonce`.
    Reply {
        /// The nonce echoed.
        nonce: u64,
    },
    /// An entry of the error queue (or a bare pending error).
    Error(SockErr),
    /// Nothing before the deadline.
    Timeout,
}

/// A socket that sends probes of a chosen IPv4 size and hears their replies.
pub trait Transport {
    /// The smallest IPv4 size it can send.
    fn min_size(&self) -> u32;
    /// Sends one probe of `size` IPv4 bytes tagged `nonce`.
    fn send(&mut self, size: u32, nonce: u64) -> io::Result<()>;
    /// Waits until `deadline` for a reply or an error; a deadline in the past only collects
    /// what is already queued.
    fn wait(&mut self, deadline: Instant) -> io::Result<Event>;
    /// The probed address, for messages.
    fn target(&self) -> String;
    /// Probes sent so far.
    fn probes_sent(&self) -> u32;
}

/// Clears the socket's pending error before a send: with `IP_RECVERR` every pending error is
/// also on the error queue (read by `wait`), and left pending it would fail the next send.
fn clear_pending(fd: BorrowedFd<'_>) {
    let sock = socket2::SockRef::from(&fd);
    let _ = sock.take_error();
}

/// The receive loop both transports share: the error queue first, then data, then sleep.
fn wait_on(
    fd: BorrowedFd<'_>,
    deadline: Instant,
    mut recv: impl FnMut(&mut [u8]) -> io::Result<usize>,
    mut decode: impl FnMut(&[u8]) -> Option<Event>,
) -> io::Result<Event> {
    // Replies are small, and a larger one is cut, which is fine: only its header matters.
    let mut buf = [0u8; 2048];
    loop {
        if let Some(err) = sys::recv_errqueue(fd)? {
            clear_pending(fd);
            return Ok(Event::Error(err));
        }
        match recv(&mut buf) {
            Ok(n) => {
                if let Some(event) = decode(&buf[..n]) {
                    return Ok(event);
                }
                continue;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            // A pending error that reached recv before we read the queue: its entry, if
            // any, comes first.
            Err(err) => match (sys::recv_errqueue(fd)?, err.raw_os_error()) {
                (Some(entry), _) => return Ok(Event::Error(entry)),
                (None, Some(errno)) => return Ok(Event::Error(SockErr::bare(errno))),
                (None, None) => return Err(err),
            },
        }
        if Instant::now() >= deadline {
            return Ok(Event::Timeout);
        }
        sys::poll(&[fd], libc::POLLIN, Some(deadline))?;
    }
}

/// VXLAN probes from an ephemeral UDP port of a local address to a responder.
pub struct VxlanTransport {
    socket: UdpSocket,
    local: Ipv4Addr,
    /// The bound ephemeral port, which requests name (the responder cannot see the UDP
    /// header).
    port: u16,
    target: SocketAddrV4,
    sent: u32,
}

impl VxlanTransport {
    /// A UDP socket on `local` (which may be 0.0.0.0: routing then chooses), connected to
    /// `target` (so only its datagrams and errors come back). `df`: set DF and ignore the cached path MTU, for MTU searches.
    pub fn open(local: Ipv4Addr, target: SocketAddrV4, df: bool) -> Result<Self, ProbeError> {
        let socket = UdpSocket::bind((local, 0))
            .map_err(|e| ProbeError::io(format!("binding a UDP socket to {local}"), e))?;
        socket
            .connect(target)
            .map_err(|e| ProbeError::io(format!("connecting a UDP socket to {target}"), e))?;
        sys::enable_recverr(socket.as_fd())
            .map_err(|e| ProbeError::io("enabling IP_RECVERR on a UDP socket", e))?;
        if df {
            sys::set_pmtudisc_probe(socket.as_fd())
                .map_err(|e| ProbeError::io("setting IP_PMTUDISC_PROBE on a UDP socket", e))?;
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| ProbeError::io("making a UDP socket non-blocking", e))?;
        // The claimed sender is where replies go: with `local` unspecified, the address routing
        // chose on connect.
        let bound = match socket.local_addr() {
            Ok(SocketAddr::V4(bound)) => bound,
            Ok(other) => {
                return Err(ProbeError::io(
                    "reading a UDP socket's address",
                    io::Error::other(format!("{other} is not IPv4")),
                ))
            }
            Err(e) => return Err(ProbeError::io("reading a UDP socket's address", e)),
        };
        Ok(VxlanTransport {
            socket,
            local: *bound.ip(),
            port: bound.port(),
            target,
            sent: 0,
        })
    }
}

impl Transport for VxlanTransport {
    fn min_size(&self) -> u32 {
        MIN_PROBE_SIZE as u32
    }

    fn send(&mut self, size: u32, nonce: u64) -> io::Result<()> {
        let request = ProbeRepr {
            kind: ProbeKind::Request,
            nonce,
            sender: self.local,
            reply_size: 0,
            seen_size: 0,
            sender_port: self.port,
            flags: 0,
        };
        clear_pending(self.socket.as_fd());
        self.sent += 1;
        self.socket
            .send(&request.to_payload(size as usize))
            .map(|_| ())
    }

    fn wait(&mut self, deadline: Instant) -> io::Result<Event> {
        let socket = &self.socket;
        wait_on(
            socket.as_fd(),
            deadline,
            |buf| socket.recv(buf),
            |bytes| {
                let packet = ProbePacket::new_checked(bytes).ok()?;
                let reply = ProbeRepr::parse(&packet).ok()?;
                (reply.kind == ProbeKind::Reply).then_some(Event::Reply { nonce: reply.nonce })
            },
        )
    }

    fn target(&self) -> String {
        self.target.to_string()
    }

    fn probes_sent(&self) -> u32 {
        self.sent
    }
}

/// ICMP echo type and code.
const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
/// IPv4 header (20) and ICMP echo header (8).
const ECHO_OVERHEAD: u32 = 28;
/// The nonce after the echo header.
const NONCE_LEN: u32 = 8;

/// ICMP echo requests, from a ping socket where allowed, else from a raw ICMP socket.
pub struct EchoTransport {
    socket: Socket,
    /// A raw socket: replies come with their IPv4 header, and any echo reply is delivered.
    raw: bool,
    /// The identifier we put in (a ping socket replaces it by its own and filters on it).
    ident: u16,
    /// Sequence number of the last request, which counts them too.
    seq: u16,
    target: Ipv4Addr,
}

impl EchoTransport {
    /// An ICMP socket in the namespace pinned at `netns` (or the caller's), bound to `local`
    /// if given, connected to `target`. `df` as for `VxlanTransport::open`.
    pub fn open(
        netns: Option<&Path>,
        local: Option<Ipv4Addr>,
        target: Ipv4Addr,
        df: bool,
    ) -> Result<Self, ProbeError> {
        let (socket, raw) = match netns {
            None => icmp_socket()?,
            Some(path) => {
                let ns = Netns::open_pinned(path)
                    .map_err(|e| ProbeError::Namespace {
                        path: path.into(),
                        detail: e.to_string(),
                    })?
                    .ok_or_else(|| ProbeError::Namespace {
                        path: path.into(),
                        detail: "nothing is pinned there: is the task still running?".into(),
                    })?;
                // The socket belongs to the namespace it was created in, for life: only its
                // creation needs to happen in there.
                ns.run(|| icmp_socket().map_err(io::Error::other))
                    .map_err(|e| match e.downcast::<ProbeError>() {
                        Ok(err) => err,
                        Err(e) => ProbeError::Namespace {
                            path: path.into(),
                            detail: format!("entering it: {e}"),
                        },
                    })?
            }
        };
        if let Some(local) = local {
            socket
                .bind(&SockAddr::from(SocketAddrV4::new(local, 0)))
                .map_err(|e| ProbeError::io(format!("binding an ICMP socket to {local}"), e))?;
        }
        let to = SockAddr::from(SocketAddr::from((target, 0)));
        socket
            .connect(&to)
            .map_err(|e| ProbeError::io(format!("connecting an ICMP socket to {target}"), e))?;
        sys::enable_recverr(socket.as_fd())
            .map_err(|e| ProbeError::io("enabling IP_RECVERR on an ICMP socket", e))?;
        if df {
            sys::set_pmtudisc_probe(socket.as_fd())
                .map_err(|e| ProbeError::io("setting IP_PMTUDISC_PROBE on an ICMP socket", e))?;
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| ProbeError::io("making an ICMP socket non-blocking", e))?;
        Ok(EchoTransport {
            socket,
            raw,
            ident: sys::random_u64() as u16,
            seq: 0,
            target,
        })
    }
}

/// A ping socket (unprivileged, if `net.ipv4.ping_group_range` admits our group; the kernel
/// keeps other processes' replies from it), or else a raw ICMP socket (CAP_NET_RAW).
fn icmp_socket() -> Result<(Socket, bool), ProbeError> {
    match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
        Ok(socket) => Ok((socket, false)),
        Err(_) => Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .map(|socket| (socket, true))
            .map_err(|e| {
                ProbeError::socket(
                    "an ICMP socket (ping sockets are not allowed by net.ipv4.ping_group_range)",
                    e,
                )
            }),
    }
}

impl Transport for EchoTransport {
    fn min_size(&self) -> u32 {
        ECHO_OVERHEAD + NONCE_LEN
    }

    fn send(&mut self, size: u32, nonce: u64) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let len = (size.max(self.min_size()) - 20) as usize;
        let mut message = vec![0u8; len];
        message[0] = ECHO_REQUEST;
        message[4..6].copy_from_slice(&self.ident.to_be_bytes());
        message[6..8].copy_from_slice(&self.seq.to_be_bytes());
        message[8..16].copy_from_slice(&nonce.to_be_bytes());
        // A ping socket computes the checksum itself; a raw one sends what we give it.
        let sum = checksum(&[&message]);
        message[2..4].copy_from_slice(&sum.to_be_bytes());
        clear_pending(self.socket.as_fd());
        self.socket.send(&message).map(|_| ())
    }

    fn wait(&mut self, deadline: Instant) -> io::Result<Event> {
        let (socket, raw, ident) = (&self.socket, self.raw, self.ident);
        wait_on(
            socket.as_fd(),
            deadline,
            |buf| (&*socket).read(buf),
            |bytes| {
                let message = if raw {
                    let header_len = usize::from(bytes.first()? & 0x0f) * 4;
                    bytes.get(header_len..)?
                } else {
                    bytes
                };
                let header = message.get(..16)?;
                if header[0] != ECHO_REPLY || header[1] != 0 {
                    return None;
                }
                // A raw socket sees every echo reply from the target, ours or not.
                if raw && u16::from_be_bytes([header[4], header[5]]) != ident {
                    return None;
                }
                let nonce = u64::from_be_bytes(header[8..16].try_into().ok()?);
                Some(Event::Reply { nonce })
            },
        )
    }

    fn target(&self) -> String {
        self.target.to_string()
    }

    fn probes_sent(&self) -> u32 {
        u32::from(self.seq)
    }
}
