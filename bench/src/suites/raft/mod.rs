//! raft: committed writes per second and commit latency of a three-manager replicated store at
//! 1, 16 and 256 concurrent clients, and the time a leader failover costs.
//! Baseline: a 3-member etcd 3.4 cluster (Debian's etcd-server), one member per lab manager,
//! written through its v3 JSON gateway by a std-only keep-alive HTTP/1.1 client on c1.
//! Mesh: the same three hosts run meshd as a 3-manager cluster; writes go to the leader's
//! local control socket. Both clusters run side by side and are measured interleaved.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::ctx::{Ctx, Outcome};
use crate::report::{Better, Recorder};
use crate::stats::percentile;
use crate::tools::sh;

mod etcd;
mod http;
mod mesh;

use etcd::{major_minor, version_field, Cluster};
use http::{base64, put_body, HttpConn};

/// The managers, one etcd member each.
const MEMBERS: [&str; 3] = ["m1", "m2", "m3"];

/// The client host.
const CLIENT: &str = "c1";

const CLIENT_PORT: u16 = 2379;

const PEER_PORT: u16 = 2380;

const CLUSTER_TOKEN: &str = "mesh-bench-raft";

/// etcd's own benchmark figures use 8-byte keys and 256-byte values; so do we.
const KEY_SIZE: usize = 8;

const VALUE_SIZE: usize = 256;

const PUT_PATH: &str = "/v3/kv/put";

const STATUS_PATH: &str = "/v3/maintenance/status";

const FAILOVER: &str = "leader failover, kill to next committed write";

