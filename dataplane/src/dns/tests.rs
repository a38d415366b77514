//! Loopback tests of whole servers: real sockets on 127.0.0.1, a fake upstream beside them, and
//! one test inside a namespace of its own (root only).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::answer::tests::query;
use super::wire::{TYPE_A, TYPE_SRV};
use super::{DnsError, DnsServer, Records, Srv, Upstream, Zone, ZoneHandle};

const AAAA: u16 = 28;
const WAIT: Duration = Duration::from_secs(5);

fn records() -> Records {
    let mut a = BTreeMap::new();
    a.insert("web".into(), vec![Ipv4Addr::new(10, 0, 0, 1)]);
    a.insert(
        "tasks.web".into(),
        vec![Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 2)],
    );
    a.insert(
        "big".into(),
        (0..60).map(|i| Ipv4Addr::new(10, 0, 2, i)).collect(),
    );
    let mut srv = BTreeMap::new();
    srv.insert(
        "_http._tcp.web".into(),
        vec![Srv {
            priority: 0,
            weight: 5,
            port: 80,
            target: "web".into(),
        }],
    );
    Records { a, srv, ttl: 1 }
}

async fn server(upstream: Upstream) -> (DnsServer, ZoneHandle) {
    let zone = ZoneHandle::new(Zone::new(records()).unwrap());
    let server = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        zone.clone(),
        Arc::new(upstream),
    )
    .await
    .unwrap();
    (server, zone)
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Sends `packet` and returns the raw reply.
async fn exchange(socket: &UdpSocket, server: SocketAddr, packet: &[u8]) -> Vec<u8> {
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("no reply in time")
        .unwrap();
    buf.truncate(len);
    buf
}

async fn ask(server: SocketAddr, name: &str, qtype: u16) -> Message {
    let reply = exchange(&client().await, server, &query(name, qtype, None)).await;
    Message::from_vec(&reply).unwrap()
}

fn addresses(reply: &Message) -> Vec<Ipv4Addr> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

async fn tcp_exchange(server: SocketAddr, packet: &[u8]) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let mut frame = u16::try_from(packet.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(packet);
    stream.write_all(&frame).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(WAIT, stream.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.unwrap();
    Message::from_vec(&reply).unwrap()
}

/// A fake upstream: answers `known.example` with 192.0.2.1 and everything else with NXDOMAIN,
/// echoing the question and the ID it was sent.
async fn fake_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let request = Message::from_vec(&buf[..len]).unwrap();
            let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
            reply.add_queries(request.queries.clone());
            let name = request.queries[0].name().to_ascii().to_lowercase();
            if name == "known.example." {
                reply.add_answer(hickory_proto::rr::Record::from_rdata(
                    request.queries[0].name().clone(),
                    30,
                    RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(192, 0, 2, 1))),
                ));
            } else {
                reply.metadata.response_code = ResponseCode::NXDomain;
            }
            socket
                .send_to(&reply.to_vec().unwrap(), from)
                .await
                .unwrap();
        }
    });
    (addr, task)
}

