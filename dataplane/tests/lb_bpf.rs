//! The BPF ingress routing mesh on real kernels. A switch namespace bridges a client and two
//! hosts (198.18.0.0/15 underlay); `Overlay` builds one overlay network on both hosts with a
//! task namespace each, running a TCP and a UDP server that answer with their name and the
//! peer address they saw; both hosts get a `BpfBalancer` with the same `HostLb`. Root only:
//! each test skips with a message otherwise. Everything (namespaces, links, BPF attachments,
//! server threads) goes when the `World` drops, panics included.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dataplane::bpf::traffic_stats::{TrafficStats, XdpMode};
use dataplane::lb::bpf::{BpfBalancer, BpfHook};
use dataplane::lb::{
    BackendState, HostLb, LbBackend, LbNetwork, LbPort, LbService, Protocol as LbProtocol,
};
use dataplane::overlay::netns::{self, Netns};
use dataplane::overlay::{HostOverlay, LocalEndpoint, NetworkPlan, Overlay, RemoteEndpoint};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const HOSTS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)];
const TASK_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 10, 0, 11), Ipv4Addr::new(10, 10, 0, 12)];
const TASKS: [&str; 2] = ["taska", "taskb"];
const NETWORK: &str = "web";
const VNI: u32 = 4097;
const DP_PORT: u16 = 4789;
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn is_root() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn task_mac(i: usize) -> [u8; 6] {
    [0x02, 0x42, 10, 10, 0, 11 + i as u8]
}

/// Runs `argv` inside namespace `ns` (`nsenter --net`, not `ip netns exec`/`ip -n`, which
/// remount / and fail in a chroot), panicking with its stderr on failure.
fn run_in(ns: &str, argv: &[&str]) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(argv)
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{ns}: {}: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn netns_of(ns: &str) -> Netns {
    Netns::open_pinned(&PathBuf::from("/run/netns").join(ns))
        .unwrap()
        .expect("pinned namespace")
}

/// Runs `f` on a thread inside the namespace pinned at `path`.
fn inside<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    let ns = Netns::open_pinned(path).unwrap().expect("pinned namespace");
    ns.run(|| Ok(f())).unwrap()
}

/// A server in a task namespace: TCP (one line in, "<name> <peer>" out, until EOF) and UDP
/// (one datagram in, "<name> <peer>" out). Stops when the flag is set.
fn serve(task: &'static str, netns: PathBuf, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).unwrap();
        // SAFETY: setns on an open namespace descriptor; it moves only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        let listener = TcpListener::bind(("0.0.0.0", 80)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind(("0.0.0.0", 53)).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        stream.set_nonblocking(false).unwrap();
                        stream
                            .set_read_timeout(Some(Duration::from_millis(200)))
                            .unwrap();
                        let mut reader = BufReader::new(stream.try_clone().unwrap());
                        let mut writer = stream;
                        let mut line = String::new();
                        while !stop.load(Ordering::Relaxed) {
                            line.clear();
                            match reader.read_line(&mut line) {
                                Ok(0) => break,
                                Ok(_) => {
                                    if writer
                                        .write_all(format!("{task} {peer}\n").as_bytes())
                                        .is_err()
                                    {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("{task} {peer}").as_bytes(), peer);
            }
        }
    });
    ready_rx.recv().unwrap();
    handle
}

/// The lab: namespaces, overlays, task namespaces, servers and balancers.
struct World {
    prefix: String,
    dir: tempfile::TempDir,
    overlays: Vec<Overlay>,
    task_ns: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    balancers: Vec<BpfBalancer>,
    peer_pass: Vec<TrafficStats>,
    runtime: tokio::runtime::Runtime,
    desired: Vec<HostLb>,
}

impl Drop for World {
    fn drop(&mut self) {
        // Nothing here may panic: a panic while a failed test unwinds would abort the process
        // before the namespaces are removed.
        self.balancers.clear();
        self.peer_pass.clear();
        self.stop.store(true, Ordering::Relaxed);
        for server in self.servers.drain(..) {
            let _ = server.join();
        }
        for overlay in &self.overlays {
            let _ = self.runtime.block_on(overlay.clear());
        }
        for path in &self.task_ns {
            let _ = netns::remove_pinned(path);
        }
        for ns in ["cl", "h1", "h2", "sw"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("{}-{ns}", self.prefix)])
                .status();
        }
        let _ = self.dir.path();
    }
}

impl World {
    fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    fn host_ns(&self, i: usize) -> String {
        self.ns(&format!("h{}", i + 1))
    }

