//! The responder: answers VXLAN probes sent to this host's data-path port.
//!
//! The kernel's vxlan devices own that UDP port, so no socket of ours can bind it. Instead the
//! host runs one more vxlan device, the *probe tap*: VNI `PROBE_VNI`, the data-path port,
//! created in the underlay namespace (so its UDP socket is the underlay's) and then moved into
//! a namespace of its own. A probe request thus takes the path overlay traffic takes: the
//! host's IP input, its firewall (nftables/iptables `input`), the vxlan UDP socket, which
//! decapsulates it into the tap as an inner Ethernet frame. The responder reads those frames
//! from a packet socket bound to the tap (opened inside the tap's namespace), and answers from
//! a raw socket of the underlay namespace, writing the IPv4 and UDP headers itself so the reply
//! leaves from `underlay_ip:data_path_port`: the way back crosses the firewalls that overlay
//! traffic crosses. A firewall that drops or rejects the port on this host therefore stops
//! the probe before the responder sees it.
//!
//! Decapsulation hides the outer headers, so the request names its sender and its UDP port in
//! the body, and the request's IPv4 size is reconstructed from the frame
//! (`wire::DECAP_OVERHEAD`). Since the claimed sender cannot be checked against the outer
//! source, replies go only to the cluster members' underlay addresses (`allowed`). Replies
//! are also never larger than their request (no amplification) and are rate-limited.
//!
//! It runs on a thread of its own, blocked in `poll`, until the `ProbeResponder` is dropped.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::error::ProbeError;
use super::ipv4::{build_ipv4_udp, UdpEndpoints};
use super::sys;
use super::wire::{
    ProbeKind, ProbePacket, ProbeRepr, IP_UDP_OVERHEAD, MIN_PROBE_SIZE, PROBE_VNI, VXLAN_FLAGS,
    VXLAN_HEADER_LEN,
};
use crate::overlay::netns::Netns;
use crate::ratelimit::{Rate, TokenBucket};

/// Replies per second at most, sustained (each is at most the size of its request).
pub const MAX_REPLIES_PER_SEC: f64 = 1000.0;
/// Replies in a burst above the rate.
const BURST: f64 = 100.0;
const RATE: Rate = Rate {
    per_sec: MAX_REPLIES_PER_SEC,
    burst: BURST,
};
/// `ETH_P_ALL`: every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h, not in the libc crate).
const PACKET_IGNORE_OUTGOING: i32 = 23;

/// The cluster members' underlay addresses, which replies may go to; empty allows all.
pub type AllowedSenders = Arc<RwLock<HashSet<Ipv4Addr>>>;

/// Counters of a responder, each since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponderStats {
    /// Valid probe requests received.
    pub requests: u64,
    /// Replies sent.
    pub replies: u64,
    /// Frames on the tap that were not valid requests (other ethertypes included).
    pub malformed: u64,
    /// Requests whose claimed sender is not among the allowed addresses.
    pub not_allowed: u64,
    /// Requests dropped by the rate limit.
    pub rate_limited: u64,
    /// Replies the kernel refused to send.
    pub send_errors: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    replies: AtomicU64,
    malformed: AtomicU64,
    not_allowed: AtomicU64,
    rate_limited: AtomicU64,
    send_errors: AtomicU64,
}

/// A running responder; dropping it stops it.
pub struct ProbeResponder {
    /// Closed on drop, which wakes the thread and ends it.
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    interface: String,
}

