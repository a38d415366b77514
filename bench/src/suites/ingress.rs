//! ingress: HTTP from a client host to a published port, and small-UDP packet rates at an
//! ingress interface, for Mesh's routing mesh (BPF at TC, BPF at XDP, and its nftables
//! fallback; backend on the ingress host itself or on another host) and the baselines, all
//! interleaved in one run.
//! Baselines: the client straight to a backend (the limit); the client routed straight to the
//! local task's address through the ingress host, without any balancer (the path Mesh's local
//! backend takes, minus the balancer); nftables DNAT load balancing set up by hand
//! (kube-proxy/Swarm style); XDP_DROP and an nftables drop on the same kind of veth as the
//! packet-rate limits.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dataplane::bpf::traffic_stats::{TrafficClass, TrafficStats, Verdict, XdpMode};
use lab::{Lab, ScopedLab, MESHCTL};
use serde_json::Value;

use crate::ctx::{Ctx, Outcome};
use crate::handmade::nft_dnat_lb;
use crate::loadgen::{self, Protocol, Server, UdpSink};
use crate::report::{Better, Metric, Recorder};
use crate::tools::{self, sh, wrk};

const DIRECT: &str = "direct to backend (limit)";
const ROUTED: &str = "direct to the task (routed, no balancer)";
const NFT_DNAT: &str = "nftables DNAT (hand-made)";
const CONN_RATE: &str = "new connections/s (connection per request)";
const CONN_P50: &str = "latency p50, connection per request";
const CONN_P99: &str = "latency p99, connection per request";
const KA_RATE: &str = "requests/s (keep-alive)";
const KA_P50: &str = "latency p50, keep-alive";
const KA_P99: &str = "latency p99, keep-alive";
const SOFTIRQ: &str = "softirq CPU per 1000 connections (connection per request, whole machine)";
const KERNEL_CPU: &str =
    "kernel CPU (system + softirq) per 1000 connections (connection per request, whole machine)";
const UDP_RATE: &str =
    "60-byte UDP packets/s at the ingress veth: dropped (limits), or through the mesh";
const XDP_DROP: &str = "XDP_DROP (limit)";
const NFT_DROP: &str = "nftables drop, netdev ingress";
const BACKEND_PORT: u16 = 8080;
const PUBLISHED_PORT: u16 = 80;
const UDP_PORT: u16 = 9000;
/// Mesh labs: published ports of the service whose task runs on the ingress host (local) and
/// of the one whose task runs on the other host (remote).
const MESH_HTTP: [u16; 2] = [8081, 8082];
const MESH_UDP: [u16; 2] = [9001, 9002];
const IMAGE: &str = "mesh-test:latest";
/// The mesh labs' ingress host (a manager, which also runs the local task) and backend host.
const INGRESS_HOST: &str = "m1";
const REMOTE_HOST: &str = "w1";
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// One way Mesh balances published ports, measured in a lab of its own.
#[derive(Clone, Copy)]
struct Mode {
    /// meshd's `lb_mode`, and the path `meshctl diag lb` must then report.
    lb_mode: &'static str,
    /// Lab name tag (lab names are at most 24 characters).
    tag: &'static str,
    /// How the report names it.
    label: &'static str,
    /// Whether its UDP rate is measured.
    udp: bool,
}

const MODES: [Mode; 3] = [
    Mode {
        lb_mode: "tc",
        tag: "ing-tc",
        label: "Mesh routing mesh, TC",
        udp: true,
    },
    Mode {
        lb_mode: "xdp",
        tag: "ing-xdp",
        label: "Mesh routing mesh, XDP",
        udp: true,
    },
    Mode {
        lb_mode: "nftables",
        tag: "ing-nft",
        label: "Mesh, nftables fallback",
        udp: false,
    },
];

/// Where a Mesh variant's backend runs.
const PLACES: [&str; 2] = ["local backend", "remote backend"];
/// The lb_mode whose lab also serves the routed-to-task baseline: there meshd itself routes
/// the local task's subnet from the host namespace into the network namespace.
const ROUTED_MODE: &str = "nftables";
/// The next hop meshd's leg routes use in the host namespace (`<subnet> via 169.254.0.1 dev
/// mg-<network id> onlink`).
const LEG_GATEWAY: &str = "169.254.0.1";
/// Last octet of c1's extra underlay address for the routed-to-task flows: above every lab
/// host's (.1 to .250).
const ROUTED_SOURCE_HOST: u8 = 251;

