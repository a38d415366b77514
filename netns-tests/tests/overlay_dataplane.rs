//! The overlay data path on real namespaces, without meshd: lab hosts converge their kernels
//! with `dataplane::overlay::Overlay::apply` to plans written here by hand, and tasks (pinned
//! namespaces under the lab's host directories) talk across hosts by overlay address.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::overlay::netns::{self, Netns};
use dataplane::overlay::{
    underlay_mtu, Action, Applied, HostOverlay, LocalEndpoint, NetworkPlan, Overlay,
    RemoteEndpoint, VXLAN_OVERHEAD,
};
use netns_tests::{in_netns, until_ok, TestLab};

const PORT: u16 = 4789;

/// One overlay network of a test.
#[derive(Clone, Copy)]
struct Net {
    id: &'static str,
    vni: u32,
    /// Second octet of its 10.x.0.0/24 subnet.
    octet: u8,
}

const NET_A: Net = Net {
    id: "neta",
    vni: 4101,
    octet: 10,
};
const NET_B: Net = Net {
    id: "netb",
    vni: 4102,
    octet: 20,
};

/// One attachment of a task to a network.
#[derive(Clone)]
struct Task {
    id: String,
    host: &'static str,
    net: Net,
    ifname: &'static str,
    ip: Ipv4Addr,
    mac: [u8; 6],
    netns: PathBuf,
}

/// A lab of hosts without meshd, an `Overlay` handle per host, and the task namespaces pinned
/// under the hosts' directories (unpinned on drop, before the lab goes).
struct World {
    tasks: Vec<Task>,
    overlays: BTreeMap<&'static str, Arc<Overlay>>,
    mtu: u32,
    pins: Vec<PathBuf>,
    lab: TestLab,
}

impl Drop for World {
    fn drop(&mut self) {
        // Nothing here may panic: a panic while a failed test unwinds would abort the process
        // before the lab is removed.
        for (host, overlay) in &self.overlays {
            let overlay = overlay.clone();
            if let Ok(ns) = self.lab.lab().netns(host) {
                let _ = in_netns(&ns, move || block_on(overlay.clear()));
            }
        }
        for pin in &self.pins {
            let _ = netns::remove_pinned(pin);
        }
    }
}

impl World {
    fn new(tag: &str, hosts: usize, link_mtu: Option<u32>) -> World {
        let lab = TestLab::up(tag, |spec| {
            spec.clients = hosts;
            spec.start_daemons = false;
            spec.link.mtu = link_mtu;
        });
        let mut overlays = BTreeMap::new();
        for host in ["c1", "c2", "c3"].into_iter().take(hosts) {
            let dir = lab.lab().files(host).unwrap().dir.join("overlay");
            let ns = lab.lab().netns(host).unwrap();
            let overlay = in_netns(&ns, move || Overlay::new(dir)).unwrap();
            overlays.insert(host, Arc::new(overlay));
        }
        World {
            tasks: Vec::new(),
            overlays,
            mtu: 1450,
            pins: Vec::new(),
            lab,
        }
    }

    /// Attaches task `name` (its namespace created on first use) on `host` to `net`.
    fn attach(&mut self, name: &str, host: &'static str, net: Net, ifname: &'static str, n: u8) {
        let dir = self.lab.lab().files(host).unwrap().dir.join("tasks");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        if !self.pins.contains(&path) {
            netns::create_pinned(&path).unwrap();
            self.pins.push(path.clone());
            self.nsenter(host, &path, &["ip", "link", "set", "lo", "up"]);
        }
        self.tasks.push(Task {
            id: format!("task{name}"),
            host,
            net,
            ifname,
            ip: Ipv4Addr::new(10, net.octet, 0, n),
            mac: [0x02, 0x42, 10, net.octet, 0, n],
            netns: path,
        });
    }

    fn task(&self, name: &str, net: Net) -> &Task {
        let id = format!("task{name}");
        self.tasks
            .iter()
            .find(|t| t.id == id && t.net.id == net.id)
            .unwrap_or_else(|| panic!("no task {name} on {}", net.id))
    }

