//! The nftables path of the ingress routing mesh against real kernels. A lab of network
//! namespaces: a switch (a bridge), a client and two hosts on 198.18.77.0/24; one overlay
//! network `n1` (10.77.0.0/24) built on both hosts by `Overlay`, with a task on each (`t1` on
//! host 1, `t2` on host 2) running a TCP and a UDP server that answer with the task's name and
//! the address they saw. Root only; each test skips with a message otherwise. Everything is
//! deleted when the `Lab` drops, panics included.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dataplane::lb::nft::NftBalancer;
use dataplane::lb::{
    BackendState, HostLb, LbBackend, LbCounter, LbNetwork, LbPath, LbPort, LbService, Protocol,
};
use dataplane::overlay::netns::{self, Netns};
use dataplane::overlay::{
    names, HostOverlay, LocalEndpoint, NetworkPlan, Overlay, RemoteEndpoint, DEFAULT_DATA_PATH_PORT,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 100);
const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 1);
const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 2);
const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const T1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
const T2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
const NETWORK: &str = "n1";
const TCP_TARGET: u16 = 8080;
const UDP_TARGET: u16 = 5353;
/// A safety net against hangs, never an assertion.
const PATIENCE: Duration = Duration::from_secs(3);

fn is_root() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// Runs a command (`nsenter --net=... cmd` for another namespace) and asserts it succeeded.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|err| panic!("{}: {err}", args[0]));
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cmd` inside the namespace pinned at `ns` (nsenter, not `ip netns exec`: that remounts /,
/// which fails in CI's chroot).
fn run_in(ns: &Path, args: &[&str]) -> String {
    let enter = format!("--net={}", ns.display());
    let mut argv = vec!["nsenter", enter.as_str()];
    argv.extend_from_slice(args);
    run(&argv)
}

fn try_run_in(ns: &Path, args: &[&str]) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Runs `f` on a thread inside the namespace pinned at `ns`.
fn inside<T: Send>(ns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    Netns::open_pinned(ns)
        .unwrap()
        .expect("a pinned namespace")
        .run(f)
}

/// The lab: namespaces in /run/netns (switch, client, hosts), and per host an overlay
/// directory holding its network namespace and its task's namespace.
struct Lab {
    netns: Vec<String>,
    dir: tempfile::TempDir,
    overlays: Vec<Overlay>,
    tasks: Vec<PathBuf>,
}

impl Lab {
    /// None (after saying why) when not root.
    fn new() -> Option<Lab> {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, nftables)");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("mlbn-{}-{n}", std::process::id());
        // Built before anything exists, so that a failure halfway still cleans up.
        let mut lab = Lab {
            netns: ["sw", "cl", "h1", "h2"]
                .iter()
                .map(|role| format!("{prefix}-{role}"))
                .collect(),
            dir: tempfile::tempdir().unwrap(),
            overlays: Vec::new(),
            tasks: Vec::new(),
        };
        for ns in &lab.netns {
            run(&["ip", "netns", "add", ns]);
        }
        let sw = lab.ns("sw");
        run_in(&sw, &["ip", "link", "add", "br0", "type", "bridge"]);
        run_in(&sw, &["ip", "link", "set", "br0", "up"]);
        for (role, ip) in [("cl", CLIENT), ("h1", H1), ("h2", H2)] {
            let port = format!("sw-{role}");
            let peer = lab.ns(role);
            run_in(
                &sw,
                &[
                    "ip",
                    "link",
                    "add",
                    &port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    peer.to_str().unwrap(),
                ],
            );
            run_in(&sw, &["ip", "link", "set", &port, "master", "br0", "up"]);
            run_in(
                &peer,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            );
            run_in(&peer, &["ip", "link", "set", "eth0", "up"]);
            run_in(&peer, &["ip", "link", "set", "lo", "up"]);
        }
        for (host, (me, task, other)) in [("h1", (H1, T1, (T2, H2))), ("h2", (H2, T2, (T1, H1)))] {
            lab.overlay(host, me, task, other);
        }
        Some(lab)
    }

    fn ns(&self, role: &str) -> PathBuf {
        let name = self
            .netns
            .iter()
            .find(|n| n.ends_with(&format!("-{role}")))
            .expect("a lab role");
        PathBuf::from("/run/netns").join(name)
    }

    fn overlay_dir(&self, host: &str) -> PathBuf {
        self.dir.path().join(host).join("overlay")
    }

    /// Network n1 on `host` (with its leg) with its task (and the other host's as remote), and
    /// the task's servers.
    fn overlay(&mut self, host: &str, me: Ipv4Addr, task: Ipv4Addr, other: (Ipv4Addr, Ipv4Addr)) {
        let name = if task == T1 { "t1" } else { "t2" };
        let task_ns = self.dir.path().join(host).join(format!("task-{name}"));
        std::fs::create_dir_all(task_ns.parent().unwrap()).unwrap();
        netns::create_pinned(&task_ns).unwrap();
        self.tasks.push(task_ns.clone());
        let dir = self.overlay_dir(host);
        let overlay = inside(&self.ns(host), || Ok(Overlay::new(dir.clone()))).unwrap();
        let plan = HostOverlay {
            underlay_ip: me,
            data_path_port: DEFAULT_DATA_PATH_PORT,
            networks: vec![NetworkPlan {
                id: NETWORK.to_string(),
                vni: 4097,
                subnet: SUBNET,
                prefix_len: 24,
                gateway: GATEWAY,
                mtu: 1450,
                local: vec![LocalEndpoint {
                    task_id: name.to_string(),
                    netns: task_ns.clone(),
                    ifname: "eth0".to_string(),
                    ip: task,
                    mac: mac(task),
                }],
                remote: vec![RemoteEndpoint {
                    ip: other.0,
                    mac: mac(other.0),
                    vtep: other.1,
                }],
            }],
        };
        block_on(overlay.apply(&plan)).unwrap();
        self.overlays.push(overlay);
        self.leg(host);
        serve(&task_ns, name);
    }

    /// Checks that the overlay made n1's leg on `host` (the balancer routes through it).
    fn leg(&self, host: &str) {
        let leg = names::leg(NETWORK);
        assert!(
            try_run_in(&self.ns(host), &["ip", "link", "show", &leg.host_if]),
            "the overlay made no leg {} on {host}",
            leg.host_if
        );
    }

    /// A balancer for `host`, made inside its namespace.
    fn balancer(&self, host: &str) -> NftBalancer {
        let dir = self.overlay_dir(host);
        inside(&self.ns(host), || {
            NftBalancer::new("eth0", &dir).map_err(|err| io::Error::other(err.to_string()))
        })
        .unwrap()
    }

    /// The handle of `host`'s table, or None when it has none.
    fn table_handle(&self, host: &str) -> Option<u64> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.ns(host).display()))
            .args(["nft", "-j", "list", "table", "ip", "mesh-lb"])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["nftables"]
            .as_array()?
            .iter()
            .find_map(|o| o["table"]["handle"].as_u64())
    }

    /// `ip route show <subnet>` on `host`.
    fn subnet_route(&self, host: &str) -> String {
        run_in(
            &self.ns(host),
            &["ip", "route", "show", &format!("{SUBNET}/24")],
        )
    }

    /// Asks `host`'s published TCP port `port` from the client, on a new connection.
    fn tcp(&self, host: Ipv4Addr, port: u16) -> io::Result<Conn> {
        let stream = inside(&self.ns("cl"), || {
            TcpStream::connect_timeout(&SocketAddr::from((host, port)), PATIENCE)
        })?;
        stream.set_read_timeout(Some(PATIENCE))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    /// Who answered a new TCP connection to `host:port`.
    fn ask_tcp(&self, host: Ipv4Addr, port: u16) -> Answer {
        let mut conn = self.tcp(host, port).unwrap();
        conn.ask().unwrap()
    }

    /// Who answered a datagram to `host:port` from a new socket (a new flow).
    fn ask_udp(&self, host: Ipv4Addr, port: u16) -> io::Result<Answer> {
        let mut last = None;
        // A datagram may be lost to a first ARP resolution; a refusal is an answer.
        for _ in 0..3 {
            let socket = inside(&self.ns("cl"), || {
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            })?;
            socket.connect((host, port))?;
            socket.set_read_timeout(Some(PATIENCE))?;
            socket.send(b"hi")?;
            let mut buf = [0u8; 256];
            match socket.recv(&mut buf) {
                Ok(n) => return Ok(Answer::parse(&String::from_utf8_lossy(&buf[..n]))),
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => return Err(err),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for overlay in &self.overlays {
            let _ = block_on(overlay.clear());
        }
        for task in &self.tasks {
            let _ = netns::remove_pinned(task);
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A task's answer: its name and the address it saw the flow come from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    task: String,
    seen: Ipv4Addr,
}

impl Answer {
    fn parse(line: &str) -> Answer {
        let (task, seen) = line.trim().split_once(' ').expect("name and address");
        Answer {
            task: task.to_string(),
            seen: seen.parse().expect("an address"),
        }
    }
}

/// An open connection to a published port.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn ask(&mut self) -> io::Result<Answer> {
        self.stream.write_all(b"hi\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Answer::parse(&line))
    }
}

/// Starts the task's servers in its namespace: TCP on 8080 (a line in, `<name> <peer>` out,
/// for as long as the connection lasts) and UDP on 5353 (the same per datagram).
fn serve(task_ns: &Path, name: &'static str) {
    let (tcp, udp) = inside(task_ns, || {
        Ok((
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_TARGET))?,
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_TARGET))?,
        ))
    })
    .unwrap();
    std::thread::spawn(move || {
        for stream in tcp.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let peer = stream.peer_addr()?.ip();
                let mut writer = stream.try_clone()?;
                for line in BufReader::new(stream).lines() {
                    line?;
                    writer.write_all(format!("{name} {peer}\n").as_bytes())?;
                }
                io::Result::Ok(())
            });
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
        }
    });
}

fn backend(task: &str, ip: Ipv4Addr, vtep: Ipv4Addr) -> LbBackend {
    LbBackend {
        task_id: task.to_string(),
        network_id: NETWORK.to_string(),
        ip,
        mac: mac(ip),
        vtep,
        weight: 1,
        state: BackendState::Active,
    }
}

fn t1() -> LbBackend {
    backend("t1", T1, H1)
}

fn t2() -> LbBackend {
    backend("t2", T2, H2)
}

fn port(protocol: Protocol, published: u16, target: u16, local_only: bool) -> LbPort {
    LbPort {
        protocol,
        published,
        target,
        local_only,
    }
}

/// Service `web`: TCP 80 → 8080 and UDP 53 → 5353 in ingress mode, over `backends`.
fn web(backends: Vec<LbBackend>) -> LbService {
    LbService {
        id: "svc-web".to_string(),
        name: "web".to_string(),
        ports: vec![
            port(Protocol::Tcp, 80, TCP_TARGET, false),
            port(Protocol::Udp, 53, UDP_TARGET, false),
        ],
        vips: Vec::new(),
        backends,
    }
}

fn host_lb(me: Ipv4Addr, services: Vec<LbService>) -> HostLb {
    HostLb {
        underlay_ip: me,
        underlay_if: "eth0".to_string(),
        underlay_mtu: 1500,
        data_path_port: DEFAULT_DATA_PATH_PORT,
        networks: vec![LbNetwork {
            id: NETWORK.to_string(),
            vni: 4097,
            subnet: SUBNET,
            prefix_len: 24,
            mtu: 1450,
        }],
        services,
    }
}

fn counter(counters: &[LbCounter], name: &str) -> u64 {
    counters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no counter {name} in {counters:?}"))
        .packets
}

/// The tasks that answered `n` new flows, in order.
fn tasks(answers: &[Answer]) -> std::collections::BTreeSet<&str> {
    answers.iter().map(|a| a.task.as_str()).collect()
}

/// Enough new flows that both backends of a random pick answer (2^-23 to miss one).
const FLOWS: usize = 24;

#[test]
fn published_ports_balance_over_both_hosts() {
    let Some(lab) = Lab::new() else { return };
    let mut h1 = lab.balancer("h1");
    let mut h2 = lab.balancer("h2");
    assert_eq!(h1.path(), LbPath::Nftables);
    let both = |backends: Vec<LbBackend>| {
        (
            host_lb(H1, vec![web(backends.clone())]),
            host_lb(H2, vec![web(backends)]),
        )
    };
    let (lb1, lb2) = both(vec![t1(), t2()]);
    h1.apply(&lb1).unwrap();
    h2.apply(&lb2).unwrap();

    // Idempotent: the same state again sends nothing (the table is not even rebuilt).
    let handle = lab.table_handle("h1").expect("h1 has its table");
    h1.apply(&lb1).unwrap();
    assert_eq!(lab.table_handle("h1"), Some(handle));
    assert!(lab.subnet_route("h1").contains("via 169.254.0.1 dev mg-n1"));

    for (host, local, other_host) in [(H1, "t1", H2), (H2, "t2", H1)] {
        let answers: Vec<Answer> = (0..FLOWS).map(|_| lab.ask_tcp(host, 80)).collect();
        assert_eq!(tasks(&answers), ["t1", "t2"].into(), "TCP via {host}");
        for answer in &answers {
            if answer.task == local {
                // A local backend sees the client's address.
                assert_eq!(answer.seen, CLIENT, "TCP via {host}: {answer:?}");
            } else {
                // A remote one sees the ingress host's (the flow was sent on with it).
                assert_eq!(answer.seen, host, "TCP via {host}: {answer:?}");
                assert_ne!(answer.seen, other_host);
            }
        }
        let answers: Vec<Answer> = (0..FLOWS).map(|_| lab.ask_udp(host, 53).unwrap()).collect();
        assert_eq!(tasks(&answers), ["t1", "t2"].into(), "UDP via {host}");
        for answer in answers.iter().filter(|a| a.task == local) {
            assert_eq!(answer.seen, CLIENT, "UDP via {host}: {answer:?}");
        }
    }

    let counters = h1.counters().unwrap();
    assert_eq!(counter(&counters, "flow:new@web/tcp/80"), FLOWS as u64);
    assert!(counter(&counters, "flow:new@web/udp/53") >= FLOWS as u64);
    assert!(counter(&counters, "forward:local@web/tcp/80") > 0);
    assert!(counter(&counters, "forward:remote@web/tcp/80") > 0);
    assert!(counter(&counters, "forward:snat") > 0);
    // Flows h2 sent on to h1 were balanced over h1's own task.
    assert!(counter(&counters, "flow:peer@web/tcp/80") > 0);
    assert_eq!(counter(&counters, "refuse:no-backend@web/tcp/80"), 0);

    // Open connections that reached t1, directly (via h1) and sent on (via h2).
    let open_to_t1 = |host| {
        (0..64)
            .map(|_| lab.tcp(host, 80).unwrap())
            .find_map(|mut conn| (conn.ask().unwrap().task == "t1").then_some(conn))
            .expect("a connection to t1")
    };
    let mut direct = open_to_t1(H1);
    let mut sent_on = open_to_t1(H2);

    // t1 drains: its connections stay, new flows go to t2.
    let mut draining = t1();
    draining.state = BackendState::Draining;
    let (lb1, lb2) = both(vec![draining, t2()]);
    h1.apply(&lb1).unwrap();
    h2.apply(&lb2).unwrap();
    assert_eq!(direct.ask().unwrap().task, "t1");
    assert_eq!(sent_on.ask().unwrap().task, "t1");
    for host in [H1, H2] {
        let answers: Vec<Answer> = (0..FLOWS / 2).map(|_| lab.ask_tcp(host, 80)).collect();
        assert_eq!(tasks(&answers), ["t2"].into(), "draining t1, via {host}");
    }
    // A changed table kept its counters.
    let after = h1.counters().unwrap();
    assert!(counter(&after, "flow:new@web/tcp/80") >= FLOWS as u64);
    // Still routed to: t1 still has flows on this host.
    assert!(lab.subnet_route("h1").contains("dev mg-n1"));

    // t2 removed, t1 back: new flows go to t1 only.
    let (lb1, lb2) = both(vec![t1()]);
    h1.apply(&lb1).unwrap();
    h2.apply(&lb2).unwrap();
    for host in [H1, H2] {
        let answers: Vec<Answer> = (0..FLOWS / 2).map(|_| lab.ask_tcp(host, 80)).collect();
        assert_eq!(tasks(&answers), ["t1"].into(), "t2 removed, via {host}");
        let answers: Vec<Answer> = (0..FLOWS / 2)
            .map(|_| lab.ask_udp(host, 53).unwrap())
            .collect();
        assert_eq!(tasks(&answers), ["t1"].into(), "t2 removed, UDP via {host}");
    }
    // h2 has no local backend left: no route through its leg.
    assert_eq!(lab.subnet_route("h2").trim(), "");

    // No backends: refused, TCP with a reset, UDP with port unreachable.
    let (lb1, lb2) = both(Vec::new());
    h1.apply(&lb1).unwrap();
    h2.apply(&lb2).unwrap();
    for host in [H1, H2] {
        let err = lab.tcp(host, 80).err().expect("refused");
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionRefused,
            "{host}: {err}"
        );
        let err = lab.ask_udp(host, 53).expect_err("refused");
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionRefused,
            "{host}: {err}"
        );
    }
    let counters = h1.counters().unwrap();
    // At least the flows above (conntrack may take a late packet of a closed flow for new).
    assert!(counter(&counters, "refuse:no-backend@web/tcp/80") >= 1);
    assert!(counter(&counters, "refuse:no-backend@web/udp/53") >= 1);

    // Dropping a balancer removes its table and routes.
    h1.apply(&both(vec![t1()]).0).unwrap();
    assert!(lab.subnet_route("h1").contains("dev mg-n1"));
    drop(h1);
    assert_eq!(lab.table_handle("h1"), None);
    assert_eq!(lab.subnet_route("h1").trim(), "");
    drop(h2);
    assert_eq!(lab.table_handle("h2"), None);
}

#[test]
fn host_mode_answers_with_local_tasks_only() {
    let Some(lab) = Lab::new() else { return };
    let mut h1 = lab.balancer("h1");
    let mut h2 = lab.balancer("h2");
    let service = |backends| LbService {
        id: "svc-admin".to_string(),
        name: "admin".to_string(),
        ports: vec![port(Protocol::Tcp, 81, TCP_TARGET, true)],
        vips: Vec::new(),
        backends,
    };
    // Host mode: each host lists its own task only (a remote one listed is ignored).
    h1.apply(&host_lb(H1, vec![service(vec![t1(), t2()])]))
        .unwrap();
    h2.apply(&host_lb(H2, vec![service(vec![t2()])])).unwrap();
    for (host, local) in [(H1, "t1"), (H2, "t2")] {
        for _ in 0..FLOWS / 2 {
            let answer = lab.ask_tcp(host, 81);
            assert_eq!(
                answer,
                Answer {
                    task: local.to_string(),
                    seen: CLIENT
                },
                "host mode via {host}"
            );
        }
    }
    let counters = h1.counters().unwrap();
    assert_eq!(
        counter(&counters, "forward:local@admin/tcp/81"),
        (FLOWS / 2) as u64
    );
    assert_eq!(counter(&counters, "forward:remote@admin/tcp/81"), 0);
    // Ports that are not published are not touched.
    let err = lab.tcp(H1, 80).err().expect("nothing listens on the host");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
}

#[test]
fn a_balancer_reports_what_it_needs() {
    let Some(lab) = Lab::new() else { return };
    let mut h1 = lab.balancer("h1");
    // A local backend on a network the host does not list is refused before anything changes.
    let mut lb = host_lb(H1, vec![web(vec![t1()])]);
    lb.networks.clear();
    let err = h1.apply(&lb).unwrap_err().to_string();
    assert!(err.contains("network n1"), "{err}");
    assert_eq!(lab.table_handle("h1"), None);
    // Two services on one published port.
    let mut other = web(vec![t2()]);
    other.id = "svc-other".to_string();
    let err = h1
        .apply(&host_lb(H1, vec![web(vec![t1()]), other]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tcp/80"), "{err}");
}

#[test]
fn a_peer_ahead_of_this_host_gets_its_flow_once_the_backend_is_programmed() {
    let Some(lab) = Lab::new() else { return };
    let mut h1 = lab.balancer("h1");
    let mut h2 = lab.balancer("h2");
    // h1 already knows t2, which has just started on h2; h2 has not programmed it yet (it
    // knows only t1, so h1 is its peer and h1's flows meet its peer chain).
    h1.apply(&host_lb(H1, vec![web(vec![t2()])])).unwrap();
    h2.apply(&host_lb(H2, vec![web(vec![t1()])])).unwrap();

    let client = std::thread::scope(|scope| {
        let client = scope.spawn(|| lab.tcp(H1, 80).and_then(|mut conn| conn.ask()));
        // The SYN h1 sent on is dropped, not refused: the connection is still trying.
        let dropped = (0..40).any(|_| {
            std::thread::sleep(Duration::from_millis(25));
            counter(&h2.counters().unwrap(), "drop:peer-no-backend@web/tcp/80") > 0
        });
        assert!(dropped, "h2 never dropped h1's flow");
        assert!(
            !client.is_finished(),
            "the client gave up at the first drop"
        );
        h2.apply(&host_lb(H2, vec![web(vec![t1(), t2()])])).unwrap();
        client.join().unwrap()
    });
    let answer = client.expect("the retransmitted SYN reaches t2");
    assert_eq!(answer.task, "t2");
    assert_eq!(
        counter(&h2.counters().unwrap(), "refuse:no-backend@web/tcp/80"),
        0
    );
}

/// Inserts a conntrack entry in `ns`: a flow from CLIENT port `sport` to `published` on H1,
/// DNATed to `to`, in TCP state `state` (None: UDP).
fn insert_flow(ns: &Path, state: Option<&str>, sport: u16, published: u16, to: (Ipv4Addr, u16)) {
    let (sport, published, to_ip, to_port) = (
        sport.to_string(),
        published.to_string(),
        to.0.to_string(),
        to.1.to_string(),
    );
    let client = CLIENT.to_string();
    let h1 = H1.to_string();
    let mut args = vec![
        "conntrack",
        "-I",
        "-p",
        if state.is_some() { "tcp" } else { "udp" },
        "-s",
        &client,
        "-d",
        &h1,
        "--sport",
        &sport,
        "--dport",
        &published,
        "-r",
        &to_ip,
        "-q",
        &client,
        "--reply-port-src",
        &to_port,
        "--reply-port-dst",
        &sport,
        "-t",
        "120",
    ];
    if let Some(state) = state {
        args.extend(["--state", state]);
        if state == "ESTABLISHED" {
            args.extend(["-u", "SEEN_REPLY,ASSURED"]);
        }
    }
    run_in(ns, &args);
}

/// The client ports of the conntrack entries in `ns`.
fn flow_ports(ns: &Path) -> std::collections::BTreeSet<u16> {
    run_in(ns, &["conntrack", "-L", "-s", &CLIENT.to_string()])
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("sport="))?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn entries_that_would_send_a_reused_port_to_a_gone_backend_are_deleted() {
    let Some(lab) = Lab::new() else { return };
    let h1_ns = lab.ns("h1");
    let mut h1 = lab.balancer("h1");
    h1.apply(&host_lb(H1, vec![web(vec![t1(), t2()])])).unwrap();
    // Flows to t1 (local: its address and target port) and to t2 (remote: its host and the
    // published port), as the table DNATs them.
    let to_t1_tcp = (T1, TCP_TARGET);
    insert_flow(&h1_ns, Some("SYN_SENT"), 40001, 80, to_t1_tcp);
    insert_flow(&h1_ns, Some("ESTABLISHED"), 40002, 80, to_t1_tcp);
    insert_flow(&h1_ns, None, 40003, 53, (T1, UDP_TARGET));
    insert_flow(&h1_ns, Some("SYN_SENT"), 40004, 80, (H2, 80));
    insert_flow(&h1_ns, None, 40005, 53, (H2, 53));
    let all: std::collections::BTreeSet<u16> = (40001..=40005).collect();
    assert_eq!(flow_ports(&h1_ns), all);

    // While t1 drains, nothing goes: a draining backend keeps its flows.
    let mut draining = t1();
    draining.state = BackendState::Draining;
    h1.apply(&host_lb(H1, vec![web(vec![draining, t2()])]))
        .unwrap();
    assert_eq!(flow_ports(&h1_ns), all);

    // t1 is gone: its unanswered TCP flow and its UDP flow go; its established TCP flow ends
    // on its own; t2's flows stay.
    h1.apply(&host_lb(H1, vec![web(vec![t2()])])).unwrap();
    assert_eq!(flow_ports(&h1_ns), [40002, 40004, 40005].into());

    // The service goes: the unanswered TCP and the UDP entries of its ports go with it.
    h1.apply(&host_lb(H1, vec![])).unwrap();
    assert_eq!(flow_ports(&h1_ns), [40002].into());
}