/// A running lab with meshd balancing in one mode: a local and a remote service, each one task
/// running `sleep` with the bench's HTTP backend and UDP sink bound inside its namespace.
struct MeshLab {
    mode: Mode,
    ingress: Ipv4Addr,
    /// The tasks' pinned network namespaces (local, remote).
    task_netns: Vec<String>,
    // Dropped before the lab: sockets and programs first, then the namespaces.
    servers: Vec<Server>,
    sinks: Vec<UdpSink>,
    lab: ScopedLab,
}

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    // w1 is the ingress host (no backend of its own); w2 and w3 run backends; c1 is the client.
    let lab = ctx.lab("ingress", |spec| {
        spec.workers = 3;
        spec.clients = 1;
    })?;
    client_checksums_off(&lab)?;
    let backends = [
        SocketAddrV4::new(lab.address("w2")?, BACKEND_PORT),
        SocketAddrV4::new(lab.address("w3")?, BACKEND_PORT),
    ];
    let _servers = [
        loadgen::serve(
            &lab.netns("w2")?,
            SocketAddr::V4(backends[0]),
            Protocol::Http,
        )?,
        loadgen::serve(
            &lab.netns("w3")?,
            SocketAddr::V4(backends[1]),
            Protocol::Http,
        )?,
    ];
    let ingress = lab.address("w1")?;
    nft_dnat_lb(
        &lab,
        "w1",
        PUBLISHED_PORT,
        &backends.map(|b| (*b.ip(), b.port())),
    )
    .context("setting up the DNAT baseline")?;

    let mut meshes = Vec::new();
    for mode in MODES {
        eprintln!("ingress: bringing up the {} lab", mode.label);
        meshes.push(MeshLab::up(ctx, mode).with_context(|| format!("setting up {}", mode.label))?);
    }

    // The routed-to-task baseline, in the nftables fallback's lab (see routed_to_task).
    let routed_mesh = meshes
        .iter()
        .find(|m| m.mode.lb_mode == ROUTED_MODE)
        .context("no nftables lab for the routed-to-task baseline")?;
    let routed = routed_mesh
        .routed_to_task()
        .context("setting up the routed-to-task baseline")?;

    // (variant, lab, URL) for every HTTP variant, in the order each round runs them.
    let mut targets: Vec<(String, &Lab, String)> = vec![
        (DIRECT.into(), &*lab, format!("http://{}/", backends[0])),
        (
            ROUTED.into(),
            &*routed_mesh.lab,
            format!("http://{}/", routed.task),
        ),
        (
            NFT_DNAT.into(),
            &*lab,
            format!("http://{ingress}:{PUBLISHED_PORT}/"),
        ),
    ];
    for mesh in &meshes {
        for (place, port) in PLACES.iter().zip(MESH_HTTP) {
            targets.push((
                format!("{}, {place}", mesh.mode.label),
                &*mesh.lab,
                format!("http://{}:{port}/", mesh.ingress),
            ));
        }
    }

    let mut rec = Recorder::new();
    for (metric, unit, better) in [
        (CONN_RATE, "conn/s", Better::Higher),
        (CONN_P50, "µs", Better::Lower),
        (CONN_P99, "µs", Better::Lower),
        (KA_RATE, "req/s", Better::Higher),
        (KA_P50, "µs", Better::Lower),
        (KA_P99, "µs", Better::Lower),
    ] {
        rec.metric(metric, unit, better, DIRECT);
    }
    rec.metric(SOFTIRQ, "CPU ms", Better::Lower, NFT_DNAT);
    rec.metric(KERNEL_CPU, "CPU ms", Better::Lower, NFT_DNAT);
    rec.metric(UDP_RATE, "Mpps", Better::Higher, XDP_DROP);
    let duration = ctx.duration(5);
    // One sender per core in a full run: the drop path runs in the senders' softirq context.
    let blasters = ctx.size(2, 1);
    let clock_ticks = clock_ticks();
    let mut errors = 0;
    for round in 0..ctx.repeat {
        for (variant, lab, url) in &targets {
            eprintln!("ingress: round {} of {}, {variant}", round + 1, ctx.repeat);
            let before = cpu_times()?;
            let per_request = wrk(lab, "c1", url, 16, duration, true)?;
            let after = cpu_times()?;
            rec.sample(CONN_RATE, variant, per_request.requests_per_sec);
            rec.sample(CONN_P50, variant, per_request.p50_us);
            rec.sample(CONN_P99, variant, per_request.p99_us);
            let thousands = per_request.requests_per_sec * duration.as_secs_f64() / 1000.0;
            if thousands > 0.0 {
                let ms = |ticks: u64| ticks as f64 * 1000.0 / clock_ticks / thousands;
                rec.sample(SOFTIRQ, variant, ms(after.softirq - before.softirq));
                rec.sample(
                    KERNEL_CPU,
                    variant,
                    ms(after.system + after.softirq - before.system - before.softirq),
                );
            }
            let keep_alive = wrk(lab, "c1", url, 32, duration, false)?;
            rec.sample(KA_RATE, variant, keep_alive.requests_per_sec);
            rec.sample(KA_P50, variant, keep_alive.p50_us);
            rec.sample(KA_P99, variant, keep_alive.p99_us);
            errors += per_request.errors + keep_alive.errors;
        }
        // Packet-rate limits: what the senders' 60-byte frames cost to drop at w1.
        let target = SocketAddr::new(ingress.into(), UDP_PORT);
        let c1 = lab.netns("c1")?;
        eprintln!(
            "ingress: round {} of {}, UDP drop limits",
            round + 1,
            ctx.repeat
        );
        let xdp = {
            let stats = lab::in_netns(&lab.netns("w1")?, || {
                TrafficStats::attach_with("eth0", XdpMode::Driver, Verdict::DropIpv4Udp)
            })??;
            loadgen::udp_blast(&c1, target, duration, blasters)?;
            stats.read(TrafficClass::Ipv4Udp)?.packets
        };
        rec.sample(
            UDP_RATE,
            XDP_DROP,
            xdp as f64 / duration.as_secs_f64() / 1e6,
        );
        let nft = nft_drop_rate(&lab, &c1, target, duration, blasters)?;
        rec.sample(UDP_RATE, NFT_DROP, nft);
        for mesh in meshes.iter().filter(|m| m.mode.udp) {
            for (i, place) in PLACES.iter().enumerate() {
                eprintln!(
                    "ingress: round {} of {}, UDP through {}, {place}",
                    round + 1,
                    ctx.repeat,
                    mesh.mode.label
                );
                let (delivered, forwarded) = mesh.udp_rate(i, duration, blasters)?;
                let name = format!("{}, {place}", mesh.mode.label);
                rec.sample(
                    UDP_RATE,
                    &format!("{name}: delivered to the task"),
                    delivered,
                );
                rec.sample(
                    UDP_RATE,
                    &format!("{name}: forwarded by the ingress program"),
                    forwarded,
                );
            }
        }
    }
    let paths: Vec<String> = meshes
        .iter()
        .map(|m| m.paths().map(|p| format!("{}: {p}", m.mode.label)))
        .collect::<Result<_>>()?;
    drop(meshes);
    let metrics = rec.finish();
    let local_over_routed = local_over_routed(&metrics);
    Ok(Outcome {
        metrics,
        pending: vec![],
        notes: vec![
            format!("Every variant runs once per repetition, in the order listed, all in the same run; {} s per sample. Client c1 runs wrk (1 thread; 16 connections with `Connection: close`, 32 keep-alive) against the bench's Rust HTTP backend (a fixed pool of 64 threads, the same code everywhere); {errors} socket errors or non-2xx answers in all runs.", duration.as_secs()),
            "Direct and nftables DNAT run in a lab without meshd (c1, w1 the ingress host, backends on w2 and w3 bound to the hosts' own addresses). Direct: c1 straight to w2's backend (c1 to a backend host is the same path whether Mesh would call it local or remote). nftables DNAT: on w1, `dnat to numgen random mod 2 map {backends}` plus `ct status dnat masquerade`, as kube-proxy's nftables mode does for traffic from outside.".into(),
            format!("Mesh: one lab per lb_mode (tc, xdp, nftables), up for the whole run: meshd on m1 (manager, the ingress host) and w1, a client c1. Two services of one task each running `sleep 100000` ({IMAGE}, process runtime), pinned with constraints: \"local\" on m1 (published {} → 8080), \"remote\" on w1 (published {} → 8080); the bench's HTTP backend and a UDP sink are bound inside each task's network namespace, so the backend code is the baseline's, plus the task's veth. c1 always targets m1's address, so \"remote\" crosses m1 → VXLAN → w1 and the answer returns from w1 straight to c1 (DSR); with the nftables fallback it is DNAT + masquerade through m1 instead.", MESH_HTTP[0], MESH_HTTP[1]),
            format!("Direct to the task (routed, no balancer): in the nftables fallback's lab, where meshd routes the local task's subnet from m1's host namespace into the network namespace (`ip route` on m1: `{}`, with a permanent neighbour for {LEG_GATEWAY}, and ip_forward=1), c1 gets `ip route replace {} via {} src {source}` with {source}/32 added to its eth0 (in c1's namespace only) and runs wrk against the local task's address {} itself: the same backend in the same task namespace, crossing m1's eth0 → IP forwarding → mg leg veth → gw0 → network namespace bridge → task veth, and back the same way, as Mesh's local path does, without any balancer. Not quite free of the balancer's side effects: in that lab m1's `ip mesh-lb` table has a nat prerouting chain with a `ct state new` match, so conntrack runs in m1's host namespace for these flows too (every packet is tracked; the first of each meets the nat chains and goes through unchanged), which the BPF labs' m1 does not do for their local path. c1 sends these flows from an address of their own: from its usual one they shared 4-tuples (c1 address and port ↔ task:8080) with the fallback's local flows, whose DNAT keeps the client's address, and what one variant left behind (TIME_WAIT sockets in the task, conntrack entries on m1; which of the two was not traced) met the other's new connections: in the run that did so, the fallback's local conn/s fell to 0.47× of the routed figure (3965 vs 8478, 8818 the run before) while its wrk p50 dropped to 197 µs, i.e. connections stalled before their request. Its ratio column is against direct to backend (limit), like every row's.", routed.route, routed.subnet, routed.via, routed.task, source = routed.source),
            format!("Mesh local backend ÷ direct to the task (routed, no balancer), medians of the same run: {}. Rates below 1× and latencies above 1× are what the balancer adds on top of the task namespace's path (for the nftables fallback, on top of conntrack too); the ratio column gives the same variants against direct to backend (limit).", local_over_routed),
            format!("Paths reported by `meshctl diag lb` at the end: {}.", paths.join("; ")),
            "XDP lab: meshd sets net.ipv4.conf.eth0.forwarding=1 (bpf_fib_lookup needs it; the bench sets it too), and the lab puts an XDP pass program on every switch-side port (p-m1, p-w1 and p-c1), since XDP_TX on a veth delivers only when the peer runs XDP; the bench adds one on p-m1 and p-w1 only if the lab did not. So in the XDP lab the client's own frames also cross a veth in XDP mode (p-c1). Every lab's client runs `ethtool -K eth0 tx off` (XDP on veth loses CHECKSUM_PARTIAL), so every variant sends with software checksums alike.".into(),
            "CPU per 1000 connections: /proc/stat's softirq and system time summed over all CPUs, read before and after each connection-per-request wrk sample, divided by the connections made (requests/s × duration). The whole machine is one lab, so this is what client, ingress host and backend together spend per connection; the kernel has no CONFIG_IRQ_TIME_ACCOUNTING, so it is tick-sampled. Background load (idle meshd of the three mesh labs, other processes) adds alike to every variant. Baseline: nftables DNAT.".into(),
            format!("UDP: {blasters} sender threads in c1 blast 60-byte frames (18-byte payload) with sendmmsg. Limits: at the baseline lab's w1 eth0, counted by the drop program (XDP, native mode) or the nftables netdev ingress rule. Mesh: at m1's published UDP port ({} local task, {} remote task → 9000 in the task); \"delivered\" counts datagrams the sink in the task received (one thread, recvmmsg, 16 MiB buffer), \"forwarded\" the ingress program's forward:local or forward:remote counter on m1 (from `meshctl diag lb`) over the same interval. The nftables fallback's UDP is not measured.", MESH_UDP[0], MESH_UDP[1]),
        ],
    })
}

