//! The tokio driver: one UDP socket and one TCP listener on the node's gossip address, a timer
//! task, and a [`Gossip`] handle to command and read the [`Core`]. The core sits behind a
//! mutex held only for the length of one input; sockets are used outside it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch, Notify};

use super::core::{Core, CoreConfig, Output};
use super::entry::{Endpoint, EndpointEntry, EntryError};
use super::keyring::Keyring;
use super::message::MAX_FRAME;
use super::ping::{PingError, Transport};
use super::spread::StreamAnswer;
use super::stats::GossipStats;
use super::table::TableView;
use super::{GossipConfig, GossipError, Member, Tuning};
use crate::store::NodeId;

/// The largest answer a TCP ping reads: a sealed pong is under 50 bytes, so anything longer is
/// not one, and is refused before it is allocated.
const MAX_PONG_FRAME: usize = 1024;

/// Inbound anti-entropy connections served at once, at most: each may hold a frame buffer of up
/// to `MAX_FRAME` before it authenticates. Nodes start at most two exchanges each.
const MAX_INBOUND_SYNCS: usize = 16;

/// A running gossip node. Clones share it; it stops when the last clone is dropped (abruptly,
/// as a crash would: peers detect it by failure detection) or on [`Gossip::shutdown`]
/// (gracefully: peers are told at once).
#[derive(Clone)]
pub struct Gossip {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Shared {
    core: Mutex<Core>,
    udp: UdpSocket,
    /// Wakes the timer task when an input may have moved the next deadline earlier.
    wake: Notify,
    view: watch::Sender<u64>,
    stopped: watch::Receiver<bool>,
    tuning: Tuning,
    addr: SocketAddr,
    send_errors: AtomicU64,
    /// Inbound anti-entropy connections being served.
    serving: AtomicUsize,
    /// The runtime gossip was started on: exchanges are spawned there even when a command
    /// comes from another thread.
    runtime: tokio::runtime::Handle,
    /// Callers of `ping_udp` waiting for their pong, by nonce: one entry per call in flight,
    /// removed when it ends either way.
    pings: Mutex<HashMap<u64, oneshot::Sender<Duration>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves the core as it was between two inputs.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pings(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Duration>>> {
        // Never held across another lock or an await: a panic cannot leave it half-changed.
        self.pings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Gossip {
    /// Binds UDP and TCP on `config.bind` and starts the node. Must be called inside a tokio
    /// runtime; the node's tasks run on it.
    pub fn start(config: GossipConfig) -> Result<Gossip, GossipError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| GossipError::NoRuntime)?;
        if config.bind.ip().is_unspecified() {
            return Err(GossipError::Unspecified(config.bind));
        }
        let (udp, tcp) = bind(config.bind)?;
        let addr = udp.local_addr().map_err(|source| GossipError::Socket {
            addr: config.bind,
            source,
        })?;
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let core = Core::new(
            CoreConfig {
                node_id: config.node_id,
                addr,
                keyring: config.keyring,
                tuning: config.tuning.clone(),
                generation: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
                unix_micros: u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX),
                seed: random_seed(),
            },
            Instant::now(),
        );
        let (view, _) = watch::channel(0);
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            udp,
            wake: Notify::new(),
            view,
            stopped,
            tuning: config.tuning,
            addr,
            send_errors: AtomicU64::new(0),
            serving: AtomicUsize::new(0),
            runtime: handle.clone(),
            pings: Mutex::new(HashMap::new()),
        });
        handle.spawn(recv_loop(shared.clone()));
        handle.spawn(timer_loop(shared.clone()));
        handle.spawn(accept_loop(shared.clone(), tcp));
        Ok(Gossip {
            inner: Arc::new(Inner { shared, stop }),
        })
    }

    fn with_core<T>(&self, f: impl FnOnce(&mut Core, Instant) -> T) -> T {
        let shared = &self.inner.shared;
        let mut core = shared.lock();
        let out = f(&mut core, Instant::now());
        flush(shared, core);
        out
    }

    /// The address gossip listens on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.shared.addr
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.shared.lock().node_id()
    }

    /// Replaces this node's local entries with `entries`, its *complete* current set (every
    /// task running here, per network it is attached to). Only the differences travel; an
    /// entry missing from the set is deleted everywhere. Entries that are invalid (a field over
    /// 128 bytes, an empty network or task id) or repeat a (network, task) key are left out,
    /// logged and returned; the rest is published.
    pub fn publish(&self, entries: Vec<EndpointEntry>) -> Vec<EntryError> {
        let refused = self.with_core(|core, now| core.publish(now, &entries));
        for err in &refused {
            tracing::warn!(error = %err, "gossip left an endpoint out");
        }
        refused
    }

    /// Declares the network ids this node is on: it receives those networks' rows and no
    /// others. The networks of its own published entries are included automatically.
    pub fn set_networks(&self, networks: Vec<String>) {
        self.with_core(|core, now| core.set_networks(now, networks));
    }

    /// The cluster's nodes (id, gossip address), ourselves included or not: gossip joins them
    /// and accepts messages only from them. A node missing from the list left for good: it is
    /// declared down and its rows are forgotten. Call with the full list on every change.
    pub fn set_peers(&self, peers: Vec<(NodeId, SocketAddr)>) {
        self.with_core(|core, now| core.set_peers(now, peers));
    }

    /// Replaces the keyring; sealing uses its primary at once, opening accepts all its keys.
    pub fn set_keyring(&self, keyring: Keyring) {
        self.with_core(|core, _| core.set_keyring(keyring));
    }

    /// Every node known, this one first, with its SWIM state and declared networks.
    pub fn members(&self) -> Vec<Member> {
        self.inner.shared.lock().members()
    }

    /// The visible endpoint table: live rows of this node and of alive or suspect nodes, on
    /// networks this node is on, sorted by (network, task).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.inner.shared.lock().endpoints()
    }

    /// Every row held, tombstones and rows of down nodes included, and the per-(network,
    /// origin) watermarks: for `meshctl network inspect --verbose`.
    pub fn table_view(&self) -> TableView {
        self.inner.shared.lock().table_view()
    }

    /// Counters.
    pub fn stats(&self) -> GossipStats {
        let mut stats = self.inner.shared.lock().stats();
        stats.send_errors += self.inner.shared.send_errors.load(Ordering::Relaxed);
        stats
    }

    /// A receiver that changes on every change of `members()` states or `endpoints()`; its
    /// value is a counter. Read the new view with those accessors after `changed()`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.view.subscribe()
    }

    /// Checks UDP gossip with `target` (another node's gossip address) by a real exchange: a
    /// ping sealed with this node's primary key goes from the gossip socket, and the target's
    /// gossip (member or not, as long as it holds the key) answers to that socket. Returns the
    /// round trip. A host without the key, like a closed or filtered port, gives no answer:
    /// [`PingError::Timeout`]; a send the network refuses at once is
    /// [`PingError::Unreachable`].
    pub async fn ping_udp(
        &self,
        target: SocketAddr,
        timeout: Duration,
    ) -> Result<Duration, PingError> {
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        let (nonce, payload) = shared.lock().ping(Instant::now());
        // Registered before sending: the pong cannot be handled before it is waited for.
        shared.pings().insert(nonce, tx);
        let send = shared.udp.send_to(&payload, target);
        let result = match tokio::time::timeout_at(deadline, send).await {
            Err(_) => Err(PingError::Timeout),
            Ok(Err(err)) => Err(PingError::from_io(Transport::Udp, target, &err)),
            // The waiter is never dropped unanswered while this call holds its entry.
            Ok(Ok(_)) => tokio::time::timeout_at(deadline, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(PingError::Timeout),
        };
        if result.is_err() {
            shared.pings().remove(&nonce);
            shared.lock().cancel_ping(nonce);
        }
        result
    }

    /// Checks TCP gossip with `target` (another node's gossip address) by a real exchange: one
    /// sealed ping frame on a new stream, where anti-entropy exchanges are served, answered by
    /// a sealed pong. Returns the round trip from sending the ping to reading the pong (the
    /// connection's setup excluded, so it compares with [`Gossip::ping_udp`]'s). No connection
    /// in time is [`PingError::Timeout`]; a connection accepted but left unanswered, closed
    /// early or answered with anything but this cluster's pong is [`PingError::BadReply`].
    pub async fn ping_tcp(
        &self,
        target: SocketAddr,
        timeout: Duration,
    ) -> Result<Duration, PingError> {
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        let io_error = |err: std::io::Error| PingError::from_io(Transport::Tcp, target, &err);
        let (nonce, frame) = shared.lock().stream_ping();
        let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(target))
            .await
            .map_err(|_| PingError::Timeout)?
            .map_err(io_error)?;
        let sent = Instant::now();
        let exchange = async {
            write_frame(&mut stream, &frame).await?;
            read_frame(&mut stream, MAX_PONG_FRAME).await
        };
        let reply = tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| PingError::silent(target, timeout))?
            .map_err(io_error)?;
        let rtt = sent.elapsed();
        shared
            .lock()
            .check_stream_pong(nonce, &reply)
            .map_err(|err| PingError::bad_pong(target, &err))?;
        // The responder ends the stream after its pong; closing our side is a courtesy that
        // must not outlast the caller's time.
        let _ = tokio::time::timeout_at(deadline, stream.shutdown()).await;
        Ok(rtt)
    }

    /// Leaves gracefully (peers mark this node down at once instead of suspecting it first)
    /// and stops; every clone stops. Dropping the last clone stops without leaving.
    pub fn shutdown(&self) {
        // The leave datagrams go to the socket synchronously, before the tasks stop.
        self.with_core(|core, now| core.leave(now));
        let _ = self.inner.stop.send(true);
    }
}

fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // A failing system RNG only makes peer choices predictable, not insecure: nonces come
    // from the keyring's own draw.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
    u64::from_le_bytes(seed)
}

/// Binds UDP then TCP on the same port (with port 0, the port UDP got; retried if TCP finds
/// it taken).
fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), GossipError> {
    let socket_err = |source| GossipError::Socket { addr, source };
    let attempts = if addr.port() == 0 { 8 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = std::net::UdpSocket::bind(addr).map_err(|e| GossipError::bind("UDP", addr, e))?;
        let port = udp.local_addr().map_err(socket_err)?.port();
        let tcp_addr = SocketAddr::new(addr.ip(), port);
        match std::net::TcpListener::bind(tcp_addr) {
            Ok(tcp) => {
                udp.set_nonblocking(true).map_err(socket_err)?;
                tcp.set_nonblocking(true).map_err(socket_err)?;
                let udp = UdpSocket::from_std(udp).map_err(socket_err)?;
                let tcp = TcpListener::from_std(tcp).map_err(socket_err)?;
                return Ok((udp, tcp));
            }
            Err(e) => last = Some(GossipError::bind("TCP", tcp_addr, e)),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Takes the core's outputs and view counter, releases the lock, then acts on them.
fn flush(shared: &Arc<Shared>, mut core: MutexGuard<'_, Core>) {
    let mut outputs = Vec::new();
    while let Some(output) = core.poll_output() {
        outputs.push(output);
    }
    let generation = core.view_generation();
    drop(core);
    shared.view.send_if_modified(|current| {
        let changed = *current != generation;
        *current = generation;
        changed
    });
    shared.wake.notify_one();
    for output in outputs {
        match output {
            Output::Datagram { to, payload } => {
                // UDP is lossy by design: a full socket buffer is one more lost datagram,
                // which push rounds and anti-entropy make up for.
                if shared.udp.try_send_to(&payload, to).is_err() {
                    shared.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Output::Sync { id, to, frame, .. } => {
                shared
                    .runtime
                    .spawn(sync_client(shared.clone(), id, to, frame));
            }
            Output::Pong { nonce, rtt, .. } => {
                if let Some(waiter) = shared.pings().remove(&nonce) {
                    let _ = waiter.send(rtt);
                }
            }
        }
    }
}

async fn recv_loop(shared: Arc<Shared>) {
    let mut stopped = shared.stopped.clone();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            received = shared.udp.recv_from(&mut buf) => {
                // Errors such as ICMP port unreachable from a dead peer are per datagram;
                // the pause keeps a persistent one from spinning.
                let Ok((len, from)) = received else {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    continue;
                };
                let mut core = shared.lock();
                core.handle_datagram(Instant::now(), from, &buf[..len]);
                flush(&shared, core);
            }
        }
    }
}

async fn timer_loop(shared: Arc<Shared>) {
    let mut stopped = shared.stopped.clone();
    loop {
        let deadline = shared.lock().poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopped.changed() => return,
            _ = shared.wake.notified() => continue,
            _ = sleep => {
                let mut core = shared.lock();
                core.handle_timeout(Instant::now());
                flush(&shared, core);
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut stopped = shared.stopped.clone();
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => {
                // Connections are served before they authenticate: cap how many at once.
                let Ok((stream, _)) = accepted else { continue };
                if shared.serving.load(Ordering::Relaxed) >= MAX_INBOUND_SYNCS {
                    continue;
                }
                shared.serving.fetch_add(1, Ordering::Relaxed);
                let shared2 = shared.clone();
                shared.runtime.spawn(async move {
                    sync_server(shared2.clone(), stream).await;
                    shared2.serving.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
}

/// Runs `work` until it ends, the exchange times out or the node stops.
async fn bounded<T>(
    shared: &Shared,
    work: impl std::future::Future<Output = Option<T>>,
) -> Option<T> {
    let mut stopped = shared.stopped.clone();
    tokio::select! {
        _ = stopped.changed() => None,
        out = tokio::time::timeout(shared.tuning.sync_timeout, work) => out.ok().flatten(),
    }
}

async fn sync_client(shared: Arc<Shared>, id: u64, to: SocketAddr, frame: Vec<u8>) {
    let done = bounded(&shared, async {
        let mut stream = TcpStream::connect(to).await.ok()?;
        write_frame(&mut stream, &frame).await.ok()?;
        let answer = read_frame(&mut stream, MAX_FRAME).await.ok()?;
        let close = {
            let mut core = shared.lock();
            let close = core.handle_sync_answer(Instant::now(), id, &answer);
            flush(&shared, core);
            close
        }?;
        write_frame(&mut stream, &close).await.ok()?;
        stream.shutdown().await.ok()
    })
    .await;
    if done.is_none() {
        let mut core = shared.lock();
        core.sync_failed(id);
        flush(&shared, core);
    }
}

/// Serves an inbound stream: an anti-entropy exchange, or a ping.
async fn sync_server(shared: Arc<Shared>, mut stream: TcpStream) {
    bounded(&shared, async {
        let open = read_frame(&mut stream, MAX_FRAME).await.ok()?;
        let answer = {
            let mut core = shared.lock();
            let answer = core.handle_stream_open(Instant::now(), &open);
            flush(&shared, core);
            answer
        }?;
        let answer = match answer {
            StreamAnswer::Sync(answer) => answer,
            StreamAnswer::Pong(pong) => {
                write_frame(&mut stream, &pong).await.ok()?;
                return stream.shutdown().await.ok();
            }
        };
        write_frame(&mut stream, &answer).await.ok()?;
        let close = read_frame(&mut stream, MAX_FRAME).await.ok()?;
        let mut core = shared.lock();
        core.handle_sync_close(Instant::now(), &close);
        flush(&shared, core);
        Some(())
    })
    .await;
}

/// Writes a frame: its length (u32, big endian), then its bytes.
async fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(frame).await
}

/// Reads a frame, refusing lengths over `max` before allocating.
async fn read_frame(stream: &mut TcpStream, max: usize) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("gossip frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    let mut frame = vec![0u8; len];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}
