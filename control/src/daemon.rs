//! meshd's process lifecycle: claim the state directory, serve the local control socket, and
//! shut down cleanly on SIGTERM or SIGINT. Later subsystems (Raft, dispatcher, agent, dataplane)
//! hang off `run`.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::local_api::{
    decode_request, read_request_line, DaemonStatus, Request, RequestLine, Response,
    MAX_REQUEST_BYTES,
};
use crate::manager::ManagerSettings;
use crate::node::runtime::{ClusterNode, NodeSettings};

/// Errors that stop meshd from starting or running.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The state directory cannot be created or used.
    #[error("preparing state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another meshd holds the state directory.
    #[error(
        "another meshd is using state directory {0}; stop it, or give this one its own --state-dir"
    )]
    AlreadyRunning(PathBuf),
    /// The control socket cannot be bound.
    #[error("binding control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A signal handler cannot be installed.
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The task runtime cannot be used.
    #[error("task runtime: {0}")]
    Runtime(String),
    /// The node's cluster side could not resume.
    #[error("resuming cluster membership: {0}")]
    Cluster(String),
}

/// The runtime the configuration names: containerd when a socket is configured, else the
/// built-in process runtime.
async fn open_runtime(config: &Config) -> Result<Arc<dyn crate::runtime::Runtime>, DaemonError> {
    use crate::config::RuntimeConfig;
    let runtime: Arc<dyn crate::runtime::Runtime> = match &config.runtime {
        RuntimeConfig::Process => Arc::new(
            crate::runtime::process::ProcessRuntime::new(
                config.state_dir.clone(),
                config.image_dir.clone(),
            )
            .map_err(|e| DaemonError::Runtime(e.to_string()))?,
        ),
        RuntimeConfig::Containerd { socket, namespace } => Arc::new(
            crate::runtime::containerd::ContainerdRuntime::connect(
                socket,
                namespace,
                &config.state_dir,
            )
            .await
            .map_err(|e| DaemonError::Runtime(e.to_string()))?,
        ),
    };
    Ok(runtime)
}

/// Runs meshd until SIGTERM or SIGINT. With `force_new_cluster`, a manager first turns its
/// state into a one-voter cluster (see `raft::recovery`).
pub async fn run(config: Config, force_new_cluster: bool) -> Result<(), DaemonError> {
    let _state_lock = lock_state_dir(&config.state_dir)?;
    let listener = bind_control_socket(&config.control_socket)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let runtime = open_runtime(&config).await?;
    tracing::info!(runtime = runtime.name(), "task runtime ready");
    let cluster = ClusterNode::new(NodeSettings {
        runtime,
        state_dir: config.state_dir.clone(),
        node_name: config.node_name.clone(),
        listen_addr: config.listen_addr,
        advertise_addr: config.advertise_addr,
        data_path_port: config.data_path_port,
        manager: ManagerSettings {
            down_after: config.node_down_after,
        },
        discovery: crate::discovery::DiscoverySettings {
            gossip_port: config.gossip_port,
            dns_upstreams: config.dns_upstreams.clone(),
        },
        lb_mode: config.lb_mode,
    });
    if force_new_cluster {
        let recovered = cluster.force_new_cluster().map_err(DaemonError::Cluster)?;
        tracing::warn!(
            last_index = recovered.last_index,
            removed_managers = ?recovered.removed_managers,
            "forced a new cluster: this manager is now the only voter; the removed managers must rejoin"
        );
    }
    let cluster = Arc::new(cluster);
    cluster.resume().await.map_err(DaemonError::Cluster)?;
    cluster.supervise();
    cluster.keep_certificate_fresh();
    let shared = Arc::new(Shared {
        config,
        started: Instant::now(),
        cluster,
    });
    tracing::info!(
        node = %shared.config.node_name,
        listen = %shared.config.listen_addr,
        data_path_port = shared.config.data_path_port,
        state_dir = %shared.config.state_dir.display(),
        "meshd started"
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        if let Err(err) = serve(stream, &shared).await {
                            tracing::debug!(error = %err, "control connection ended");
                        }
                    });
                }
                Err(err) => tracing::warn!(error = %err, "accepting a control connection"),
            },
            _ = terminate.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = interrupt.recv() => { tracing::info!("SIGINT: shutting down"); break; }
        }
    }
    drop(listener);
    let _ = fs::remove_file(&shared.config.control_socket);
    tracing::info!("meshd stopped");
    Ok(())
}