/// Software checksums on the client, in every lab alike (see the notes).
fn client_checksums_off(lab: &Lab) -> Result<()> {
    sh(lab, "c1", &["ethtool", "-K", "eth0", "tx", "off"]).map(drop)
}

impl MeshLab {
    fn up(ctx: &Ctx, mode: Mode) -> Result<MeshLab> {
        let lab = ctx.lab(mode.tag, |spec| {
            spec.start_daemons = true;
            spec.managers = 1;
            spec.workers = 1;
            spec.clients = 1;
            spec.lb_mode = Some(mode.lb_mode.into());
        })?;
        client_checksums_off(&lab)?;
        if mode.lb_mode == "xdp" {
            // The lab itself puts an XDP pass program on every switch port in xdp mode
            // (lab::net::prepare_lb_mode), which XDP_TX on veth needs.
            for host in [INGRESS_HOST, REMOTE_HOST] {
                sh(
                    &lab,
                    host,
                    &["sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1"],
                )?;
            }
        }
        let mut mesh = MeshLab {
            mode,
            ingress: lab.address(INGRESS_HOST)?,
            task_netns: Vec::new(),
            servers: Vec::new(),
            sinks: Vec::new(),
            lab,
        };
        for ((name, host), (http, udp)) in [("local", INGRESS_HOST), ("remote", REMOTE_HOST)]
            .into_iter()
            .zip(MESH_HTTP.into_iter().zip(MESH_UDP))
        {
            mesh.meshctl_retrying(&[
                "service",
                "create",
                "--name",
                name,
                "--replicas",
                "1",
                "--constraint",
                &format!("node.hostname=={host}"),
                "--publish",
                &format!("published={http},target={BACKEND_PORT}"),
                "--publish",
                &format!("published={udp},target={UDP_PORT},protocol=udp"),
                IMAGE,
                "sleep",
                "100000",
            ])?;
        }
        for name in ["local", "remote"] {
            let netns = mesh.task_netns(name)?;
            mesh.task_netns.push(netns.clone());
            mesh.servers.push(loadgen::serve(
                &netns,
                SocketAddr::from(([0, 0, 0, 0], BACKEND_PORT)),
                Protocol::Http,
            )?);
            mesh.sinks.push(loadgen::udp_sink(
                &netns,
                SocketAddr::from(([0, 0, 0, 0], UDP_PORT)),
            )?);
        }
        mesh.wait_reachable()?;
        let paths = mesh.paths()?;
        if paths != mode.lb_mode {
            bail!(
                "lb_mode {} but meshctl diag lb reports {paths}",
                mode.lb_mode
            );
        }
        Ok(mesh)
    }

