//! One DNS server instance: its listening sockets, bound in the task's namespace, its upstream
//! sockets, bound in the caller's (the host's, which can reach the resolvers; a task's namespace
//! only reaches its overlay), and the tasks serving them on the caller's tokio runtime.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::error::DnsError;
use super::forward::{Forwarder, Upstream, UpstreamSockets};
use super::limit::QueryLimit;
use super::zone::ZoneHandle;
use super::{tcp, udp};
use crate::overlay::netns::Netns;

/// Most UDP workers per server; a server is mostly idle, and a busy one is bounded by the
/// cores anyway.
const MAX_WORKERS: usize = 4;
/// Attempts at finding a port free for both UDP and TCP when asked for port 0.
const PORT_ATTEMPTS: usize = 8;

/// A running DNS server. Dropping it stops it: its tasks are aborted and its sockets closed.
#[derive(Debug)]
pub struct DnsServer {
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    limit: Arc<QueryLimit>,
}

/// A server's counters, readable from another task.
#[derive(Clone, Debug)]
pub struct DnsStats {
    limit: Arc<QueryLimit>,
}

impl DnsStats {
    /// Queries dropped so far because their client went over its rate.
    pub fn rate_limited(&self) -> u64 {
        self.limit.limited()
    }
}

/// What a server binds before it runs.
struct Sockets {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    upstream: UpstreamSockets,
}

impl DnsServer {
    /// Starts a server on `addr` (UDP and TCP) inside the network namespace pinned at `netns`
    /// (a bind-mounted nsfs file such as /run/netns/NAME, or /proc/PID/ns/net). The sockets are
    /// created there by a short-lived thread and keep that namespace for life; the sockets
    /// forwarding to `upstream` stay in the caller's namespace. Serving happens on the caller's
    /// runtime.
    pub async fn start_in_netns(
        netns: &Path,
        addr: SocketAddr,
        zone: ZoneHandle,
        upstream: Arc<Upstream>,
    ) -> Result<DnsServer, DnsError> {
        let path = netns.to_path_buf();
        let (udp, tcp) = tokio::task::spawn_blocking(move || bind_in(&path, addr))
            .await
            .map_err(|err| DnsError::Namespace {
                path: netns.into(),
                source: io::Error::other(format!("the namespace thread failed: {err}")),
            })??;
        let bound = Sockets {
            udp,
            tcp,
            upstream: UpstreamSockets::bind(&upstream)?,
        };
        Self::serve(bound, zone, upstream)
    }

    /// Starts a server on `addr` (UDP and TCP) in the caller's network namespace. Port 0 picks
    /// one port free for both.
    pub async fn start(
        addr: SocketAddr,
        zone: ZoneHandle,
        upstream: Arc<Upstream>,
    ) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = bind(addr)?;
        let bound = Sockets {
            udp,
            tcp,
            upstream: UpstreamSockets::bind(&upstream)?,
        };
        Self::serve(bound, zone, upstream)
    }

    /// Queries dropped so far because their client went over its rate (see [`super::limit`]).
    pub fn rate_limited(&self) -> u64 {
        self.limit.limited()
    }

    /// A handle on the server's counters that outlives no server state but may be read from
    /// elsewhere (a task that logs them).
    pub fn stats(&self) -> DnsStats {
        DnsStats {
            limit: Arc::clone(&self.limit),
        }
    }

    /// The address served (the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn serve(
        bound: Sockets,
        zone: ZoneHandle,
        upstream: Arc<Upstream>,
    ) -> Result<DnsServer, DnsError> {
        let runtime = |transport| move |source| DnsError::Runtime { transport, source };
        let local_addr = bound.udp.local_addr().map_err(runtime("UDP"))?;
        let udp = Arc::new(tokio::net::UdpSocket::from_std(bound.udp).map_err(runtime("UDP"))?);
        let tcp = tokio::net::TcpListener::from_std(bound.tcp).map_err(runtime("TCP"))?;
        let forwarder = Forwarder::new(upstream, bound.upstream)?;
        let mut tasks = forwarder.spawn_receivers();
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WORKERS);
        let limit = Arc::new(QueryLimit::new());
        for _ in 0..workers {
            tasks.push(tokio::spawn(udp::worker(
                Arc::clone(&udp),
                zone.clone(),
                Arc::clone(&forwarder),
                Arc::clone(&limit),
            )));
        }
        tasks.push(tokio::spawn(tcp::serve(
            tcp,
            zone,
            forwarder,
            Arc::clone(&limit),
        )));
        Ok(DnsServer {
            local_addr,
            tasks,
            limit,
        })
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds the server's listening sockets in the namespace pinned at `path`.
fn bind_in(
    path: &Path,
    addr: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    let failed = |source| DnsError::Namespace {
        path: path.to_path_buf(),
        source,
    };
    let netns = Netns::open_pinned(path)
        .map_err(|err| failed(io::Error::other(err.to_string())))?
        .ok_or_else(|| {
            failed(io::Error::new(
                io::ErrorKind::NotFound,
                "no network namespace is pinned there",
            ))
        })?;
    netns.run(|| Ok(bind(addr))).map_err(failed)?
}

/// Binds UDP and TCP on `addr` (the same port for both), non-blocking, in the calling
/// thread's namespace.
fn bind(addr: SocketAddr) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    let mut attempt = 0;
    let (udp, tcp) = loop {
        attempt += 1;
        let udp = std::net::UdpSocket::bind(addr).map_err(|source| DnsError::Bind {
            transport: "UDP",
            addr,
            source,
        })?;
        let udp_addr = udp.local_addr().map_err(|source| DnsError::Bind {
            transport: "UDP",
            addr,
            source,
        })?;
        match std::net::TcpListener::bind(udp_addr) {
            Ok(tcp) => break (udp, tcp),
            // Port 0 gave a UDP port whose TCP twin is taken: try another.
            Err(err)
                if addr.port() == 0
                    && err.kind() == io::ErrorKind::AddrInUse
                    && attempt < PORT_ATTEMPTS => {}
            Err(source) => {
                return Err(DnsError::Bind {
                    transport: "TCP",
                    addr: udp_addr,
                    source,
                })
            }
        }
    };
    for (transport, result) in [
        ("UDP", udp.set_nonblocking(true)),
        ("TCP", tcp.set_nonblocking(true)),
    ] {
        result.map_err(|source| DnsError::Bind {
            transport,
            addr,
            source,
        })?;
    }
    Ok((udp, tcp))
}
