//! UDP: a few workers share the server's one socket and move datagrams in batches, one
//! `recvmmsg` for up to [`BATCH`] queries and one `sendmmsg` for their replies, so the syscall
//! cost is shared by every query that arrived together.
//!
//! Replies to the same client are sent as one train where they can (UDP GSO, `UDP_SEGMENT`):
//! replies of equal size (and one shorter last) leave as one buffer that the kernel routes,
//! filters and hands over once, and splits into datagrams only when the client's socket takes
//! them. Sending is most of a server's cost per query, and a client that keeps many queries
//! outstanding on one socket (a stub with a busy application, c-ares, dnsperf) gets most
//! replies this way. The order of replies within a batch does not matter: each is matched to
//! its query by ID. A kernel or device that refuses GSO turns it off for the worker.
//!
//! One socket rather than one per core with SO_REUSEPORT: the kernel spreads a REUSEPORT group
//! by flow, and a task's resolver usually sends everything from one port, so all of it would
//! land on one worker. Workers sharing a socket split the batches whatever the flows.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::answer::{self, Action, Responder, Transport};
use super::forward::Forwarder;
use super::limit::QueryLimit;
use super::zone::ZoneHandle;

/// Datagrams read (and replies written) per syscall.
pub const BATCH: usize = 32;
/// `UDP_SEGMENT` (linux/udp.h), which the libc crate defines only for some targets.
const UDP_SEGMENT: libc::c_int = 103;
/// The largest query taken: anything larger is no query a stub sends, and gets FORMERR.
pub const MAX_QUERY: usize = 1232;

/// One worker's buffers: received datagrams, their senders, and the replies.
struct Batch {
    queries: Box<[[u8; MAX_QUERY]; BATCH]>,
    lens: [usize; BATCH],
    oversized: [bool; BATCH],
    /// Where each datagram came from, as the kernel wrote it: replies go straight back.
    peers: Box<[libc::sockaddr_storage; BATCH]>,
    peer_lens: [libc::socklen_t; BATCH],
    /// The same, decoded: trains are formed per client.
    peer_addrs: [Option<SocketAddr>; BATCH],
    replies: Vec<Vec<u8>>,
}

/// Replies sent as one message: `count` slots from `ready[start..]`, all `seg_len` bytes
/// long except perhaps the last, which is shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Train {
    start: usize,
    count: usize,
    seg_len: usize,
}

/// A control message carrying the GSO segment size, laid out as CMSG_SPACE(2) bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct SegmentCmsg {
    header: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

// The data of a control message starts right after its (already aligned) header.
const _: () = assert!(mem::size_of::<SegmentCmsg>() == mem::size_of::<libc::cmsghdr>() + 8);

