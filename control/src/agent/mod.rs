//! The agent on every node: it reports its tasks to the leader's dispatcher twice a second,
//! takes the assignments in the answer, and starts, stops and removes tasks through the
//! runtime to match. Losing the managers changes nothing locally: running tasks keep running.
//!
//! After a restart (of meshd, or of the cluster side after a role change) the runtime still
//! holds the tasks the previous agent started; the first answer from the leader decides which
//! are adopted and which are stopped.

mod departed;
mod describe;
pub use describe::describe_node;
mod diag;
mod guard;
mod health;
mod network;
mod task;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::node::heartbeat::LeaderClient;
use crate::rpc::messages::{AgentReport, Assignment, Assignments, LogRecord, Request, Response};
use crate::runtime::{ExitStatus, LogLine, Runtime};
use crate::service::{DesiredState, TaskReport, TaskState};
use crate::store::NodeId;

/// How often the agent reports when nothing happens.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// Lines waiting to be shipped; older ones are dropped past this (the leader is away).
const MAX_QUEUED_LINES: usize = 20_000;
/// Lines shipped per report, so one report stays small.
const MAX_LINES_PER_REPORT: usize = 2_000;
/// How long the dispatcher may hold a watch for new work.
const WATCH_WAIT: Duration = Duration::from_millis(1500);
/// How often an unchanged endpoint view is shipped anyway.
const VIEW_REFRESH: Duration = Duration::from_secs(5);
/// How long a stopped task has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a running task on a network drains before it is sent SIGTERM: it is out of every
/// load balancer's table for new flows while the flows it has finish. Gossip's push spreads
/// the change in milliseconds, but a host the push missed learns it from its next
/// anti-entropy exchange, at most 3.75 s later with the default tuning (3 s, jittered up to
/// 1.25×); a shorter drain let such a host send new flows to a task that had already exited
/// (3 refused connections in one rolling update in CI, right after a host restart).
pub const DRAIN_PERIOD: Duration = Duration::from_secs(5);

/// What the agent knows of one of its tasks.
#[derive(Clone, Debug)]
struct LocalTask {
    state: TaskState,
    error: Option<String>,
    exit: Option<ExitStatus>,
    /// A stop was asked for; an exit now counts as Shutdown.
    stopping: bool,
    /// Lines read so far (the next line is numbered one more).
    lines: u64,
    /// Its health, when its service has a health check and it runs.
    health: Option<crate::service::health::TaskHealth>,
    /// Why its health check failed, once it is stopped for it.
    unhealthy: Option<String>,
}

/// The parts of the node's networking an agent uses, which outlive it.
pub struct AgentNetwork {
    /// Gossip and the tasks' DNS servers.
    pub discovery: Arc<crate::discovery::Discovery>,
    /// The gossip port, as the node describes itself.
    pub gossip_port: u16,
    /// The routing mesh and service VIPs.
    pub balancer: Arc<crate::ingress::Balancer>,
}

