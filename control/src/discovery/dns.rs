//! The embedded DNS server of each local task: one dataplane `DnsServer` inside the task's
//! namespace at 127.0.0.11:53, and a resolv.conf the task sees that names it. Tasks on the same
//! set of networks share one zone, rebuilt whenever the endpoint table or the services change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataplane::dns::{DnsServer, DnsStats, Records, Upstream, Zone, ZoneHandle, EMBEDDED_DNS_ADDR};

use super::zone::records;
use super::SeenEndpoint;
use crate::rpc::messages::Assignments;

/// What every task's /etc/resolv.conf says. `ndots:0` sends a bare service name to the server
/// as is, instead of trying search domains first.
const RESOLV_CONF: &str = "nameserver 127.0.0.11\noptions ndots:0\n";

/// How often a task's server's rate-limit counter is looked at for the log.
const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One task's server and the networks it sees.
struct TaskDns {
    server: DnsServer,
    networks: Vec<String>,
    /// Logs the queries its rate limit drops; aborted with the server.
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for TaskDns {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Logs, at most every [`LIMIT_LOG_INTERVAL`], how many of a task's queries its server dropped
/// for going over the per-client rate: a flooding task shows in meshd's log, once per interval.
async fn log_rate_limited(task_id: String, stats: DnsStats) {
    let mut logged = 0;
    loop {
        tokio::time::sleep(LIMIT_LOG_INTERVAL).await;
        let limited = stats.rate_limited();
        if limited > logged {
            tracing::warn!(
                task = %task_id,
                dropped = limited - logged,
                total = limited,
                "DNS queries over the per-client rate dropped (a task flooding its DNS server)"
            );
            logged = limited;
        }
    }
}

/// A zone shared by every task on one set of networks, with the records it was built from.
struct SharedZone {
    handle: ZoneHandle,
    records: Records,
}

/// The DNS servers of this host's tasks.
pub(super) struct TaskServers {
    dir: PathBuf,
    upstream: Arc<Upstream>,
    servers: Mutex<HashMap<String, TaskDns>>,
    /// By sorted network IDs.
    zones: Mutex<HashMap<Vec<String>, SharedZone>>,
}

impl TaskServers {
    pub(super) fn new(dir: PathBuf, upstream: Arc<Upstream>) -> Self {
        TaskServers {
            dir,
            upstream,
            servers: Mutex::new(HashMap::new()),
            zones: Mutex::new(HashMap::new()),
        }
    }

    fn resolv_conf(&self, task_id: &str) -> PathBuf {
        self.dir.join(format!("{task_id}.resolv.conf"))
    }

    /// Starts the task's server in its namespace (once) and returns the resolv.conf the task
    /// must see. The namespace's loopback is up: the agent created it that way.
    pub(super) async fn serve(
        &self,
        task_id: &str,
        netns: &Path,
        mut networks: Vec<String>,
    ) -> Result<PathBuf, String> {
        let file = self.resolv_conf(task_id);
        if self.servers.lock().expect("dns lock").contains_key(task_id) {
            return Ok(file);
        }
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&file, RESOLV_CONF))
            .map_err(|e| format!("writing {}: {e}", file.display()))?;
        networks.sort();
        let handle = self.zone_for(&networks);
        let server =
            DnsServer::start_in_netns(netns, EMBEDDED_DNS_ADDR, handle, Arc::clone(&self.upstream))
                .await
                .map_err(|e| format!("starting the task's DNS server: {e}"))?;
        let watcher = tokio::spawn(log_rate_limited(task_id.to_string(), server.stats()));
        self.servers.lock().expect("dns lock").insert(
            task_id.to_string(),
            TaskDns {
                server,
                networks,
                watcher,
            },
        );
        Ok(file)
    }

    /// Stops the task's server and forgets its resolv.conf.
    pub(super) fn stop(&self, task_id: &str) {
        let removed = self.servers.lock().expect("dns lock").remove(task_id);
        if let Some(task) = removed {
            let limited = task.server.rate_limited();
            if limited > 0 {
                tracing::info!(task = %task_id, limited, "task's DNS server stopped; queries it dropped over the rate");
            }
            let in_use = self
                .servers
                .lock()
                .expect("dns lock")
                .values()
                .any(|t| t.networks == task.networks);
            if !in_use {
                self.zones.lock().expect("dns lock").remove(&task.networks);
            }
        }
        let _ = std::fs::remove_file(self.resolv_conf(task_id));
    }

    /// The zone for a set of networks, created empty if no task uses it yet; `refresh` fills it.
    fn zone_for(&self, networks: &[String]) -> ZoneHandle {
        let mut zones = self.zones.lock().expect("dns lock");
        zones
            .entry(networks.to_vec())
            .or_insert_with(|| SharedZone {
                handle: ZoneHandle::default(),
                records: Records::default(),
            })
            .handle
            .clone()
    }

    /// Rebuilds every zone whose records changed.
    pub(super) fn refresh(&self, assignments: &Assignments, seen: &[SeenEndpoint]) {
        let mut zones = self.zones.lock().expect("dns lock");
        for (networks, zone) in zones.iter_mut() {
            let fresh = records(networks, assignments, seen);
            if fresh == zone.records {
                continue;
            }
            match Zone::new(fresh.clone()) {
                Ok(built) => {
                    zone.handle.set(built);
                    zone.records = fresh;
                }
                Err(err) => tracing::warn!(error = %err, ?networks, "building a DNS zone"),
            }
        }
    }
}
