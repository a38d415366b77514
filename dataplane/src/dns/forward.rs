//! Forwarding: names outside the zone go to the upstream resolvers (the host's).
//!
//! This is a small relay of raw bytes rather than a resolver (hickory-resolver): the query is
//! sent as the client wrote it (its EDNS size, its DO bit, its case) under a fresh random ID,
//! and the reply comes back as the upstream wrote it, original ID restored, so NXDOMAIN, TC and
//! everything else reach the client unchanged and nothing is cached here (caching would
//! serve stale answers, and the client's stub or the upstream already cache).
//!
//! The upstream sockets are created in the task's namespace with the server's, so queries leave
//! through the task's own network, as the task's would. A reply is accepted only from the
//! server it was sent to, as a response, with our ID and the same question.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::error::DnsError;
use super::wire::{Header, Query, HEADER_LEN};

/// Forwarded queries waiting for a reply, at most; past that, unknown names get SERVFAIL at
/// once (memory stays bounded whatever clients send).
pub const MAX_PENDING: usize = 1024;
/// Servers taken from resolv.conf, as the C library does (MAXNS).
const MAX_SERVERS: usize = 3;
/// The largest reply read from an upstream.
const MAX_REPLY: usize = 65535;

/// The resolvers that names outside the zone are relayed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

impl Upstream {
    /// How long a forwarded query may take, all servers together, before the client gets
    /// SERVFAIL: below the C library's 5 s, so the client hears from us before it gives up.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

    /// These servers, tried in order, each for its share of `timeout`.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Self {
        Upstream { servers, timeout }
    }

    /// No upstream: names outside the zone get SERVFAIL.
    pub fn none() -> Self {
        Upstream::new(Vec::new(), Self::DEFAULT_TIMEOUT)
    }

    /// The `nameserver` lines of a resolv.conf (port 53, at most 3, in order), given
    /// `timeout` in all. Loopback servers are left out: they are the host's own resolver,
    /// which a task's namespace cannot reach.
    pub fn from_resolv_conf(path: &Path, timeout: Duration) -> Result<Self, DnsError> {
        let text = std::fs::read_to_string(path).map_err(|source| DnsError::ResolvConf {
            path: path.into(),
            source,
        })?;
        Ok(Upstream::new(parse_resolv_conf(&text), timeout))
    }

    /// The servers, in the order they are tried.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The time all servers together have to answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            // A scoped IPv6 address (fe80::1%eth0) names an interface of the host.
            words.next()?.parse::<IpAddr>().ok()
        })
        // Forwarding happens from the caller's namespace (the host's), where a local stub
        // resolver such as systemd-resolved's 127.0.0.53 is reachable.
        .take(MAX_SERVERS)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The upstream sockets, bound in the caller's namespace before the runtime takes them.
#[derive(Debug)]
pub struct UpstreamSockets {
    v4: Option<std::net::UdpSocket>,
    v6: Option<std::net::UdpSocket>,
}

impl UpstreamSockets {
    /// Binds one socket per address family the servers use. Call it in the task's namespace.
    pub fn bind(upstream: &Upstream) -> Result<Self, DnsError> {
        let bind = |any: IpAddr| -> Result<Option<std::net::UdpSocket>, DnsError> {
            let Some(&first) = upstream
                .servers
                .iter()
                .find(|s| s.is_ipv4() == any.is_ipv4())
            else {
                return Ok(None);
            };
            let failed = |source| DnsError::Forwarder {
                addr: first,
                source,
            };
            let socket = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).map_err(failed)?;
            socket.set_nonblocking(true).map_err(failed)?;
            Ok(Some(socket))
        };
        Ok(UpstreamSockets {
            v4: bind(Ipv4Addr::UNSPECIFIED.into())?,
            v6: bind(Ipv6Addr::UNSPECIFIED.into())?,
        })
    }
}

/// A query sent upstream and not answered yet.
struct Waiter {
    server: SocketAddr,
    /// The question as sent: the reply must carry the same.
    question: Vec<u8>,
    name_len: usize,
    reply: oneshot::Sender<Vec<u8>>,
}

/// Relays queries to the upstream servers and hands replies to whoever waits for them.
pub struct Forwarder {
    upstream: Arc<Upstream>,
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
    pending: Mutex<HashMap<u16, Waiter>>,
    ids: RandomState,
}

impl Forwarder {
    /// A forwarder over `sockets`; spawn `receivers` for it to hear replies.
    pub fn new(upstream: Arc<Upstream>, sockets: UpstreamSockets) -> Result<Arc<Self>, DnsError> {
        let tokio = |socket: Option<std::net::UdpSocket>| {
            socket
                .map(|s| UdpSocket::from_std(s).map(Arc::new))
                .transpose()
                .map_err(|source| DnsError::Runtime {
                    transport: "forwarder",
                    source,
                })
        };
        Ok(Arc::new(Forwarder {
            upstream,
            v4: tokio(sockets.v4)?,
            v6: tokio(sockets.v6)?,
            pending: Mutex::new(HashMap::new()),
            ids: RandomState::new(),
        }))
    }

    /// Whether any upstream server exists.
    pub fn enabled(&self) -> bool {
        !self.upstream.servers.is_empty()
    }