impl std::fmt::Debug for ProbeResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeResponder")
            .field("interface", &self.interface)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ProbeResponder {
    /// Starts answering probes that reach `underlay_ip:data_path_port` and come out of the
    /// probe tap: the vxlan device `ifname` (VNI `PROBE_VNI`, port `data_path_port`) in the
    /// network namespace pinned at `tap`. Replies leave from `underlay_ip:data_path_port`
    /// through a raw socket of the calling thread's namespace (the underlay), and only to
    /// claimed senders in `allowed` (all when it is empty; it is read at each request, so the
    /// caller updates it as members come and go). Needs CAP_NET_RAW.
    pub fn start(
        underlay_ip: Ipv4Addr,
        data_path_port: u16,
        tap: &Path,
        ifname: &str,
        allowed: AllowedSenders,
    ) -> Result<ProbeResponder, ProbeError> {
        let capture = open_tap(tap, ifname)?;
        // IPPROTO_RAW: send-only, and the headers are ours (IP_HDRINCL).
        let sender = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(|e| ProbeError::socket("a raw IPv4 socket", e))?;
        let (stop, stopped) = UnixStream::pair()
            .map_err(|e| ProbeError::io("creating the responder's stop pipe", e))?;
        let counters = Arc::new(Counters::default());
        let mut state = Responder {
            capture,
            sender,
            stopped,
            me: underlay_ip,
            port: data_path_port,
            allowed,
            counters: Arc::clone(&counters),
            limit: TokenBucket::new(RATE, Instant::now()),
            ident: 0,
        };
        let thread = std::thread::Builder::new()
            .name("probe-responder".into())
            .spawn(move || state.run())
            .map_err(|e| ProbeError::io("starting the responder thread", e))?;
        Ok(ProbeResponder {
            stop: Some(stop),
            thread: Some(thread),
            counters,
            interface: ifname.to_string(),
        })
    }

    /// The tap device it listens on.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Its counters so far.
    pub fn stats(&self) -> ResponderStats {
        let c = &self.counters;
        ResponderStats {
            requests: c.requests.load(Ordering::Relaxed),
            replies: c.replies.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            not_allowed: c.not_allowed.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            send_errors: c.send_errors.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ProbeResponder {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A non-blocking packet socket on `ifname` in the namespace pinned at `tap`, receiving the
/// frames the device receives, whole (Ethernet header included).
///
/// It is bound to all protocols, not to the probe ethertype: the kernel hands a frame to
/// protocol-bound sockets only after the device's rx handler, and the tap is a bridge port
/// (like every network's vxlan), whose handler, the bridge, consumes the frame.
fn open_tap(tap: &Path, ifname: &str) -> Result<Socket, ProbeError> {
    let namespace_err = |detail: String| ProbeError::Namespace {
        path: tap.into(),
        detail,
    };
    let ns = Netns::open_pinned(tap)
        .map_err(|e| namespace_err(e.to_string()))?
        .ok_or_else(|| {
            namespace_err("nothing is pinned there: is the probe network set up?".into())
        })?;
    // A socket belongs to the namespace it was created in, for life: only its creation and
    // binding need to happen in there.
    let open = || -> Result<Socket, ProbeError> {
        let ifindex = sys::if_index(ifname)
            .map_err(|e| ProbeError::io(format!("looking up device {ifname}"), e))?
            .ok_or_else(|| ProbeError::NoTapDevice {
                name: ifname.to_string(),
                netns: tap.into(),
            })?;
        // Protocol 0 receives nothing until the bind below.
        let capture = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))
            .map_err(|e| ProbeError::socket("a packet socket", e))?;
        // Not the copies of what the device sends (the bridge's floods, IPv6 neighbour
        // discovery). Kernels before 4.20 lack the option: those copies are then counted as
        // malformed, and harmless.
        let _ = sys::set_int_opt(capture.as_fd(), libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
        sys::bind_packet(capture.as_fd(), ETH_P_ALL, ifindex)
            .map_err(|e| ProbeError::io(format!("binding a packet socket to {ifname}"), e))?;
        capture
            .set_nonblocking(true)
            .map_err(|e| ProbeError::io("making a packet socket non-blocking", e))?;
        Ok(capture)
    };
    ns.run(|| Ok(open()))
        .map_err(|e| namespace_err(format!("entering it: {e}")))?
}

/// The responder thread's state.
struct Responder {
    capture: Socket,
    sender: Socket,
    stopped: UnixStream,
    me: Ipv4Addr,
    port: u16,
    allowed: AllowedSenders,
    counters: Arc<Counters>,
    limit: TokenBucket,
    ident: u16,
}

impl Responder {
    fn run(&mut self) {
        // A VXLAN header is synthesized in front of each frame, so the frame parses as the
        // probe it was on the wire. Only the header matters: a longer frame is cut, and its
        // real length comes from MSG_TRUNC.
        let mut buf = [0u8; 256];
        buf[0] = VXLAN_FLAGS;
        buf[4..7].copy_from_slice(&PROBE_VNI.to_be_bytes()[1..]);
        loop {
            let ready = match sys::poll(
                &[self.capture.as_fd(), self.stopped.as_fd()],
                libc::POLLIN,
                None,
            ) {
                Ok(ready) => ready,
                // poll fails only on bad arguments: nothing to retry.
                Err(_) => return,
            };
            if ready[1].ready || ready[1].error {
                return;
            }
            loop {
                match sys::recv_trunc(self.capture.as_fd(), &mut buf[VXLAN_HEADER_LEN..]) {
                    Ok(frame_len) => self.handle(&buf, frame_len),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    // WouldBlock: drained. Anything else (ENETDOWN while the device is down)
                    // is transient: poll again.
                    Err(_) => break,
                }
            }
        }
    }

    /// `buf`: the synthesized VXLAN header, then the start of a frame of `frame_len` bytes.
    fn handle(&mut self, buf: &[u8], frame_len: usize) {
        let captured = &buf[..(VXLAN_HEADER_LEN + frame_len).min(buf.len())];
        let Some(request) = parse_request(captured, frame_len) else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let allowed = {
            let set = self.allowed.read().unwrap_or_else(PoisonError::into_inner);
            set.is_empty() || set.contains(&request.from.0)
        };
        if !allowed {
            self.counters.not_allowed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !self.limit.allow(RATE, Instant::now()) {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.ident = self.ident.wrapping_add(1);
        let reply = build_reply(&request, self.me, self.port, self.ident);
        let to = SockAddr::from(SocketAddrV4::new(request.from.0, 0));
        match self.sender.send_to(&reply, &to) {
            Ok(_) => self.counters.replies.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.send_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A valid request: where the reply goes, and what it asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The claimed sender and its UDP port.
    pub from: (Ipv4Addr, u16),
    /// Its outer IPv4 length, reconstructed.
    pub total_len: u16,
    /// The probe itself.
    pub repr: ProbeRepr,
}

/// The request in `captured` (a VXLAN header, then the start of an inner frame of
/// `frame_len` bytes), or None when it is not one that can be answered. Public, like
/// `build_reply`, so the fuzz targets drive the responder's own parsing.
pub fn parse_request(captured: &[u8], frame_len: usize) -> Option<Request> {
    let packet = ProbePacket::new_checked(captured).ok()?;
    let repr = ProbeRepr::parse(&packet).ok()?;
    let sender = repr.sender;
    let unanswerable = sender.is_unspecified()
        || sender.is_multicast()
        || sender.is_broadcast()
        || sender.is_loopback()
        || repr.sender_port == 0;
    if repr.kind != ProbeKind::Request || unanswerable {
        return None;
    }
    // The outer headers are gone: outer IPv4 = inner frame + VXLAN + UDP + IPv4, which is the
    // inner Ethernet payload + DECAP_OVERHEAD (50).
    let total_len = frame_len + VXLAN_HEADER_LEN + IP_UDP_OVERHEAD;
    Some(Request {
        from: (sender, repr.sender_port),
        total_len: u16::try_from(total_len).unwrap_or(u16::MAX),
        repr,
    })
}

/// The reply datagram: as large as asked, but never larger than the request.
pub fn build_reply(request: &Request, me: Ipv4Addr, port: u16, ident: u16) -> Vec<u8> {
    let size = usize::from(request.repr.reply_size)
        .min(usize::from(request.total_len))
        .max(MIN_PROBE_SIZE);
    let reply = ProbeRepr {
        kind: ProbeKind::Reply,
        nonce: request.repr.nonce,
        sender: me,
        reply_size: 0,
        seen_size: request.total_len,
        sender_port: port,
        flags: 0,
    };
    let ends = UdpEndpoints {
        src: me,
        dst: request.from.0,
        src_port: port,
        dst_port: request.from.1,
    };
    debug_assert_eq!(reply.to_payload(size).len() + IP_UDP_OVERHEAD, size);
    // At most the request's size, which fit in an IPv4 packet.
    build_ipv4_udp(&ends, ident, &reply.to_payload(size)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::probe::ipv4::parse_ipv4_udp;
    use crate::probe::wire::{DECAP_OVERHEAD, ETHERNET_HEADER_LEN, HEADER_LEN};

    const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 2);
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);

    /// What the responder's buffer holds for a request of `size` IPv4 bytes (the VXLAN
    /// header it synthesizes is the real one), and the frame length the socket reports.
    fn request(sender: Ipv4Addr, size: usize, reply_size: u16) -> (Vec<u8>, usize) {
        let repr = ProbeRepr {
            kind: ProbeKind::Request,
            nonce: 42,
            sender,
            reply_size,
            seen_size: 0,
            sender_port: 40000,
            flags: 0,
        };
        let payload = repr.to_payload(size);
        let frame_len = payload.len() - VXLAN_HEADER_LEN;
        (payload, frame_len)
    }

    fn parse(sender: Ipv4Addr, size: usize, reply_size: u16) -> Option<Request> {
        let (captured, frame_len) = request(sender, size, reply_size);
        parse_request(&captured, frame_len)
    }

    #[test]
    fn a_request_gets_a_small_reply_from_the_data_path_port() {
        let (captured, frame_len) = request(PEER, 1400, 0);
        assert_eq!(frame_len - ETHERNET_HEADER_LEN + DECAP_OVERHEAD, 1400);
        // Cut as the responder's buffer cuts it: the length still tells the size.
        let request = parse_request(&captured[..128], frame_len).unwrap();
        assert_eq!(request.from, (PEER, 40000));
        assert_eq!(request.total_len, 1400);
        let reply = build_reply(&request, ME, 4789, 7);
        assert_eq!(reply.len(), MIN_PROBE_SIZE);
        let datagram = parse_ipv4_udp(&reply).unwrap();
        assert_eq!((datagram.src, datagram.src_port), (ME, 4789));
        assert_eq!((datagram.dst, datagram.dst_port), (PEER, 40000));
        let repr = ProbeRepr::parse(&ProbePacket::new_checked(datagram.payload).unwrap()).unwrap();
        assert_eq!(repr.kind, ProbeKind::Reply);
        assert_eq!(repr.nonce, 42);
        assert_eq!(repr.sender, ME);
        assert_eq!(repr.sender_port, 4789);
        assert_eq!(repr.seen_size, 1400);
        assert_eq!(repr.flags, 0);
    }

    #[test]
    fn a_reply_is_as_large_as_asked_but_not_larger_than_the_request() {
        let asked = parse(PEER, 1400, 1200).unwrap();
        assert_eq!(build_reply(&asked, ME, 4789, 0).len(), 1200);
        let greedy = parse(PEER, 100, 9000).unwrap();
        assert_eq!(build_reply(&greedy, ME, 4789, 0).len(), 100);
        let tiny = parse(PEER, 100, 10).unwrap();
        assert_eq!(build_reply(&tiny, ME, 4789, 0).len(), MIN_PROBE_SIZE);
    }

    #[test]
    fn unanswerable_frames_are_ignored() {
        for bad in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(224, 0, 0, 1),
        ] {
            assert_eq!(parse(bad, 100, 0), None, "{bad}");
        }
        let (good, frame_len) = request(PEER, 100, 0);
        assert!(parse_request(&good, frame_len).is_some());
        assert_eq!(parse_request(&good[..HEADER_LEN - 1], frame_len), None);
        let mut reply = good.clone();
        reply[30] = 2; // a reply is not answered
        assert_eq!(parse_request(&reply, frame_len), None);
        let mut no_port = good.clone();
        no_port[36..38].fill(0); // an older prober's request: nowhere to answer
        assert_eq!(parse_request(&no_port, frame_len), None);
        let mut other_ethertype = good;
        other_ethertype[21] = 0;
        assert_eq!(parse_request(&other_ethertype, frame_len), None);
    }

    #[test]
    fn a_responder_can_live_in_shared_state() {
        fn shareable<T: Send + Sync>() {}
        shareable::<ProbeResponder>();
    }

    #[test]
    fn the_rate_is_limited_after_a_burst() {
        let t0 = Instant::now();
        let mut limit = TokenBucket::new(RATE, t0);
        let allowed = (0..1000).filter(|_| limit.allow(RATE, t0)).count();
        assert_eq!(allowed, BURST as usize);
        // 10 ms later, 10 more.
        let t1 = t0 + Duration::from_millis(10);
        let allowed = (0..1000).filter(|_| limit.allow(RATE, t1)).count();
        assert_eq!(allowed, 10);
    }
}