    /// None (after saying why) when not root.
    fn new(hook: BpfHook) -> Option<World> {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, BPF)");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut world = World {
            prefix: format!("mlbb-{}-{n}", std::process::id()),
            dir: tempfile::tempdir().unwrap(),
            overlays: Vec::new(),
            task_ns: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            balancers: Vec::new(),
            peer_pass: Vec::new(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            desired: Vec::new(),
        };
        world.underlay();
        world.overlay();
        for (task, netns) in TASKS.iter().zip(world.task_ns.clone()) {
            let server = serve(task, netns, world.stop.clone());
            world.servers.push(server);
        }
        if hook == BpfHook::Xdp {
            // XDP_TX on a host's veth delivers only if the switch-side peer runs XDP.
            let sw = netns_of(&world.ns("sw"));
            for i in 0..2 {
                let port = format!("p-h{}", i + 1);
                let stats = sw
                    .run(|| Ok(TrafficStats::attach(&port, XdpMode::Driver)))
                    .unwrap()
                    .expect("XDP pass program on the switch port");
                world.peer_pass.push(stats);
            }
            // bpf_fib_lookup needs forwarding on the underlay interface: BpfBalancer::new
            // sets it (checked below), so nothing is set by hand here.
            // XDP sees the bytes, not the skb: full checksums from the client.
            run_in(&world.ns("cl"), &["ethtool", "-K", "eth0", "tx", "off"]);
        }
        for i in 0..2 {
            let host = netns_of(&world.host_ns(i));
            let dir = world.overlay_dir(i);
            let balancer = host
                .run(|| Ok(BpfBalancer::new(hook, "eth0", &dir)))
                .unwrap()
                .expect("load and attach the balancer");
            world.balancers.push(balancer);
        }
        if hook == BpfHook::Xdp {
            for i in 0..2 {
                let forwarding = netns_of(&world.host_ns(i))
                    .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/eth0/forwarding"))
                    .unwrap();
                assert_eq!(
                    forwarding.trim(),
                    "1",
                    "the XDP balancer enables forwarding"
                );
            }
        }
        world.desired = (0..2)
            .map(|i| world.host_lb(i, &[BackendState::Active; 2]))
            .collect();
        world.apply_all();
        Some(world)
    }

    fn overlay_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{}", i + 1)).join("overlay")
    }

    fn underlay(&self) {
        for ns in ["sw", "cl", "h1", "h2"] {
            let status = Command::new("ip")
                .args(["netns", "add", &self.ns(ns)])
                .status()
                .unwrap();
            assert!(status.success(), "ip netns add {}", self.ns(ns));
            run_in(&self.ns(ns), &["ip", "link", "set", "lo", "up"]);
        }
        let sw = self.ns("sw");
        run_in(&sw, &["ip", "link", "add", "br0", "type", "bridge"]);
        run_in(&sw, &["ip", "link", "set", "br0", "up"]);
        // With br_netfilter loaded, the bridge would validate (and drop) the malformed IPv4
        // frames before they reach the host under test.
        if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            run_in(
                &sw,
                &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"],
            );
        }
        for (short, ip) in [("cl", CLIENT), ("h1", HOSTS[0]), ("h2", HOSTS[1])] {
            let port = format!("p-{short}");
            let peer_ns = self.ns(short);
            run_in(
                &sw,
                &[
                    "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                    &peer_ns,
                ],
            );
            run_in(&sw, &["ip", "link", "set", &port, "master", "br0", "up"]);
            run_in(
                &peer_ns,
                &["ip", "addr", "add", &format!("{ip}/15"), "dev", "eth0"],
            );
            run_in(&peer_ns, &["ip", "link", "set", "eth0", "up"]);
        }
    }

    fn overlay(&mut self) {
        for (i, task) in TASKS.iter().enumerate() {
            let tasks = self.dir.path().join(format!("h{}", i + 1)).join("tasks");
            std::fs::create_dir_all(&tasks).unwrap();
            let path = tasks.join(task);
            netns::create_pinned(&path).unwrap();
            self.task_ns.push(path.clone());
            inside(&path, || {
                Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .unwrap()
            });
        }
        for i in 0..2 {
            let dir = self.overlay_dir(i);
            let overlay = inside(&PathBuf::from("/run/netns").join(self.host_ns(i)), || {
                Overlay::new(dir)
            });
            let other = 1 - i;
            let plan = HostOverlay {
                underlay_ip: HOSTS[i],
                data_path_port: DP_PORT,
                networks: vec![NetworkPlan {
                    id: NETWORK.into(),
                    vni: VNI,
                    subnet: Ipv4Addr::new(10, 10, 0, 0),
                    prefix_len: 24,
                    gateway: Ipv4Addr::new(10, 10, 0, 1),
                    mtu: 1450,
                    local: vec![LocalEndpoint {
                        task_id: TASKS[i].into(),
                        netns: self.task_ns[i].clone(),
                        ifname: "eth0".into(),
                        ip: TASK_IPS[i],
                        mac: task_mac(i),
                    }],
                    remote: vec![RemoteEndpoint {
                        ip: TASK_IPS[other],
                        mac: task_mac(other),
                        vtep: HOSTS[other],
                    }],
                }],
            };
            let applied = self.runtime.block_on(overlay.apply(&plan)).unwrap();
            assert!(!applied.is_empty());
            let again = self.runtime.block_on(overlay.apply(&plan)).unwrap();
            let lines: Vec<String> = again.changes.iter().map(ToString::to_string).collect();
            assert!(lines.is_empty(), "second overlay apply changed {lines:?}");
            self.overlays.push(overlay);
        }
    }

    /// Host `i`'s balancing state with the backends in `states` (None: not a backend).
    fn host_lb_with(&self, i: usize, states: &[Option<BackendState>; 2]) -> HostLb {
        let backends = (0..2)
            .filter_map(|t| {
                Some(LbBackend {
                    task_id: TASKS[t].into(),
                    network_id: NETWORK.into(),
                    ip: TASK_IPS[t],
                    mac: task_mac(t),
                    vtep: HOSTS[t],
                    weight: 1,
                    state: states[t]?,
                })
            })
            .collect();
        HostLb {
            underlay_ip: HOSTS[i],
            underlay_if: "eth0".into(),
            underlay_mtu: 1500,
            data_path_port: DP_PORT,
            networks: vec![LbNetwork {
                id: NETWORK.into(),
                vni: VNI,
                subnet: Ipv4Addr::new(10, 10, 0, 0),
                prefix_len: 24,
                mtu: 1450,
            }],
            services: vec![LbService {
                id: "svc-web".into(),
                name: "web".into(),
                ports: vec![
                    LbPort {
                        protocol: LbProtocol::Tcp,
                        published: TCP_PORT,
                        target: 80,
                        local_only: false,
                    },
                    LbPort {
                        protocol: LbProtocol::Udp,
                        published: UDP_PORT,
                        target: 53,
                        local_only: false,
                    },
                ],
                vips: vec![],
                backends,
            }],
        }
    }

    fn host_lb(&self, i: usize, states: &[BackendState; 2]) -> HostLb {
        self.host_lb_with(i, &[Some(states[0]), Some(states[1])])
    }

    fn apply_all(&mut self) {
        for i in 0..2 {
            self.balancers[i].apply(&self.desired[i]).unwrap();
            // Idempotent: the same state again is fine (and writes nothing).
            self.balancers[i].apply(&self.desired[i]).unwrap();
        }
    }

    fn set_backends(&mut self, states: [Option<BackendState>; 2]) {
        self.desired = (0..2).map(|i| self.host_lb_with(i, &states)).collect();
        self.apply_all();
    }

    fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netns_of(&self.ns("cl")).run(|| Ok(f())).unwrap()
    }

    fn counter(&self, host: usize, name: &str) -> u64 {
        self.balancers[host]
            .counters()
            .unwrap()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .packets
    }

    /// Every nonzero counter of both hosts, for failure messages.
    fn all_counters(&self) -> Vec<(usize, String, u64)> {
        (0..2)
            .flat_map(|h| {
                self.balancers[h]
                    .counters()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| c.packets > 0)
                    .map(move |c| (h, c.name, c.packets))
            })
            .chain((0..2).map(|h| {
                let out = Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{}", self.host_ns(h)))
                    .args(["ip", "neigh"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                (h, format!("neighbours: {out}"), 0)
            }))
            .collect()
    }

    fn mac_of(&self, ns: &str) -> [u8; 6] {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["cat", "/sys/class/net/eth0/address"])
            .output()
            .unwrap();
        // /sys may show another namespace's view: ask ip instead when it does not parse.
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let parse = |text: &str| -> Option<[u8; 6]> {
            let bytes: Vec<u8> = text
                .split(':')
                .map(|b| u8::from_str_radix(b, 16).ok())
                .collect::<Option<_>>()?;
            bytes.try_into().ok()
        };
        let via_ip = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["ip", "-o", "link", "show", "eth0"])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&via_ip.stdout).to_string();
        let from_ip = line
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .and_then(parse);
        from_ip.or_else(|| parse(&text)).expect("eth0's MAC")
    }
}

