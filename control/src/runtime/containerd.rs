//! The containerd runtime: tasks run as containers of a containerd daemon, driven over its gRPC
//! API (containerd-client), one container per task, named by the task ID and labelled
//! `mesh.task=<id>`.
//!
//! Starting a task takes a lease `mesh-<id>` (so nothing it creates is collected while it
//! lives), reads the image's manifest and config from the content store, prepares an overlayfs
//! snapshot keyed by the task ID on the image's unpacked layers (their chain ID), creates the
//! container with runtime `io.containerd.runc.v2` and an OCI spec built here (see `spec`), then
//! creates and starts its task with stdout and stderr on two FIFOs (see `io`). The container
//! joins the network namespace the agent prepared and gets its own pid, ipc, uts and mount
//! namespaces. Its cgroup is `<cgroup parent>/<id>` in every hierarchy: the parent is
//! `/mesh/<namespace>` unless `MESH_CGROUP_PARENT` (which the lab sets) or
//! `with_cgroup_parent` says otherwise.
//!
//! Everything lives in containerd, so a restarted meshd finds its tasks with `list` and
//! watches them again with `adopt`.

mod cgroups;
mod conn;
mod image;
mod io;
mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::snapshots::{
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest,
    GetContainerRequest, GetRequest, KillRequest, ListContainersRequest, ListImagesRequest,
    StartRequest, WaitRequest,
};
use containerd_client::tonic::{self, Code};
use containerd_client::types::v1::Status as ProcessStatus;
use containerd_client::types::Mount;
use tokio::sync::oneshot;

pub use spec::{cgroups_path, exit_status, CPU_PERIOD_US};

use self::conn::{error_chain, gone, Connection};
use self::io::{Fifos, Readers};
use self::spec::{hostname, merge_env, process_args, runtime_spec, SpecInput};
use super::{ExecOutput, ExitStatus, LogSender, Runtime, RuntimeError, Started, TaskSpec};

/// The environment variable that moves task cgroups under another parent; the lab sets it to
/// its host's cgroup so the host's power cut and teardown reach the tasks too.
pub const CGROUP_PARENT_ENV: &str = "MESH_CGROUP_PARENT";
/// The label every Mesh container carries, with the task ID as value.
pub const TASK_LABEL: &str = "mesh.task";
/// The shim that runs containers.
const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// The snapshotter task filesystems are prepared with.
const SNAPSHOTTER: &str = "overlayfs";
/// The type URL containerd expects on an OCI runtime spec.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// How long containerd may take to answer at connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a task may take to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs tasks as containerd containers.
pub struct ContainerdRuntime {
    conn: Connection,
    io_dir: PathBuf,
    cgroup_parent: String,
}

