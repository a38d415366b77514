//! overlay: task-to-task TCP throughput and request/response latency between two hosts, over
//! Mesh's overlay (built by `dataplane::overlay`).
//! Baselines: the plain underlay, and a kernel vxlan built by hand the way Swarm builds it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;

use anyhow::{Context, Result};
use dataplane::overlay::{
    underlay_mtu, HostOverlay, LocalEndpoint, NetworkPlan, Overlay, RemoteEndpoint, VXLAN_OVERHEAD,
};
use lab::Lab;

use crate::ctx::{Ctx, Outcome};
use crate::handmade::{swarm_style_vxlan, OverlayTask};
use crate::loadgen::{self, Protocol};
use crate::report::{Better, Pending, Recorder};
use crate::stats::percentile;
use crate::tools::{in_ns, parse_iperf3_gbps, sh};

const UNDERLAY: &str = "underlay";
const VXLAN: &str = "kernel vxlan (hand-made, Swarm-style)";
const MESH: &str = "Mesh overlay";
/// The Mesh overlay's VNI: the hand-made one (4097) shares the hosts' underlay and UDP port.
const MESH_VNI: u32 = 4098;
/// The Mesh overlay's network ID, subnet (/24) and gateway.
const MESH_NET: &str = "bench";
const MESH_SUBNET: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 0);
const MESH_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const DATA_PATH_PORT: u16 = 4789;
const TPUT_1: &str = "TCP throughput, 1 stream";
const TPUT_4: &str = "TCP throughput, 4 streams";
const RR_P50: &str = "TCP request/response latency p50";
const RR_P99: &str = "TCP request/response latency p99";
const IPERF_PORT: u16 = 5201;
const ECHO_PORT: u16 = 7000;

/// One side of a measurement: where the client runs and where the server listens.
struct Path {
    name: &'static str,
    client_host: &'static str,
    client_ns: String,
    server_host: &'static str,
    server_ns: String,
    server_ip: IpAddr,
}

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let lab = ctx.lab("overlay", |spec| spec.clients = 2)?;
    let tasks = swarm_style_vxlan(&lab, &["c1", "c2"]).context("building the hand-made vxlan")?;
    let (mesh, overlay_mtu) =
        mesh_overlay(&lab, &["c1", "c2"]).context("building the Mesh overlay")?;
    let paths = [
        Path {
            name: UNDERLAY,
            client_host: "c1",
            client_ns: lab.netns("c1")?,
            server_host: "c2",
            server_ns: lab.netns("c2")?,
            server_ip: lab.address("c2")?.into(),
        },
        Path {
            name: VXLAN,
            client_host: "c1",
            client_ns: tasks[0].netns.clone(),
            server_host: "c2",
            server_ns: tasks[1].netns.clone(),
            server_ip: tasks[1].ip.into(),
        },
        Path {
            name: MESH,
            client_host: "c1",
            client_ns: mesh[0].netns.clone(),
            server_host: "c2",
            server_ns: mesh[1].netns.clone(),
            server_ip: mesh[1].ip.into(),
        },
    ];

    // Servers run for the whole suite: iperf3 in each server namespace, an echo for latency.
    let mut iperf_servers = Vec::new();
    let mut echo_servers = Vec::new();
    for path in &paths {
        let port = IPERF_PORT.to_string();
        let argv = in_ns(&path.server_ns, &["iperf3", "-s", "-p", &port]);
        iperf_servers.push(KillOnDrop(lab.spawn(
            path.server_host,
            &argv,
            Stdio::null(),
            Stdio::null(),
        )?));
        echo_servers.push(loadgen::serve(
            &path.server_ns,
            SocketAddr::new(path.server_ip, ECHO_PORT),
            Protocol::Echo,
        )?);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));

    let mut rec = Recorder::new();
    // Mesh's overlay is measured against what it replaces, the hand-made vxlan; the underlay's
    // ratio shows the ceiling.
    rec.metric(TPUT_1, "Gbit/s", Better::Higher, VXLAN);
    rec.metric(TPUT_4, "Gbit/s", Better::Higher, VXLAN);
    rec.metric(RR_P50, "µs", Better::Lower, VXLAN);
    rec.metric(RR_P99, "µs", Better::Lower, VXLAN);
    let duration = ctx.duration(5).as_secs().to_string();
    let exchanges = ctx.size(20_000, 2_000);
    for round in 0..ctx.repeat {
        // Interleave variants within every repetition so drift hits them alike.
        for path in &paths {
            eprintln!(
                "overlay: round {} of {}, {}",
                round + 1,
                ctx.repeat,
                path.name
            );
            let server = path.server_ip.to_string();
            let port = IPERF_PORT.to_string();
            for (metric, streams) in [(TPUT_1, "1"), (TPUT_4, "4")] {
                let argv = in_ns(
                    &path.client_ns,
                    &[
                        "iperf3", "-c", &server, "-p", &port, "-t", &duration, "-P", streams, "-J",
                    ],
                );
                let gbps = parse_iperf3_gbps(&sh(&lab, path.client_host, &argv)?)?;
                rec.sample(metric, path.name, gbps);
            }
            let rtts = loadgen::tcp_rr(
                &path.client_ns,
                SocketAddr::new(path.server_ip, ECHO_PORT),
                exchanges,
                64,
            )?;
            rec.sample(
                RR_P50,
                path.name,
                percentile(&rtts, 50.0).unwrap_or(f64::NAN),
            );
            rec.sample(
                RR_P99,
                path.name,
                percentile(&rtts, 99.0).unwrap_or(f64::NAN),
            );
        }
    }
    drop(echo_servers);
    drop(iperf_servers);
    Ok(Outcome {
        metrics: rec.finish(),
        pending: Vec::<Pending>::new(),
        notes: vec![
            format!("Two lab hosts on plain veth links (MTU 1500), no meshd. iperf3 runs {duration} s per sample; latency is {exchanges} round trips of 64 bytes over one TCP connection with TCP_NODELAY. Ratios are against the hand-made vxlan; the underlay's is the ceiling."),
            "The hand-made vxlan: per host an overlay sandbox namespace with a bridge and a vxlan device (VNI 4097, learning off, MTU 1450) created on the underlay, a task namespace on a veth, static neighbour and FDB entries.".into(),
            format!("Mesh overlay: `dataplane::overlay::Overlay::apply` on each host (network namespace pinned under the host's lab directory, bridge, vxlan VNI {MESH_VNI} with ARP proxy, one task per host on a veth), MTU {overlay_mtu} derived from the underlay route's MTU less {VXLAN_OVERHEAD}."),
        ],
    })
}