struct Shared {
    config: Config,
    started: Instant,
    cluster: Arc<ClusterNode>,
}

/// Holds the state directory's lock for meshd's lifetime.
struct StateLock {
    _file: File,
}

fn lock_state_dir(dir: &Path) -> Result<StateLock, DaemonError> {
    let state_error = |source| DaemonError::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(state_error)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(state_error)?;
    let file = File::create(dir.join("meshd.lock")).map_err(state_error)?;
    // A meshd killed a moment ago may still be exiting (releasing its BPF links takes the
    // kernel's rtnl lock, seconds on a loaded host): give it that long before refusing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // SAFETY: flock on a descriptor we own; non-blocking, touches no memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(StateLock { _file: file });
        }
        if std::time::Instant::now() >= deadline {
            return Err(DaemonError::AlreadyRunning(dir.to_path_buf()));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn bind_control_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    let socket_error = |source| DaemonError::Socket {
        path: path.to_path_buf(),
        source,
    };
    // We hold the state lock, so a socket file left here belongs to a meshd that died.
    match fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed stale control socket"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(socket_error(err)),
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(socket_error)?;
    }
    let listener = UnixListener::bind(path).map_err(socket_error)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(socket_error)?;
    Ok(listener)
}

async fn serve(stream: UnixStream, shared: &Shared) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        // Each request line is bounded on its own, so a client can make meshd buffer at most
        // MAX_REQUEST_BYTES, however long it keeps the connection.
        let oversized = match read_request_line(&mut reader, &mut line).await? {
            RequestLine::Closed => return Ok(()),
            RequestLine::TooLarge => true,
            RequestLine::Request => false,
        };
        if oversized {
            tracing::warn!(
                limit = MAX_REQUEST_BYTES,
                "oversized request on the control socket refused"
            );
        }
        let response = match decode_request(&line) {
            Ok(request) => handle(request, shared).await,
            Err(message) => Response::Error { message },
        };
        let mut out = serde_json::to_string(&response).expect("responses serialize");
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
        if oversized {
            // The rest of the oversized line is still unread: there is no resynchronizing.
            return Ok(());
        }
    }
}

async fn handle(request: Request, shared: &Shared) -> Response {
    match request {
        Request::SwarmInit(options) => match shared.cluster.init(options).await {
            Ok(initialized) => Response::Initialized(initialized),
            Err(message) => Response::Error { message },
        },
        Request::SwarmJoin(options) => match shared.cluster.join(options).await {
            Ok(membership) => Response::Joined(membership),
            Err(message) => Response::Error { message },
        },
        Request::SwarmLeave { force } => match shared.cluster.leave(force).await {
            Ok(()) => Response::Left,
            Err(message) => Response::Error { message },
        },
        Request::Cluster { request } => Response::Cluster {
            answer: shared.cluster.api(request).await,
        },
        Request::Status => {
            let config = &shared.config;
            Response::Status(DaemonStatus {
                node_name: config.node_name.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                uptime_secs: shared.started.elapsed().as_secs(),
                listen_addr: config.listen_addr.to_string(),
                advertise_addr: config.advertise_addr.map(|a| a.to_string()),
                data_path_port: config.data_path_port,
                gossip_port: config.gossip_port,
                state_dir: config.state_dir.clone(),
                membership: shared.cluster.membership().await,
                gossip: shared.cluster.gossip_view(),
            })
        }
    }
}
