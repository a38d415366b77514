//! overlay: task-to-task TCP throughput and request/response latency between two hosts.
//! Baselines: the plain underlay, and a kernel vxlan built by hand the way Swarm builds it.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;

use anyhow::{Context, Result};

use crate::ctx::{Ctx, Outcome};
use crate::handmade::swarm_style_vxlan;
use crate::loadgen::{self, Protocol};
use crate::report::{Better, Pending, Recorder};
use crate::stats::percentile;
use crate::tools::{in_ns, parse_iperf3_gbps, sh};

const UNDERLAY: &str = "underlay";
const VXLAN: &str = "kernel vxlan (hand-made, Swarm-style)";
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
    rec.metric(TPUT_1, "Gbit/s", Better::Higher, UNDERLAY);
    rec.metric(TPUT_4, "Gbit/s", Better::Higher, UNDERLAY);
    rec.metric(RR_P50, "µs", Better::Lower, UNDERLAY);
    rec.metric(RR_P99, "µs", Better::Lower, UNDERLAY);
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
        pending: vec![Pending {
            what: "Mesh overlay, task to task".into(),
            reason: "overlay networks are not built yet (issue 6)".into(),
        }],
        notes: vec![
            format!("Two lab hosts on plain veth links (MTU 1500), no meshd. iperf3 runs {duration} s per sample; latency is {exchanges} round trips of 64 bytes over one TCP connection with TCP_NODELAY."),
            "The hand-made vxlan: per host an overlay sandbox namespace with a bridge and a vxlan device (VNI 4097, learning off, MTU 1450) created on the underlay, a task namespace on a veth, static neighbour and FDB entries.".into(),
        ],
    })
}

/// A child process killed and reaped when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
