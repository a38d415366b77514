//! dns: queries/s at saturation and latency at a fixed offered load, measured with dnsperf
//! from a client host. Mesh's embedded DNS server (`dataplane::dns`) and the baseline, dnsmasq,
//! serve the same service records from the same lab host, on the same address, one at a time:
//! every round runs both, in alternating order, so drift hits them alike.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dataplane::dns::{DnsServer, Records, Upstream, Zone, ZoneHandle};

use crate::ctx::{Ctx, Outcome};
use crate::report::{Better, Recorder};
use crate::stats::percentile;
use crate::suites::overlay::KillOnDrop;
use crate::tools::sh;

const DNSMASQ: &str = "dnsmasq";
const MESH: &str = "Mesh embedded DNS";
const QPS: &str = "queries/s at saturation (100 outstanding)";
const P50: &str = "latency p50 at a fixed 20 k queries/s";
const P99: &str = "latency p99 at a fixed 20 k queries/s";
const FIXED_QPS: &str = "20000";
/// Tasks behind every service, as `tasks.<service>` answers.
const TASKS_PER_SERVICE: u16 = 3;
/// TTL of Mesh's answers (dnsmasq gives host records 0 unless told otherwise; dnsperf ignores
/// it either way).
const TTL: u32 = 0;

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let lab = ctx.lab("dns", |spec| {
        spec.workers = 1;
        spec.clients = 1;
    })?;
    let server = lab.address("w1")?;
    let services = ctx.size(1000, 50);
    let records = service_records(services);

    // The query mix: every service name and its tasks name, as tasks look each other up.
    let queries: String = (0..services)
        .flat_map(|i| [format!("svc{i} A\n"), format!("tasks.svc{i} A\n")])
        .collect();
    let query_file =
        std::env::temp_dir().join(format!("mesh-bench-dns-{}.txt", std::process::id()));
    std::fs::write(&query_file, queries)?;
    let query_path = query_file.to_string_lossy().to_string();
    let result = measure(ctx, &lab, server, &records, &query_path);
    let _ = std::fs::remove_file(&query_file);
    let (rec, lost) = result?;

    Ok(Outcome {
        metrics: rec.finish(),
        pending: Vec::new(),
        notes: vec![
            format!(
                "Both servers run on lab host w1 and listen on its lab address, port 53, one at a time; each serves {services} services: `svcN` (one VIP) and `tasks.svcN` ({TASKS_PER_SERVICE} task addresses), no upstream. dnsperf on c1 cycles through all {} names (A queries, no EDNS).",
                services * 2
            ),
            "dnsmasq: --host-record entries, --cache-size=10000, one process. Mesh: `DnsServer::start_in_netns` on w1's namespace, driven by a 2-thread tokio runtime in the bench process (sockets in w1, threads not), as meshd would drive one server per task.".into(),
            format!(
                "Saturation: dnsperf -q 100 for {} s. Fixed load: dnsperf -Q {FIXED_QPS} -v, percentiles over every answered query's latency. Each round runs both servers, the order alternating between rounds. {lost} queries lost in all runs.",
                ctx.duration(10).as_secs()
            ),
        ],
    })
}

/// A server under test, started fresh for each round; dropping it stops it.
enum Running {
    Dnsmasq { _process: KillOnDrop },
    Mesh { _server: DnsServer },
}

fn start(
    variant: &str,
    lab: &lab::Lab,
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    records: &[(String, Ipv4Addr)],
) -> Result<Running> {
    if variant == DNSMASQ {
        let mut argv: Vec<String> = [
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            "--cache-size=10000",
        ]
        .map(String::from)
        .into();
        argv.push(format!("--listen-address={}", addr.ip()));
        for (name, ip) in records {
            argv.push(format!("--host-record={name},{ip}"));
        }
        return Ok(Running::Dnsmasq {
            _process: KillOnDrop(lab.spawn("w1", &argv, Stdio::null(), Stdio::piped())?),
        });
    }
    let mut a: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for (name, ip) in records {
        a.entry(name.clone()).or_default().push(*ip);
    }
    let zone = Zone::new(Records {
        a,
        srv: BTreeMap::new(),
        ttl: TTL,
    })?;
    // Where `ip netns` (and so the lab) pins named namespaces.
    let netns = PathBuf::from("/run/netns").join(lab.netns("w1")?);
    let server = runtime.block_on(DnsServer::start_in_netns(
        &netns,
        addr,
        ZoneHandle::new(zone),
        Arc::new(Upstream::none()),
    ))?;
    Ok(Running::Mesh { _server: server })
}