impl ContainerdRuntime {
    /// Connects to containerd at `socket` and checks it answers. Containers live in containerd
    /// namespace `namespace`; the tasks' output FIFOs under `<state_dir>/containerd-io`.
    pub async fn connect(
        socket: &Path,
        namespace: &str,
        state_dir: &Path,
    ) -> Result<Self, RuntimeError> {
        let unreachable = |detail: String| {
            RuntimeError::Failed(format!(
                "cannot reach containerd at {}: {detail}; start containerd or fix `containerd_socket`",
                socket.display()
            ))
        };
        if namespace
            .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
            .is_err()
        {
            return Err(RuntimeError::Failed(format!(
                "{namespace:?} is not a valid containerd namespace"
            )));
        }
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(socket))
            .await
            .map_err(|_| unreachable("no answer within 5 s".into()))?
            .map_err(|err| unreachable(error_chain(&err)))?;
        let conn = Connection {
            channel,
            socket: socket.to_path_buf(),
            namespace: namespace.to_string(),
        };
        tokio::time::timeout(CONNECT_TIMEOUT, conn.client().version().version(()))
            .await
            .map_err(|_| unreachable("no answer within 5 s".into()))?
            .map_err(|status| unreachable(status.message().to_string()))?;
        let io_dir = state_dir.join("containerd-io");
        std::fs::create_dir_all(&io_dir)
            .map_err(|err| RuntimeError::Failed(format!("creating {}: {err}", io_dir.display())))?;
        let cgroup_parent = std::env::var(CGROUP_PARENT_ENV)
            .ok()
            .filter(|p| !p.trim_matches('/').is_empty())
            .unwrap_or_else(|| format!("/mesh/{namespace}"));
        Ok(ContainerdRuntime {
            conn,
            io_dir,
            cgroup_parent,
        })
    }

    /// Places task cgroups under `parent` (absolute within each hierarchy) instead.
    pub fn with_cgroup_parent(mut self, parent: &str) -> Self {
        self.cgroup_parent = parent.to_string();
        self
    }

    /// The cgroup path of a task's container, as given to runc.
    pub fn cgroups_path(&self, task_id: &str) -> String {
        cgroups_path(&self.cgroup_parent, task_id)
    }

    /// The task's cgroup directories that exist, one per hierarchy (v1 controllers, v2).
    pub fn cgroup_dirs(&self, task_id: &str) -> Vec<PathBuf> {
        cgroups::dirs(&self.cgroups_path(task_id))
    }

    fn fifos(&self, task_id: &str) -> Fifos {
        Fifos::new(&self.io_dir, task_id)
    }

    /// Creates the container and its task and starts it; `start` cleans up on error.
    async fn create_and_start(
        &self,
        spec: &TaskSpec,
        lease: &str,
        logs: LogSender,
    ) -> Result<Readers, RuntimeError> {
        let conn = &self.conn;
        let id = spec.task_id.as_str();
        let image = image::resolve(conn, &spec.image).await?;
        let args = process_args(&image.config, &spec.command);
        if args.is_empty() {
            return Err(RuntimeError::Failed(format!(
                "image {} has neither an entrypoint nor a command; give the service a command",
                image.name
            )));
        }
        let rootfs = self
            .prepare_snapshot(id, &image.chain_id, &image.name, lease)
            .await?;
        let oci = runtime_spec(&SpecInput {
            args,
            env: merge_env(
                image.config.env.as_deref().unwrap_or_default(),
                &spec.environment(),
            ),
            cwd: image
                .config
                .working_dir
                .clone()
                .filter(|d| d.starts_with('/'))
                .unwrap_or_else(|| "/".into()),
            uid_gid: image.config.uid_gid(),
            hostname: hostname(id),
            netns: spec.netns.clone(),
            resolv_conf: spec.resolv_conf.clone(),
            files: spec.files.clone(),
            cgroups_path: self.cgroups_path(id),
            limits: spec.limits,
        });
        let container = Container {
            id: id.to_string(),
            labels: HashMap::from([(TASK_LABEL.to_string(), id.to_string())]),
            image: image.name.clone(),
            runtime: Some(ContainerRuntime {
                name: RUNC_RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(&oci).expect("a JSON value serializes"),
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        let request = conn.leased(
            CreateContainerRequest {
                container: Some(container),
            },
            lease,
        );
        conn.client()
            .containers()
            .create(request)
            .await
            .map_err(|status| conn.failed(&format!("creating container {id}"), status))?;

        let fifos = self.fifos(id);
        fifos.create().map_err(|err| {
            RuntimeError::Failed(format!("creating FIFOs in {}: {err}", fifos.dir.display()))
        })?;
        let readers = Readers::spawn(&fifos, id, logs);
        let created = conn
            .client()
            .tasks()
            .create(conn.request(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs,
                stdout: fifos.stdout().to_string_lossy().into_owned(),
                stderr: fifos.stderr().to_string_lossy().into_owned(),
                ..Default::default()
            }))
            .await;
        let started = match created {
            Ok(_) => {
                conn.client()
                    .tasks()
                    .start(conn.request(StartRequest {
                        container_id: id.to_string(),
                        exec_id: String::new(),
                    }))
                    .await
            }
            Err(status) => Err(status),
        };
        match started {
            Ok(_) => Ok(readers),
            Err(status) => {
                readers.abort();
                Err(conn.failed(&format!("starting task {id}"), status))
            }
        }
    }

    /// The mounts of the task's writable snapshot on the image's layers, prepared under the
    /// task's lease (or found, when a failed start left it).
    async fn prepare_snapshot(
        &self,
        id: &str,
        chain_id: &str,
        image: &str,
        lease: &str,
    ) -> Result<Vec<Mount>, RuntimeError> {
        let conn = &self.conn;
        let request = conn.leased(
            PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.to_string(),
                parent: chain_id.to_string(),
                labels: HashMap::new(),
            },
            lease,
        );
        match conn.client().snapshots().prepare(request).await {
            Ok(response) => Ok(response.into_inner().mounts),
            Err(status) if status.code() == Code::AlreadyExists => {
                let request = conn.request(MountsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.to_string(),
                });
                conn.client()
                    .snapshots()
                    .mounts(request)
                    .await
                    .map(|r| r.into_inner().mounts)
                    .map_err(|status| conn.failed(&format!("mounts of snapshot {id}"), status))
            }
            Err(status) if status.code() == Code::NotFound => Err(RuntimeError::Failed(format!(
                "image {image} is not unpacked in containerd's {SNAPSHOTTER} snapshotter; import it again with `ctr -a {} -n {} image import <tarball>`, which unpacks it",
                conn.socket.display(),
                conn.namespace
            ))),
            Err(status) => Err(conn.failed(&format!("preparing snapshot {id}"), status)),
        }
    }

    /// Sends `signal` to the task's main process (or all its processes). Whether the task was
    /// still there to signal.
    async fn kill(&self, task_id: &str, signal: u32, all: bool) -> Result<bool, RuntimeError> {
        let request = self.conn.request(KillRequest {
            container_id: task_id.to_string(),
            exec_id: String::new(),
            signal,
            all,
        });
        match self.conn.client().tasks().kill(request).await {
            Ok(_) => Ok(true),
            Err(status) if gone(&status) => Ok(false),
            Err(status) => Err(self
                .conn
                .failed(&format!("signalling task {task_id}"), status)),
        }
    }

    /// Waits up to `limit` for the task to exit; whether it did (or was gone already).
    async fn wait_exit(&self, task_id: &str, limit: Duration) -> Result<bool, RuntimeError> {
        let request = self.conn.request(WaitRequest {
            container_id: task_id.to_string(),
            exec_id: String::new(),
        });
        let mut tasks = self.conn.client().tasks();
        match tokio::time::timeout(limit, tasks.wait(request)).await {
            Err(_) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(status)) if gone(&status) => Ok(true),
            Ok(Err(status)) => Err(self
                .conn
                .failed(&format!("waiting for task {task_id}"), status)),
        }
    }

    /// Watches the task until it exits, then lets the readers drain and reports how it ended.
    fn watch(&self, task_id: &str, readers: Option<Readers>) -> Started {
        let (tx, exited) = oneshot::channel();
        let conn = self.conn.clone();
        let task_id = task_id.to_string();
        tokio::spawn(async move {
            let status = wait_for_exit(&conn, &task_id).await;
            if let Some(readers) = readers {
                readers.finish().await;
            }
            let _ = tx.send(status);
        });
        Started { exited }
    }
}

