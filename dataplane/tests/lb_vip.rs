//! Service VIPs on real kernels: two host namespaces `ha` and `hb` on a switch namespace's
//! bridge (198.18.77.0/24), one overlay network built on both by `dataplane::overlay::Overlay`,
//! a client task and backend `b1` on `ha`, backend `b2` on `hb`, and a `VipBalancer` per host.
//! The backends run tiny TCP and UDP servers answering `<name> <peer address>`.
//!
//! Root only; each test skips with a message otherwise. Every namespace is pinned under a
//! temporary directory and removed when the `World` drops, panics included, after the servers
//! stop, the balancers detach and the overlays are cleared.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dataplane::lb::vip::{VipBalancer, VipTask, VIP_MAC};
use dataplane::lb::{BackendState, HostLb, LbBackend, LbNetwork, LbService, LbVip};
use dataplane::overlay::netns::{self, Netns};
use dataplane::overlay::{names, HostOverlay, LocalEndpoint, NetworkPlan, Overlay, RemoteEndpoint};

const NET: &str = "vipnet";
const VNI: u32 = 4177;
const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// The VIP of a service whose only backend is the client itself.
const SELF_VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 101);
const HOST_A: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 1);
const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 2);
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9090;
/// Enough flows that both backends of a 50/50 table answer (a miss has odds 2^-39).
const FLOWS: usize = 40;
/// How long a single socket operation may block; a bound, never an assertion.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

fn is_root() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A task: its namespace, address and MAC, and the host it runs on.
#[derive(Clone)]
struct Task {
    id: &'static str,
    /// What its servers answer with.
    name: &'static str,
    on_a: bool,
    ip: Ipv4Addr,
    mac: [u8; 6],
    netns: PathBuf,
}

impl Task {
    fn veth(&self) -> VipTask {
        VipTask {
            network_id: NET.into(),
            veth: names::veth_name(self.id),
        }
    }

    fn vtep(&self) -> Ipv4Addr {
        if self.on_a {
            HOST_A
        } else {
            HOST_B
        }
    }

    fn backend(&self, state: BackendState) -> LbBackend {
        LbBackend {
            task_id: self.id.into(),
            network_id: NET.into(),
            ip: self.ip,
            mac: self.mac,
            vtep: self.vtep(),
            weight: 1,
            state,
        }
    }

    /// Runs `f` on a thread inside the task's namespace (sockets made there keep it).
    fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        Netns::open_pinned(&self.netns)
            .expect("open the task namespace")
            .expect("the task namespace is pinned")
            .run(f)
    }
}

/// TCP and UDP servers in one task, stopped and joined on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Answers each line on each TCP connection, and each UDP datagram, with `<name> <peer>`.
fn serve(task: &Task) -> Servers {
    let (listener, udp) = task
        .run(|| {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT))?;
            let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_PORT))?;
            Ok((listener, udp))
        })
        .expect("bind the servers");
    let stop = Arc::new(AtomicBool::new(false));
    let name = task.name;
    let tcp_stop = stop.clone();
    let tcp = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut handlers = Vec::new();
        while !tcp_stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let stop = tcp_stop.clone();
                    handlers.push(std::thread::spawn(move || {
                        answer_lines(stream, peer, name, &stop)
                    }));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => break,
            }
        }
        for handler in handlers {
            let _ = handler.join();
        }
    });
    let udp_stop = stop.clone();
    let udp = std::thread::spawn(move || {
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 1500];
        while !udp_stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
            }
        }
    });
    Servers {
        stop,
        threads: vec![tcp, udp],
    }
}

fn answer_lines(stream: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if writer
                    .write_all(format!("{name} {}\n", peer.ip()).as_bytes())
                    .is_err()
                {
                    return;
                }
                line.clear();
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// One answer of a server: who answered, and whom it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    name: String,
    peer: Ipv4Addr,
}

fn parse_answer(text: &str) -> Answer {
    let mut words = text.split_whitespace();
    let name = words.next().expect("a name").to_string();
    let peer = words.next().expect("a peer").parse().expect("an address");
    Answer { name, peer }
}