    /// The plan of `host`: every network some task uses, its local and remote endpoints.
    fn plan(&self, host: &str) -> HostOverlay {
        let mut nets: Vec<Net> = Vec::new();
        for task in &self.tasks {
            if !nets.iter().any(|n| n.id == task.net.id) {
                nets.push(task.net);
            }
        }
        HostOverlay {
            underlay_ip: self.lab.addr(host),
            data_path_port: PORT,
            networks: nets
                .into_iter()
                .map(|net| {
                    let on_net = || self.tasks.iter().filter(move |t| t.net.id == net.id);
                    NetworkPlan {
                        id: net.id.into(),
                        vni: net.vni,
                        subnet: Ipv4Addr::new(10, net.octet, 0, 0),
                        prefix_len: 24,
                        gateway: Ipv4Addr::new(10, net.octet, 0, 1),
                        mtu: self.mtu,
                        local: on_net()
                            .filter(|t| t.host == host)
                            .map(|t| LocalEndpoint {
                                task_id: t.id.clone(),
                                netns: t.netns.clone(),
                                ifname: t.ifname.into(),
                                ip: t.ip,
                                mac: t.mac,
                            })
                            .collect(),
                        remote: on_net()
                            .filter(|t| t.host != host)
                            .map(|t| RemoteEndpoint {
                                ip: t.ip,
                                mac: t.mac,
                                vtep: self.lab.addr(t.host),
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    /// Applies `host`'s plan on `host`.
    fn apply(&self, host: &'static str) -> Applied {
        let plan = self.plan(host);
        let overlay = self.overlays[host].clone();
        self.run_in(host, move || block_on(overlay.apply(&plan)))
            .unwrap_or_else(|err| panic!("apply on {host}: {err}"))
    }

    /// Applies every host's plan; returns what each changed.
    fn apply_all(&self) -> BTreeMap<&'static str, Applied> {
        let hosts: Vec<&'static str> = self.overlays.keys().copied().collect();
        hosts.into_iter().map(|h| (h, self.apply(h))).collect()
    }

    fn run_in<T: Send + 'static>(&self, host: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.lab.lab().netns(host).unwrap(), f).unwrap()
    }

    /// Runs `argv` in namespace `ns` of `host`; Ok(stdout) or Err(stderr).
    fn try_nsenter(&self, host: &str, ns: &Path, argv: &[&str]) -> Result<String, String> {
        let net = format!("--net={}", ns.display());
        let mut full = vec!["nsenter", net.as_str()];
        full.extend_from_slice(argv);
        let out = self.lab.lab().output(host, &full).expect("run nsenter");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!(
                "{argv:?}: {}{}",
                text(&out.stderr),
                text(&out.stdout)
            ))
        }
    }

    fn nsenter(&self, host: &str, ns: &Path, argv: &[&str]) -> String {
        self.try_nsenter(host, ns, argv)
            .unwrap_or_else(|err| panic!("on {host}: {err}"))
    }

    /// The vxlan's own FDB entries (`self`; not the bridge's learned ones) in network `net`
    /// on `host`, one line each.
    fn vxlan_fdb(&self, host: &str, net: Net) -> Vec<String> {
        let ns = self.network_ns(host, net);
        self.nsenter(host, &ns, &["bridge", "fdb", "show", "dev", "vxlan0"])
            .lines()
            .filter(|l| l.contains(" self"))
            .map(str::to_string)
            .collect()
    }

    /// The pinned namespace of network `net` on `host`.
    fn network_ns(&self, host: &str, net: Net) -> PathBuf {
        self.overlays[host].netns_path(net.id)
    }

    /// Whether one ping (with extra flags) from task `from` reaches `to`'s address.
    fn ping(&self, from: &Task, to: Ipv4Addr, flags: &[&str]) -> Result<String, String> {
        let target = to.to_string();
        let mut argv = vec!["ping", "-n", "-q", "-c", "1", "-W", "1"];
        argv.extend_from_slice(flags);
        argv.push(&target);
        self.try_nsenter(from.host, &from.netns, &argv)
    }

    fn assert_ping(&self, from: &Task, to: &Task) {
        until_ok(Duration::from_secs(5), || self.ping(from, to.ip, &[]))
            .unwrap_or_else(|err| panic!("{} cannot ping {} ({}): {err}", from.id, to.id, to.ip));
    }
}

/// Runs `future` to completion on a current-thread runtime made for it.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(future)
}

/// Runs `f` on a thread inside the task namespace pinned at `path` (sockets made there keep
/// the namespace).
fn in_task<T: Send>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let ns = Netns::open_pinned(path)
        .unwrap()
        .expect("a pinned task namespace");
    ns.run(f)
}

/// Sends `payload` over TCP from task `from` to a one-shot echo server in task `to`; returns
/// what came back.
fn tcp_exchange(from: &Task, to: &Task, payload: &[u8]) -> Result<Vec<u8>, String> {
    let ip = to.ip;
    let listener =
        in_task(&to.netns, move || TcpListener::bind((ip, 0))).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    // Set when the client gives up, so the server stops waiting for it.
    let gave_up = Arc::new(AtomicBool::new(false));
    let server_gave_up = gave_up.clone();
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut stream, _) = loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(err)
                    if err.kind() == std::io::ErrorKind::WouldBlock
                        && Instant::now() < deadline
                        && !server_gave_up.load(Ordering::SeqCst) =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => return Err(err),
            }
        };
        stream.set_nonblocking(false)?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got)?;
        stream.write_all(&got)
    });
    let client = in_task(&from.netns, move || {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(stream)
    });
    let result = client.and_then(|mut stream| {
        stream.write_all(payload)?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back)?;
        Ok(back)
    });
    gave_up.store(result.is_err(), Ordering::SeqCst);
    let served = server.join().expect("server thread");
    let back = result.map_err(|e| format!("client {} -> {addr}: {e}", from.id))?;
    served.map_err(|e| format!("server {addr}: {e}"))?;
    Ok(back)
}

