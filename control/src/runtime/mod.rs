//! Running a task's process: one trait, two runtimes. The built-in process runtime (the
//! default) runs the command in its own mount and pid namespaces with a cgroup; containerd runs
//! an image through its gRPC API. Both join the network namespace the agent prepared, set the
//! `MESH_*` variables and deliver the task's output line by line.

pub mod cgroup;
pub mod containerd;
pub mod exec;
pub mod image;
pub mod netns;
pub mod process;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Everything a runtime needs to start one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    /// Cluster-wide task ID (25 lowercase alphanumerics); unique, usable in paths and names.
    pub task_id: String,
    /// The slot of a replicated service (0 for a global one).
    pub slot: u64,
    /// The service's name.
    pub service_name: String,
    /// This node's ID (16 hex digits).
    pub node_id: String,
    /// Image name as given to `service create` (e.g. `mesh-test:latest`).
    pub image: String,
    /// Command and arguments; empty means the image's own entrypoint and command.
    pub command: Vec<String>,
    /// Environment from `--env`, as `KEY=VALUE`, before the `MESH_*` variables are added.
    pub env: Vec<String>,
    /// CPU and memory ceilings; zero means no limit.
    pub limits: Limits,
    /// The network namespace the task must join (a bind-mounted nsfs file).
    pub netns: PathBuf,
    /// A file the task sees as /etc/resolv.conf (pointing at the embedded DNS server), or
    /// `None` to leave the image's own.
    pub resolv_conf: Option<PathBuf>,
    /// Files bound read-only into the task (its secrets and configs).
    pub files: Vec<FileMount>,
}

/// A host file the task sees, read-only, at an absolute path of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMount {
    /// The file on the host (in the agent's per-task tmpfs).
    pub source: PathBuf,
    /// The absolute path inside the task.
    pub target: String,
}

impl TaskSpec {
    /// The environment a task sees: its own `--env`, then `MESH_TASK_ID`, `MESH_TASK_SLOT`,
    /// `MESH_SERVICE_NAME` and `MESH_NODE_ID` (which `--env` cannot override).
    pub fn environment(&self) -> Vec<String> {
        let mesh = [
            ("MESH_TASK_ID", self.task_id.clone()),
            ("MESH_TASK_SLOT", self.slot.to_string()),
            ("MESH_SERVICE_NAME", self.service_name.clone()),
            ("MESH_NODE_ID", self.node_id.clone()),
        ];
        self.env
            .iter()
            .filter(|kv| !mesh.iter().any(|(k, _)| kv.split('=').next() == Some(k)))
            .cloned()
            .chain(mesh.iter().map(|(k, v)| format!("{k}={v}")))
            .collect()
    }
}

/// Resource ceilings of one task; zero means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Billionths of a CPU (1e9 = one core), enforced as a CFS quota.
    pub nano_cpus: u64,
    /// Bytes of memory.
    pub memory_bytes: u64,
}

/// How a task's main process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It ended while meshd was not watching (adopted after a restart); the code is lost.
    Unknown,
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "killed by signal {signal}"),
            ExitStatus::Unknown => write!(f, "exited while meshd was down (code unknown)"),
        }
    }
}

/// Which output stream a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line a task wrote, without its newline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// The task that wrote it.
    pub task_id: String,
    /// Which stream.
    pub stream: Stream,
    /// The text (invalid UTF-8 replaced).
    pub line: String,
}

/// Where a runtime sends the lines tasks write.
pub type LogSender = mpsc::UnboundedSender<LogLine>;

/// A task that is running: resolves once with how it ended.
pub struct Started {
    /// Fires once the task's main process has exited.
    pub exited: oneshot::Receiver<ExitStatus>,
}

/// How a command run inside a task ([`Runtime::exec`]) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it exited; None when it ran past its timeout and was killed.
    pub exit: Option<ExitStatus>,
    /// The end of what it wrote to stdout then stderr (at most [`exec::MAX_OUTPUT`] bytes).
    pub output: String,
}

/// Why a runtime could not do what was asked. Messages say what to do.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The image is not in this node's image store.
    #[error("image {image:?} is not on this node: {fix}")]
    NoSuchImage { image: String, fix: String },
    /// The runtime's daemon or the system refused.
    #[error("{0}")]
    Failed(String),
}

/// A way to run tasks.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// `process` or `containerd`, as `node inspect` shows it.
    fn name(&self) -> &'static str;

    /// The images this node can run, as `name:tag`. Managers refuse a service whose image no
    /// node has.
    async fn images(&self) -> Result<Vec<String>, RuntimeError>;

    /// Starts a task and returns once its process runs. Output lines go to `logs` until the
    /// task exits.
    async fn start(&self, spec: &TaskSpec, logs: LogSender) -> Result<Started, RuntimeError>;

    /// Stops a task: SIGTERM, then SIGKILL after `grace`. Returns once it has exited. Stopping
    /// a task that already exited is not an error.
    async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Frees what the task held (cgroups, container, snapshot, log pipes) after it exited.
    /// Removing an unknown task is not an error.
    async fn remove(&self, task_id: &str) -> Result<(), RuntimeError>;

    /// Task IDs this runtime still has, running or not, e.g. after meshd restarted.
    async fn list(&self) -> Result<Vec<String>, RuntimeError>;

    /// Watches a task started by an earlier meshd: resolves when it exits (at once if it has).
    /// Its output from now on goes to `logs`, where the runtime can still reach it.
    async fn adopt(&self, task_id: &str, logs: LogSender) -> Result<Started, RuntimeError>;

    /// Runs `argv` inside a running task (its namespaces, root, working directory, cgroup and
    /// environment), as a health check does; kills it once it has run for `timeout`.
    async fn exec(
        &self,
        task_id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_variables_come_last_and_cannot_be_overridden() {
        let spec = TaskSpec {
            task_id: "t1".into(),
            slot: 3,
            service_name: "web".into(),
            node_id: "00000000000000ff".into(),
            image: "mesh-test:latest".into(),
            command: vec![],
            env: vec!["A=1".into(), "MESH_TASK_ID=forged".into()],
            limits: Limits::default(),
            netns: PathBuf::from("/x"),
            resolv_conf: None,
            files: Vec::new(),
        };
        assert_eq!(
            spec.environment(),
            [
                "A=1",
                "MESH_TASK_ID=t1",
                "MESH_TASK_SLOT=3",
                "MESH_SERVICE_NAME=web",
                "MESH_NODE_ID=00000000000000ff"
            ]
        );
    }
}