/// A TCP connection from a task, asked one line at a time.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(task: &Task, to: Ipv4Addr) -> io::Result<Conn> {
        let stream =
            task.run(|| TcpStream::connect_timeout(&SocketAddr::from((to, TCP_PORT)), IO_TIMEOUT))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    fn ask(&mut self) -> io::Result<Answer> {
        self.reader.get_mut().write_all(b"who\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(parse_answer(&line))
    }
}

/// One UDP request from a fresh socket (a fresh source port): the answer and where it came
/// from.
fn udp_ask(task: &Task, to: Ipv4Addr) -> io::Result<(Answer, SocketAddr)> {
    let socket = task.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.send_to(b"who", (to, UDP_PORT))?;
    let mut buf = [0u8; 200];
    let (len, from) = socket.recv_from(&mut buf)?;
    Ok((parse_answer(&String::from_utf8_lossy(&buf[..len])), from))
}

/// Retries `f` a bounded number of times (the first packets may race the overlay's setup).
fn eventually<T>(what: &str, mut f: impl FnMut() -> io::Result<T>) -> T {
    let mut last = None;
    for _ in 0..50 {
        match f() {
            Ok(value) => return value,
            Err(err) => last = Some(err),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: {last:?}");
}

/// Runs `f` on a current-thread runtime made for it.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(future)
}

/// Runs `argv` inside the namespace pinned at `ns`.
fn run_in(ns: &Path, argv: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(argv)
        .output()
        .map_err(|err| format!("nsenter {argv:?}: {err}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(ns: &Path, argv: &[&str]) -> String {
    run_in(ns, argv).unwrap_or_else(|err| panic!("{err}"))
}

/// The whole lab. Fields drop in the order `Drop` below empties them.
struct World {
    dir: tempfile::TempDir,
    switch: PathBuf,
    host_a: PathBuf,
    host_b: PathBuf,
    overlay_a: Option<Arc<Overlay>>,
    overlay_b: Option<Arc<Overlay>>,
    lb_a: Option<VipBalancer>,
    lb_b: Option<VipBalancer>,
    client: Task,
    b1: Task,
    b2: Task,
    servers: Vec<Servers>,
    pins: Vec<PathBuf>,
}

impl Drop for World {
    fn drop(&mut self) {
        // Nothing here may panic: a panic while a failed test unwinds aborts the process.
        self.servers.clear();
        self.lb_a = None;
        self.lb_b = None;
        for (host, overlay) in [
            (&self.host_a, self.overlay_a.take()),
            (&self.host_b, self.overlay_b.take()),
        ] {
            if let (Some(overlay), Ok(Some(ns))) = (overlay, Netns::open_pinned(host)) {
                let _ = ns.run(|| {
                    let _ = block_on(overlay.clear());
                    Ok(())
                });
            }
        }
        for pin in self.pins.iter().rev() {
            let _ = netns::remove_pinned(pin);
        }
    }
}

impl World {
    /// None (after saying why) when not root.
    fn new() -> Option<World> {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, BPF)");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = |name: &str| dir.path().join(name);
        let task = |id, name, on_a, n: u8| Task {
            id,
            name,
            on_a,
            ip: Ipv4Addr::new(10, 77, 0, n),
            mac: [0x02, 0x42, 10, 77, 0, n],
            netns: path(id),
        };
        let mut world = World {
            switch: path("sw"),
            host_a: path("ha"),
            host_b: path("hb"),
            overlay_a: None,
            overlay_b: None,
            lb_a: None,
            lb_b: None,
            client: task("vcli", "client", true, 10),
            b1: task("vb1", "b1", true, 11),
            b2: task("vb2", "b2", false, 12),
            servers: Vec::new(),
            pins: Vec::new(),
            dir,
        };
        // Pinned before anything is made in them, so a failure halfway still cleans up.
        let all = [
            world.switch.clone(),
            world.host_a.clone(),
            world.host_b.clone(),
            world.client.netns.clone(),
            world.b1.netns.clone(),
            world.b2.netns.clone(),
        ];
        for ns in all {
            world.pins.push(ns.clone());
            netns::create_pinned(&ns).expect("create a namespace");
            must(&ns, &["ip", "link", "set", "lo", "up"]);
        }
        world.underlay();
        world.overlay_a = Some(Arc::new(world.overlay_in(true)));
        world.overlay_b = Some(Arc::new(world.overlay_in(false)));
        world.apply_overlays();
        world.lb_a = Some(VipBalancer::new(&world.overlay_dir(true)).expect("load vip.o"));
        world.lb_b = Some(VipBalancer::new(&world.overlay_dir(false)).expect("load vip.o"));
        Some(world)
    }

    /// The switch's bridge and a veth to each host's `eth0`.
    fn underlay(&self) {
        let sw = &self.switch;
        must(sw, &["ip", "link", "add", "br0", "type", "bridge"]);
        must(sw, &["ip", "link", "set", "br0", "up"]);
        for (port, host, addr) in [
            ("pa", &self.host_a, "198.18.77.1/24"),
            ("pb", &self.host_b, "198.18.77.2/24"),
        ] {
            let target = host.display().to_string();
            must(
                sw,
                &[
                    "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
                    &target,
                ],
            );
            must(sw, &["ip", "link", "set", port, "master", "br0", "up"]);
            must(host, &["ip", "addr", "add", addr, "dev", "eth0"]);
            must(host, &["ip", "link", "set", "eth0", "up"]);
        }
    }

    fn overlay_dir(&self, a: bool) -> PathBuf {
        self.dir
            .path()
            .join(if a { "overlay-a" } else { "overlay-b" })
    }

    fn host(&self, a: bool) -> &Path {
        if a {
            &self.host_a
        } else {
            &self.host_b
        }
    }

    /// An `Overlay` whose underlay is the host's namespace.
    fn overlay_in(&self, a: bool) -> Overlay {
        let dir = self.overlay_dir(a);
        Netns::open_pinned(self.host(a))
            .unwrap()
            .unwrap()
            .run(|| Ok(Overlay::new(dir)))
            .unwrap()
    }

    fn tasks(&self) -> [&Task; 3] {
        [&self.client, &self.b1, &self.b2]
    }

    fn overlay_plan(&self, a: bool) -> HostOverlay {
        let tasks = self.tasks();
        HostOverlay {
            underlay_ip: if a { HOST_A } else { HOST_B },
            data_path_port: 4789,
            networks: vec![NetworkPlan {
                id: NET.into(),
                vni: VNI,
                subnet: SUBNET,
                prefix_len: 24,
                gateway: GATEWAY,
                mtu: 1450,
                local: tasks
                    .iter()
                    .filter(|t| t.on_a == a)
                    .map(|t| LocalEndpoint {
                        task_id: t.id.into(),
                        netns: t.netns.clone(),
                        ifname: "eth0".into(),
                        ip: t.ip,
                        mac: t.mac,
                    })
                    .collect(),
                remote: tasks
                    .iter()
                    .filter(|t| t.on_a != a)
                    .map(|t| RemoteEndpoint {
                        ip: t.ip,
                        mac: t.mac,
                        vtep: t.vtep(),
                    })
                    .collect(),
            }],
        }
    }

    fn apply_overlays(&self) {
        for (a, overlay) in [(true, &self.overlay_a), (false, &self.overlay_b)] {
            let overlay = overlay.clone().unwrap();
            let plan = self.overlay_plan(a);
            Netns::open_pinned(self.host(a))
                .unwrap()
                .unwrap()
                .run(|| block_on(overlay.apply(&plan)).map_err(io::Error::other))
                .unwrap_or_else(|err| panic!("overlay apply: {err}"));
        }
    }

    /// What host `a` (or b) balances: `services`, as the control plane would list them.
    fn host_lb(&self, a: bool, services: &[LbService]) -> HostLb {
        HostLb {
            underlay_ip: if a { HOST_A } else { HOST_B },
            underlay_if: "eth0".into(),
            underlay_mtu: 1500,
            data_path_port: 4789,
            networks: vec![LbNetwork {
                id: NET.into(),
                vni: VNI,
                subnet: SUBNET,
                prefix_len: 24,
                mtu: 1450,
            }],
            services: services.to_vec(),
        }
    }

    /// Applies `services` on both hosts, each with its own local task veths.
    fn apply_lb(&mut self, services: &[LbService]) {
        let tasks_a: Vec<VipTask> = self
            .tasks()
            .iter()
            .filter(|t| t.on_a)
            .map(|t| t.veth())
            .collect();
        let tasks_b = vec![self.b2.veth()];
        let (lb_a, lb_b) = (self.host_lb(true, services), self.host_lb(false, services));
        self.lb_a
            .as_mut()
            .unwrap()
            .apply(&lb_a, &tasks_a)
            .unwrap_or_else(|err| panic!("VIP apply on a: {err}"));
        self.lb_b
            .as_mut()
            .unwrap()
            .apply(&lb_b, &tasks_b)
            .unwrap_or_else(|err| panic!("VIP apply on b: {err}"));
    }

    fn counter(&self, name: &str) -> u64 {
        self.lb_a
            .as_ref()
            .unwrap()
            .counters()
            .unwrap()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .packets
    }
}

fn web(vip: Ipv4Addr, backends: Vec<LbBackend>) -> LbService {
    LbService {
        id: "svc-web".into(),
        name: "web".into(),
        ports: Vec::new(),
        vips: vec![LbVip {
            network_id: NET.into(),
            vip,
        }],
        backends,
    }
}

#[test]
fn vip_spreads_tcp_and_udp_over_local_and_remote_backends_and_drains() {
    let Some(mut world) = World::new() else {
        return;
    };
    world.servers.push(serve(&world.b1));
    world.servers.push(serve(&world.b2));
    let (b1, b2) = (world.b1.clone(), world.b2.clone());
    let both = |s1, s2| vec![b1.backend(s1), b2.backend(s2)];
    let active = both(BackendState::Active, BackendState::Active);
    world.apply_lb(&[web(VIP, active.clone())]);
    // Idempotent: a second apply changes nothing and breaks nothing.
    world.apply_lb(&[web(VIP, active.clone())]);
    assert_eq!(world.lb_a.as_ref().unwrap().attached().len(), 2);
    assert_eq!(world.lb_b.as_ref().unwrap().attached().len(), 1);

    let client = world.client.clone();
    // Both backends answer through the VIP, and see the client's own address.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..FLOWS {
        let answer = eventually("a TCP answer through the VIP", || {
            Conn::open(&client, VIP)?.ask()
        });
        assert_eq!(answer.peer, client.ip, "{answer:?}");
        seen.insert(answer.name);
    }
    assert_eq!(
        seen.iter().map(String::as_str).collect::<Vec<_>>(),
        ["b1", "b2"]
    );
    // The task learnt the VIP's MAC from the program's ARP answer.
    let neigh = must(&client.netns, &["ip", "neigh", "show", &VIP.to_string()]);
    let vip_mac = names::fmt_mac(&VIP_MAC);
    assert!(neigh.contains(&vip_mac), "{neigh}");

    // UDP: every answer comes from the VIP and port asked, from both backends.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..FLOWS {
        let (answer, from) = eventually("a UDP answer through the VIP", || udp_ask(&client, VIP));
        assert_eq!(from, SocketAddr::from((VIP, UDP_PORT)));
        assert_eq!(answer.peer, client.ip);
        seen.insert(answer.name);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // Draining: the open connection stays with its backend, new ones go to the other.
    let mut open = eventually("a connection to keep", || Conn::open(&client, VIP));
    let kept = open.ask().unwrap().name;
    let (drained, other) = if kept == "b1" {
        (both(BackendState::Draining, BackendState::Active), "b2")
    } else {
        (both(BackendState::Active, BackendState::Draining), "b1")
    };
    world.apply_lb(&[web(VIP, drained)]);
    for _ in 0..3 {
        assert_eq!(open.ask().unwrap().name, kept, "the open connection moved");
    }
    for _ in 0..FLOWS / 2 {
        let answer = Conn::open(&client, VIP).and_then(|mut c| c.ask()).unwrap();
        assert_eq!(
            answer.name, other,
            "a new connection reached the draining backend"
        );
    }
    drop(open);

    // No backends: TCP is refused (a RST from the VIP), UDP dropped and counted.
    let rst_before = world.counter("vip:answer:tcp-rst");
    let dropped_before = world.counter("vip:drop:no-backend");
    world.apply_lb(&[web(VIP, Vec::new())]);
    let Err(err) = Conn::open(&client, VIP) else {
        panic!("a connection without backends was accepted");
    };
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        udp_ask(&client, VIP).is_err(),
        "UDP answered without backends"
    );
    assert!(world.counter("vip:answer:tcp-rst") > rst_before);
    assert!(world.counter("vip:drop:no-backend") > dropped_before);
    assert!(world.counter("vip:forward:new") >= FLOWS as u64);
    assert!(world.counter("vip:reply:nat") >= FLOWS as u64);
    assert!(world.counter("vip:answer:arp") >= 1);

    // Backends back: traffic flows again.
    world.apply_lb(&[web(VIP, active)]);
    eventually("TCP after the backends came back", || {
        Conn::open(&client, VIP)?.ask()
    });
}

