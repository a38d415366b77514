//! Helpers for the multi-host integration tests: labs that clean up after themselves even when
//! a test panics, and running code inside a namespace.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

pub mod history;
pub mod report;
pub mod web;

pub use lab::in_netns;
use lab::{Lab, LabSpec, ScopedLab};

/// A lab owned by one test; dropping it (also while a panic unwinds) runs `lab down`.
pub struct TestLab {
    lab: ScopedLab,
}

impl TestLab {
    /// Brings up a lab named after `tag`, unique to this process and call.
    pub fn up(tag: &str, configure: impl FnOnce(&mut LabSpec)) -> TestLab {
        let mut spec = LabSpec::new(&unique_name(tag), 0, 0);
        configure(&mut spec);
        let lab = ScopedLab::up(&spec).unwrap_or_else(|err| panic!("lab up {}: {err}", spec.name));
        TestLab { lab }
    }

    /// The lab, as recorded when it came up.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The lab, for operations that change it.
    pub fn lab_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }

    /// The lab re-read from disk (after changes made through another handle).
    pub fn reopened(&self) -> Lab {
        Lab::open(self.lab.name()).expect("reopen lab")
    }

    /// Copies every host's meshd log to `/tmp/<lab>-logs/` before the lab goes down, so a
    /// failure can be read against them.
    pub fn keep_logs(&self) {
        let dir = std::path::PathBuf::from(format!("/tmp/{}-logs", self.name()));
        let _ = std::fs::create_dir_all(&dir);
        for host in self.lab.hosts().iter().map(|h| h.name.clone()) {
            if let Ok(files) = self.lab.files(&host) {
                let _ = std::fs::copy(files.log(), dir.join(format!("{host}.log")));
            }
        }
        eprintln!("meshd logs kept in {}", dir.display());
    }

    /// A file of `host`'s cluster identity (`state_dir/cluster/<file>`: certificates, key).
    pub fn cluster_file(&self, host: &str, file: &str) -> String {
        let path = self
            .lab
            .files(host)
            .unwrap()
            .state_dir()
            .join("cluster")
            .join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Every host's nonzero load-balancer counters whose name starts with `prefix` (`drop:`,
    /// `forward:rst`, ...), as `diag lb` run on `from` reports them: for failure messages.
    pub fn lb_counters(&self, from: &str, prefix: &str) -> String {
        let out = self.meshctl_output(from, &["diag", "lb", "--format", "json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut found = Vec::new();
        for host in report["hosts"].as_array().into_iter().flatten() {
            // Counters are [name, packets] pairs.
            for pair in host["result"]["Lb"]["counters"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let (name, value) = (
                    pair[0].as_str().unwrap_or(""),
                    pair[1].as_u64().unwrap_or(0),
                );
                if name.starts_with(prefix) && value > 0 {
                    found.push(format!("{}:{name}={value}", host["node"]));
                }
            }
        }
        found.join(" ")
    }

    /// One host's status, re-read from disk.
    pub fn status_of(&self, host: &str) -> lab::HostStatus {
        self.reopened()
            .status()
            .into_iter()
            .find(|h| h.name == host)
            .unwrap_or_else(|| panic!("no host {host}"))
    }

    /// A host's underlay address.
    pub fn addr(&self, host: &str) -> Ipv4Addr {
        self.lab.address(host).expect("known host")
    }

    /// Whether one ICMP echo from `from` to `to`'s underlay address is answered within 1 s.
    pub fn ping(&self, from: &str, to: &str) -> bool {
        self.ping_with(from, to, &[])
    }

    /// As `ping`, with extra ping flags (size, DF).
    pub fn ping_with(&self, from: &str, to: &str, flags: &[&str]) -> bool {
        let target = self.addr(to).to_string();
        let mut argv = vec!["ping", "-n", "-q", "-c", "1", "-W", "1"];
        argv.extend_from_slice(flags);
        argv.push(&target);
        let output = self.lab.output(from, &argv).expect("run ping");
        output.status.success()
    }

    /// Runs a command in a host and returns its stdout, panicking on failure.
    pub fn sh(&self, host: &str, argv: &[&str]) -> String {
        let output = self.lab.output(host, argv).expect("run command in host");
        assert!(
            output.status.success(),
            "{argv:?} on {host} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        self.lab.name()
    }

    /// Runs meshctl in `host` and returns its whole output, whatever its exit status.
    pub fn meshctl_output(&self, host: &str, args: &[&str]) -> std::process::Output {
        let binary = lab::find_binary(lab::MESHCTL)
            .expect("meshctl is built")
            .to_string_lossy()
            .into_owned();
        let mut argv = vec![binary.as_str()];
        argv.extend_from_slice(args);
        self.lab.output(host, &argv).expect("run meshctl")
    }

    /// Runs meshctl in `host`: Ok(stdout) on success, Err(stderr) otherwise.
    pub fn meshctl(&self, host: &str, args: &[&str]) -> Result<String, String> {
        let out = self.meshctl_output(host, args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl TestLab {
    /// Runs `argv` on `host` inside the network namespace meshd pinned for `task`: Ok(stdout),
    /// or Err with both streams.
    pub fn in_task(&self, host: &str, task: &str, argv: &[&str]) -> Result<String, String> {
        let files = self.lab.files(host).expect("known host");
        let netns = files.state_dir().join("netns").join(task);
        let flag = format!("--net={}", netns.display());
        let mut full = vec!["nsenter", flag.as_str()];
        full.extend_from_slice(argv);
        let out = self.lab.output(host, &full).expect("run nsenter");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{argv:?} in {task} on {host}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs meshctl in `host` and returns its stdout, panicking with its stderr on failure.
    pub fn meshctl_ok(&self, host: &str, args: &[&str]) -> String {
        self.meshctl(host, args)
            .unwrap_or_else(|e| panic!("meshctl {args:?} on {host}: {e}"))
    }

    /// The running tasks of `service` on `network`, in the order `network inspect` on
    /// `manager` lists them.
    pub fn running_endpoints(&self, manager: &str, network: &str, service: &str) -> Vec<Endpoint> {
        let json = self.meshctl_ok(manager, &["network", "inspect", network]);
        let views: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        let prefix = format!("{service}.");
        views[0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["state"] == "Running" && e["task"].as_str().unwrap().starts_with(&prefix))
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap().to_string();
                Endpoint {
                    task_id: text("task_id"),
                    task: text("task"),
                    node: text("node"),
                    ip: text("ip"),
                }
            })
            .collect()
    }
}

/// A service's task on a network, as `network inspect` lists it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub task_id: String,
    /// `<service>.<slot>`.
    pub task: String,
    pub node: String,
    /// Its overlay address on that network.
    pub ip: String,
}

/// Retries `f` every 50 ms until it succeeds or `limit` passes; returns the time it took.
pub fn until_ok<T>(
    limit: std::time::Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<(T, std::time::Duration), String> {
    let start = std::time::Instant::now();
    loop {
        match f() {
            Ok(value) => return Ok((value, start.elapsed())),
            Err(err) if start.elapsed() >= limit => return Err(err),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// A lab name no other test in this run, or a concurrent run, uses.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("t-{tag}-{}-{n}", std::process::id() % 100_000);
    assert!(
        name.len() <= 24,
        "lab name {name} too long; shorten the tag"
    );
    name
}

/// Whether `pid` is a live process (zombies count as dead).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
            Some(!matches!(state, 'Z' | 'X'))
        })
        .unwrap_or(false)
}