/// One TCP connection to a published port: the first answer's task and peer.
struct Conn {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Conn {
    fn open(host: Ipv4Addr) -> std::io::Result<Conn> {
        let stream =
            TcpStream::connect_timeout(&SocketAddrV4::new(host, TCP_PORT).into(), IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    /// Sends a line and returns (task, peer the task saw).
    fn ask(&mut self) -> std::io::Result<(String, String)> {
        self.stream.write_all(b"hello\n")?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some(task), Some(peer)) => Ok((task.to_string(), peer.to_string())),
            _ => Err(std::io::Error::other(format!("bad answer {line:?}"))),
        }
    }

    fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }
}

/// Opens connections to `host` until both tasks answered (at most `tries`); returns the
/// answers, checking each task saw the client's own address and port.
fn reach_both(host: Ipv4Addr, tries: usize) -> Result<Vec<(String, u16)>, String> {
    let mut seen = Vec::new();
    for _ in 0..tries {
        let mut conn = Conn::open(host).map_err(|e| format!("connect {host}: {e}"))?;
        let (task, peer) = conn.ask().map_err(|e| format!("ask {host}: {e}"))?;
        assert_eq!(
            peer,
            format!("{CLIENT}:{}", conn.local_port()),
            "the task must see the client's real address"
        );
        seen.push((task, conn.local_port()));
        if TASKS.iter().all(|t| seen.iter().any(|(s, _)| s == t)) {
            break;
        }
    }
    Ok(seen)
}