fn measure(
    ctx: &Ctx,
    lab: &lab::Lab,
    server: Ipv4Addr,
    records: &[(String, Ipv4Addr)],
    query_path: &str,
) -> Result<(Recorder, u64)> {
    let mut rec = Recorder::new();
    rec.metric(QPS, "queries/s", Better::Higher, DNSMASQ);
    rec.metric(P50, "µs", Better::Lower, DNSMASQ);
    rec.metric(P99, "µs", Better::Lower, DNSMASQ);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = SocketAddr::new(server.into(), 53);
    let client_ns = lab.netns("c1")?;
    let server_ns = lab.netns("w1")?;
    let seconds = ctx.duration(10).as_secs().to_string();
    let server = server.to_string();
    let mut lost = 0;
    for round in 0..ctx.repeat {
        let order = if round % 2 == 0 {
            [MESH, DNSMASQ]
        } else {
            [DNSMASQ, MESH]
        };
        for variant in order {
            eprintln!("dns: round {} of {}, {variant}", round + 1, ctx.repeat);
            let running = start(variant, lab, &runtime, addr, records)?;
            wait_until_answering(&client_ns, addr)
                .with_context(|| format!("{variant} on {addr}"))?;
            let saturated = sh(
                lab,
                "c1",
                &[
                    "dnsperf", "-s", &server, "-d", query_path, "-l", &seconds, "-q", "100",
                ],
            )?;
            let stats = parse_dnsperf(&saturated)?;
            lost += stats.lost;
            rec.sample(QPS, variant, stats.qps);
            let fixed = sh(
                lab,
                "c1",
                &[
                    "dnsperf", "-s", &server, "-d", query_path, "-l", &seconds, "-Q", FIXED_QPS,
                    "-q", "100", "-v",
                ],
            )?;
            lost += parse_dnsperf(&fixed)?.lost;
            let latencies = parse_dnsperf_latencies(&fixed);
            if latencies.is_empty() {
                bail!("dnsperf -v printed no per-query latency:\n{fixed}");
            }
            rec.sample(
                P50,
                variant,
                percentile(&latencies, 50.0).unwrap_or(f64::NAN),
            );
            rec.sample(
                P99,
                variant,
                percentile(&latencies, 99.0).unwrap_or(f64::NAN),
            );
            drop(running);
            wait_until_free(&server_ns, addr)?;
        }
    }
    Ok((rec, lost))
}

/// Waits until port 53 on `addr` can be bound again in `netns` (the stopped server's sockets
/// are closed), up to 5 s.
fn wait_until_free(netns: &str, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let free = lab::in_netns(netns, move || {
            UdpSocket::bind(addr).is_ok() && std::net::TcpListener::bind(addr).is_ok()
        })?;
        if free {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{addr} in {netns} was still in use 5 s after its server stopped")
}

/// Every name and address the server holds: `svcN` → its VIP, `tasks.svcN` → its tasks.
fn service_records(services: usize) -> Vec<(String, Ipv4Addr)> {
    let mut records = Vec::new();
    for i in 0..services {
        let [_, _, hi, lo] = u32::try_from(i).expect("few services").to_be_bytes();
        records.push((format!("svc{i}"), Ipv4Addr::new(10, 1, hi, lo)));
        for task in 0..TASKS_PER_SERVICE {
            let [_, _, hi, lo] =
                (u32::try_from(i).expect("few services") * 4 + u32::from(task)).to_be_bytes();
            records.push((format!("tasks.svc{i}"), Ipv4Addr::new(10, 2, hi, lo)));
        }
    }
    records
}

/// dnsperf's summary.
#[derive(Debug, PartialEq)]
struct DnsperfStats {
    qps: f64,
    lost: u64,
}

fn parse_dnsperf(text: &str) -> Result<DnsperfStats> {
    let mut qps = None;
    let mut lost = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Queries per second:") {
            qps = Some(
                rest.trim()
                    .parse::<f64>()
                    .context("dnsperf queries per second")?,
            );
        } else if let Some(rest) = line.strip_prefix("Queries lost:") {
            lost = Some(
                rest.split_whitespace()
                    .next()
                    .unwrap_or("")
                    .parse::<u64>()
                    .context("dnsperf queries lost")?,
            );
        }
    }
    match (qps, lost) {
        (Some(qps), Some(lost)) => Ok(DnsperfStats { qps, lost }),
        _ => bail!("dnsperf printed no statistics:\n{text}"),
    }
}