    /// Makes the local task reachable from c1 without the balancer: finds the route meshd put
    /// on the ingress host for the task's subnet (`<subnet> via 169.254.0.1 dev mg-<id>
    /// onlink`), routes that subnet from c1 via the ingress host's underlay address (in c1's
    /// namespace only), and waits until the task's backend answers there.
    fn routed_to_task(&self) -> Result<Routed> {
        let routes = sh(&self.lab, INGRESS_HOST, &["ip", "-4", "route", "show"])?;
        let legs = parse_leg_routes(&routes);
        let netns = format!("--net={}", self.task_netns[0]);
        let addrs = sh(
            &self.lab,
            INGRESS_HOST,
            &["nsenter", &netns, "ip", "-4", "-o", "addr", "show"],
        )?;
        let (task, leg) = parse_inet_addrs(&addrs)
            .into_iter()
            .find_map(|(addr, _)| {
                legs.iter()
                    .find(|leg| in_subnet(addr, leg.subnet, leg.prefix_len))
                    .map(|leg| (addr, leg.clone()))
            })
            .with_context(|| {
                format!("no address of the local task ({}) is in a subnet {INGRESS_HOST} routes through a leg ({})", addrs.trim(), routes.trim())
            })?;
        let subnet = format!("{}/{}", leg.subnet, leg.prefix_len);
        let via = self.ingress.to_string();
        // A source address of its own, so these flows never share a 4-tuple with the nftables
        // fallback's (DNAT keeps c1's address and port, to the same task): what one leaves
        // behind (TIME_WAIT sockets in the task, conntrack entries on m1) would meet the
        // other's new connections (measured: the fallback's conn/s halved).
        let [a, b, c, _] = self.lab.address("c1")?.octets();
        let source = Ipv4Addr::new(a, b, c, ROUTED_SOURCE_HOST).to_string();
        sh(
            &self.lab,
            "c1",
            &[
                "ip",
                "addr",
                "replace",
                &format!("{source}/32"),
                "dev",
                "eth0",
            ],
        )?;
        sh(
            &self.lab,
            "c1",
            &[
                "ip", "route", "replace", &subnet, "via", &via, "src", &source,
            ],
        )?;
        let target = SocketAddrV4::new(task, BACKEND_PORT);
        let c1 = self.lab.netns("c1")?;
        let start = Instant::now();
        while !loadgen::http_ok(&c1, SocketAddr::V4(target)) {
            if start.elapsed() > CONVERGE_TIMEOUT {
                bail!("{target} never answered from c1 routed via {via}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(Routed {
            task: target,
            subnet,
            via,
            source,
            route: leg.line,
        })
    }

    fn meshctl(&self, args: &[&str]) -> Result<String> {
        let binary = lab::find_binary(MESHCTL)?;
        let mut argv = vec![binary.to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|a| a.to_string()));
        sh(&self.lab, INGRESS_HOST, &argv)
    }