fn udp_ask(socket: &UdpSocket, host: Ipv4Addr) -> std::io::Result<(String, String)> {
    socket.send_to(b"hello", (host, UDP_PORT))?;
    let mut buf = [0u8; 512];
    let (n, from) = socket.recv_from(&mut buf)?;
    assert_eq!(
        from,
        SocketAddrV4::new(host, UDP_PORT).into(),
        "reply source"
    );
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let mut words = text.split_whitespace();
    Ok((
        words.next().unwrap_or_default().to_string(),
        words.next().unwrap_or_default().to_string(),
    ))
}

/// Sends raw Ethernet frames out of the client's eth0.
fn send_frames(frames: &[Vec<u8>]) {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new("eth0").unwrap();
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0);
    for frame in frames {
        // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and address are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            sent,
            frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 frame with `ihl` words of header (options zero-padded), the given
/// fragment field and payload; `total_len` overrides the IPv4 length field.
fn ipv4_frame(
    dst_mac: [u8; 6],
    ihl: u8,
    frag: u16,
    proto: u8,
    dst: Ipv4Addr,
    l4: &[u8],
) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x64]);
    frame.extend_from_slice(&[0x08, 0x00]);
    let hl = usize::from(ihl.max(5)) * 4;
    let mut ip = vec![0u8; hl];
    ip[0] = 0x40 | ihl;
    let total = (hl + l4.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&CLIENT.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    if hl > 20 {
        ip[20] = 1; // NOP options
        ip[21] = 1;
        ip[22] = 1;
        ip[23] = 0; // end of options
    }
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(l4);
    frame
}

/// Sets an `int` socket option at level IPPROTO_IP.
fn set_ip_opt(socket: &UdpSocket, name: libc::c_int, value: libc::c_int) {
    // SAFETY: a valid descriptor and a pointer to an int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// The path MTU a connected socket knows (IP_MTU).
fn path_mtu(socket: &UdpSocket) -> std::io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid descriptor; value and len are valid for writes of their sizes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value)
}

/// A connected UDP socket from the client to `host`'s published UDP port, with path MTU
/// discovery set to `pmtudisc` (IP_PMTUDISC_DO: DF set, never fragment locally).
fn udp_to(host: Ipv4Addr, pmtudisc: libc::c_int) -> UdpSocket {
    let socket = UdpSocket::bind((CLIENT, 0)).unwrap();
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    set_ip_opt(&socket, libc::IP_MTU_DISCOVER, pmtudisc);
    socket.connect((host, UDP_PORT)).unwrap();
    socket
}