/// The node's agent.
pub struct Agent {
    node_id: NodeId,
    runtime: Arc<dyn Runtime>,
    netns_dir: PathBuf,
    /// The node's state directory (tasks' secrets live under `secrets/`).
    state_dir: PathBuf,
    leader: Arc<LeaderClient>,
    tasks: Mutex<HashMap<String, LocalTask>>,
    /// Task IDs the runtime held when this agent started, not yet adopted or stopped.
    leftovers: Mutex<Option<HashSet<String>>>,
    outbox: Mutex<VecDeque<LogRecord>>,
    wake: Notify,
    describer: describe::Describer,
    /// This node's underlay address (its VTEP), when it has an IPv4 one.
    underlay_ip: Option<std::net::Ipv4Addr>,
    overlay: dataplane::overlay::Overlay,
    /// Gossip and the tasks' DNS servers.
    discovery: Arc<crate::discovery::Discovery>,
    /// A local task started, is stopping or ended: its endpoints change.
    endpoints_changed: Notify,
    /// One overlay convergence at a time.
    converging: tokio::sync::Mutex<()>,
    /// One balancer convergence at a time.
    balancing: tokio::sync::Mutex<()>,
    /// The overlay plan last converged without error.
    last_plan: Mutex<Option<dataplane::overlay::HostOverlay>>,
    /// Kernel drift the overlay repaired (milliseconds since the epoch, what was redone).
    drift: Mutex<VecDeque<(u64, dataplane::overlay::Change)>>,
    /// The responder answering diagnostics' VXLAN probes, with the port it answers on.
    probe_responder: Mutex<Option<(u16, dataplane::probe::ProbeResponder)>>,
    /// The underlay addresses it answers: the cluster's nodes.
    probe_peers: Arc<std::sync::RwLock<HashSet<std::net::Ipv4Addr>>>,
    /// Diagnosis jobs started, by ID.
    diag_started: Mutex<HashSet<String>>,
    /// Digest of the endpoint view last shipped, and when.
    view_shipped: Mutex<Option<(u64, std::time::Instant)>>,
    /// The dispatcher's last answer, which the overlay is built from.
    last: Mutex<Option<Arc<Assignments>>>,
    reconciling: tokio::sync::Mutex<()>,
    /// The routing mesh and service VIPs.
    balancer: Arc<crate::ingress::Balancer>,
    /// The underlay interface, its MTU: found once, at the first convergence.
    underlay: Mutex<Option<crate::ingress::plan::Underlay>>,
    /// The data-path port's allow-list.
    guard: Arc<Mutex<guard::GuardState>>,
}

impl Agent {
    /// An agent for `node_id`, keeping task namespaces under `state_dir/netns` and overlay
    /// networks under `state_dir/overlay`.
    pub fn new(
        node_id: NodeId,
        runtime: Arc<dyn Runtime>,
        state_dir: &std::path::Path,
        leader: Arc<LeaderClient>,
        underlay_ip: Option<std::net::Ipv4Addr>,
        network: AgentNetwork,
    ) -> Arc<Agent> {
        let AgentNetwork {
            discovery,
            gossip_port,
            balancer,
        } = network;
        Arc::new(Agent {
            balancer,
            underlay: Mutex::new(None),
            guard: Arc::default(),
            node_id,
            underlay_ip,
            discovery,
            endpoints_changed: Notify::new(),
            converging: tokio::sync::Mutex::new(()),
            balancing: tokio::sync::Mutex::new(()),
            view_shipped: Mutex::new(None),
            last_plan: Mutex::new(None),
            drift: Mutex::new(VecDeque::new()),
            diag_started: Mutex::new(HashSet::new()),
            probe_responder: Mutex::new(None),
            probe_peers: Arc::new(std::sync::RwLock::new(HashSet::new())),
            overlay: dataplane::overlay::Overlay::new(state_dir.join("overlay")),
            last: Mutex::new(None),
            reconciling: tokio::sync::Mutex::new(()),
            describer: describe::Describer::new(Arc::clone(&runtime), underlay_ip, gossip_port),
            runtime,
            netns_dir: state_dir.join("netns"),
            state_dir: state_dir.to_path_buf(),
            leader,
            tasks: Mutex::new(HashMap::new()),
            leftovers: Mutex::new(None),
            outbox: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
        })
    }