    /// `meshctl`, again (up to 5 times) when it asks for that: two creates in a row can race
    /// for a VIP ("taken by a concurrent change; create the service again").
    fn meshctl_retrying(&self, args: &[&str]) -> Result<String> {
        let mut attempt = 0;
        loop {
            match self.meshctl(args) {
                Err(err) if attempt < 5 && format!("{err:#}").contains("again") => {
                    eprintln!("ingress: retrying: {err:#}");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(500));
                }
                result => return result,
            }
        }
    }

    /// The pinned network namespace of `service`'s running task, once it runs.
    fn task_netns(&self, service: &str) -> Result<String> {
        let start = Instant::now();
        loop {
            let json = self.meshctl(&["service", "ps", service, "--format", "json"])?;
            let tasks: Vec<Value> = serde_json::from_str(&json)?;
            let running = tasks
                .iter()
                .find(|t| t["desired"] == "running" && t["state"] == "running");
            if let Some(task) = running {
                let (id, node) = (
                    task["id"].as_str().context("task without id")?,
                    task["node"].as_str().context("task without node")?,
                );
                let path = self.lab.files(node)?.state_dir().join("netns").join(id);
                if path.exists() {
                    // lab::in_netns joins its argument to /run/netns: an absolute path stays.
                    return Ok(path.to_string_lossy().into_owned());
                }
            }
            if start.elapsed() > CONVERGE_TIMEOUT {
                bail!("service {service} has no running task after {CONVERGE_TIMEOUT:?}: {json}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until both published ports answer HTTP and UDP reaches both sinks from c1.
    fn wait_reachable(&self) -> Result<()> {
        let c1 = self.lab.netns("c1")?;
        let start = Instant::now();
        for (i, port) in MESH_HTTP.into_iter().enumerate() {
            let http = SocketAddr::from((self.ingress, port));
            while !loadgen::http_ok(&c1, http) {
                if start.elapsed() > CONVERGE_TIMEOUT {
                    bail!("{http} never answered through the mesh");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let udp = SocketAddr::from((self.ingress, MESH_UDP[i]));
            let before = self.sinks[i].received();
            loop {
                loadgen::udp_probe(&c1, udp, 4)?;
                std::thread::sleep(Duration::from_millis(100));
                if self.sinks[i].received() > before {
                    break;
                }
                if start.elapsed() > CONVERGE_TIMEOUT {
                    bail!("UDP to {udp} never reached the task");
                }
            }
        }
        Ok(())
    }

    /// `meshctl diag lb --format json`: every host's report.
    fn diag(&self) -> Result<Vec<Value>> {
        // It exits non-zero when it finds a problem; the JSON says which, so read it anyway.
        let binary = lab::find_binary(MESHCTL)?.to_string_lossy().into_owned();
        let out = self.lab.output(
            INGRESS_HOST,
            &[binary.as_str(), "diag", "lb", "--format", "json"],
        )?;
        let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "meshctl diag lb: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        Ok(report["hosts"].as_array().cloned().unwrap_or_default())
    }

    /// The distinct paths the hosts report, e.g. "tc".
    fn paths(&self) -> Result<String> {
        let mut paths: Vec<String> = self
            .diag()?
            .iter()
            .map(|h| {
                let lb = &h["result"]["Lb"];
                match lb["error"].as_str() {
                    Some(error) => format!("{} (error: {error})", lb["path"]),
                    None => lb["path"].as_str().unwrap_or("none").to_string(),
                }
            })
            .collect();
        paths.sort();
        paths.dedup();
        Ok(paths.join(", "))
    }

    /// A counter of the ingress host's program.
    fn ingress_counter(&self, name: &str) -> Result<u64> {
        for host in self.diag()? {
            if host["node"] == INGRESS_HOST {
                let counters = host["result"]["Lb"]["counters"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                return Ok(counters
                    .iter()
                    .find(|c| c[0] == name)
                    .and_then(|c| c[1].as_u64())
                    .unwrap_or(0));
            }
        }
        bail!("meshctl diag lb has no report from {INGRESS_HOST}")
    }

    /// Blasts 60-byte UDP at the published UDP port of service `index` (0 local, 1 remote):
    /// Mpps delivered to the task's sink, and forwarded by the ingress program.
    fn udp_rate(&self, index: usize, duration: Duration, blasters: usize) -> Result<(f64, f64)> {
        let counter = ["forward:local", "forward:remote"][index];
        let target = SocketAddr::from((self.ingress, MESH_UDP[index]));
        let forwarded_before = self.ingress_counter(counter)?;
        let received_before = self.sinks[index].received();
        loadgen::udp_blast(&self.lab.netns("c1")?, target, duration, blasters)?;
        // What is queued when the senders stop still counts: let the sink drain it.
        std::thread::sleep(Duration::from_millis(200));
        let received = self.sinks[index].received() - received_before;
        let forwarded = self.ingress_counter(counter)? - forwarded_before;
        let mpps = |n: u64| n as f64 / duration.as_secs_f64() / 1e6;
        Ok((mpps(received), mpps(forwarded)))
    }
}

/// The routed-to-task baseline's target and how it is reached.
struct Routed {
    /// The local task's address and target port.
    task: SocketAddrV4,
    /// The task's subnet, as c1 routes it.
    subnet: String,
    /// The ingress host's underlay address, c1's next hop.
    via: String,
    /// c1's extra underlay address these flows come from.
    source: String,
    /// meshd's route on the ingress host, as `ip route` shows it.
    route: String,
}

/// A host-namespace route through a network's leg.
#[derive(Clone, Debug, PartialEq)]
struct LegRoute {
    subnet: Ipv4Addr,
    prefix_len: u8,
    line: String,
}

/// The `<subnet> via 169.254.0.1 dev mg-<id> ...` routes of `ip -4 route show` output.
fn parse_leg_routes(routes: &str) -> Vec<LegRoute> {
    routes
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .copied()
            };
            if after("via") != Some(LEG_GATEWAY) || !after("dev")?.starts_with("mg-") {
                return None;
            }
            let (subnet, prefix_len) = words.first()?.split_once('/')?;
            Some(LegRoute {
                subnet: subnet.parse().ok()?,
                prefix_len: prefix_len.parse().ok().filter(|p| *p <= 32)?,
                line: words.join(" "),
            })
        })
        .collect()
}

/// The IPv4 addresses (with prefix lengths) of `ip -4 -o addr show` output, loopback left out.
fn parse_inet_addrs(text: &str) -> Vec<(Ipv4Addr, u8)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            let (addr, prefix_len) = words.next()?.split_once('/')?;
            let addr: Ipv4Addr = addr.parse().ok()?;
            (!addr.is_loopback()).then_some((addr, prefix_len.parse().ok()?))
        })
        .collect()
}