/// Waits for a task's exit across containerd restarts; a task containerd lost is Unknown.
async fn wait_for_exit(conn: &Connection, task_id: &str) -> ExitStatus {
    let mut warned = false;
    loop {
        let request = conn.request(WaitRequest {
            container_id: task_id.to_string(),
            exec_id: String::new(),
        });
        match conn.client().tasks().wait(request).await {
            Ok(response) => return exit_status(response.into_inner().exit_status),
            Err(status) if status.code() == Code::NotFound => return ExitStatus::Unknown,
            Err(status) => {
                if !warned {
                    tracing::warn!(task = task_id, error = %status.message(), "waiting for a containerd task failed; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The lease holding a task's snapshot and container.
fn lease_id(task_id: &str) -> String {
    format!("mesh-{task_id}")
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    fn name(&self) -> &'static str {
        "containerd"
    }

    async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        let request = self.conn.request(ListImagesRequest { filters: vec![] });
        let response = self
            .conn
            .client()
            .images()
            .list(request)
            .await
            .map_err(|status| self.conn.failed("listing images", status))?;
        let mut names: Vec<String> = response
            .into_inner()
            .images
            .into_iter()
            .map(|image| image.name)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn start(&self, spec: &TaskSpec, logs: LogSender) -> Result<Started, RuntimeError> {
        let conn = &self.conn;
        // A second start of a task that has a container must not clean that container up.
        let request = conn.request(GetContainerRequest {
            id: spec.task_id.clone(),
        });
        match conn.client().containers().get(request).await {
            Ok(_) => {
                return Err(RuntimeError::Failed(format!(
                    "task {} already has a container; adopt it, or remove it first",
                    spec.task_id
                )))
            }
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => {
                return Err(conn.failed(&format!("looking up {}", spec.task_id), status));
            }
        }
        let lease = lease_id(&spec.task_id);
        let request = conn.request(CreateLeaseRequest {
            id: lease.clone(),
            labels: HashMap::new(),
        });
        match conn.client().leases().create(request).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::AlreadyExists => {}
            Err(status) => {
                return Err(conn.failed(&format!("creating lease {lease}"), status));
            }
        }
        match self.create_and_start(spec, &lease, logs).await {
            Ok(readers) => Ok(self.watch(&spec.task_id, Some(readers))),
            Err(err) => {
                if let Err(cleanup) = self.remove(&spec.task_id).await {
                    tracing::warn!(task = %spec.task_id, error = %cleanup, "cleaning up after a failed start");
                }
                Err(err)
            }
        }
    }

    async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        if !self.kill(task_id, libc::SIGTERM as u32, false).await? {
            return Ok(());
        }
        if self.wait_exit(task_id, grace).await? {
            return Ok(());
        }
        if !self.kill(task_id, libc::SIGKILL as u32, true).await? {
            return Ok(());
        }
        if self.wait_exit(task_id, KILL_TIMEOUT).await? {
            return Ok(());
        }
        Err(RuntimeError::Failed(format!(
            "task {task_id} still runs {} s after SIGKILL",
            KILL_TIMEOUT.as_secs()
        )))
    }

    async fn remove(&self, task_id: &str) -> Result<(), RuntimeError> {
        let conn = &self.conn;
        let delete = || async {
            let request = conn.request(DeleteTaskRequest {
                container_id: task_id.to_string(),
            });
            conn.client().tasks().delete(request).await
        };
        match delete().await {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) if status.code() == Code::FailedPrecondition => {
                // Still running: removing means it must go now.
                self.kill(task_id, libc::SIGKILL as u32, true).await?;
                self.wait_exit(task_id, KILL_TIMEOUT).await?;
                match delete().await {
                    Ok(_) => {}
                    Err(status) if status.code() == Code::NotFound => {}
                    Err(status) => {
                        return Err(conn.failed(&format!("deleting task {task_id}"), status))
                    }
                }
            }
            Err(status) => return Err(conn.failed(&format!("deleting task {task_id}"), status)),
        }
        let request = conn.request(DeleteContainerRequest {
            id: task_id.to_string(),
        });
        match conn.client().containers().delete(request).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => {
                return Err(conn.failed(&format!("deleting container {task_id}"), status))
            }
        }
        let request = conn.request(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: task_id.to_string(),
        });
        match conn.client().snapshots().remove(request).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(conn.failed(&format!("removing snapshot {task_id}"), status)),
        }
        let lease = lease_id(task_id);
        let request = conn.request(DeleteLeaseRequest {
            id: lease.clone(),
            sync: false,
        });
        match conn.client().leases().delete(request).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(conn.failed(&format!("deleting lease {lease}"), status)),
        }
        let fifos = self.fifos(task_id);
        fifos.remove().map_err(|err| {
            RuntimeError::Failed(format!("removing {}: {err}", fifos.dir.display()))
        })?;
        let path = self.cgroups_path(task_id);
        tokio::task::spawn_blocking(move || cgroups::remove(&path))
            .await
            .map_err(|err| RuntimeError::Failed(format!("removing cgroups: {err}")))?
            .map_err(|err| RuntimeError::Failed(err.to_string()))
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let request = self.conn.request(ListContainersRequest {
            filters: vec![format!("labels.\"{TASK_LABEL}\"")],
        });
        let response = self
            .conn
            .client()
            .containers()
            .list(request)
            .await
            .map_err(|status| self.conn.failed("listing containers", status))?;
        let mut ids: Vec<String> = response
            .into_inner()
            .containers
            .into_iter()
            .filter_map(|c| c.labels.get(TASK_LABEL).cloned())
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn adopt(&self, task_id: &str, logs: LogSender) -> Result<Started, RuntimeError> {
        let conn = &self.conn;
        let resolved_now = |status: ExitStatus| {
            let (tx, exited) = oneshot::channel();
            let _ = tx.send(status);
            Ok(Started { exited })
        };
        let request = conn.request(GetContainerRequest {
            id: task_id.to_string(),
        });
        match conn.client().containers().get(request).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {
                return resolved_now(ExitStatus::Unknown)
            }
            Err(status) => return Err(conn.failed(&format!("looking up {task_id}"), status)),
        }
        let request = conn.request(GetRequest {
            container_id: task_id.to_string(),
            exec_id: String::new(),
        });
        let process = match conn.client().tasks().get(request).await {
            Ok(response) => response.into_inner().process,
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => return Err(conn.failed(&format!("looking up task {task_id}"), status)),
        };
        let Some(process) = process else {
            return resolved_now(ExitStatus::Unknown);
        };
        if process.status == ProcessStatus::Stopped as i32 {
            return resolved_now(exit_status(process.exit_status));
        }
        let fifos = self.fifos(task_id);
        let readers = fifos.exist().then(|| Readers::spawn(&fifos, task_id, logs));
        Ok(self.watch(task_id, readers))
    }

    /// Joins the container from its init's pid (see [`super::exec`]) rather than through
    /// Tasks.Exec: no FIFOs or exec IDs to manage, the same behaviour as the process runtime,
    /// and it works with any containerd whose shim runs on this host.
    async fn exec(
        &self,
        task_id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let request = self.conn.request(GetRequest {
            container_id: task_id.to_string(),
            exec_id: String::new(),
        });
        let process = match self.conn.client().tasks().get(request).await {
            Ok(response) => response.into_inner().process,
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => {
                return Err(self
                    .conn
                    .failed(&format!("looking up task {task_id}"), status))
            }
        };
        let pid = process
            .filter(|p| p.status == ProcessStatus::Running as i32 && p.pid != 0)
            .map(|p| p.pid as i32)
            .ok_or_else(|| RuntimeError::Failed(format!("task {task_id} is not running")))?;
        let procs = self
            .cgroup_dirs(task_id)
            .into_iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|err| {
                        RuntimeError::Failed(format!("exec: opening {}: {err}", path.display()))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        super::exec::run(pid, procs, argv, timeout).await
    }
}