/// A failover probe is sent this often...
const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// ...and abandoned after this long (a PUT a follower forwards to a dead leader never answers).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Give up on a failover after this long.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// How long a cluster may take to form, or a restarted member to catch up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Connect timeout of every connection to a member.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Read and write timeout of the load connections: a stalled cluster is an error, not a hang.
const LOAD_IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let mut lab = ctx.lab("raft", |spec| {
        spec.managers = 3;
        spec.clients = 1;
        spec.start_daemons = true;
        spec.form_cluster = true;
    })?;
    let mesh = mesh::MeshCluster::new(&lab)?;
    mesh.wait_healthy()
        .context("waiting for the Mesh managers")?;
    let mesh_variant = format!("Mesh ({} managers)", MEMBERS.len());
    let mut mesh_failed = 0u64;
    let version_text = sh(&lab, MEMBERS[0], &["etcd", "--version"]).context(
        "asking etcd for its version (Debian package etcd-server, which scripts/setup.sh installs)",
    )?;
    let version = version_field(&version_text, "etcd Version:").with_context(|| {
        format!("`etcd --version` printed no `etcd Version:` line:\n{version_text}")
    })?;
    let go = version_field(&version_text, "Go Version:").unwrap_or_else(|| "unknown Go".into());
    let variant = format!("etcd {} ({} members)", major_minor(&version), MEMBERS.len());

    // Declared after the lab, so dropped before it: members are killed and reaped, then the lab
    // goes.
    let mut cluster = Cluster::new(&lab)?;
    for index in 0..MEMBERS.len() {
        cluster.start_member(&lab, index, "new")?;
    }
    let formed = Instant::now();
    cluster
        .wait_healthy()
        .context("waiting for the new etcd cluster to elect a leader")?;
    eprintln!(
        "raft: {variant} formed in {:.1} s",
        formed.elapsed().as_secs_f64()
    );
    let data_dir = cluster.members[0].data_dir.to_string_lossy().into_owned();
    let filesystem = sh(&lab, MEMBERS[0], &["stat", "-f", "-c", "%T", &data_dir])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "an unknown file system".into());

    let clients = [1, 16, ctx.size(256, 64)];
    let duration = ctx.duration(5);
    let warmup = duration / 5;
    let mut rec = Recorder::new();
    let names: Vec<LoadMetrics> = clients.iter().map(|&n| LoadMetrics::new(n)).collect();
    for names in &names {
        rec.metric(&names.rate, "writes/s", Better::Higher, &variant);
        rec.metric(&names.p50, "ms", Better::Lower, &variant);
        rec.metric(&names.p99, "ms", Better::Lower, &variant);
    }
    rec.metric(FAILOVER, "ms", Better::Lower, &variant);

    let value = base64(&[b'v'; VALUE_SIZE]);
    let mut failed_answers = 0u64;
    let mut killed = Vec::new();
    let mut kill_calls = Vec::new();
    let mut recoveries = Vec::new();
    let mut mesh_killed = Vec::new();
    for round in 0..ctx.repeat {
        // Every client count, then a failover: interleaved, so drift hits them alike.
        for (&n, names) in clients.iter().zip(&names) {
            let leader = cluster
                .wait_healthy()
                .context("finding the leader before a load run")?;
            eprintln!(
                "raft: round {} of {}, {n} client(s) writing to leader {}",
                round + 1,
                ctx.repeat,
                MEMBERS[leader]
            );
            let target = cluster.client_addr(leader);
            let load = write_load(&cluster.client_ns, target, n, warmup, duration, &value)
                .with_context(|| {
                    format!("{n} client(s) writing to etcd leader {}", MEMBERS[leader])
                })?;
            if let Some(answer) = &load.first_failure {
                eprintln!(
                    "raft: {} write(s) not answered 200, the first: {answer}",
                    load.failed
                );
            }
            failed_answers += load.failed;
            names.record(&mut rec, &variant, &load, duration);

            let leader = mesh
                .wait_healthy()
                .context("finding the Mesh leader before a load run")?;
            eprintln!(
                "raft: round {} of {}, {n} client(s) writing to Mesh leader {}",
                round + 1,
                ctx.repeat,
                MEMBERS[leader]
            );
            let load =
                mesh::write_load(mesh.socket(leader), n, warmup, duration).with_context(|| {
                    format!("{n} client(s) writing to Mesh leader {}", MEMBERS[leader])
                })?;
            if let Some(answer) = &load.first_failure {
                eprintln!(
                    "raft: {} Mesh write(s) not committed, the first: {answer}",
                    load.failed
                );
            }
            mesh_failed += load.failed;
            names.record(&mut rec, &mesh_variant, &load, duration);
        }

        let leader = cluster
            .wait_healthy()
            .context("finding the leader before the failover")?;
        let host = MEMBERS[leader];
        eprintln!(
            "raft: round {} of {}, killing leader {host}",
            round + 1,
            ctx.repeat
        );
        let survivors: Vec<SocketAddr> = (0..MEMBERS.len())
            .filter(|&i| i != leader)
            .map(|i| cluster.client_addr(i))
            .collect();
        // Probing starts once the leader's etcd is dead and reaped: a PUT sent before could still
        // commit through it and make the failover look instant.
        let mut process = cluster.members[leader]
            .process
            .take()
            .context("the leader's etcd is not running")?;
        let pid = process.id();
        let (client_ns, probe_value) = (cluster.client_ns.clone(), value.clone());
        let killed_at = Instant::now();
        let prober = std::thread::spawn(move || {
            process.wait().context("reaping the killed leader's etcd")?;
            failover(&client_ns, &survivors, killed_at, &probe_value)
        });
        if let Err(err) = lab.kill(host) {
            // The prober waits for this process: end it so the prober returns, then report.
            // SAFETY: kill(2) on our own child, not reaped yet (the prober reaps it).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = prober.join();
            return Err(err).with_context(|| format!("powering off leader {host}"));
        }
        kill_calls.push(killed_at.elapsed());
        let took = prober
            .join()
            .map_err(|_| anyhow!("the failover prober panicked"))?
            .with_context(|| {
                format!("waiting for a committed write after killing leader {host}")
            })?;
        rec.sample(FAILOVER, &variant, took.as_secs_f64() * 1e3);
        killed.push(host);

        let restarted = Instant::now();
        lab.start(host)
            .with_context(|| format!("powering {host} back on"))?;
        cluster.start_member(&lab, leader, "existing")?;
        cluster.wait_healthy().with_context(|| {
            format!("waiting for restarted member {host} to rejoin and catch up")
        })?;
        recoveries.push(restarted.elapsed());

        // The same power cut for Mesh's leader. Probing starts once the kill has returned (the
        // leader is gone for good by then); the clock started before the kill.
        let leader = mesh
            .wait_healthy()
            .context("finding the Mesh leader before the failover")?;
        let host = MEMBERS[leader];
        eprintln!(
            "raft: round {} of {}, killing Mesh leader {host}",
            round + 1,
            ctx.repeat
        );
        let survivors: Vec<_> = (0..MEMBERS.len())
            .filter(|&i| i != leader)
            .map(|i| mesh.socket(i).clone())
            .collect();
        let killed_at = Instant::now();
        lab.kill(host)
            .with_context(|| format!("powering off Mesh leader {host}"))?;
        let took = probe_until_committed(killed_at, move |n| mesh::probe(&survivors, n))
            .with_context(|| {
                format!("waiting for a committed Mesh write after killing leader {host}")
            })?;
        rec.sample(FAILOVER, &mesh_variant, took.as_secs_f64() * 1e3);
        mesh_killed.push(host);
        // The power cut took that host's etcd member too: restart it, then wait for both.
        if let Some(mut process) = cluster.members[leader].process.take() {
            let _ = process.wait();
        }
        lab.start(host)
            .with_context(|| format!("powering {host} back on"))?;
        cluster.start_member(&lab, leader, "existing")?;
        cluster
            .wait_healthy()
            .with_context(|| format!("waiting for etcd member {host} to rejoin"))?;
        mesh.wait_healthy()
            .with_context(|| format!("waiting for Mesh manager {host} to rejoin"))?;
    }
    drop(cluster);

    let secs = |d: &[Duration]| {
        d.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(Outcome {
        metrics: rec.finish(),
        pending: Vec::new(),
        notes: vec![
            format!(
                "Mesh: the same three hosts run meshd as a 3-manager cluster (openraft, heartbeat 100 ms, election timeout 500-1000 ms, log on redb with an fsync per commit). A write sets one {VALUE_SIZE}-byte node label through the cluster API, sent as meshctl sends it: a JSON line on the leader's local control socket, one connection per client, in a closed loop; same clients, warm-up and window as etcd. {mesh_failed} writes not committed in all runs. Failover: the leader's host is powered off; once the kill returns, a write goes to a survivor's socket every {} ms (a follower forwards it to the leader Raft names); the figure runs from before the kill to the first committed write. Mesh leaders killed, in order: {}.",
                PROBE_INTERVAL.as_millis(),
                mesh_killed.join(", ")
            ),
            format!(
                "Three lab managers m1-m3 on plain veth links (MTU 1500), each running one member of an etcd {version} cluster (Debian's etcd-server, built with {go}) with default tuning (heartbeat 100 ms, election timeout 1000 ms, snapshot every 100 000 entries, no compaction); data dirs under the lab directory on the machine's disk ({filesystem}, as `stat -f` names it), so every commit waits for the WAL fsync of the leader and of at least one follower."
            ),
            format!(
                "A write is a PUT of an {KEY_SIZE}-byte key and a {VALUE_SIZE}-byte value through etcd's v3 JSON gateway (POST {PUT_PATH}), sent from c1 to the current leader (found with POST {STATUS_PATH} on every member); a 200 answer means committed. Each client is one thread with one keep-alive HTTP/1.1 connection in a closed loop (next PUT when the previous answers); {} clients. Each sample: {:.1} s warm-up, then {} s measured; writes/s counts 200 answers completed in the measured window, latency is from sending a request to reading its whole answer. {failed_answers} non-200 answers in all runs.",
                clients.map(|n| n.to_string()).join(", "),
                warmup.as_secs_f64(),
                duration.as_secs()
            ),
            format!(
                "Failover: the leader's host is powered off with the lab's kill (every process dies, its namespace and link go); the figure runs from the moment the kill is called to the first 200 answer. Once the leader's etcd process is dead, c1 sends a PUT every {} ms, alternating between the two survivors, each on a new connection abandoned after {} ms, so probes overlap and a new leader is seen within about {} ms. Leaders killed, in order: {}. The kill call itself took {} s. The host was then powered on and its member restarted on its data dir with --initial-cluster-state existing; rejoining and catching up (every member applied the leader's log, a PUT commits) took {} s, not part of the figure.",
                PROBE_INTERVAL.as_millis(),
                PROBE_TIMEOUT.as_millis(),
                PROBE_INTERVAL.as_millis(),
                killed.join(", "),
                secs(&kill_calls),
                secs(&recoveries)
            ),
        ],
    })
}