#[test]
fn vip_answers_ping_hairpins_and_detaches() {
    let Some(mut world) = World::new() else {
        return;
    };
    world.servers.push(serve(&world.client));
    let client = world.client.clone();
    let itself = LbService {
        id: "svc-self".into(),
        name: "self".into(),
        ports: Vec::new(),
        vips: vec![LbVip {
            network_id: NET.into(),
            vip: SELF_VIP,
        }],
        backends: vec![client.backend(BackendState::Active)],
    };
    world.apply_lb(&[web(VIP, Vec::new()), itself]);

    // The VIP answers ping, with or without backends.
    let vip = VIP.to_string();
    eventually("ping the VIP", || {
        run_in(
            &client.netns,
            &["ping", "-n", "-q", "-c", "1", "-W", "1", &vip],
        )
        .map_err(io::Error::other)
    });
    assert!(world.counter("vip:answer:icmp-echo") >= 1);

    // The client is its service's only backend: the flow loops back, from the VIP.
    let answer = eventually("a hairpinned TCP answer", || {
        Conn::open(&client, SELF_VIP)?.ask()
    });
    assert_eq!(
        answer,
        Answer {
            name: "client".into(),
            peer: SELF_VIP
        }
    );
    let (answer, from) = eventually("a hairpinned UDP answer", || udp_ask(&client, SELF_VIP));
    assert_eq!(from, SocketAddr::from((SELF_VIP, UDP_PORT)));
    assert_eq!(answer.peer, SELF_VIP);
    assert!(world.counter("vip:forward:hairpin") >= 2);

    // Unlisted veths lose the programs; dropping the balancer detaches the rest.
    let veth = client.veth().veth;
    let host_ns = world.overlay_a.as_ref().unwrap().netns_path(NET);
    let attached = |veth: &str| {
        let veth = veth.to_string();
        Netns::open_pinned(&host_ns)
            .unwrap()
            .unwrap()
            .run(move || {
                let (_, ingress) = aya::programs::SchedClassifier::query_tcx(
                    &veth,
                    aya::programs::TcAttachType::Ingress,
                )
                .map_err(io::Error::other)?;
                Ok(ingress.len())
            })
            .unwrap()
    };
    assert_eq!(attached(&veth), 1);
    let b1_veth = world.b1.veth().veth;
    assert_eq!(attached(&b1_veth), 1);
    let lb = world.host_lb(true, &[]);
    world
        .lb_a
        .as_mut()
        .unwrap()
        .apply(&lb, &[client.veth()])
        .unwrap();
    assert_eq!(attached(&b1_veth), 0);
    assert_eq!(attached(&veth), 1);
    world.lb_a = None;
    assert_eq!(attached(&veth), 0);
}