/// One UDP datagram from task `from` to task `to` and its echo.
fn udp_exchange(from: &Task, to: &Task) -> Result<(), String> {
    let ip = to.ip;
    let server = in_task(&to.netns, move || UdpSocket::bind((ip, 0))).map_err(|e| e.to_string())?;
    let addr = server.local_addr().unwrap();
    let client =
        in_task(&from.netns, || UdpSocket::bind("0.0.0.0:0")).map_err(|e| e.to_string())?;
    for socket in [&server, &client] {
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    let mut buf = [0u8; 64];
    for _ in 0..6 {
        client
            .send_to(b"overlay", addr)
            .map_err(|e| e.to_string())?;
        let Ok((n, peer)) = server.recv_from(&mut buf) else {
            continue;
        };
        server.send_to(&buf[..n], peer).map_err(|e| e.to_string())?;
        if let Ok(n) = client.recv(&mut buf) {
            if &buf[..n] == b"overlay" {
                return Ok(());
            }
        }
    }
    Err(format!("no UDP echo from {} to {addr}", from.id))
}

fn three_hosts_two_networks(tag: &str) -> World {
    let mut world = World::new(tag, 3, None);
    for (i, host) in ["c1", "c2", "c3"].into_iter().enumerate() {
        let n = u8::try_from(i).unwrap() + 11;
        world.attach(&format!("a{}", i + 1), host, NET_A, "eth0", n);
        world.attach(&format!("b{}", i + 1), host, NET_B, "eth0", n);
    }
    // A task on both networks: eth0 on A (default route), eth1 on B.
    world.attach("m", "c1", NET_A, "eth0", 50);
    world.attach("m", "c1", NET_B, "eth1", 50);
    world
}

#[test]
fn tasks_on_three_hosts_talk_over_tcp_and_udp_and_networks_stay_apart() {
    let world = three_hosts_two_networks("ovl-reach");
    for (host, applied) in world.apply_all() {
        assert!(!applied.is_empty(), "{host} changed nothing");
        assert!(applied.skipped.is_empty(), "{host}: {:?}", applied.skipped);
    }
    // Applying the same plans again changes nothing.
    for (host, applied) in world.apply_all() {
        let lines: Vec<String> = applied.changes.iter().map(ToString::to_string).collect();
        assert!(lines.is_empty(), "second apply on {host} changed {lines:?}");
    }

    for net in [NET_A, NET_B] {
        for from in 1..=3 {
            for to in (1..=3).filter(|&to| to != from) {
                let prefix = if net.id == NET_A.id { "a" } else { "b" };
                let (from, to) = (
                    world.task(&format!("{prefix}{from}"), net),
                    world.task(&format!("{prefix}{to}"), net),
                );
                world.assert_ping(from, to);
                let payload = format!("{} to {}", from.id, to.id).into_bytes();
                assert_eq!(tcp_exchange(from, to, &payload).unwrap(), payload);
                udp_exchange(from, to).unwrap();
            }
        }
    }
    // The task on both networks reaches each through its own interface.
    world.assert_ping(world.task("m", NET_A), world.task("a3", NET_A));
    world.assert_ping(world.task("m", NET_B), world.task("b2", NET_B));
    udp_exchange(world.task("m", NET_B), world.task("b3", NET_B)).unwrap();
    let routes = world.nsenter("c1", &world.task("m", NET_A).netns, &["ip", "-4", "route"]);
    assert!(
        routes.contains("default via 10.10.0.1 dev eth0"),
        "{routes}"
    );
    assert!(!routes.contains("via 10.20.0.1"), "{routes}");

    // Isolation: a task of network A reaches nothing of network B, local or remote.
    let a2 = world.task("a2", NET_A);
    for target in ["b1", "b2", "b3"] {
        let b = world.task(target, NET_B);
        assert!(world.ping(a2, b.ip, &[]).is_err(), "a2 reached {}", b.ip);
        assert!(
            tcp_exchange(a2, b, b"leak").is_err(),
            "a2 connected to {}",
            b.ip
        );
    }

    // The kernel holds what the design says: vxlan learning off, proxy on, static entries.
    let ns = world.network_ns("c1", NET_A);
    let details = world.nsenter("c1", &ns, &["ip", "-d", "link", "show", "vxlan0"]);
    for needle in [
        "id 4101",
        "dstport 4789",
        "local 198.18.0.1",
        "nolearning",
        "proxy",
        "mtu 1450",
    ] {
        assert!(details.contains(needle), "vxlan0 lacks {needle}: {details}");
    }
    let fdb = world.vxlan_fdb("c1", NET_A);
    assert_eq!(fdb.len(), 2, "one entry per remote task: {fdb:?}");
    let entry = |mac: &str, vtep: &str| {
        let dst = format!("dst {vtep} ");
        fdb.iter()
            .any(|l| l.starts_with(mac) && l.contains(&dst) && l.contains("permanent"))
    };
    assert!(entry("02:42:0a:0a:00:0c", "198.18.0.2"), "{fdb:?}");
    assert!(entry("02:42:0a:0a:00:0d", "198.18.0.3"), "{fdb:?}");
    let flooding = fdb.iter().any(|l| l.starts_with("00:00:00:00:00:00"));
    assert!(!flooding, "a flooding entry: {fdb:?}");
    let neigh = world.nsenter("c1", &ns, &["ip", "neigh", "show", "dev", "vxlan0"]);
    assert!(
        neigh.contains("10.10.0.13 lladdr 02:42:0a:0a:00:0d PERMANENT"),
        "{neigh}"
    );
}

#[test]
fn overlay_mtu_is_the_underlay_less_vxlan_and_full_frames_pass() {
    let mut world = World::new("ovl-mtu", 2, Some(1400));
    let (c1, c2) = (world.lab.addr("c1"), world.lab.addr("c2"));
    let (by_device, by_route) = world.run_in("c1", move || {
        (underlay_mtu(c1, None), underlay_mtu(c1, Some(c2)))
    });
    assert_eq!(by_device.unwrap(), 1400);
    assert_eq!(by_route.unwrap(), 1400);
    world.mtu = 1400 - VXLAN_OVERHEAD;
    world.attach("x1", "c1", NET_A, "eth0", 11);
    world.attach("x2", "c2", NET_A, "eth0", 12);
    world.apply_all();
    let (x1, x2) = (world.task("x1", NET_A), world.task("x2", NET_A));
    world.assert_ping(x1, x2);
    // 1322 bytes of ICMP payload + 8 ICMP + 20 IPv4 = 1350, the overlay MTU, with DF set.
    until_ok(Duration::from_secs(3), || {
        world.ping(x1, x2.ip, &["-M", "do", "-s", "1322"])
    })
    .expect("a full-size overlay packet with DF crosses the 1400-byte underlay");
    // One byte more is refused at the sender with an error, not lost on the way.
    let target = x2.ip.to_string();
    let too_big = [
        "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", "1323", &target,
    ];
    let err = world.try_nsenter("c1", &x1.netns, &too_big).unwrap_err();
    assert!(
        err.contains("message too long") || err.contains("mtu"),
        "{err}"
    );
    // And bulk TCP, whose segments fill the MTU, does not black-hole.
    let bulk: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(tcp_exchange(x1, x2, &bulk).unwrap(), bulk);
}

#[test]
fn a_hand_deleted_fdb_entry_is_restored_by_the_next_apply() {
    let mut world = World::new("ovl-drift", 2, None);
    world.attach("d1", "c1", NET_A, "eth0", 11);
    world.attach("d2", "c2", NET_A, "eth0", 12);
    world.apply_all();
    let (d1, d2) = (
        world.task("d1", NET_A).clone(),
        world.task("d2", NET_A).clone(),
    );
    world.assert_ping(&d1, &d2);

    let ns = world.network_ns("c1", NET_A);
    let (mac, vtep) = ("02:42:0a:0a:00:0c", world.lab.addr("c2").to_string());
    world.nsenter(
        "c1",
        &ns,
        &[
            "bridge", "fdb", "del", mac, "dev", "vxlan0", "dst", &vtep, "self",
        ],
    );
    let fdb = world.vxlan_fdb("c1", NET_A);
    assert!(!fdb.iter().any(|l| l.starts_with(mac)), "{fdb:?}");
    // A neighbour entry and an MTU changed by hand are drift too.
    world.nsenter(
        "c1",
        &ns,
        &["ip", "neigh", "del", "10.10.0.12", "dev", "vxlan0"],
    );
    world.nsenter("c1", &ns, &["ip", "link", "set", "br0", "mtu", "1300"]);

    let applied = world.apply("c1");
    let restored = applied.changes.iter().any(|c| {
        matches!(c.action, Action::FdbSet { mac, vtep } if mac == d2.mac && vtep == world.lab.addr("c2"))
    });
    let lines: Vec<String> = applied.changes.iter().map(ToString::to_string).collect();
    assert!(
        restored,
        "the FDB entry was not reported restored: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("neighbour 10.10.0.12")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("br0 fixed: mtu 1450")),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 3, "only the drift is repaired: {lines:?}");
    let fdb = world.vxlan_fdb("c1", NET_A);
    let dst = format!("dst {vtep} ");
    assert!(
        fdb.iter().any(|l| l.starts_with(mac) && l.contains(&dst)),
        "{fdb:?}"
    );
    world.assert_ping(&d1, &d2);
    assert!(world.apply("c1").is_empty());
}

#[test]
fn removed_tasks_and_networks_leave_nothing_behind() {
    let mut world = three_hosts_two_networks("ovl-rm");
    world.apply_all();
    let a3 = world.task("a3", NET_A).clone();
    world.assert_ping(world.task("a1", NET_A), &a3);

    // The tasks' gateway keeps one MAC whatever ports come and go (a bridge would otherwise
    // take its lowest port's, and a task leaving would move it under the others).
    let bridge_mac = |world: &World| {
        let ns = world.network_ns("c3", NET_A);
        let line = world.nsenter("c3", &ns, &["ip", "-br", "link", "show", "br0"]);
        line.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string()
    };
    let fixed = dataplane::overlay::names::fmt_mac(&dataplane::overlay::names::bridge_mac(
        world.lab.addr("c3"),
    ));
    assert_eq!(bridge_mac(&world), fixed);

    // Task a3 leaves: its veth goes on c3, its entries on c1 and c2.
    world
        .tasks
        .retain(|t| !(t.id == a3.id && t.net.id == NET_A.id));
    world.apply_all();
    assert_eq!(bridge_mac(&world), fixed);
    let ve = dataplane::overlay::names::veth_name(&a3.id);
    let links = world.nsenter("c3", &world.network_ns("c3", NET_A), &["ip", "-o", "link"]);
    assert!(!links.contains(&ve), "{ve} is still there: {links}");
    let inside = world.nsenter("c3", &a3.netns, &["ip", "-o", "link"]);
    assert!(
        !inside.contains("eth0"),
        "the task kept its interface: {inside}"
    );
    for host in ["c1", "c2"] {
        let fdb = world.vxlan_fdb(host, NET_A);
        let stale = fdb.iter().any(|l| l.starts_with("02:42:0a:0a:00:0d"));
        assert!(!stale, "{host}: {fdb:?}");
        let ns = world.network_ns(host, NET_A);
        let neigh = world.nsenter(host, &ns, &["ip", "neigh", "show", "dev", "vxlan0"]);
        assert!(!neigh.contains("10.10.0.13"), "{host}: {neigh}");
    }
    world.assert_ping(world.task("a1", NET_A), world.task("a2", NET_A));

    // A task whose namespace is gone is skipped, not an error.
    let b3 = world.task("b3", NET_B).clone();
    netns::remove_pinned(&b3.netns).unwrap();
    let applied = world.apply("c3");
    assert_eq!(applied.skipped.len(), 1, "{:?}", applied.skipped);
    assert_eq!(applied.skipped[0].task_id, b3.id);

    // Network B leaves every host: no namespace, pin, mount, device or veth remains.
    let b1 = world.task("b1", NET_B).netns.clone();
    world.tasks.retain(|t| t.net.id != NET_B.id);
    for (host, applied) in world.apply_all() {
        assert!(
            applied
                .changes
                .iter()
                .any(|c| c.network == NET_B.id && c.action == Action::NetworkRemoved),
            "{host}: {:?}",
            applied.changes
        );
        let pin = world.network_ns(host, NET_B);
        assert!(!pin.exists(), "{} remains", pin.display());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(&pin.display().to_string()),
            "{host}: still mounted"
        );
        let underlay = world.lab.sh(host, &["ip", "-o", "link"]);
        assert!(
            !underlay.contains("vxlan") && !underlay.contains("mvx"),
            "{host}: {underlay}"
        );
    }
    let inside = world.nsenter("c1", &b1, &["ip", "-o", "link"]);
    assert!(!inside.contains("eth0"), "b1 kept its interface: {inside}");
    let m = world.task("m", NET_A).netns.clone();
    let inside = world.nsenter("c1", &m, &["ip", "-o", "link"]);
    assert!(
        inside.contains("eth0") && !inside.contains("eth1"),
        "{inside}"
    );
    world.assert_ping(world.task("m", NET_A), world.task("a2", NET_A));
    for (host, applied) in world.apply_all() {
        assert!(applied.is_empty(), "{host}: {:?}", applied.changes);
    }

    // Clearing removes network A too.
    for host in ["c1", "c2", "c3"] {
        let overlay = world.overlays[host].clone();
        world
            .run_in(host, move || block_on(overlay.clear()))
            .unwrap();
        assert!(!world.network_ns(host, NET_A).exists());
    }
}

#[test]
fn bad_plans_and_foreign_devices_are_reported() {
    let mut world = World::new("ovl-bad", 1, None);
    world.attach("p1", "c1", NET_A, "eth0", 11);
    world.attach("p1", "c1", NET_B, "eth1", 11);
    // A device that is not ours holds the name of the task's second interface.
    let p1 = world.task("p1", NET_A).clone();
    let foreign = ["ip", "link", "add", "eth1", "type", "bridge"];
    world.nsenter("c1", &p1.netns, &foreign);
    let overlay = world.overlays["c1"].clone();
    let plan = world.plan("c1");
    let err = world
        .run_in("c1", move || block_on(overlay.apply(&plan)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("device eth1") && err.contains("not ours"),
        "{err}"
    );
    // The rest converged all the same: the first interface is up with its address.
    let addrs = world.nsenter("c1", &p1.netns, &["ip", "-4", "-o", "addr"]);
    assert!(addrs.contains("eth0    inet 10.10.0.11/24"), "{addrs}");
    world.nsenter("c1", &p1.netns, &["ip", "link", "del", "eth1"]);
    world.apply("c1");
    let addrs = world.nsenter("c1", &p1.netns, &["ip", "-4", "-o", "addr"]);
    assert!(addrs.contains("eth1    inet 10.20.0.11/24"), "{addrs}");

    // A plan that contradicts itself changes nothing at all.
    world.tasks.clear();
    world.attach("p2", "c1", NET_A, "eth0", 11);
    let mut plan = world.plan("c1");
    plan.networks[0].gateway = Ipv4Addr::new(10, 99, 0, 1);
    let overlay = world.overlays["c1"].clone();
    let err = world
        .run_in("c1", move || block_on(overlay.apply(&plan)))
        .unwrap_err();
    assert!(
        err.to_string().contains("gateway 10.99.0.1 is outside"),
        "{err}"
    );
    let links = world.nsenter("c1", &world.task("p2", NET_A).netns, &["ip", "-o", "link"]);
    assert!(!links.contains("eth0"), "{links}");
}