/// An ICMP "fragmentation needed" (next-hop `mtu`) from the client to `host`, quoting a UDP
/// datagram `host:UDP_PORT → CLIENT:client_port`, as a router between them would send about a
/// reply.
fn frag_needed_about_reply(
    host_mac: [u8; 6],
    host: Ipv4Addr,
    client_port: u16,
    mtu: u16,
) -> Vec<u8> {
    let mut quoted = vec![0u8; 28];
    quoted[0] = 0x45;
    quoted[2..4].copy_from_slice(&1400u16.to_be_bytes());
    quoted[6] = 0x40; // DF
    quoted[8] = 63;
    quoted[9] = 17;
    quoted[12..16].copy_from_slice(&host.octets());
    quoted[16..20].copy_from_slice(&CLIENT.octets());
    let sum = checksum(&quoted[..20]);
    quoted[10..12].copy_from_slice(&sum.to_be_bytes());
    quoted[20..22].copy_from_slice(&UDP_PORT.to_be_bytes());
    quoted[22..24].copy_from_slice(&client_port.to_be_bytes());
    quoted[24..26].copy_from_slice(&1380u16.to_be_bytes());
    let mut icmp = vec![3u8, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&quoted);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4_frame(host_mac, 5, 0, 1, host, &icmp)
}

/// Waits until `check` holds, for at most the IO timeout.
fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A DF datagram too big for the mesh once encapsulated gets ICMP "fragmentation needed" from
/// the ingress host, and the client's socket learns the mesh's MTU; without DF it is dropped.
fn check_frag_needed(world: &mut World) {
    // Only the task on h2 serves: through h1 every flow is remote.
    world.set_backends([None, Some(BackendState::Active)]);
    let mesh_mtu = 1500 - 50;
    let big = vec![0x5au8; 1472]; // 1500 bytes of IPv4: fits the client's link, not the mesh
    let dropped = world.counter(0, "drop:encap-too-big");
    let answered = world.counter(0, "forward:frag-needed");
    // Without DF (and before the client knows the path MTU, or it would fragment locally).
    world.in_client(|| {
        let socket = udp_to(HOSTS[0], libc::IP_PMTUDISC_DONT);
        socket.send(&big).unwrap();
    });
    eventually("a non-DF datagram is counted as too big", || {
        let now = world.counter(0, "drop:encap-too-big");
        (now == dropped + 1).then_some(()).ok_or(format!("{now}"))
    });
    assert_eq!(world.counter(0, "forward:frag-needed"), answered);
    // With DF: the answer lowers the path MTU of the client's socket.
    let (mtu, again) = world.in_client(|| {
        let socket = udp_to(HOSTS[0], libc::IP_PMTUDISC_DO);
        assert_eq!(path_mtu(&socket).unwrap(), 1500);
        socket.send(&big).unwrap();
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        let mut mtu = path_mtu(&socket).unwrap();
        while mtu == 1500 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            mtu = path_mtu(&socket).unwrap();
        }
        // The socket's pending error, or the next send, reports the datagram as too big.
        let again = socket
            .send(&big)
            .err()
            .or_else(|| socket.send(&big).err())
            .and_then(|e| e.raw_os_error());
        (mtu, again)
    });
    assert_eq!(
        mtu,
        mesh_mtu,
        "path MTU learnt from the ingress host; counters {:?}",
        world.all_counters()
    );
    assert_eq!(again, Some(libc::EMSGSIZE));
    assert_eq!(world.counter(0, "forward:frag-needed"), answered + 1);
    assert_eq!(world.counter(0, "drop:encap-too-big"), dropped + 1);
    // Datagrams that fit still go through.
    let (task, _) = world.in_client(|| {
        let socket = UdpSocket::bind((CLIENT, 0)).unwrap();
        socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        udp_ask(&socket, HOSTS[0]).unwrap()
    });
    assert_eq!(task, TASKS[1]);
    world.set_backends([Some(BackendState::Active); 2]);
}

