//! ingress: HTTP from a client host to a published port with backends on other hosts, and
//! small-UDP packet rates at an ingress interface.
//! Baselines: nftables DNAT load balancing set up by hand (kube-proxy/Swarm style); the client
//! straight to one backend as the limit; XDP_DROP and an nftables drop on the same veth as the
//! packet-rate limits.

use std::net::{SocketAddr, SocketAddrV4};

use anyhow::{Context, Result};
use dataplane::bpf::traffic_stats::{TrafficClass, TrafficStats, Verdict, XdpMode};

use crate::ctx::{Ctx, Outcome};
use crate::handmade::nft_dnat_lb;
use crate::loadgen::{self, Protocol};
use crate::report::{Better, Pending, Recorder};
use crate::tools::{self, sh, wrk};

const DIRECT: &str = "direct to backend (limit)";
const NFT_DNAT: &str = "nftables DNAT (hand-made)";
const CONN_RATE: &str = "new connections/s (connection per request)";
const CONN_P50: &str = "latency p50, connection per request";
const CONN_P99: &str = "latency p99, connection per request";
const KA_RATE: &str = "requests/s (keep-alive)";
const KA_P50: &str = "latency p50, keep-alive";
const KA_P99: &str = "latency p99, keep-alive";
const UDP_RATE: &str = "60-byte UDP packets/s dropped at the ingress veth";
const XDP_DROP: &str = "XDP_DROP (limit)";
const NFT_DROP: &str = "nftables drop, netdev ingress";
const BACKEND_PORT: u16 = 8080;
const PUBLISHED_PORT: u16 = 80;
const UDP_PORT: u16 = 9000;

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    // w1 is the ingress host (no backend of its own); w2 and w3 run backends; c1 is the client.
    let lab = ctx.lab("ingress", |spec| {
        spec.workers = 3;
        spec.clients = 1;
    })?;
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
    let targets = [
        (DIRECT, format!("http://{}/", backends[0])),
        (NFT_DNAT, format!("http://{ingress}:{PUBLISHED_PORT}/")),
    ];

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
    rec.metric(UDP_RATE, "Mpps", Better::Higher, XDP_DROP);
    let duration = ctx.duration(5);
    // One sender per core in a full run: the drop path runs in the senders' softirq context.
    let blasters = ctx.size(2, 1);
    let mut errors = 0;
    for round in 0..ctx.repeat {
        for (variant, url) in &targets {
            eprintln!("ingress: round {} of {}, {variant}", round + 1, ctx.repeat);
            let per_request = wrk(&lab, "c1", url, 16, duration, true)?;
            rec.sample(CONN_RATE, variant, per_request.requests_per_sec);
            rec.sample(CONN_P50, variant, per_request.p50_us);
            rec.sample(CONN_P99, variant, per_request.p99_us);
            let keep_alive = wrk(&lab, "c1", url, 32, duration, false)?;
            rec.sample(KA_RATE, variant, keep_alive.requests_per_sec);
            rec.sample(KA_P50, variant, keep_alive.p50_us);
            rec.sample(KA_P99, variant, keep_alive.p99_us);
            errors += per_request.errors + keep_alive.errors;
        }
        // Packet-rate limits: what one sender thread's 60-byte frames cost to drop at w1.
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
    }
    Ok(Outcome {
        metrics: rec.finish(),
        pending: vec![
            Pending {
                what: "Mesh routing mesh (XDP/TC), HTTP rates and latency, to local and remote backends".into(),
                reason: "the ingress routing mesh is not built yet (issue 8)".into(),
            },
            Pending {
                what: "60-byte UDP packets/s through the Mesh routing mesh; XDP against TC (tcx) attach".into(),
                reason: "the ingress routing mesh is not built yet (issue 8)".into(),
            },
            Pending {
                what: "softirq CPU per 1000 connections".into(),
                reason: "compared once the routing mesh exists (issue 8)".into(),
            },
        ],
        notes: vec![
            format!("Client c1 runs wrk (1 thread; 16 connections with `Connection: close`, 32 keep-alive) for {} s per sample against Rust HTTP backends on w2 and w3; {errors} socket errors or non-2xx answers in all runs.", duration.as_secs()),
            "nftables DNAT: on w1, `dnat to numgen random mod 2 map {backends}` plus `ct status dnat masquerade`, as kube-proxy's nftables mode does for traffic from outside.".into(),
            format!("UDP: {blasters} sender threads on c1 blast 60-byte frames with sendmmsg at w1's eth0; rates count what the drop program (XDP, native mode) or the nftables netdev ingress rule saw."),
        ],
    })
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
