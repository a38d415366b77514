//! TCP (RFC 7766): messages framed by a 2-byte length, answered in order on each connection.
//! Everything is bounded: connections at once, the size of a query, and how long a connection
//! may sit idle or take to read a reply.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::answer::{self, Action, Responder, Transport};
use super::forward::Forwarder;
use super::limit::QueryLimit;
use super::zone::ZoneHandle;

/// Connections served at once per server; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may wait between queries, or take over one read or write.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest query taken; a larger length prefix closes the connection.
pub const MAX_QUERY: usize = 4096;

/// Accepts connections until aborted; connections are tasks of this loop, so aborting it
/// closes them too.
pub async fn serve(
    listener: TcpListener,
    zone: ZoneHandle,
    forwarder: Arc<Forwarder>,
    limit: Arc<QueryLimit>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // Out of descriptors, say: wait instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Over the limit the connection is dropped, which closes it.
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        connections.spawn(connection(
            stream,
            zone.clone(),
            Arc::clone(&forwarder),
            (Arc::clone(&limit), peer.ip()),
            permit,
        ));
    }
}

/// Serves one connection until the client closes it, stalls, sends something we drop, or
/// goes over its rate (the connection is closed: dropping a query would leave the client
/// waiting on an answer that comes in order).
async fn connection(
    mut stream: TcpStream,
    zone: ZoneHandle,
    forwarder: Arc<Forwarder>,
    (limit, peer): (Arc<QueryLimit>, IpAddr),
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let mut responder = Responder::new(forwarder.enabled());
    let mut query = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut prefix = [0u8; 2];
        if !matches!(
            timeout(IDLE_TIMEOUT, stream.read_exact(&mut prefix)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let len = usize::from(u16::from_be_bytes(prefix));
        if len > MAX_QUERY {
            return;
        }
        query.resize(len, 0);
        if !matches!(
            timeout(IDLE_TIMEOUT, stream.read_exact(&mut query)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        if !limit.allow(peer) {
            return;
        }
        let action = responder.respond(&zone.get(), &query, Transport::Tcp, false, &mut out);
        match action {
            Action::Reply => {}
            Action::Forward(parsed) => match forwarder.relay(&query, &parsed).await {
                Some(reply) => out = reply,
                None => answer::servfail(&query, &parsed, &mut out),
            },
            Action::Drop => return,
        }
        // One write per reply: prefix and message in the same segment.
        let Ok(len) = u16::try_from(out.len()) else {
            return;
        };
        let mut frame = Vec::with_capacity(2 + out.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&out);
        if !matches!(
            timeout(IDLE_TIMEOUT, stream.write_all(&frame)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}
