//! Probes against real kernels: two network namespaces `a` and `b` joined by a veth
//! (198.18.200.1/24 and .2/24), a responder in `b`, probes from `a`. The responder's probe tap
//! is built as production builds it: a vxlan device with the probe VNI created in `b` (so its
//! UDP socket is `b`'s), then moved into a child namespace `t` onto a bridge. Root only; each
//! test skips with a message otherwise. The namespaces (and so everything in them: links,
//! vxlan devices, nftables tables) are deleted when the `TestNet` drops, panics included.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::*;
use crate::overlay::netns::Netns;

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 2);
const PORT: u16 = 4789;
const SHORT: Duration = Duration::from_millis(600);

fn is_root() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Two namespaces joined by a veth, and `b`'s probe tap namespace, deleted on drop.
struct TestNet {
    a: String,
    b: String,
    /// Holds the probe tap once `probe_tap` made it.
    t: String,
}

impl TestNet {
    /// None (after saying why) when not root.
    fn new() -> Option<TestNet> {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces)");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Built before the namespaces exist, so that a failure halfway still cleans up.
        let net = TestNet {
            a: format!("mprobe-{pid}-{n}-a"),
            b: format!("mprobe-{pid}-{n}-b"),
            t: format!("mprobe-{pid}-{n}-t"),
        };
        run(&["ip", "netns", "add", &net.a]);
        run(&["ip", "netns", "add", &net.b]);
        run(&[
            "ip", "-n", &net.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
            "netns", &net.b,
        ]);
        for (ns, ip) in [(&net.a, "198.18.200.1/24"), (&net.b, "198.18.200.2/24")] {
            run(&["ip", "-n", ns, "addr", "add", ip, "dev", "eth0"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        }
        // A link set up only carries packets once the kernel's linkwatch has run for it (it
        // attaches the qdisc; until then frames are dropped), which can take up to a second:
        // a first probe sent sooner is lost and reads as a filtered port.
        for ns in [&net.a, &net.b] {
            Self::wait_operstate_up(ns, "eth0");
        }
        Some(net)
    }

    fn wait_operstate_up(ns: &str, link: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let argv = in_netns_argv(&["ip", "-n", ns, "-o", "link", "show", link]);
            let out = Command::new(&argv[0])
                .args(&argv[1..])
                .output()
                .expect("ip");
            if String::from_utf8_lossy(&out.stdout).contains(" state UP ") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{link} in {ns} not up after 5 s: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn path(ns: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(ns)
    }

    /// Runs `f` on a thread inside namespace `ns`.
    fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let netns = Netns::open_pinned(&Self::path(ns))
            .unwrap()
            .expect("pinned");
        netns.run(|| Ok(f())).unwrap()
    }

    fn in_a<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Self::run_in(&self.a, f)
    }