/// The route cache of a task's namespace towards the client: `ip route get` output.
fn task_route_to_client(world: &World, task: usize) -> String {
    inside(&world.task_ns[task], || {
        let out = Command::new("ip")
            .args(["route", "get", &CLIENT.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    })
}

/// An ICMP error arriving at the ingress host about a reply its backend sent by DSR reaches
/// the backend task (local or remote), whose kernel learns the path MTU it carries.
fn check_icmp_error_reaches_task(world: &World) {
    let h1_mac = world.mac_of(&world.host_ns(0));
    // One flow through h1 to each task (taska is local to h1, taskb remote).
    let flows: Vec<(usize, u16)> = world.in_client(|| {
        let mut flows: Vec<(usize, u16)> = Vec::new();
        for _ in 0..64 {
            let socket = UdpSocket::bind((CLIENT, 0)).unwrap();
            socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let (task, _) = udp_ask(&socket, HOSTS[0]).unwrap();
            let index = TASKS.iter().position(|t| *t == task).unwrap();
            if !flows.iter().any(|(i, _)| *i == index) {
                flows.push((index, socket.local_addr().unwrap().port()));
            }
            if flows.len() == TASKS.len() {
                break;
            }
        }
        flows
    });
    assert_eq!(flows.len(), TASKS.len(), "flows to both tasks: {flows:?}");
    let forwarded = world.counter(0, "forward:icmp-forwarded");
    for (task, port) in &flows {
        let before = task_route_to_client(world, *task);
        assert!(!before.contains("mtu 1300"), "{before}");
        let frame = frag_needed_about_reply(h1_mac, HOSTS[0], *port, 1300);
        world.in_client(|| send_frames(&[frame]));
        eventually(
            &format!("{}'s route cache learns the MTU", TASKS[*task]),
            || {
                let route = task_route_to_client(world, *task);
                route
                    .contains("mtu 1300")
                    .then_some(())
                    .ok_or(format!("{route}; counters {:?}", world.all_counters()))
            },
        );
    }
    assert_eq!(
        world.counter(0, "forward:icmp-forwarded"),
        forwarded + flows.len() as u64
    );
}

/// A TCP connection to a published port whose service has no backend is refused at once
/// (the ingress host answers a RST) through every host.
fn check_rst_without_backends(world: &mut World) {
    world.set_backends([None, None]);
    for (h, host) in HOSTS.into_iter().enumerate() {
        let rst = world.counter(h, "forward:rst");
        let started = std::time::Instant::now();
        let result = world.in_client(|| {
            TcpStream::connect_timeout(&SocketAddrV4::new(host, TCP_PORT).into(), IO_TIMEOUT)
        });
        let err = result.expect_err("no backend: the connection must fail");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{host}: {err}; counters {:?}",
            world.all_counters()
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once"
        );
        assert_eq!(world.counter(h, "forward:rst"), rst + 1, "{host} answered");
    }
    world.set_backends([Some(BackendState::Active); 2]);
}

fn scenario(hook: BpfHook) {
    let Some(mut world) = World::new(hook) else {
        return;
    };

    // Both hosts answer, reach both tasks, and the tasks see the client's address.
    for host in HOSTS {
        let seen = world
            .in_client(|| reach_both(host, 64))
            .unwrap_or_else(|e| panic!("{e}; counters {:?}", world.all_counters()));
        for task in TASKS {
            assert!(
                seen.iter().any(|(t, _)| t == task),
                "{host}: {task} never answered: {seen:?}"
            );
        }
    }
    // UDP too, with the reply coming from the published address.
    for host in HOSTS {
        let (task, peer) = world.in_client(|| {
            let socket = UdpSocket::bind((CLIENT, 0)).unwrap();
            socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let answer = udp_ask(&socket, host).unwrap();
            (answer.0, (answer.1, socket.local_addr().unwrap().port()))
        });
        assert!(TASKS.contains(&task.as_str()), "{task}");
        assert_eq!(peer.0, format!("{CLIENT}:{}", peer.1));
    }
    let forwarded: u64 = (0..2)
        .map(|h| world.counter(h, "forward:local") + world.counter(h, "forward:remote"))
        .sum();
    assert!(forwarded > 0);
    assert!((0..2).any(|h| world.counter(h, "forward:decap") > 0));
    assert!((0..2).all(|h| world.counter(h, "forward:reply") > 0));

    // Draining: an open connection keeps its backend, new ones avoid it.
    let (mut held, drained) = world.in_client(|| {
        let mut conn = Conn::open(HOSTS[0]).unwrap();
        let (task, _) = conn.ask().unwrap();
        (conn, task)
    });
    let drained_index = TASKS.iter().position(|t| *t == drained).unwrap();
    let mut states = [Some(BackendState::Active); 2];
    states[drained_index] = Some(BackendState::Draining);
    world.set_backends(states);
    let (still, fresh) = world.in_client(|| {
        let still = held.ask().unwrap().0;
        let fresh: Vec<String> = (0..16)
            .map(|_| Conn::open(HOSTS[0]).unwrap().ask().unwrap().0)
            .collect();
        (still, fresh)
    });
    assert_eq!(
        still, drained,
        "a draining backend keeps its open connection"
    );
    assert!(
        fresh.iter().all(|t| *t != drained),
        "new connections went to draining {drained}: {fresh:?}"
    );

    // Removal: the removed backend's flows move, the others' stay. UDP "flows" (one client
    // socket each) show both: pin some to each task first.
    world.set_backends([Some(BackendState::Active); 2]);
    let sockets: Vec<(UdpSocket, String)> = world.in_client(|| {
        (0..24)
            .map(|_| {
                let socket = UdpSocket::bind((CLIENT, 0)).unwrap();
                socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let task = udp_ask(&socket, HOSTS[1]).unwrap().0;
                (socket, task)
            })
            .collect()
    });
    assert!(
        TASKS.iter().all(|t| sockets.iter().any(|(_, s)| s == t)),
        "24 flows all went to one task"
    );
    let removed = 0;
    let mut states = [Some(BackendState::Active); 2];
    states[removed] = None;
    world.set_backends(states);
    let after: Vec<(String, String)> = world.in_client(|| {
        sockets
            .iter()
            .map(|(socket, before)| (before.clone(), udp_ask(socket, HOSTS[1]).unwrap().0))
            .collect()
    });
    for (before, now) in &after {
        if before == TASKS[removed] {
            assert_eq!(now, TASKS[1 - removed], "a removed backend's flow moves");
        } else {
            assert_eq!(now, before, "other backends' flows stay");
        }
    }
    // TCP still works with one backend left, through both hosts.
    for host in HOSTS {
        let (task, _) = world.in_client(|| Conn::open(host).unwrap().ask().unwrap());
        assert_eq!(task, TASKS[1 - removed]);
    }
    world.set_backends([Some(BackendState::Active); 2]);

    // Malformed frames: nothing crashes, the right counters move.
    let h1_mac = world.mac_of(&world.host_ns(0));
    let before = |name: &str| world.counter(0, name);
    let (trunc_ip, bad_ihl, trunc_l4, fragment) = (
        before("drop:truncated-ip"),
        before("drop:bad-ihl"),
        before("drop:truncated-l4"),
        before("drop:fragment"),
    );
    let forwarded_before = before("forward:local") + before("forward:remote");
    let dst = HOSTS[0];
    let mut syn = vec![0u8; 20];
    syn[0..2].copy_from_slice(&40000u16.to_be_bytes());
    syn[2..4].copy_from_slice(&TCP_PORT.to_be_bytes());
    syn[12] = 5 << 4;
    syn[13] = 0x02;
    let mut udp = vec![0u8; 16];
    udp[0..2].copy_from_slice(&40001u16.to_be_bytes());
    udp[2..4].copy_from_slice(&UDP_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&16u16.to_be_bytes());
    let mut truncated_ip = ipv4_frame(h1_mac, 5, 0, 6, dst, &syn);
    truncated_ip.truncate(14 + 12);
    let frames = vec![
        truncated_ip,
        ipv4_frame(h1_mac, 3, 0, 6, dst, &syn),
        ipv4_frame(h1_mac, 5, 0, 6, dst, &syn[..10]),
        ipv4_frame(h1_mac, 5, 0x2000, 17, dst, &udp),
        ipv4_frame(h1_mac, 6, 0, 6, dst, &syn),
    ];
    world.in_client(|| send_frames(&frames));
    // The counters move when the frames arrive: wait for them, without a wall-clock bound
    // beyond the generous IO timeout.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let done = before("drop:truncated-ip") > trunc_ip
            && before("drop:bad-ihl") > bad_ihl
            && before("drop:truncated-l4") > trunc_l4
            && before("drop:fragment") > fragment
            && before("forward:local") + before("forward:remote") > forwarded_before;
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "counters did not move: {:?}",
            world.balancers[0].counters().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(before("drop:truncated-ip"), trunc_ip + 1);
    assert_eq!(before("drop:bad-ihl"), bad_ihl + 1);
    assert_eq!(before("drop:truncated-l4"), trunc_l4 + 1);
    assert_eq!(before("drop:fragment"), fragment + 1);
    // And the host still balances.
    let seen = world
        .in_client(|| reach_both(HOSTS[0], 64))
        .unwrap_or_else(|e| panic!("{e}; counters {:?}", world.all_counters()));
    assert!(TASKS.iter().all(|t| seen.iter().any(|(s, _)| s == t)));

    check_frag_needed(&mut world);
    check_icmp_error_reaches_task(&world);
    check_rst_without_backends(&mut world);
    // And everything balances again.
    let seen = world
        .in_client(|| reach_both(HOSTS[1], 64))
        .unwrap_or_else(|e| panic!("{e}; counters {:?}", world.all_counters()));
    assert!(TASKS.iter().all(|t| seen.iter().any(|(s, _)| s == t)));

    check_restart_keeps_balancing(&mut world, hook);
}

/// A restarted meshd's balancer takes over from the previous run's without a failed request:
/// the previous run's programs, left attached, balance while meshd is down and while the new
/// balancer loads; the new one's first `apply` takes over (at XDP by swapping its program into
/// the previous link). An open connection keeps its backend throughout.
fn check_restart_keeps_balancing(world: &mut World, hook: BpfHook) {
    let (mut held, held_task) = world.in_client(|| {
        let mut conn = Conn::open(HOSTS[0]).unwrap();
        let (task, _) = conn.ask().unwrap();
        (conn, task)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, stop) = (world.ns("cl"), stop.clone());
        std::thread::spawn(move || {
            netns_of(&client)
                .run(|| {
                    let (mut answered, mut failed) = (0u32, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let tcp = Conn::open(HOSTS[0]).and_then(|mut c| c.ask());
                        let udp = UdpSocket::bind((CLIENT, 0)).and_then(|socket| {
                            socket.set_read_timeout(Some(IO_TIMEOUT))?;
                            udp_ask(&socket, HOSTS[0])
                        });
                        for outcome in [tcp.map(|_| ()), udp.map(|_| ())] {
                            match outcome {
                                Ok(()) => answered += 1,
                                Err(e) => failed.push(e.to_string()),
                            }
                        }
                    }
                    Ok((answered, failed))
                })
                .unwrap()
        })
    };
    // A pause at each step, as a real restart has: the load runs through each state.
    let pause = || std::thread::sleep(Duration::from_millis(300));
    pause();
    world.balancers.remove(0).leave_attached();
    pause();
    let dir = world.overlay_dir(0);
    let restarted = netns_of(&world.host_ns(0))
        .run(|| Ok(BpfBalancer::new(hook, "eth0", &dir)))
        .unwrap()
        .expect("a new balancer beside the previous run's programs");
    world.balancers.insert(0, restarted);
    pause();
    world.balancers[0].apply(&world.desired[0]).unwrap();
    pause();
    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{hook:?}: {} of {} requests failed across the restart: {failed:?}",
        failed.len(),
        answered as usize + failed.len()
    );
    assert!(answered > 10, "{hook:?}: only {answered} requests ran");
    let (task, _) = world.in_client(|| held.ask().unwrap());
    assert_eq!(task, held_task, "an open connection keeps its backend");
    // One balancer is left, and only its programs: the previous run's ingress pin is gone.
    let pins: Vec<String> = std::fs::read_dir(world.overlay_dir(0).join("bpf"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("ingress"))
        .collect();
    assert_eq!(pins.len(), 1, "{pins:?}");
    // And the new tables are the ones balancing: a drained backend gets no new connection.
    world.set_backends([Some(BackendState::Active), Some(BackendState::Draining)]);
    let fresh: Vec<String> = world.in_client(|| {
        (0..8)
            .map(|_| Conn::open(HOSTS[0]).unwrap().ask().unwrap().0)
            .collect()
    });
    assert!(fresh.iter().all(|t| t == TASKS[0]), "{fresh:?}");
    world.set_backends([Some(BackendState::Active); 2]);
}

#[test]
fn tc_mode_balances_drains_moves_and_counts() {
    scenario(BpfHook::Tc);
}

#[test]
fn xdp_mode_balances_drains_moves_and_counts() {
    scenario(BpfHook::Xdp);
}

#[test]
fn veth_prefers_tc() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let name = format!("mlbb-{}-pref", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap()
        .success());
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = Del(name.clone());
    run_in(
        &name,
        &[
            "ip", "link", "add", "a0", "type", "veth", "peer", "name", "b0",
        ],
    );
    let hook = netns_of(&name)
        .run(|| Ok(BpfHook::preferred_for("a0")))
        .unwrap();
    assert_eq!(hook, BpfHook::Tc);
    let lo = netns_of(&name)
        .run(|| Ok(BpfHook::preferred_for("lo")))
        .unwrap();
    assert_eq!(lo, BpfHook::Tc);
}