/// Per-query latencies in µs from `dnsperf -v` lines such as `> NOERROR svc1 A 0.000301`.
fn parse_dnsperf_latencies(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix("> "))
        .filter_map(|rest| rest.split_whitespace().last()?.parse::<f64>().ok())
        .map(|seconds| seconds * 1e6)
        .collect()
}

/// Polls the server with an A query for svc0 until it answers, up to 10 s.
fn wait_until_answering(client_ns: &str, server: SocketAddr) -> Result<()> {
    let socket = lab::in_netns(client_ns, || UdpSocket::bind("0.0.0.0:0"))?
        .context("binding a UDP socket")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let query = a_query(0x4d53, "svc0");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        socket.send_to(&query, server)?;
        if let Ok(n) = socket.recv(&mut buf) {
            if n >= 4 && buf[..2] == query[..2] && buf[3] & 0x0f == 0 {
                return Ok(());
            }
        }
    }
    bail!("the server on {server} did not answer within 10 s")
}

/// A DNS query for `name`'s A record with recursion desired.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut packet = Vec::with_capacity(17 + name.len());
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.') {
        packet.push(u8::try_from(label.len()).expect("short label"));
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    const DNSPERF: &str = "Statistics:

  Queries sent:         149672
  Queries completed:    149672 (100.00%)
  Queries lost:         3 (0.00%)

  Response codes:       NOERROR 149672 (100.00%)
  Run time (s):         2.000893
  Queries per second:   74802.600639

  Average Latency (s):  0.000819 (min 0.000027, max 0.004857)
";

    #[test]
    fn dnsperf_summary_gives_rate_and_losses() {
        assert_eq!(
            parse_dnsperf(DNSPERF).unwrap(),
            DnsperfStats {
                qps: 74802.600639,
                lost: 3
            }
        );
        assert!(parse_dnsperf("[Status] Sending queries").is_err());
    }

    #[test]
    fn verbose_lines_give_latencies_in_microseconds() {
        let text =
            "[Status] Started\n> NOERROR svc1 A 0.000301\n> NOERROR tasks.svc1 A 0.001\nnoise\n";
        assert_eq!(parse_dnsperf_latencies(text), vec![301.0, 1000.0]);
    }

    #[test]
    fn every_service_has_a_vip_and_its_tasks() {
        let records = service_records(300);
        assert_eq!(records.len(), 300 * (1 + usize::from(TASKS_PER_SERVICE)));
        assert!(records.contains(&("svc299".into(), Ipv4Addr::new(10, 1, 1, 43))));
        let tasks: Vec<_> = records.iter().filter(|(n, _)| n == "tasks.svc1").collect();
        assert_eq!(tasks.len(), usize::from(TASKS_PER_SERVICE));
    }

    #[test]
    fn a_query_is_well_formed() {
        assert_eq!(
            a_query(0x1234, "tasks.web"),
            [
                0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 5, b't', b'a', b's', b'k', b's', 3,
                b'w', b'e', b'b', 0, 0, 1, 0, 1
            ]
        );
    }
}