/// Builds Mesh's overlay between `hosts`: one task namespace per host (a named namespace
/// `<host ns>.mtask`, which the lab removes with the host), and on each host one
/// `Overlay::apply` with the host's plan (one network, its local task, the others as remote
/// endpoints). Returns the tasks and the overlay MTU, derived as meshd derives it.
fn mesh_overlay(lab: &Lab, hosts: &[&str]) -> Result<(Vec<OverlayTask>, u32)> {
    let mut tasks = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let ordinal = u8::try_from(i + 2)?;
        let netns = format!("{}.mtask", lab.netns(host)?);
        sh(lab, host, &["ip", "netns", "add", &netns])?;
        sh(
            lab,
            host,
            &in_ns(&netns, &["ip", "link", "set", "lo", "up"]),
        )?;
        tasks.push(OverlayTask {
            host: host.to_string(),
            netns,
            ip: Ipv4Addr::new(10, 98, 0, ordinal),
            mac: format!("02:42:0a:62:00:{ordinal:02x}"),
        });
    }
    let mac_of = |task: &OverlayTask| -> [u8; 6] { [0x02, 0x42, 10, 98, 0, task.ip.octets()[3]] };
    let (first, second) = (lab.address(hosts[0])?, lab.address(hosts[1])?);
    let mtu = lab::in_netns(&lab.netns(hosts[0])?, move || {
        underlay_mtu(first, Some(second))
    })?? - VXLAN_OVERHEAD;
    for (i, host) in hosts.iter().enumerate() {
        let local = &tasks[i];
        let plan = HostOverlay {
            underlay_ip: lab.address(host)?,
            data_path_port: DATA_PATH_PORT,
            networks: vec![NetworkPlan {
                id: MESH_NET.into(),
                vni: MESH_VNI,
                subnet: MESH_SUBNET,
                prefix_len: 24,
                gateway: MESH_GATEWAY,
                mtu,
                local: vec![LocalEndpoint {
                    task_id: format!("bench{}", i + 1),
                    netns: std::path::Path::new("/run/netns").join(&local.netns),
                    ifname: "eth0".into(),
                    ip: local.ip,
                    mac: mac_of(local),
                }],
                remote: tasks
                    .iter()
                    .filter(|t| t.host != *host)
                    .map(|t| {
                        Ok(RemoteEndpoint {
                            ip: t.ip,
                            mac: mac_of(t),
                            vtep: lab.address(&t.host)?,
                        })
                    })
                    .collect::<Result<_>>()?,
            }],
        };
        let dir = lab.files(host)?.dir.join("overlay");
        lab::in_netns(&lab.netns(host)?, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(Overlay::new(dir).apply(&plan))
                .map_err(anyhow::Error::from)
        })??;
    }
    Ok((tasks, mtu))
}

/// A child process killed and reaped when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