    /// Reports and reconciles until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        if let Err(err) = std::fs::create_dir_all(&self.netns_dir) {
            tracing::error!(error = %err, dir = %self.netns_dir.display(), "creating the task namespace directory; tasks cannot start");
        }
        match self.runtime.list().await {
            Ok(ids) => {
                *self.leftovers.lock().expect("agent lock") = Some(ids.into_iter().collect())
            }
            Err(err) => tracing::warn!(error = %err, "listing the runtime's tasks"),
        }
        let (lines_tx, lines_rx) = mpsc::unbounded_channel();
        tokio::spawn(Arc::clone(&self).collect_lines(lines_rx));
        let watcher = tokio::spawn(Arc::clone(&self).watch_work(lines_tx.clone()));
        let _stop_watcher = AbortOnDrop(watcher);
        let follower = tokio::spawn(Arc::clone(&self).follow_endpoints());
        let _stop_follower = AbortOnDrop(follower);
        loop {
            let report = self.report().await;
            let shipped = report.logs.len();
            match self
                .leader
                .call(&Request::Agent(report), Duration::from_secs(3))
                .await
            {
                Ok(Response::Assignments(assignments)) => {
                    self.leader.acknowledged();
                    self.outbox.lock().expect("agent lock").drain(..shipped);
                    self.reconcile(assignments, &lines_tx).await;
                }
                Ok(Response::Refused(why)) => tracing::warn!(%why, "the dispatcher refused"),
                Ok(other) => tracing::debug!(answer = ?other, "unexpected dispatcher answer"),
                // Keep every task as it is: workloads outlive the managers.
                Err(err) => tracing::debug!(error = %err, "reporting to the dispatcher"),
            }
            tokio::select! {
                _ = tokio::time::sleep(REPORT_INTERVAL) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Waits at the dispatcher for this node's work to change, and acts on it at once; the
    /// periodic reports carry states and output.
    async fn watch_work(self: Arc<Self>, lines: mpsc::UnboundedSender<LogLine>) {
        let client = self.leader.sibling().await;
        let mut known = 0;
        loop {
            let report = AgentReport {
                node_id: self.node_id,
                description: self.describer.describe().await,
                tasks: Vec::new(),
                logs: Vec::new(),
                known,
                wait_ms: WATCH_WAIT.as_millis() as u64,
                endpoint_view: None,
            };
            match client
                .call(&Request::Agent(report), WATCH_WAIT + Duration::from_secs(3))
                .await
            {
                Ok(Response::Assignments(assignments)) => {
                    known = assignments.fingerprint;
                    self.reconcile(assignments, &lines).await;
                }
                _ => {
                    known = 0;
                    tokio::time::sleep(REPORT_INTERVAL).await;
                }
            }
        }
    }

    async fn report(&self) -> AgentReport {
        let description = self.describer.describe().await;
        let tasks = self
            .tasks
            .lock()
            .expect("agent lock")
            .iter()
            .map(|(id, t)| TaskReport {
                task_id: id.clone(),
                node_id: self.node_id,
                state: t.state,
                error: t.error.clone(),
                exit: t.exit,
                at_ms: 0,
                health: t.health,
            })
            .collect();
        let logs = self
            .outbox
            .lock()
            .expect("agent lock")
            .iter()
            .take(MAX_LINES_PER_REPORT)
            .cloned()
            .collect();
        AgentReport {
            node_id: self.node_id,
            description,
            tasks,
            logs,
            known: 0,
            wait_ms: 0,
            endpoint_view: self.endpoint_view_to_ship(),
        }
    }

    /// The gossip view of the endpoint table when it differs from the one last shipped, or
    /// when that was long ago (a new leader has none).
    fn endpoint_view_to_ship(&self) -> Option<Vec<crate::discovery::SeenEndpoint>> {
        use std::hash::{Hash, Hasher};
        let mut view = self.discovery.endpoints();
        view.sort_by(|a, b| (&a.network_id, &a.task_id).cmp(&(&b.network_id, &b.task_id)));
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        view.hash(&mut hasher);
        let digest = hasher.finish();
        let mut shipped = self.view_shipped.lock().expect("agent lock");
        let fresh = shipped.is_some_and(|(d, at)| d == digest && at.elapsed() < VIEW_REFRESH);
        if fresh {
            return None;
        }
        *shipped = Some((digest, std::time::Instant::now()));
        Some(view)
    }

    /// Makes the local tasks match the assignments.
    async fn reconcile(
        self: &Arc<Self>,
        assignments: Box<Assignments>,
        lines: &mpsc::UnboundedSender<LogLine>,
    ) {
        // The watcher and the periodic reports both bring assignments: one reconcile at a time.
        let _one = self.reconciling.lock().await;
        // Tasks the managers replaced while this node was out of reach drain like any other.
        let previous = self.last.lock().expect("agent lock").clone();
        let assignments = departed::keep_departed(*assignments, previous.as_deref(), |id| {
            self.tasks
                .lock()
                .expect("agent lock")
                .get(id)
                .is_some_and(|t| !t.state.is_terminal())
        });
        let assignments: Arc<Assignments> = Arc::new(assignments);
        *self.last.lock().expect("agent lock") = Some(Arc::clone(&assignments));
        let wanted: HashMap<String, Assignment> = assignments
            .tasks
            .iter()
            .map(|a| (a.task.id.clone(), a.clone()))
            .collect();
        let leftovers = self.leftovers.lock().expect("agent lock").take();
        if let Some(leftovers) = leftovers {
            for id in leftovers {
                match wanted.get(&id) {
                    Some(a) if a.task.desired == DesiredState::Running => {
                        self.track(&id, TaskState::Running);
                        if a.spec.as_ref().is_some_and(|s| s.healthcheck.is_some()) {
                            self.expect_health(&id);
                        }
                        tokio::spawn(Arc::clone(self).adopt(a.task.clone(), lines.clone()));
                    }
                    _ => {
                        self.track(&id, TaskState::Running);
                        self.mark_stopping(&id);
                        tokio::spawn(Arc::clone(self).stop_leftover(id));
                    }
                }
            }
        }
        for (id, assignment) in &wanted {
            let known = self.tasks.lock().expect("agent lock").contains_key(id);
            if known || assignment.task.desired != DesiredState::Running {
                continue;
            }
            if assignment.task.state >= TaskState::Preparing && !assignment.task.state.is_terminal()
            {
                // It ran here before meshd restarted, and the runtime no longer has it.
                let mut tasks = self.tasks.lock().expect("agent lock");
                tasks.insert(
                    id.clone(),
                    LocalTask {
                        state: TaskState::Failed,
                        error: Some("the task was gone when meshd restarted on this node".into()),
                        exit: None,
                        stopping: false,
                        lines: 0,
                        health: None,
                        unhealthy: None,
                    },
                );
                continue;
            }
            let Some(spec) = assignment.spec.clone() else {
                continue;
            };
            if assignment.task.state < TaskState::Assigned {
                // Still waiting for an address on one of its networks.
                continue;
            }
            self.track(id, TaskState::Preparing);
            tokio::spawn(Arc::clone(self).start(
                assignment.task.clone(),
                spec,
                assignment.secrets.clone(),
                lines.clone(),
            ));
        }
        let local: Vec<(String, LocalTask)> = self
            .tasks
            .lock()
            .expect("agent lock")
            .iter()
            .map(|(id, t)| (id.clone(), t.clone()))
            .collect();
        for (id, task) in local {
            let keep = wanted
                .get(&id)
                .is_some_and(|a| a.task.desired == DesiredState::Running);
            if keep {
                continue;
            }
            if !task.state.is_terminal() {
                if !task.stopping {
                    self.mark_stopping(&id);
                    tokio::spawn(Arc::clone(self).stop(id));
                }
            } else if !wanted.contains_key(&id) {
                // The managers have the final state: free what the task held.
                self.tasks.lock().expect("agent lock").remove(&id);
                tokio::spawn(Arc::clone(self).remove(id));
            }
        }
        self.start_diag_jobs(&assignments);
        let peers = assignments
            .gossip
            .peers
            .iter()
            .filter_map(|(_, addr)| match addr.ip() {
                std::net::IpAddr::V4(ip) => Some(ip),
                std::net::IpAddr::V6(_) => None,
            });
        *self.probe_peers.write().expect("agent lock") = peers.collect();
        // After the tasks are tracked: gossip's first publication from this node replaces
        // everything it published before a restart, so it must list the adopted tasks.
        if let Some(ip) = self.underlay_ip {
            self.discovery.configure(ip, &assignments);
        }
        self.endpoints_changed.notify_one();
        self.apply_overlay().await;
    }

    fn track(&self, id: &str, state: TaskState) {
        self.tasks.lock().expect("agent lock").insert(
            id.to_string(),
            LocalTask {
                state,
                error: None,
                exit: None,
                stopping: false,
                // Numbered from the clock, so lines after an adoption sort after the ones
                // the previous agent shipped.
                lines: crate::manager::orchestrate::now_ms() * 1000,
                health: None,
                unhealthy: None,
            },
        );
    }

    /// A task about to stop leaves the endpoint table first.
    fn mark_stopping(&self, id: &str) {
        if let Some(task) = self.tasks.lock().expect("agent lock").get_mut(id) {
            task.stopping = true;
        }
        self.endpoints_changed.notify_one();
    }

    /// Records a state and reports it at once.
    fn set_state(
        &self,
        id: &str,
        state: TaskState,
        error: Option<String>,
        exit: Option<ExitStatus>,
    ) {
        if let Some(task) = self.tasks.lock().expect("agent lock").get_mut(id) {
            task.state = state;
            task.error = error;
            task.exit = exit;
        }
        self.wake.notify_one();
        self.endpoints_changed.notify_one();
    }

    fn is_stopping(&self, id: &str) -> bool {
        self.tasks
            .lock()
            .expect("agent lock")
            .get(id)
            .is_some_and(|t| t.stopping)
    }

    async fn collect_lines(self: Arc<Self>, mut lines: mpsc::UnboundedReceiver<LogLine>) {
        while let Some(line) = lines.recv().await {
            let seq = {
                let mut tasks = self.tasks.lock().expect("agent lock");
                let Some(task) = tasks.get_mut(&line.task_id) else {
                    continue;
                };
                task.lines += 1;
                task.lines
            };
            let mut outbox = self.outbox.lock().expect("agent lock");
            if outbox.len() == MAX_QUEUED_LINES {
                outbox.pop_front();
            }
            outbox.push_back(LogRecord {
                task_id: line.task_id,
                seq,
                stream: line.stream,
                line: line.line,
                at_ms: crate::manager::orchestrate::now_ms(),
            });
        }
    }
}

/// Aborts a task when dropped (the watcher ends with the agent's loop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What leaving the cluster does to the node's workloads: every task the runtime holds is
/// stopped and removed, with its namespace, and the overlay networks go.
pub async fn clear_node(runtime: &dyn Runtime, state_dir: &std::path::Path) {
    match runtime.list().await {
        Ok(ids) => {
            for id in ids {
                if let Err(err) = runtime.stop(&id, STOP_GRACE).await {
                    tracing::warn!(task = %id, error = %err, "stopping a task on leave");
                }
                if let Err(err) = runtime.remove(&id).await {
                    tracing::warn!(task = %id, error = %err, "removing a task on leave");
                }
                let netns = state_dir.join("netns").join(&id);
                if let Err(err) = crate::runtime::netns::remove(&netns) {
                    tracing::warn!(task = %id, error = %err, "removing a task namespace on leave");
                }
            }
        }
        Err(err) => tracing::warn!(error = %err, "listing tasks on leave"),
    }
    // After the tasks: nothing holds their secrets any more.
    crate::secrets::files::clear(state_dir);
    let overlay = dataplane::overlay::Overlay::new(state_dir.join("overlay"));
    if let Err(err) = overlay.clear().await {
        tracing::warn!(error = %err, "removing the overlay networks on leave");
    }
    // The vxlan devices are gone: nothing is left for the allow-list to guard.
    if tokio::task::spawn_blocking(guard::remove).await.is_err() {
        tracing::warn!("removing the data-path allow-list on leave panicked");
    }
}