/// An upstream that never answers.
async fn silent_upstream() -> (SocketAddr, UdpSocket) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    (socket.local_addr().unwrap(), socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queries_get_the_zones_addresses_in_rotating_order() {
    let (server, _zone) = server(Upstream::none()).await;
    let first = ask(server.local_addr(), "web", TYPE_A).await;
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&first), [Ipv4Addr::new(10, 0, 0, 1)]);
    let socket = client().await;
    let packet = query("TASKS.web", TYPE_A, None);
    let mut firsts = Vec::new();
    for _ in 0..4 {
        let reply =
            Message::from_vec(&exchange(&socket, server.local_addr(), &packet).await).unwrap();
        assert_eq!(reply.queries[0].name().to_ascii(), "TASKS.web.");
        assert_eq!(addresses(&reply).len(), 2);
        firsts.push(addresses(&reply)[0]);
    }
    firsts.sort();
    firsts.dedup();
    assert_eq!(firsts.len(), 2, "both addresses come first at some point");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_for_a_zone_name_is_empty_and_never_forwarded() {
    let (upstream, _task) = fake_upstream().await;
    let (server, _zone) = server(Upstream::new(vec![upstream], WAIT)).await;
    let reply = ask(server.local_addr(), "web", AAAA).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_queries_get_targets_with_their_addresses() {
    let (server, _zone) = server(Upstream::none()).await;
    let reply = ask(server.local_addr(), "_http._tcp.web", TYPE_SRV).await;
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(reply.answers[0].record_type(), RecordType::SRV);
    assert_eq!(reply.additionals.len(), 1);
    assert_eq!(reply.additionals[0].name.to_ascii(), "web.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_names_are_forwarded_and_the_upstream_answer_relayed() {
    let (upstream, _task) = fake_upstream().await;
    let (server, _zone) = server(Upstream::new(vec![upstream], WAIT)).await;
    let known = ask(server.local_addr(), "Known.Example", TYPE_A).await;
    assert_eq!(known.metadata.id, 0xabcd, "the client's ID comes back");
    assert_eq!(addresses(&known), [Ipv4Addr::new(192, 0, 2, 1)]);
    let unknown = ask(server.local_addr(), "nope.example", TYPE_A).await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::NXDomain);
    // Over TCP too.
    let known = tcp_exchange(server.local_addr(), &query("known.example", TYPE_A, None)).await;
    assert_eq!(addresses(&known), [Ipv4Addr::new(192, 0, 2, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_skipped_then_servfail() {
    let (silent, _keep) = silent_upstream().await;
    let (answering, _task) = fake_upstream().await;
    let timeout = Duration::from_millis(400);
    let (skipping, _zone) = server(Upstream::new(vec![silent, answering], timeout)).await;
    let reply = ask(skipping.local_addr(), "known.example", TYPE_A).await;
    assert_eq!(addresses(&reply), [Ipv4Addr::new(192, 0, 2, 1)]);

    let (silent2, _keep2) = silent_upstream().await;
    let (failing, _zone) = server(Upstream::new(vec![silent, silent2], timeout)).await;
    let started = Instant::now();
    let reply = ask(failing.local_addr(), "known.example", TYPE_A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(reply.queries.len(), 1);
    assert!(started.elapsed() >= timeout - Duration::from_millis(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upstream_other_names_get_servfail() {
    let (server, _zone) = server(Upstream::none()).await;
    let reply = ask(server.local_addr(), "example.com", TYPE_A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_swap_shows_in_the_next_answer() {
    let (server, zone) = server(Upstream::none()).await;
    let socket = client().await;
    let packet = query("web", TYPE_A, None);
    for round in 0..20u8 {
        let mut records = records();
        records
            .a
            .insert("web".into(), vec![Ipv4Addr::new(10, 9, 9, round)]);
        zone.set(Zone::new(records).unwrap());
        let reply =
            Message::from_vec(&exchange(&socket, server.local_addr(), &packet).await).unwrap();
        assert_eq!(addresses(&reply), [Ipv4Addr::new(10, 9, 9, round)]);
    }
    zone.set(Zone::default());
    let reply = Message::from_vec(&exchange(&socket, server.local_addr(), &packet).await).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_queries_are_answered_and_large_answers_go_there() {
    let (server, _zone) = server(Upstream::none()).await;
    let reply = tcp_exchange(server.local_addr(), &query("web", TYPE_A, None)).await;
    assert_eq!(addresses(&reply), [Ipv4Addr::new(10, 0, 0, 1)]);
    let packet = query("big", TYPE_A, None);
    let udp =
        Message::from_vec(&exchange(&client().await, server.local_addr(), &packet).await).unwrap();
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
    let tcp = tcp_exchange(server.local_addr(), &packet).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
    let srv = tcp_exchange(
        server.local_addr(),
        &query("_http._tcp.web", TYPE_SRV, Some(1232)),
    )
    .await;
    assert_eq!((srv.answers.len(), srv.additionals.len()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_formerr_or_nothing_and_the_server_lives_on() {
    let (server, _zone) = server(Upstream::none()).await;
    let socket = client().await;
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff; 11],
        vec![0xc0; 600],
        vec![0x41; 5000],
    ];
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for len in [12, 13, 40, 300, 1232] {
        junk.push(
            (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 24) as u8 & 0x7f // QR clear, so a header gets a reply
                })
                .collect(),
        );
    }
    for packet in &junk {
        socket.send_to(packet, server.local_addr()).await.unwrap();
    }
    // The 5000-byte datagram is oversized: FORMERR, with its ID.
    let mut buf = vec![0u8; 4096];
    let mut formerr = 0;
    while let Ok(Ok((len, _))) =
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await
    {
        assert!(len >= 12);
        if buf[3] & 0x0f == 1 {
            formerr += 1;
        }
    }
    assert!(formerr >= 1);
    let reply = ask(server.local_addr(), "web", TYPE_A).await;
    assert_eq!(addresses(&reply), [Ipv4Addr::new(10, 0, 0, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_tcp_length_closes_the_connection() {
    let (server, _zone) = server(Upstream::none()).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream.write_all(&[0xff, 0xff, 0, 0]).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed() {
    let (server, _zone) = server(Upstream::none()).await;
    let mut held = Vec::new();
    for _ in 0..super::tcp::MAX_CONNECTIONS {
        held.push(TcpStream::connect(server.local_addr()).await.unwrap());
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, extra.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reply = tcp_exchange(server.local_addr(), &query("web", TYPE_A, None)).await;
    assert_eq!(addresses(&reply), [Ipv4Addr::new(10, 0, 0, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_closes_its_sockets() {
    let (server, zone) = server(Upstream::none()).await;
    let addr = server.local_addr();
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = DnsServer::start(addr, zone, Arc::new(Upstream::none())).await;
    assert!(again.is_ok(), "{:?}", again.err());
}

fn is_root() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Removes the test's pinned namespaces however the test ends.
struct Pinned(Vec<std::path::PathBuf>);

impl Drop for Pinned {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = crate::overlay::netns::remove_pinned(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_a_task_namespace_answers_on_127_0_0_11() {
    use crate::overlay::netns::{create_pinned, Netns};
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("task");
    let _pinned = Pinned(vec![task.clone()]);
    create_pinned(&task).unwrap();
    let ns = Netns::open_pinned(&task).unwrap().unwrap();
    ns.run(|| {
        let status = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()?;
        assert!(status.success());
        Ok(())
    })
    .unwrap();

    let addr = super::EMBEDDED_DNS_ADDR;
    let zone = ZoneHandle::new(Zone::new(records()).unwrap());
    let upstream = Arc::new(Upstream::none());
    let server = DnsServer::start_in_netns(&task, addr, zone.clone(), Arc::clone(&upstream))
        .await
        .unwrap();
    assert_eq!(server.local_addr(), addr);
    let reply = tokio::task::spawn_blocking(move || {
        ns.run(|| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
            socket.set_read_timeout(Some(WAIT))?;
            socket.send_to(&query("web", TYPE_A, None), addr)?;
            let mut buf = [0u8; 512];
            let len = socket.recv(&mut buf)?;
            Ok(buf[..len].to_vec())
        })
    })
    .await
    .unwrap()
    .unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(addresses(&reply), [Ipv4Addr::new(10, 0, 0, 1)]);

    // The address is taken now: a second server says so, and what to check.
    let err = DnsServer::start_in_netns(&task, addr, zone.clone(), Arc::clone(&upstream))
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Bind { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.11:53"), "{err}");
    // A path where no namespace is pinned.
    let err = DnsServer::start_in_netns(&dir.path().join("none"), addr, zone, upstream)
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Namespace { .. }), "{err}");
    drop(server);
}

/// Floods the server from one socket (a tight loop of `count` queries for a zone name) while
/// a reader counts the answers; returns (sent, answered) once answers stop coming.
fn flood(server: SocketAddr, count: usize) -> (usize, usize) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let reader = socket.try_clone().unwrap();
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let mut answered = 0;
        while reader.recv_from(&mut buf).is_ok() {
            answered += 1;
        }
        answered
    });
    let packet = query("web", TYPE_A, None);
    let sent = (0..count)
        .filter(|_| socket.send_to(&packet, server).is_ok())
        .count();
    (sent, counter.join().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_rate_limited_while_another_is_served() {
    use super::limit::{BURST, QUERIES_PER_SEC};
    let (server, _zone) = server(Upstream::none()).await;
    let addr = server.local_addr();
    let start = Instant::now();
    let flooder = tokio::task::spawn_blocking(move || flood(addr, 30_000));
    // A second client, from another address, asks a few questions meanwhile, with a stub's
    // retries: every one is answered.
    let polite = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let mut answered = 0;
    for _ in 0..20 {
        for _try in 0..3 {
            polite
                .send_to(&query("web", TYPE_A, None), addr)
                .await
                .unwrap();
            let mut buf = [0u8; 1500];
            let got = tokio::time::timeout(Duration::from_secs(1), polite.recv_from(&mut buf));
            if matches!(got.await, Ok(Ok(_))) {
                answered += 1;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (sent, flood_answered) = flooder.await.unwrap();
    // The flooder gets at most its burst plus its rate over the time it flooded (an upper
    // bound, whatever the machine's speed); the rest are dropped and counted.
    let allowed = BURST + QUERIES_PER_SEC * start.elapsed().as_secs_f64();
    let limited = server.rate_limited();
    eprintln!(
        "flood: {sent} sent, {flood_answered} answered, {limited} limited (allowed at most \
         {allowed:.0}); second client: {answered} of 20 answered"
    );
    assert_eq!(answered, 20, "the second client lost queries");
    assert!(
        flood_answered as f64 <= allowed.ceil(),
        "{flood_answered} of {sent} flood queries answered; at most {allowed} allowed"
    );
    assert!(
        limited > 0 && flood_answered as u64 + limited <= sent as u64,
        "{limited} counted as limited, {flood_answered} answered, {sent} sent"
    );
}