    fn in_b<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Self::run_in(&self.b, f)
    }

    /// A kernel vxlan device on the data-path port in `ns`, as Mesh's overlay has, with an
    /// overlay address and a flood entry towards the peer.
    fn vxlan(ns: &str, local: &str, peer: &str, overlay_ip: &str) {
        run(&[
            "ip",
            "-n",
            ns,
            "link",
            "add",
            "vxlan0",
            "type",
            "vxlan",
            "id",
            "4097",
            "dstport",
            "4789",
            "local",
            local,
            "nolearning",
        ]);
        run(&["ip", "-n", ns, "link", "set", "vxlan0", "mtu", "1450", "up"]);
        run(&["ip", "-n", ns, "addr", "add", overlay_ip, "dev", "vxlan0"]);
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "bridge",
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vxlan0",
            "dst",
            peer,
        ]);
    }

    fn vxlan_both(&self) {
        Self::vxlan(&self.a, "198.18.200.1", "198.18.200.2", "10.200.0.1/24");
        Self::vxlan(&self.b, "198.18.200.2", "198.18.200.1", "10.200.0.2/24");
    }

    /// Replaces `ns`'s whole nftables ruleset (it dies with the namespace).
    fn nft(ns: &str, ruleset: &str) {
        let mut child = Command::new("nsenter")
            .args([&format!("--net=/run/netns/{ns}"), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nsenter nft");
        let script = format!("flush ruleset\n{ruleset}\n");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "nft in {ns}: {ruleset}");
    }

    /// An input rule on `ns`'s UDP 4789 and TCP 7946.
    fn input_rule(ns: &str, verdict: &str) {
        Self::nft(
            ns,
            &format!(
                "table ip mprobe {{\n chain input {{\n type filter hook input priority 0;\n \
                 udp dport 4789 {verdict}\n tcp dport 7946 {verdict}\n }}\n}}"
            ),
        );
    }

    /// An input rule in `ns` as an operator would add it: `nft add rule inet t input udp
    /// dport 4789 <verdict>`.
    fn udp_input_rule(ns: &str, verdict: &str) {
        Self::nft(
            ns,
            "table inet t {\n chain input {\n type filter hook input priority 0;\n }\n}",
        );
        let rule = format!("udp dport 4789 {verdict}");
        let mut args = vec!["ip", "netns", "exec", ns, "nft", "add", "rule"];
        args.extend(["inet", "t", "input"]);
        args.extend(rule.split(' '));
        run(&args);
    }

    /// b's probe tap, as the overlay makes a network's vxlan: created in `b` under a temporary
    /// name (its UDP socket is `b`'s), moved into `t` as `vxlan0`, on a bridge there.
    fn probe_tap(&self) -> PathBuf {
        run(&["ip", "netns", "add", &self.t]);
        run(&[
            "ip",
            "-n",
            &self.b,
            "link",
            "add",
            "mprobe-tmp",
            "type",
            "vxlan",
            "id",
            &wire::PROBE_VNI.to_string(),
            "dstport",
            "4789",
            "local",
            "198.18.200.2",
            "nolearning",
        ]);
        run(&[
            "ip",
            "-n",
            &self.b,
            "link",
            "set",
            "mprobe-tmp",
            "netns",
            &self.t,
            "name",
            "vxlan0",
        ]);
        run(&["ip", "-n", &self.t, "link", "add", "br0", "type", "bridge"]);
        run(&[
            "ip", "-n", &self.t, "link", "set", "vxlan0", "master", "br0",
        ]);
        for dev in ["lo", "br0", "vxlan0"] {
            run(&["ip", "-n", &self.t, "link", "set", dev, "up"]);
        }
        Self::path(&self.t)
    }

    fn probe(&self, timeout: Duration) -> ProbeOutcome {
        self.in_a(|| vxlan_probe(A, B, PORT, timeout)).unwrap()
    }

    /// A responder in `b` on its probe tap (made here), allowing `allowed`.
    fn responder_allowing(&self, allowed: AllowedSenders) -> ProbeResponder {
        let tap = self.probe_tap();
        self.in_b(|| ProbeResponder::start(B, PORT, &tap, "vxlan0", allowed))
            .unwrap()
    }

    /// A responder in `b` on its probe tap (made here), answering `a`.
    fn responder(&self) -> ProbeResponder {
        self.responder_allowing(Arc::new(RwLock::new(HashSet::from([A]))))
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in [&self.t, &self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `ip -n NS ...` and `ip netns exec NS ...` as `nsenter --net=/run/netns/NS ...`: both `ip`
/// forms remount / in a new mount namespace, which fails where / is not a mount point (a
/// chroot, as in CI's fresh check).
fn in_netns_argv(args: &[&str]) -> Vec<String> {
    let enter = |ns: &str, rest: &[&str]| {
        let mut argv = vec!["nsenter".to_string(), format!("--net=/run/netns/{ns}")];
        argv.extend(rest.iter().map(|a| a.to_string()));
        argv
    };
    match args {
        ["ip", "-n", ns, rest @ ..] => {
            let mut argv = enter(ns, &["ip"]);
            argv.extend(rest.iter().map(|a| a.to_string()));
            argv
        }
        ["ip", "netns", "exec", ns, rest @ ..] => enter(ns, rest),
        other => other.iter().map(|a| a.to_string()).collect(),
    }
}

fn run(args: &[&str]) {
    let argv = in_netns_argv(args);
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_responder_answers_a_probe() {
    let Some(net) = TestNet::new() else { return };
    let responder = net.responder();
    assert_eq!(responder.interface(), "vxlan0");
    let outcome = net.probe(Duration::from_secs(1));
    assert!(
        matches!(outcome, ProbeOutcome::Answered { .. }),
        "{outcome}"
    );
    let stats = responder.stats();
    assert_eq!(
        (stats.requests, stats.replies, stats.malformed),
        (1, 1, 0),
        "{stats:?}"
    );
    // From an unspecified local address, routing picks the source and the probe claims it.
    let any = Ipv4Addr::UNSPECIFIED;
    let outcome = net.in_a(|| vxlan_probe(any, B, PORT, SHORT)).unwrap();
    assert!(
        matches!(outcome, ProbeOutcome::Answered { .. }),
        "{outcome}"
    );
    drop(responder);
    // Stopped: the tap's vxlan socket still takes the port, and nobody answers.
    assert_eq!(net.probe(SHORT), ProbeOutcome::NoAnswer);
}

#[test]
fn without_a_vxlan_socket_the_port_is_refused() {
    let Some(net) = TestNet::new() else { return };
    assert_eq!(net.probe(SHORT), ProbeOutcome::Refused);
}

#[test]
fn the_responder_needs_its_tap() {
    let Some(net) = TestNet::new() else { return };
    let allowed = AllowedSenders::default();
    let missing = PathBuf::from("/run/netns/mprobe-does-not-exist");
    let err = net
        .in_b(|| ProbeResponder::start(B, PORT, &missing, "vxlan0", allowed.clone()))
        .unwrap_err();
    assert!(matches!(err, ProbeError::Namespace { .. }), "{err}");
    let tap = net.probe_tap();
    let err = net
        .in_b(|| ProbeResponder::start(B, PORT, &tap, "vxlan9", allowed))
        .unwrap_err();
    assert!(matches!(err, ProbeError::NoTapDevice { .. }), "{err}");
}

#[test]
fn the_responder_answers_beside_a_kernel_vxlan_device() {
    let Some(net) = TestNet::new() else { return };
    net.vxlan_both();
    // The vxlan socket drops the unknown VNI silently.
    assert_eq!(net.probe(SHORT), ProbeOutcome::NoAnswer);
    let responder = net.responder();
    let outcome = net.probe(Duration::from_secs(1));
    assert!(
        matches!(outcome, ProbeOutcome::Answered { .. }),
        "{outcome}"
    );
    assert_eq!(responder.stats().replies, 1);
}

#[test]
fn only_probes_from_allowed_senders_are_answered() {
    let Some(net) = TestNet::new() else { return };
    let allowed: AllowedSenders =
        Arc::new(RwLock::new(HashSet::from([Ipv4Addr::new(198, 18, 200, 9)])));
    let responder = net.responder_allowing(Arc::clone(&allowed));
    net.in_a(|| {
        let socket = std::net::UdpSocket::bind((A, 0)).unwrap();
        let probe = wire::ProbeRepr {
            kind: wire::ProbeKind::Request,
            nonce: 1,
            sender: A,
            reply_size: 0,
            seen_size: 0,
            sender_port: 40000,
            flags: 0,
        }
        .to_payload(0);
        let mut other_vni = probe.clone();
        other_vni[4..7].copy_from_slice(&[0, 0x10, 0x01]); // VNI 4097: overlay traffic
        let mut junk = probe.clone();
        junk[22..30].copy_from_slice(b"NOTPROBE"); // the probe VNI, but not a probe
        for (payload, port) in [(&other_vni, PORT), (&probe, PORT + 1), (&junk, PORT)] {
            socket.send_to(payload, (B, port)).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        responder.stats(),
        ResponderStats {
            malformed: 1,
            ..ResponderStats::default()
        },
        "only the junk on the probe VNI reached the tap"
    );
    assert_eq!(net.probe(SHORT), ProbeOutcome::NoAnswer, "a is no member");
    assert_eq!(responder.stats().not_allowed, u64::from(ATTEMPTS));
    allowed.write().unwrap().insert(A);
    assert!(matches!(
        net.probe(Duration::from_secs(1)),
        ProbeOutcome::Answered { .. }
    ));
    // The responder counts a reply once send_to returns, which can be after the prober read
    // it: wait for the count rather than race it.
    let counted = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        responder.stats().replies == 1
    });
    assert!(counted, "{:?}", responder.stats());
}

#[test]
fn firewall_verdicts_are_told_apart() {
    let Some(net) = TestNet::new() else { return };
    let responder = net.responder();
    assert!(matches!(
        net.probe(Duration::from_secs(1)),
        ProbeOutcome::Answered { .. }
    ));
    // The responder reads the tap, after the host's input firewall: every verdict shows.
    TestNet::udp_input_rule(&net.b, "drop");
    assert_eq!(net.probe(SHORT), ProbeOutcome::NoAnswer);
    TestNet::udp_input_rule(&net.b, "reject");
    assert_eq!(net.probe(SHORT), ProbeOutcome::Refused);
    TestNet::udp_input_rule(&net.b, "reject with icmp type admin-prohibited");
    match net.probe(SHORT) {
        ProbeOutcome::Unreachable { detail } => {
            assert!(detail.contains("administratively prohibited"), "{detail}")
        }
        other => panic!("{other}"),
    }
    // A drop of only this sender, as an operator would block one pair.
    TestNet::nft(
        &net.b,
        "table inet t {\n chain input {\n type filter hook input priority 0;\n \
         ip saddr 198.18.200.1 udp dport 4789 drop\n }\n}",
    );
    assert_eq!(net.probe(SHORT), ProbeOutcome::NoAnswer);
    assert_eq!(responder.stats().replies, 1, "{:?}", responder.stats());
    TestNet::nft(&net.b, "");
    assert!(matches!(
        net.probe(Duration::from_secs(1)),
        ProbeOutcome::Answered { .. }
    ));
}

#[test]
fn tcp_ports_open_closed_and_filtered() {
    let Some(net) = TestNet::new() else { return };
    let _listener = net.in_b(|| TcpListener::bind((B, 2377)).unwrap());
    let tcp = |port: u16| {
        net.in_a(|| tcp_probe(A, SocketAddr::from((B, port)), SHORT))
            .unwrap()
    };
    assert!(matches!(tcp(2377), ProbeOutcome::Answered { .. }));
    assert_eq!(tcp(2378), ProbeOutcome::Refused);
    TestNet::input_rule(&net.b, "drop");
    assert_eq!(tcp(7946), ProbeOutcome::NoAnswer);
    TestNet::input_rule(&net.b, "reject with icmp type admin-prohibited");
    assert!(matches!(tcp(7946), ProbeOutcome::Unreachable { .. }));
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 2377));
    assert!(matches!(tcp_probe(A, v6, SHORT), Err(ProbeError::Ipv6(_))));
}

#[test]
fn path_mtu_finds_a_black_hole() {
    let Some(net) = TestNet::new() else { return };
    // b drops frames above its MTU without a word. veth lets 4 bytes more through (it
    // allows for a VLAN tag), so the hole starts just above 1404.
    run(&["ip", "-n", &net.b, "link", "set", "eth0", "mtu", "1400"]);
    let _responder = net.responder();
    let found = net
        .in_a(|| path_mtu(A, B, PORT, (576, 9000), Duration::from_millis(300)))
        .unwrap();
    eprintln!("veth black hole: {found:?}");
    assert!((1400..=1404).contains(&found.mtu), "{found:?}");
    assert_eq!(found.local_mtu, Some(1500));
    assert_eq!(found.frag_needed, None);
    assert!(found.elapsed < Duration::from_secs(6), "{found:?}");
}

#[test]
fn path_mtu_is_exact() {
    let Some(net) = TestNet::new() else { return };
    // An exact hole: an ingress drop, which comes before the responder's packet socket.
    TestNet::nft(
        &net.b,
        "table netdev mprobe {\n chain in {\n type filter hook ingress device eth0 priority 0;\n \
         ip length > 1300 drop\n }\n}",
    );
    let _responder = net.responder();
    let found = net
        .in_a(|| path_mtu(A, B, PORT, (576, 1500), Duration::from_millis(300)))
        .unwrap();
    eprintln!("exact black hole: {found:?}");
    assert_eq!(found.mtu, 1300, "{found:?}");
    // A clean path: one probe above the baseline.
    TestNet::nft(&net.b, "");
    let found = net
        .in_a(|| path_mtu(A, B, PORT, (576, 1500), Duration::from_millis(300)))
        .unwrap();
    assert_eq!((found.mtu, found.probes), (1500, 2), "{found:?}");
}

#[test]
fn path_mtu_needs_a_responder() {
    let Some(net) = TestNet::new() else { return };
    net.vxlan_both();
    let err = net
        .in_a(|| path_mtu(A, B, PORT, (576, 1500), Duration::from_millis(100)))
        .unwrap_err();
    assert!(matches!(err, ProbeError::NoBaseline { .. }), "{err}");
}

#[test]
fn overlay_path_mtu_over_vxlan() {
    let Some(net) = TestNet::new() else { return };
    net.vxlan_both();
    run(&["ip", "-n", &net.b, "link", "set", "eth0", "mtu", "1400"]);
    let a = TestNet::path(&net.a);
    let (local, peer) = (Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(10, 200, 0, 2));
    assert!(matches!(
        ping_in(&a, peer, Duration::from_secs(1)).unwrap(),
        ProbeOutcome::Answered { .. }
    ));
    assert_eq!(
        ping_in(&a, Ipv4Addr::new(10, 200, 0, 9), SHORT).unwrap(),
        ProbeOutcome::NoAnswer
    );
    let found = overlay_path_mtu(&a, local, peer, (576, 9000), Duration::from_millis(300)).unwrap();
    eprintln!("overlay: {found:?}");
    // 1400 less VXLAN's 50 bytes, plus veth's 4 bytes of slack.
    assert!((1350..=1354).contains(&found.mtu), "{found:?}");
    assert_eq!(found.local_mtu, Some(1450));
    let missing = PathBuf::from("/run/netns/mprobe-does-not-exist");
    let err = ping_in(&missing, peer, SHORT).unwrap_err();
    assert!(matches!(err, ProbeError::Namespace { .. }), "{err}");
}