    /// Spawns the loops reading replies, one per socket; they run until aborted.
    pub fn spawn_receivers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        [self.v4.clone(), self.v6.clone()]
            .into_iter()
            .flatten()
            .map(|socket| tokio::spawn(Arc::clone(self).receive(socket)))
            .collect()
    }

    /// Relays `packet` (parsed as `query`) to each server in turn until one answers within its
    /// share of the timeout. The reply carries the original ID; None means SERVFAIL.
    pub async fn relay(&self, packet: &[u8], query: &Query) -> Option<Vec<u8>> {
        let servers = &self.upstream.servers;
        let share = self.upstream.timeout / u32::try_from(servers.len().max(1)).ok()?;
        let original_id = Header::new_checked(packet)?.id();
        let mut outgoing = packet.to_vec();
        for &server in servers {
            let socket = if server.is_ipv4() { &self.v4 } else { &self.v6 };
            let Some(socket) = socket else { continue };
            let (tx, rx) = oneshot::channel();
            let waiter = Waiter {
                server,
                question: packet[HEADER_LEN..query.question_end].to_vec(),
                name_len: query.name_end - HEADER_LEN,
                reply: tx,
            };
            let guard = self.register(waiter)?;
            Header::new_unchecked(&mut outgoing[..]).set_id(guard.id);
            if socket.send_to(&outgoing, server).await.is_err() {
                continue;
            }
            if let Ok(Ok(mut reply)) = tokio::time::timeout(share, rx).await {
                Header::new_unchecked(&mut reply[..]).set_id(original_id);
                return Some(reply);
            }
        }
        None
    }

    /// Files `waiter` under a fresh random ID; None when too many queries are pending.
    fn register(&self, waiter: Waiter) -> Option<PendingGuard<'_>> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING {
            return None;
        }
        // SipHash under the process's random key: IDs an off-path sender cannot guess.
        let mut seed = pending.len() as u64;
        let id = loop {
            let mut hasher = self.ids.build_hasher();
            hasher.write_u64(seed);
            hasher.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
            let id = (hasher.finish() & 0xffff) as u16;
            if !pending.contains_key(&id) {
                break id;
            }
            seed = seed.wrapping_add(1);
        };
        pending.insert(id, waiter);
        Some(PendingGuard {
            forwarder: self,
            id,
        })
    }

    async fn receive(self: Arc<Self>, socket: Arc<UdpSocket>) {
        let mut buf = vec![0u8; MAX_REPLY];
        loop {
            let (len, from) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                // Errors concern one datagram (its query times out on its own); pausing keeps
                // a persistent one from spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let reply = &buf[..len];
            let Some(header) = Header::new_checked(reply) else {
                continue;
            };
            if !header.is_response() {
                continue;
            }
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let matches = pending
                .get(&header.id())
                .is_some_and(|waiter| waiter.server == from && answers(waiter, reply));
            if matches {
                if let Some(waiter) = pending.remove(&header.id()) {
                    let _ = waiter.reply.send(reply.to_vec());
                }
            }
        }
    }
}

/// Whether `reply` answers the question `waiter` sent (names compared case-insensitively). An
/// error reply may leave the question out.
fn answers(waiter: &Waiter, reply: &[u8]) -> bool {
    let header = Header::new_unchecked(reply);
    if header.qdcount() == 0 {
        return header.rcode() != 0;
    }
    let Some(echoed) = reply.get(HEADER_LEN..HEADER_LEN + waiter.question.len()) else {
        return false;
    };
    let (name, rest) = waiter.question.split_at(waiter.name_len);
    header.qdcount() == 1
        && echoed[..waiter.name_len].eq_ignore_ascii_case(name)
        && &echoed[waiter.name_len..] == rest
}

/// Removes a pending query when its relay ends, however it ends (answered, timed out, or
/// dropped with the server).
struct PendingGuard<'a> {
    forwarder: &'a Forwarder,
    id: u16,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut pending = self
            .forwarder
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_gives_the_first_three_servers() {
        let text = "# comment\nsearch example.com\nnameserver 127.0.0.53\nnameserver 192.0.2.1\n\
                    nameserver   2001:db8::1 \nnameserver fe80::1%eth0\noptions ndots:1\n\
                    nameserver 192.0.2.2\nnameserver 192.0.2.3\n";
        assert_eq!(
            parse_resolv_conf(text),
            [
                "127.0.0.53:53".parse().unwrap(),
                "192.0.2.1:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
            ]
        );
        assert!(parse_resolv_conf("search example.com\n").is_empty());
    }

    #[test]
    fn a_missing_resolv_conf_says_which_file() {
        let err = Upstream::from_resolv_conf(
            Path::new("/nonexistent/resolv.conf"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/resolv.conf"),
            "{err}"
        );
    }

    #[test]
    fn replies_must_echo_the_question() {
        let (tx, _rx) = oneshot::channel();
        let waiter = Waiter {
            server: "192.0.2.1:53".parse().unwrap(),
            question: b"\x03Foo\x00\x00\x01\x00\x01".to_vec(),
            name_len: 5,
            reply: tx,
        };
        let mut reply = vec![0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        reply.extend_from_slice(b"\x03fOO\x00\x00\x01\x00\x01");
        assert!(answers(&waiter, &reply));
        reply[HEADER_LEN + 6] = 28; // AAAA
        assert!(!answers(&waiter, &reply));
        assert!(!answers(&waiter, &reply[..14]));
        let refused = [0, 1, 0x81, 0x85, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(answers(&waiter, &refused));
    }
}