impl Batch {
    fn new() -> Self {
        Batch {
            queries: Box::new([[0; MAX_QUERY]; BATCH]),
            lens: [0; BATCH],
            oversized: [false; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            peers: Box::new(unsafe { mem::zeroed() }),
            peer_lens: [0; BATCH],
            peer_addrs: [None; BATCH],
            replies: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
        }
    }
}

/// Serves queries from `socket` until aborted. Forwarded queries run as tasks of this worker,
/// so aborting it stops them too.
pub async fn worker(
    socket: Arc<UdpSocket>,
    zone: ZoneHandle,
    forwarder: Arc<Forwarder>,
    limit: Arc<QueryLimit>,
) {
    let mut batch = Batch::new();
    let mut sources = [None; BATCH];
    let mut allowed = [false; BATCH];
    let mut responder = Responder::new(forwarder.enabled());
    let mut forwards = JoinSet::new();
    let mut ready = Vec::with_capacity(BATCH);
    let mut trains = Vec::with_capacity(BATCH);
    let mut gso = true;
    let fd = socket.as_raw_fd();
    loop {
        let received = socket
            .async_io(Interest::READABLE, || recv_batch(fd, &mut batch))
            .await;
        let count = match received {
            Ok(count) => count,
            // A failure to read is never a reason to stop serving; pausing keeps a persistent
            // one (out of memory) from spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        while forwards.try_join_next().is_some() {}
        // Loaded after the read: a query sent after `ZoneHandle::set` returned sees the new zone.
        let zone = zone.get();
        ready.clear();
        for (source, peer) in sources.iter_mut().zip(&batch.peer_addrs).take(count) {
            *source = peer.map(|p| p.ip());
        }
        limit.allow_batch(&sources[..count], &mut allowed[..count]);
        for (slot, &allowed) in allowed.iter().enumerate().take(count) {
            if !allowed {
                continue; // over its client's rate: dropped, counted by the limit
            }
            let packet = &batch.queries[slot][..batch.lens[slot]];
            let out = &mut batch.replies[slot];
            match responder.respond(&zone, packet, Transport::Udp, batch.oversized[slot], out) {
                Action::Reply => ready.push(slot),
                Action::Forward(query) => {
                    let Some(client) = batch.peer_addrs[slot] else {
                        continue;
                    };
                    let (packet, socket, forwarder) =
                        (packet.to_vec(), Arc::clone(&socket), Arc::clone(&forwarder));
                    forwards.spawn(async move {
                        let reply = match forwarder.relay(&packet, &query).await {
                            Some(reply) => reply,
                            None => {
                                let mut out = Vec::new();
                                answer::servfail(&packet, &query, &mut out);
                                out
                            }
                        };
                        let _ = socket.send_to(&reply, client).await;
                    });
                }
                Action::Drop => {}
            }
        }
        plan_trains(&batch, &mut ready, gso, &mut trains);
        let mut next = 0;
        while next < trains.len() {
            let result = socket
                .async_io(Interest::WRITABLE, || {
                    send_trains(fd, &batch, &ready, &trains[next..])
                })
                .await;
            match result {
                Ok(count) => next += count.max(1),
                Err(err) if trains[next].count > 1 && refuses_gso(&err) => {
                    gso = false;
                    ready.drain(..trains[next].start);
                    plan_trains(&batch, &mut ready, gso, &mut trains);
                    next = 0;
                }
                // The first message left could not be sent (its client is unreachable): skip
                // it.
                Err(_) => next += 1,
            }
        }
    }
}

/// Whether a send failed because GSO is not available on this path (no checksum offload,
/// segment larger than the MTU, a kernel without UDP_SEGMENT).
fn refuses_gso(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// Orders `ready` by client and decreasing size, and cuts it into trains: runs of replies to
/// one client of one size, plus one shorter reply to end the run. Without `gso`, every reply
/// is its own train.
fn plan_trains(batch: &Batch, ready: &mut [usize], gso: bool, trains: &mut Vec<Train>) {
    trains.clear();
    if gso {
        ready.sort_unstable_by_key(|&slot| {
            (
                batch.peer_addrs[slot],
                std::cmp::Reverse(batch.replies[slot].len()),
            )
        });
    }
    let mut start = 0;
    while start < ready.len() {
        let first = ready[start];
        let seg_len = batch.replies[first].len();
        let mut count = 1;
        while gso && start + count < ready.len() {
            let next = ready[start + count];
            // An address we could not decode is never assumed to be the same client.
            if batch.peer_addrs[first].is_none()
                || batch.peer_addrs[next] != batch.peer_addrs[first]
            {
                break;
            }
            let len = batch.replies[next].len();
            if len <= seg_len {
                count += 1;
            }
            if len != seg_len {
                break;
            }
        }
        trains.push(Train {
            start,
            count,
            seg_len,
        });
        start += count;
    }
}

/// Reads up to [`BATCH`] datagrams without waiting; returns how many.
fn recv_batch(fd: RawFd, batch: &mut Batch) -> io::Result<usize> {
    // SAFETY: iovec and mmsghdr are plain old data; all zeroes (null pointers, zero lengths)
    // is a valid value, and every entry used is filled in below.
    let mut iovecs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    for slot in 0..BATCH {
        iovecs[slot] = libc::iovec {
            iov_base: batch.queries[slot].as_mut_ptr().cast(),
            iov_len: MAX_QUERY,
        };
        let header = &mut headers[slot].msg_hdr;
        header.msg_name = std::ptr::addr_of_mut!(batch.peers[slot]).cast();
        header.msg_namelen = socklen_of::<libc::sockaddr_storage>();
        header.msg_iov = std::ptr::addr_of_mut!(iovecs[slot]);
        header.msg_iovlen = 1;
    }
    // SAFETY: every header points at one buffer of MAX_QUERY bytes and at one
    // sockaddr_storage, all owned by `batch` or this frame and alive until the call returns;
    // the count matches the array; a null timeout is allowed.
    let count = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    let count = usize::try_from(count).map_err(|_| io::Error::last_os_error())?;
    for (slot, header) in headers.iter().enumerate().take(count) {
        batch.lens[slot] = (header.msg_len as usize).min(MAX_QUERY);
        batch.oversized[slot] = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        batch.peer_lens[slot] = header.msg_hdr.msg_namelen;
        batch.peer_addrs[slot] = socket_addr(&batch.peers[slot]);
    }
    Ok(count)
}

/// Sends `trains` of the replies in `ready` without waiting, one message each; returns how
/// many trains left.
fn send_trains(fd: RawFd, batch: &Batch, ready: &[usize], trains: &[Train]) -> io::Result<usize> {
    // SAFETY: plain old data, as in recv_batch.
    let mut iovecs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut cmsgs: [SegmentCmsg; BATCH] = unsafe { mem::zeroed() };
    let count = trains.len().min(BATCH);
    let mut next_iovec = 0;
    for (i, train) in trains[..count].iter().enumerate() {
        let slots = &ready[train.start..train.start + train.count];
        for (k, &slot) in slots.iter().enumerate() {
            let reply = &batch.replies[slot];
            // The kernel only reads through these pointers (sendmmsg): the casts to *mut are
            // what the C structures require.
            iovecs[next_iovec + k] = libc::iovec {
                iov_base: reply.as_ptr().cast_mut().cast(),
                iov_len: reply.len(),
            };
        }
        let header = &mut headers[i].msg_hdr;
        header.msg_name = std::ptr::addr_of!(batch.peers[slots[0]]).cast_mut().cast();
        header.msg_namelen = batch.peer_lens[slots[0]];
        header.msg_iov = std::ptr::addr_of_mut!(iovecs[next_iovec]);
        header.msg_iovlen = train.count;
        next_iovec += train.count;
        if train.count > 1 {
            let cmsg = &mut cmsgs[i];
            cmsg.header.cmsg_len = mem::size_of::<libc::cmsghdr>() + mem::size_of::<u16>();
            cmsg.header.cmsg_level = libc::IPPROTO_UDP;
            cmsg.header.cmsg_type = UDP_SEGMENT;
            // Replies are at most 65535 bytes.
            cmsg.size = train.seg_len as u16;
            header.msg_control = std::ptr::addr_of_mut!(*cmsg).cast();
            header.msg_controllen = mem::size_of::<SegmentCmsg>();
        }
    }
    // SAFETY: the first `count` headers point at iovecs, replies, addresses and control
    // messages owned by this frame or `batch`, all alive until the call returns, with their
    // true lengths; the iovecs used are at most BATCH because trains partition `ready`.
    let sent = unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

fn socklen_of<T>() -> libc::socklen_t {
    // Socket address structures are a few dozen bytes.
    mem::size_of::<T>() as libc::socklen_t
}

/// The address the kernel wrote into `storage`, if it is IPv4 or IPv6.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let sin = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_read_in_a_batch_and_replies_sent_in_trains() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for i in 0..5u8 {
            peer.send_to(&[i], socket.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut batch = Batch::new();
        assert_eq!(recv_batch(socket.as_raw_fd(), &mut batch).unwrap(), 5);
        assert_eq!(&batch.queries[3][..batch.lens[3]], [3]);
        assert!(!batch.oversized[0]);
        assert_eq!(batch.peer_addrs[4], Some(peer.local_addr().unwrap()));
        // Nothing more waiting: the read does not block.
        let err = recv_batch(socket.as_raw_fd(), &mut batch).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        for (slot, len) in [20usize, 20, 30, 10, 20].into_iter().enumerate() {
            batch.replies[slot] = vec![u8::try_from(slot).unwrap(); len];
        }
        let mut ready = vec![0, 1, 2, 3, 4];
        let mut trains = Vec::new();
        plan_trains(&batch, &mut ready, true, &mut trains);
        assert_eq!(ready, [2, 0, 1, 4, 3]);
        let train = |start, count, seg_len| Train {
            start,
            count,
            seg_len,
        };
        assert_eq!(trains, [train(0, 2, 30), train(2, 3, 20)]);
        assert_eq!(
            send_trains(socket.as_raw_fd(), &batch, &ready, &trains).unwrap(),
            2
        );
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..5 {
            let len = peer.recv(&mut buf).unwrap();
            got.push((buf[0], len));
        }
        got.sort();
        assert_eq!(got, [(0, 20), (1, 20), (2, 30), (3, 10), (4, 20)]);

        plan_trains(&batch, &mut ready, false, &mut trains);
        assert_eq!(trains.len(), 5);
        assert!(trains.iter().all(|t| t.count == 1));
    }

    #[test]
    fn oversized_datagrams_are_flagged() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(&[7u8; MAX_QUERY + 1], socket.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut batch = Batch::new();
        assert_eq!(recv_batch(socket.as_raw_fd(), &mut batch).unwrap(), 1);
        assert!(batch.oversized[0]);
        assert_eq!(batch.lens[0], MAX_QUERY);
    }
}