/// The metric names of one client count.
struct LoadMetrics {
    rate: String,
    p50: String,
    p99: String,
}

impl LoadMetrics {
    /// Records one load run of `variant`: its commit rate over the window and its latencies.
    fn record(&self, rec: &mut Recorder, variant: &str, load: &Load, window: Duration) {
        rec.sample(
            &self.rate,
            variant,
            load.committed as f64 / window.as_secs_f64(),
        );
        rec.sample(
            &self.p50,
            variant,
            percentile(&load.latencies_ms, 50.0).unwrap_or(f64::NAN),
        );
        rec.sample(
            &self.p99,
            variant,
            percentile(&load.latencies_ms, 99.0).unwrap_or(f64::NAN),
        );
    }

    fn new(clients: usize) -> Self {
        let who = if clients == 1 {
            "1 client".to_string()
        } else {
            format!("{clients} clients")
        };
        LoadMetrics {
            rate: format!("committed writes/s, {who}"),
            p50: format!("commit latency p50, {who}"),
            p99: format!("commit latency p99, {who}"),
        }
    }
}

/// What one load run saw.
struct Load {
    /// 200 answers completed in the measured window.
    committed: u64,
    /// Their latencies, ms.
    latencies_ms: Vec<f64>,
    /// Other answers completed in the window.
    failed: u64,
    /// The first of those, for the log.
    first_failure: Option<String>,
}

