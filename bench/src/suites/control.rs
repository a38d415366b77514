//! Service convergence: from `service create --replicas N` to N tasks running, next to the same
//! N tasks started straight through the runtime with no control plane (what Raft, the
//! scheduler, the dispatcher and the agents add); and from a host kill to its tasks running
//! elsewhere, next to the time the managers take to notice the kill at all; and the requests
//! that fail while rolling updates replace a published service's tasks under load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use control::runtime::process::ProcessRuntime;
use control::runtime::{netns, Limits, Runtime, TaskSpec};
use lab::{Lab, MESHCTL};
use netns_tests::web::{get, Load, QUICK_STOP_WEB as WEB};
use serde_json::Value;

use crate::ctx::{Ctx, Outcome};
use crate::report::{Better, Recorder};

const IMAGE: &str = "mesh-test:latest";
const MESH: &str = "Mesh (create → all running)";
const DIRECT: &str = "runtime alone (no control plane)";
const RESCHEDULE: &str = "Mesh (kill → all running elsewhere)";
const DETECTION: &str = "managers mark the host down";
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

const ROLLING: &str = "Mesh (start-first, 2 at a time)";

/// Rolling updates of a published service under constant load from c1: the failed requests,
/// recorded; returns the requests served and the updates made.
fn rolling_updates(lab: &Lab, quick: bool, rec: &mut Recorder) -> Result<(u64, usize)> {
    let metric = "failed requests during rolling updates under load";
    rec.metric(metric, "requests", Better::Lower, ROLLING);
    eprintln!("control: rolling updates under load");
    meshctl(
        lab,
        &[
            "service",
            "create",
            "--name",
            "roll",
            "--replicas",
            "4",
            "--publish",
            "8080:80",
            "--health-tcp",
            "80",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "1s",
            "--update-order",
            "start-first",
            "--update-parallelism",
            "2",
            "--update-monitor",
            "1s",
            IMAGE,
            "sh",
            "-c",
            WEB,
        ],
    )?;
    wait_until("4 tasks of roll running", || {
        Ok(running(lab, "roll")?.len() == 4)
    })?;
    let mut targets = Vec::new();
    for host in ["m1", "w1", "w2", "w3"] {
        let target = std::net::SocketAddrV4::new(lab.address(host)?, 8080);
        let netns = lab.netns("c1")?;
        wait_until(&format!("{target} answering"), || {
            Ok(lab::in_netns(&netns, move || get(target, "/"))?.is_ok())
        })?;
        targets.push(target);
    }
    let load = Load::start(&lab.netns("c1")?, targets);
    let goal = if quick { 0 } else { 10_000 };
    let mut updates = 0;
    let outcome = loop {
        if let Err(err) = meshctl(lab, &["service", "update", "--force", "roll"]) {
            break Err(err);
        }
        updates += 1;
        if load.served() >= goal || updates >= 20 {
            break Ok(());
        }
    };
    let (served, failed) = load.finish();
    outcome.context("a rolling update did not converge")?;
    for failure in failed.iter().take(5) {
        eprintln!("control: failed request: {failure}");
    }
    rec.sample(metric, ROLLING, failed.len() as f64);
    remove(lab, "roll")?;
    Ok((served + failed.len() as u64, updates))
}

