//! The tokio driver on loopback: five real nodes in one process, each on its own port, and
//! pings between nodes, to closed ports and to servers that are not gossip.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::entry::sample;
use super::{Gossip, GossipConfig, GossipError, Keyring, MemberState, PingError, Tuning};
use crate::store::NodeId;

fn config(node: NodeId, keyring: Keyring) -> GossipConfig {
    GossipConfig {
        tuning: Tuning::default(),
        ..GossipConfig::new(node, "127.0.0.1:0".parse().unwrap(), keyring)
    }
}

/// Starts nodes 1..=n with `keyring`, each told about every other.
fn start(n: u64, keyring: &Keyring) -> Vec<Gossip> {
    let nodes: Vec<Gossip> = (1..=n)
        .map(|id| Gossip::start(config(id, keyring.clone())).unwrap())
        .collect();
    introduce(&nodes);
    nodes
}

fn introduce(nodes: &[Gossip]) {
    let peers: Vec<(NodeId, SocketAddr)> = nodes
        .iter()
        .map(|g| (g.node_id(), g.local_addr()))
        .collect();
    for node in nodes {
        let others = peers
            .iter()
            .copied()
            .filter(|(id, _)| *id != node.node_id())
            .collect();
        node.set_peers(others);
        node.set_networks(vec!["net".into()]);
    }
}

async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn alive(node: &Gossip) -> usize {
    node.members()
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .count()
}

fn state_of(node: &Gossip, id: NodeId) -> Option<MemberState> {
    node.members()
        .into_iter()
        .find(|m| m.node_id == id)
        .map(|m| m.state)
}