/// `clients` closed-loop writers, one thread and one keep-alive connection each, all opened
/// from `netns`, PUTting to `target` for `warmup` then `duration`.
fn write_load(
    netns: &str,
    target: SocketAddr,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    value: &str,
) -> Result<Load> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(HttpConn::open(
            netns,
            target,
            CONNECT_TIMEOUT,
            LOAD_IO_TIMEOUT,
        )?);
    }
    let value = value.to_string();
    closed_loop(conns, warmup, duration, move |conn, client, seq| {
        let body = format!(
            r#"{{"key":"{}","value":"{value}"}}"#,
            base64(write_key(client, seq).as_bytes())
        );
        let answer = conn.post(PUT_PATH, &body)?;
        Ok(if answer.status == 200 {
            Ok(())
        } else {
            Err(format!("{}: {}", answer.status, answer.text()))
        })
    })
}

/// One thread per connection, each writing in a closed loop (the next write when the previous
/// answers) for `warmup` then `duration`; only writes completed in the measured window count.
/// `write` returns Ok(Ok) for a committed write, Ok(Err(answer)) for a refused one, and Err
/// when the connection failed.
fn closed_loop<C: Send + 'static>(
    conns: Vec<C>,
    warmup: Duration,
    duration: Duration,
    write: impl Fn(&mut C, usize, u32) -> Result<Result<(), String>> + Send + Sync + 'static,
) -> Result<Load> {
    let start = Arc::new(Barrier::new(conns.len()));
    let write = Arc::new(write);
    let workers = conns
        .into_iter()
        .enumerate()
        .map(|(client, mut conn)| {
            let (start, write) = (Arc::clone(&start), Arc::clone(&write));
            std::thread::Builder::new()
                .name(format!("raft-client-{client}"))
                .stack_size(256 * 1024)
                .spawn(move || -> Result<Load> {
                    let mut load = Load {
                        committed: 0,
                        latencies_ms: Vec::new(),
                        failed: 0,
                        first_failure: None,
                    };
                    start.wait();
                    let measure_from = Instant::now() + warmup;
                    let end = measure_from + duration;
                    let mut seq = 0u32;
                    loop {
                        let sent = Instant::now();
                        if sent >= end {
                            return Ok(load);
                        }
                        seq = seq.wrapping_add(1);
                        let answer = write(&mut conn, client, seq)
                            .with_context(|| format!("client {client}, write {seq}"))?;
                        let done = Instant::now();
                        if done < measure_from || done > end {
                            continue;
                        }
                        match answer {
                            Ok(()) => {
                                load.committed += 1;
                                load.latencies_ms.push((done - sent).as_secs_f64() * 1e3);
                            }
                            Err(answer) => {
                                load.failed += 1;
                                load.first_failure.get_or_insert(answer);
                            }
                        }
                    }
                })
                .context("starting a client thread")
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = Load {
        committed: 0,
        latencies_ms: Vec::new(),
        failed: 0,
        first_failure: None,
    };
    let mut first_error = None;
    for worker in workers {
        match worker
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))
            .and_then(|r| r)
        {
            Ok(load) => {
                total.committed += load.committed;
                total.latencies_ms.extend(load.latencies_ms);
                total.failed += load.failed;
                total.first_failure = total.first_failure.or(load.first_failure);
            }
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(total),
    }
}

/// From `killed_at`, sends a PUT every PROBE_INTERVAL to the survivors in turn, each on a new
/// connection from `netns`, and returns the time to the first 200 answer.
fn failover(
    netns: &str,
    survivors: &[SocketAddr],
    killed_at: Instant,
    value: &str,
) -> Result<Duration> {
    let (netns, survivors, value) = (netns.to_string(), survivors.to_vec(), value.to_string());
    probe_until_committed(killed_at, move |sent| {
        let target = survivors[sent % survivors.len()];
        let body = format!(
            r#"{{"key":"{}","value":"{value}"}}"#,
            base64(write_key(0xfff, sent as u32).as_bytes())
        );
        let answer = HttpConn::open(&netns, target, CONNECT_TIMEOUT, PROBE_TIMEOUT)
            .and_then(|mut c| c.post(PUT_PATH, &body));
        matches!(answer, Ok(ref a) if a.status == 200)
    })
}

/// From `killed_at`, starts `probe(n)` on a thread of its own every PROBE_INTERVAL, so slow
/// probes overlap, and returns the time to the first that reports a committed write.
fn probe_until_committed(
    killed_at: Instant,
    probe: impl Fn(usize) -> bool + Send + Sync + 'static,
) -> Result<Duration> {
    let probe = Arc::new(probe);
    let (tx, rx) = mpsc::channel::<Instant>();
    let mut probes = Vec::new();
    let mut next = Instant::now();
    let mut sent = 0usize;
    let result = loop {
        let now = Instant::now();
        if now.duration_since(killed_at) > FAILOVER_LIMIT {
            break Err(anyhow!(
                "no write committed within {} s of the kill",
                FAILOVER_LIMIT.as_secs()
            ));
        }
        if now >= next {
            let (tx, probe) = (tx.clone(), Arc::clone(&probe));
            let n = sent;
            probes.push(std::thread::spawn(move || {
                if probe(n) {
                    let _ = tx.send(Instant::now());
                }
            }));
            sent += 1;
            next += PROBE_INTERVAL;
        }
        match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(done) => break Ok(done.duration_since(killed_at)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("this loop holds a sender"),
        }
    };
    // Probes still waiting give up within their own timeouts.
    for probe in probes {
        let _ = probe.join();
    }
    result
}

/// A KEY_SIZE-byte key, distinct per client and sequence number (modulo 2^20).
fn write_key(client: usize, seq: u32) -> String {
    format!("{:03x}{:05x}", client & 0xfff, seq & 0xf_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn keys_are_eight_bytes_and_distinct_per_client() {
        assert_eq!(write_key(0, 0), "00000000");
        assert_eq!(write_key(255, 0xabcde), "0ffabcde");
        assert_eq!(write_key(1, 1u32 << 20), write_key(1, 0));
        assert_ne!(write_key(1, 5), write_key(2, 5));
        assert_eq!(write_key(255, 7).len(), KEY_SIZE);
    }
}