fn meshctl(lab: &Lab, args: &[&str]) -> Result<String> {
    let binary = lab::find_binary(MESHCTL)?;
    let mut argv = vec![binary.to_string_lossy().into_owned()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = lab.output("m1", &argv)?;
    if !out.status.success() {
        bail!(
            "meshctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn running(lab: &Lab, service: &str) -> Result<Vec<String>> {
    let json = meshctl(lab, &["service", "ps", service, "--format", "json"])?;
    let tasks: Vec<Value> = serde_json::from_str(&json)?;
    Ok(tasks
        .iter()
        .filter(|t| t["desired"] == "running" && t["state"] == "running")
        .map(|t| t["node"].as_str().unwrap_or_default().to_string())
        .collect())
}

fn wait_until(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < CONVERGE_TIMEOUT {
        if done()? {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "{what} did not happen within {} s",
        CONVERGE_TIMEOUT.as_secs()
    )
}

/// Removes a service and waits until its tasks are gone from the store.
fn remove(lab: &Lab, service: &str) -> Result<()> {
    meshctl(lab, &["service", "rm", service])?;
    wait_until(&format!("removal of {service}"), || {
        let json = meshctl(lab, &["service", "ps", "--format", "json", "--", service]);
        Ok(json.is_err())
    })?;
    // Give the agents a moment to reap the stopped processes before the next round.
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// Starts `count` tasks concurrently through the process runtime in this process, each in a
/// fresh namespace, and returns how long until all of them run.
fn direct_start(count: usize, image_dir: &std::path::Path) -> Result<Duration> {
    let scratch = tempfile::tempdir()?;
    let state = scratch.path().join("state");
    let namespaces = scratch.path().join("netns");
    std::fs::create_dir_all(&namespaces)?;
    let runtime = Arc::new(ProcessRuntime::new(state, image_dir.to_path_buf())?);
    let tokio = tokio::runtime::Runtime::new()?;
    let ids: Vec<String> = (0..count).map(|i| format!("benchdirect{i:014}")).collect();
    let start = Instant::now();
    let result: Result<()> = tokio.block_on(async {
        let starts = ids.iter().enumerate().map(|(slot, id)| {
            let runtime = Arc::clone(&runtime);
            let path = namespaces.join(id);
            let id = id.clone();
            async move {
                let prepared = {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || netns::create(&path)).await?
                };
                prepared?;
                let spec = TaskSpec {
                    task_id: id,
                    slot: slot as u64 + 1,
                    service_name: "direct".into(),
                    node_id: "0000000000000000".into(),
                    image: IMAGE.into(),
                    command: vec!["sleep".into(), "100000".into()],
                    env: vec![],
                    limits: Limits::default(),
                    netns: path,
                    resolv_conf: None,
                    files: Vec::new(),
                };
                let (logs, _rx) = tokio::sync::mpsc::unbounded_channel();
                runtime.start(&spec, logs).await?;
                anyhow::Ok(())
            }
        });
        for outcome in futures_util::future::join_all(starts).await {
            outcome?;
        }
        Ok(())
    });
    let took = start.elapsed();
    tokio.block_on(async {
        for id in &ids {
            let _ = runtime.stop(id, Duration::from_secs(1)).await;
            let _ = runtime.remove(id).await;
            let _ = netns::remove(&namespaces.join(id));
        }
    });
    result?;
    Ok(took)
}

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let lab = ctx.lab("control", |spec| {
        spec.managers = 1;
        spec.workers = 3;
        spec.clients = 1;
        spec.start_daemons = true;
        spec.form_cluster = true;
    })?;
    meshctl(&lab, &["node", "update", "--availability", "drain", "m1"])?;
    let image_dir = lab::image_dir();

    let mut rec = Recorder::new();
    let sizes = if ctx.quick { vec![3] } else { vec![10, 100] };
    for &n in &sizes {
        let metric = format!("time until {n} tasks run");
        rec.metric(&metric, "ms", Better::Lower, DIRECT);
        for round in 0..ctx.repeat {
            eprintln!("control: {n} tasks, round {} of {}", round + 1, ctx.repeat);
            let direct =
                direct_start(n, &image_dir).context("starting tasks through the runtime alone")?;
            rec.sample(&metric, DIRECT, direct.as_secs_f64() * 1e3);
            let name = format!("conv{n}r{round}");
            let replicas = n.to_string();
            let start = Instant::now();
            meshctl(
                &lab,
                &[
                    "service",
                    "create",
                    "--name",
                    &name,
                    "--replicas",
                    &replicas,
                    IMAGE,
                    "sleep",
                    "100000",
                ],
            )?;
            wait_until(&format!("{n} tasks of {name} running"), || {
                Ok(running(&lab, &name)?.len() == n)
            })?;
            rec.sample(&metric, MESH, start.elapsed().as_secs_f64() * 1e3);
            remove(&lab, &name)?;
        }
    }

    let metric = "time from a host kill to its tasks running elsewhere";
    rec.metric(metric, "ms", Better::Lower, DETECTION);
    let mut lab = lab;
    for round in 0..ctx.repeat.min(3) {
        eprintln!(
            "control: host kill, round {} of {}",
            round + 1,
            ctx.repeat.min(3)
        );
        let name = format!("heal{round}");
        meshctl(
            &lab,
            &[
                "service",
                "create",
                "--name",
                &name,
                "--replicas",
                "6",
                IMAGE,
                "sleep",
                "100000",
            ],
        )?;
        wait_until("6 tasks running", || {
            let nodes = running(&lab, &name)?;
            Ok(nodes.len() == 6 && nodes.iter().any(|n| n == "w3"))
        })?;
        let killed = Instant::now();
        lab.kill("w3")?;
        let mut detected = None;
        wait_until("the tasks of the killed host running elsewhere", || {
            if detected.is_none() {
                let nodes: Vec<Value> =
                    serde_json::from_str(&meshctl(&lab, &["node", "ls", "--format", "json"])?)?;
                if nodes
                    .iter()
                    .any(|n| n["name"] == "w3" && n["status"] == "down")
                {
                    detected = Some(killed.elapsed());
                }
            }
            let nodes = running(&lab, &name)?;
            Ok(nodes.len() == 6 && !nodes.iter().any(|n| n == "w3"))
        })?;
        let healed = killed.elapsed();
        let detected = detected.unwrap_or(healed);
        rec.sample(metric, DETECTION, detected.as_secs_f64() * 1e3);
        rec.sample(metric, RESCHEDULE, healed.as_secs_f64() * 1e3);
        remove(&lab, &name)?;
        lab.start("w3")?;
        wait_until("w3 ready again", || {
            let nodes: Vec<Value> =
                serde_json::from_str(&meshctl(&lab, &["node", "ls", "--format", "json"])?)?;
            Ok(nodes
                .iter()
                .any(|n| n["name"] == "w3" && n["status"] == "ready"))
        })?;
    }
    let (served, updates) = rolling_updates(&lab, ctx.quick, &mut rec)?;
    Ok(Outcome {
        metrics: rec.finish(),
        pending: Vec::new(),
        notes: vec![
            format!("Rolling updates: 4 replicas of busybox httpd publishing port 8080 (TCP health check every 200 ms), `service update --force` with --update-order start-first, --update-parallelism 2, --update-monitor 1s, {updates} time(s) in a row, while c1 sends {served} requests in all through every host's address (a new connection per request, one at a time, 3 s timeout). A request fails on a refused or reset connection, a timeout or a non-200 answer. Goal: 0 failed of at least 10 000 (full mode)."),
            "Lab: 1 drained manager and 3 workers, process runtime, `sleep` tasks of the mesh-test image. \"Mesh\" is measured from `meshctl service create` on the manager until `service ps` shows every task Running (polled every 20 ms); \"runtime alone\" starts the same number of tasks concurrently through the same process runtime in the bench process, with no Raft, scheduler or agent.".into(),
            "Host kill: 6 replicas over the 3 workers, w3 powered off (cgroup.kill after its wire is cut). The managers mark a host down after 3 s without heartbeats (node_down_after_ms); the reschedule time includes that wait.".into(),
        ],
    })
}