fn has(node: &Gossip, task: &str) -> bool {
    node.endpoints().iter().any(|e| e.entry.task_id == task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_publish_converge_and_detect_a_killed_node() {
    let ring = Keyring::new(1, [3; 32]);
    let mut nodes = start(5, &ring);
    let settled = wait_for(Duration::from_secs(15), || {
        nodes.iter().all(|n| alive(n) == 5)
    })
    .await;
    assert!(settled.is_some(), "membership did not settle");

    let mut watch = nodes[1].subscribe();
    let refused = nodes[4].publish(vec![sample("net", "t5", 5)]);
    assert!(refused.is_empty());
    let took = wait_for(Duration::from_secs(5), || {
        nodes.iter().all(|n| has(n, "t5"))
    })
    .await;
    assert!(took.is_some(), "the entry did not reach everyone");
    assert!(watch.has_changed().unwrap());
    watch.borrow_and_update();
    assert_eq!(nodes[0].endpoints()[0].origin, 5);

    // Kill node 5: dropped without leaving, as a crash.
    drop(nodes.pop());
    let took = wait_for(Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| state_of(n, 5) == Some(MemberState::Down))
    })
    .await;
    let took = took.expect("node 5 was not declared down");
    assert!(took <= Duration::from_secs(5), "took {took:?}");
    for node in &nodes {
        assert!(!has(node, "t5"));
        assert!(node
            .table_view()
            .rows
            .iter()
            .any(|r| r.task_id == "t5" && r.state == super::RowState::Hidden));
    }
    assert!(watch.has_changed().unwrap());
    let stats = nodes[0].stats();
    assert!(stats.packets_in > 0 && stats.packets_out > 0 && stats.auth_failures == 0);

    // A graceful shutdown is seen at once.
    nodes[3].shutdown();
    let took = wait_for(Duration::from_secs(3), || {
        nodes[..3]
            .iter()
            .all(|n| state_of(n, 4) == Some(MemberState::Down))
    })
    .await;
    assert!(took.expect("leave not seen") < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_key_gets_no_membership() {
    let ring = Keyring::new(1, [3; 32]);
    let mut nodes = start(2, &ring);
    nodes.push(Gossip::start(config(3, Keyring::new(1, [4; 32]))).unwrap());
    introduce(&nodes);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(alive(&nodes[0]), 2);
    assert_eq!(alive(&nodes[1]), 2);
    assert_eq!(alive(&nodes[2]), 1);
    assert!(state_of(&nodes[0], 3).is_none());
    assert!(nodes[0].stats().auth_failures > 0);
    assert!(nodes[2].stats().auth_failures > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_key_keeps_membership() {
    let old = Keyring::new(1, [3; 32]);
    let nodes = start(4, &old);
    assert!(wait_for(Duration::from_secs(15), || nodes
        .iter()
        .all(|n| alive(n) == 4))
    .await
    .is_some());
    let mut both = old.clone();
    both.add(2, [5; 32]).unwrap();
    let mut switched = both.clone();
    switched.set_primary(2).unwrap();
    let mut new = switched.clone();
    new.remove(1).unwrap();
    for step in [both, switched, new] {
        for node in &nodes {
            node.set_keyring(step.clone());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    nodes[0].publish(vec![sample("net", "after-rotation", 9)]);
    assert!(wait_for(Duration::from_secs(5), || nodes
        .iter()
        .all(|n| has(n, "after-rotation")))
    .await
    .is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in &nodes {
        assert_eq!(alive(node), 4);
        assert_eq!(node.stats().auth_failures, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_say_what_to_do() {
    let ring = Keyring::new(1, [3; 32]);
    let first = Gossip::start(config(1, ring.clone())).unwrap();
    let taken = GossipConfig::new(2, first.local_addr(), ring.clone());
    let err = Gossip::start(taken).err().expect("the port is taken");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("UDP {} on 127.0.0.1", first.local_addr().port())),
        "{text}"
    );
    assert!(text.contains("in use"), "{text}");
    let any = GossipConfig::new(3, "0.0.0.0:7946".parse().unwrap(), ring);
    assert!(matches!(
        Gossip::start(any),
        Err(GossipError::Unspecified(_))
    ));
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let ring = Keyring::new(1, [3; 32]);
    assert!(matches!(
        Gossip::start(config(1, ring)),
        Err(GossipError::NoRuntime)
    ));
}

/// A loopback address nothing listens on (TCP or UDP): bound, then released.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_on_udp_and_tcp_by_a_node_that_is_not_a_member_yet() {
    let ring = Keyring::new(1, [3; 32]);
    let a = Gossip::start(config(1, ring.clone())).unwrap();
    let b = Gossip::start(config(2, ring)).unwrap();
    // b's allow-list holds only a node that does not exist: a is a stranger to it.
    b.set_peers(vec![(9, closed_port())]);
    let rtt = a.ping_udp(b.local_addr(), PING_TIMEOUT).await.unwrap();
    assert!(rtt < PING_TIMEOUT, "{rtt:?}");
    let rtt = a.ping_tcp(b.local_addr(), PING_TIMEOUT).await.unwrap();
    assert!(rtt < PING_TIMEOUT, "{rtt:?}");
    assert_eq!(b.stats().pings_answered, 2);
    assert_eq!(b.stats().unknown_senders, 0);
    assert!(state_of(&b, 1).is_none());

    // Many at once, both ways: each call gets its own pong.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let (from, to) = (from.clone(), to.local_addr());
            tokio::spawn(async move {
                let udp = from.ping_udp(to, PING_TIMEOUT).await;
                let tcp = from.ping_tcp(to, PING_TIMEOUT).await;
                (udp, tcp)
            })
        })
        .collect();
    for call in calls {
        let (udp, tcp) = call.await.unwrap();
        udp.unwrap();
        tcp.unwrap();
    }
    assert_eq!(a.stats().pongs_unmatched + b.stats().pongs_unmatched, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_refused_on_tcp_and_silent_on_udp() {
    let a = Gossip::start(config(1, Keyring::new(1, [3; 32]))).unwrap();
    let closed = closed_port();
    let err = a.ping_tcp(closed, PING_TIMEOUT).await.unwrap_err();
    assert_eq!(err, PingError::Refused);
    let after = Duration::from_millis(300);
    let err = a.ping_udp(closed, after).await.unwrap_err();
    assert_eq!(err, PingError::Timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_node_gives_no_udp_answer_and_a_bad_tcp_reply() {
    let a = Gossip::start(config(1, Keyring::new(1, [3; 32]))).unwrap();
    let other = Gossip::start(config(2, Keyring::new(1, [4; 32]))).unwrap();
    let after = Duration::from_millis(300);
    let err = a.ping_udp(other.local_addr(), after).await.unwrap_err();
    assert_eq!(err, PingError::Timeout);
    assert!(other.stats().auth_failures >= 1);
    let err = a
        .ping_tcp(other.local_addr(), PING_TIMEOUT)
        .await
        .unwrap_err();
    let PingError::BadReply(reason) = &err else {
        panic!("{err}");
    };
    assert!(reason.contains("does not hold this cluster's key"), "{err}");
    assert_eq!(other.stats().pings_answered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pong_sealed_with_a_key_we_lack_is_a_bad_reply() {
    // b is midway through a rotation: it opens key 1 but already seals with key 2.
    let a = Gossip::start(config(1, Keyring::new(1, [3; 32]))).unwrap();
    let mut rotating = Keyring::new(1, [3; 32]);
    rotating.add(2, [5; 32]).unwrap();
    rotating.set_primary(2).unwrap();
    let b = Gossip::start(config(2, rotating)).unwrap();
    let err = a.ping_tcp(b.local_addr(), PING_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, PingError::BadReply(_)), "{err}");
    assert!(err.to_string().contains("key id 2"), "{err}");
    // On UDP the pong does not open either: nothing comes back.
    let after = Duration::from_millis(300);
    let err = a.ping_udp(b.local_addr(), after).await.unwrap_err();
    assert_eq!(err, PingError::Timeout);
    assert_eq!(b.stats().pings_answered, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_that_is_not_gossip_is_a_bad_reply() {
    let a = Gossip::start(config(1, Keyring::new(1, [3; 32]))).unwrap();
    // An echo server: its "answer" is our own ping frame.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let err = a.ping_tcp(echo_addr, PING_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, PingError::BadReply(_)), "{err}");
    assert!(err.to_string().contains("another gossip message"), "{err}");
    // A server that announces a frame far larger than a pong: refused before it is read.
    let huge = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let huge_addr = huge.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = huge.accept().await {
            let _ = stream.write_all(&[0xff; 4]).await;
            let _ = stream.read(&mut [0u8; 64]).await;
        }
    });
    let err = a.ping_tcp(huge_addr, PING_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, PingError::BadReply(_)), "{err}");
    assert!(err.to_string().contains("not Mesh gossip"), "{err}");
    // A server that accepts and stays silent.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let after = Duration::from_millis(300);
    let err = a.ping_tcp(silent_addr, after).await.unwrap_err();
    let PingError::BadReply(reason) = &err else {
        panic!("{err}");
    };
    assert!(
        reason.contains("accepted the connection but did not answer"),
        "{err}"
    );
    drop(silent);
}