fn in_subnet(addr: Ipv4Addr, subnet: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    u32::from(addr) & mask == u32::from(subnet) & mask
}

/// The median of `variant` for `metric`.
fn median(metrics: &[Metric], metric: &str, variant: &str) -> Option<f64> {
    metrics
        .iter()
        .find(|m| m.name == metric)?
        .variants
        .iter()
        .find(|v| v.name == variant)?
        .summary
        .map(|s| s.median)
}

/// "TC: conn/s 0.95×, ...; XDP: ...": every Mesh mode's local backend over the routed-to-task
/// baseline, for the rates and the p50 latencies.
fn local_over_routed(metrics: &[Metric]) -> String {
    let columns = [
        (CONN_RATE, "conn/s"),
        (KA_RATE, "keep-alive req/s"),
        (CONN_P50, "p50 connection per request"),
        (KA_P50, "p50 keep-alive"),
    ];
    MODES
        .iter()
        .map(|mode| {
            let variant = format!("{}, {}", mode.label, PLACES[0]);
            let ratios: Vec<String> = columns
                .iter()
                .map(|(metric, short)| {
                    let ratio = median(metrics, metric, &variant)
                        .zip(median(metrics, metric, ROUTED))
                        .filter(|(_, routed)| *routed != 0.0)
                        .map_or("-".to_string(), |(mesh, routed)| {
                            format!("{:.2}×", mesh / routed)
                        });
                    format!("{short} {ratio}")
                })
                .collect();
            format!("{}: {}", mode.label, ratios.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Cumulative CPU time of every CPU, in clock ticks, from /proc/stat.
#[derive(Clone, Copy)]
struct CpuTimes {
    system: u64,
    softirq: u64,
}

fn cpu_times() -> Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_cpu_times(&stat)
}

/// The aggregate `cpu` line: user nice system idle iowait irq softirq ...
fn parse_cpu_times(stat: &str) -> Result<CpuTimes> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("/proc/stat cpu line")?;
    if fields.len() < 7 {
        bail!("/proc/stat cpu line is short: {line}");
    }
    Ok(CpuTimes {
        system: fields[2],
        softirq: fields[6],
    })
}

/// USER_HZ, the unit of /proc/stat.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Drops UDP to `target`'s port at w1's ingress with an nftables netdev rule, blasts at it, and
/// returns the rate the rule's counter saw, in Mpps.
fn nft_drop_rate(
    lab: &lab::Lab,
    client_ns: &str,
    target: SocketAddr,
    duration: std::time::Duration,
    blasters: usize,
) -> Result<f64> {
    let table = format!(
        "table netdev bench_drop {{\n  chain ingress {{\n    type filter hook ingress device \"eth0\" priority 0; policy accept;\n    udp dport {} counter drop\n  }}\n}}\n",
        target.port()
    );
    tools::nft_apply(lab, "w1", &table)?;
    let sent = loadgen::udp_blast(client_ns, target, duration, blasters);
    let listing = sh(lab, "w1", &["nft", "list", "table", "netdev", "bench_drop"]);
    sh(
        lab,
        "w1",
        &["nft", "delete", "table", "netdev", "bench_drop"],
    )?;
    sent?;
    let packets = tools::parse_nft_counter(&listing?)?;
    Ok(packets as f64 / duration.as_secs_f64() / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_come_from_the_aggregate_line() {
        let stat = "cpu  2358648 61961 671970 3001376 44778 0 107956 1616 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        let times = parse_cpu_times(stat).unwrap();
        assert_eq!((times.system, times.softirq), (671970, 107956));
        assert!(parse_cpu_times("cpu0 1 2\n").is_err());
        assert!(parse_cpu_times("cpu  1 2 3\n").is_err());
    }

    #[test]
    fn leg_routes_are_the_subnets_via_the_leg_gateway() {
        let routes = "default via 198.18.0.1 dev eth0\n\
            10.0.0.0/24 via 169.254.0.1 dev mg-4f2a onlink \n\
            10.0.9.0/24 via 169.254.0.1 dev eth0 onlink\n\
            10.1.0.0/16 via 198.18.0.9 dev eth0\n\
            198.18.0.0/15 dev eth0 proto kernel scope link src 198.18.0.2\n";
        assert_eq!(
            parse_leg_routes(routes),
            vec![LegRoute {
                subnet: Ipv4Addr::new(10, 0, 0, 0),
                prefix_len: 24,
                line: "10.0.0.0/24 via 169.254.0.1 dev mg-4f2a onlink".into(),
            }]
        );
    }

    #[test]
    fn task_addresses_leave_out_loopback_and_match_subnets() {
        let addrs = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
            7: eth0    inet 10.0.0.3/24 brd 10.0.0.255 scope global eth0\\       valid_lft forever preferred_lft forever\n";
        let parsed = parse_inet_addrs(addrs);
        assert_eq!(parsed, vec![(Ipv4Addr::new(10, 0, 0, 3), 24)]);
        let subnet = Ipv4Addr::new(10, 0, 0, 0);
        assert!(in_subnet(parsed[0].0, subnet, 24));
        assert!(!in_subnet(Ipv4Addr::new(10, 0, 1, 3), subnet, 24));
        assert!(in_subnet(Ipv4Addr::new(192, 0, 2, 1), subnet, 0));
        assert!(in_subnet(subnet, subnet, 32));
    }
}
