//! The built-in process runtime: a task is a process tree in its own mount, pid and uts
//! namespaces, in the network namespace the agent prepared, with a cgroup of its own.
//!
//! Everything about a task lives in `<state_dir>/tasks/<task id>/`:
//!
//! | file | what |
//! | --- | --- |
//! | `cgroups.json` | the task's cgroup directories ([`TaskCgroups`]) |
//! | `stdout`, `stderr` | its output (append-only files, tailed into log lines) |
//! | `pid` | the task's pid in meshd's pid namespace |
//! | `exit` | how it ended (`code N` or `signal N`), written by the intermediate process |
//! | `upper/`, `work/`, `merged/` | its overlayfs when it runs an image |
//!
//! Nothing ties a task to the meshd that started it (no pipes, no parent-death signal), so
//! tasks survive a meshd restart; the next meshd finds them with [`Runtime::list`] and watches
//! them with [`Runtime::adopt`]. The image `host` runs the command on the host's filesystem;
//! any other image is unpacked from `image_dir` (see [`super::image`]) and mounted read-only
//! under a per-task overlay. A command given with the task replaces the image's Cmd and keeps
//! its Entrypoint (like `docker run IMAGE CMD...`).
//!
//! The task is pid 1 of its pid namespace, so (as with `docker run` without `--init`) SIGTERM
//! reaches it only if it installs a handler; `stop` sends SIGKILL after the grace period.

mod launch;
mod watch;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::cgroup::{self, TaskCgroups};
use super::image::{ImageConfig, ImageStore};
use super::{ExecOutput, ExitStatus, LogSender, Runtime, RuntimeError, Started, TaskSpec};
use launch::Launch;
use watch::{read_exit, watch, ExitSource};

/// The image name meaning "no image: run on the host's filesystem".
pub const HOST_IMAGE: &str = "host";
/// How long processes may take to die after SIGKILL before `stop` gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs tasks as namespaced processes; see the module documentation.
pub struct ProcessRuntime {
    state_dir: PathBuf,
    images: ImageStore,
    /// One image unpack at a time, so two tasks of a new image unpack it once.
    unpacking: tokio::sync::Mutex<()>,
}

fn failed(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> RuntimeError {
    move |err| RuntimeError::Failed(format!("{what}: {err}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| RuntimeError::Failed(format!("a runtime worker failed: {err}")))?
}

/// Whether `id` can name a task directory and cgroup: 1 to 64 letters, digits, '-' or '_'.
pub fn valid_task_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ProcessRuntime {
    /// A runtime keeping its state under `state_dir` (tasks, unpacked images) and reading
    /// images from `image_dir`.
    pub fn new(state_dir: PathBuf, image_dir: PathBuf) -> Result<Self, RuntimeError> {
        for dir in [state_dir.join("tasks"), state_dir.join("images")] {
            fs::create_dir_all(&dir).map_err(failed(format!("creating {}", dir.display())))?;
        }
        Ok(ProcessRuntime {
            images: ImageStore::new(image_dir, state_dir.join("images")),
            state_dir,
            unpacking: tokio::sync::Mutex::new(()),
        })
    }

    /// The directory holding everything about task `task_id`.
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.state_dir.join("tasks").join(task_id)
    }

    /// The cgroups recorded for a task, if it has any.
    pub fn task_cgroups(&self, task_id: &str) -> Option<TaskCgroups> {
        let text = fs::read_to_string(self.task_dir(task_id).join("cgroups.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn checked_dir(&self, task_id: &str) -> Result<PathBuf, RuntimeError> {
        if !valid_task_id(task_id) {
            return Err(RuntimeError::Failed(format!(
                "task ID {task_id:?} is not 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        Ok(self.task_dir(task_id))
    }

    fn no_such_image(&self, image: &str) -> RuntimeError {
        RuntimeError::NoSuchImage {
            image: image.to_string(),
            fix: format!(
                "the process runtime runs `{HOST_IMAGE}` or an OCI image layout tarball \
                 (*.tar) in {}; put the image there (scripts/build-test-image.sh builds \
                 mesh-test:latest)",
                self.images.image_dir().display()
            ),
        }
    }

    /// The image's config and unpacked rootfs (`None` for `host`).
    async fn prepare_image(
        &self,
        name: &str,
    ) -> Result<(ImageConfig, Option<PathBuf>), RuntimeError> {
        if name == HOST_IMAGE {
            let config = ImageConfig {
                working_dir: "/".into(),
                ..ImageConfig::default()
            };
            return Ok((config, None));
        }
        let store = self.images.clone();
        let wanted = name.to_string();
        let image = blocking(move || {
            store
                .find(&wanted)
                .map_err(|err| RuntimeError::Failed(format!("reading images: {err}")))
        })
        .await?
        .ok_or_else(|| self.no_such_image(name))?;
        let _one_at_a_time = self.unpacking.lock().await;
        let store = self.images.clone();
        let config = image.config.clone();
        let rootfs = blocking(move || {
            store.rootfs(&image).map_err(|err| {
                RuntimeError::Failed(format!("unpacking image {}: {err}", image.name))
            })
        })
        .await?;
        Ok((config, Some(rootfs)))
    }

    /// Creates the task directory and cgroups and spawns the task; undoes all of it on error.
    async fn launch(
        &self,
        spec: &TaskSpec,
        config: &ImageConfig,
        rootfs: Option<&Path>,
    ) -> Result<tokio::process::Child, RuntimeError> {
        let dir = self.checked_dir(&spec.task_id)?;
        let argv = config.argv(&spec.command);
        if argv.is_empty() {
            return Err(RuntimeError::Failed(format!(
                "task {} has no command: image {} has no Entrypoint or Cmd; give a command",
                spec.task_id, spec.image
            )));
        }
        fs::create_dir(&dir).map_err(|err| match err.kind() {
            io::ErrorKind::AlreadyExists => RuntimeError::Failed(format!(
                "task {} already exists in {}; remove it first",
                spec.task_id,
                dir.display()
            )),
            _ => failed(format!("creating {}", dir.display()))(err),
        })?;
        let result = self.launch_in(spec, config, rootfs, &dir, &argv);
        if let Err(err) = result {
            // Say what the task's side wrote (e.g. which mount failed), then clean up.
            let said = fs::read_to_string(dir.join("stderr")).unwrap_or_default();
            let said = said.lines().last().unwrap_or("").trim().to_string();
            if let Some(cgroups) = self.task_cgroups(&spec.task_id) {
                let _ = cgroups.kill();
                let _ = cgroups.remove();
            }
            let _ = fs::remove_dir_all(&dir);
            return Err(match said.is_empty() {
                true => err,
                false => RuntimeError::Failed(format!("{err} ({said})")),
            });
        }
        result
    }

    fn launch_in(
        &self,
        spec: &TaskSpec,
        config: &ImageConfig,
        rootfs: Option<&Path>,
        dir: &Path,
        argv: &[String],
    ) -> Result<tokio::process::Child, RuntimeError> {
        let task = &spec.task_id;
        let cgroups = cgroup::plan(task, spec.limits)
            .map_err(|err| RuntimeError::Failed(format!("task {task}: {err}")))?;
        // Recorded before creation, so a failed creation is still cleaned up.
        let record = serde_json::to_string(&cgroups).expect("paths serialize");
        let record_path = dir.join("cgroups.json");
        fs::write(&record_path, record)
            .map_err(failed(format!("writing {}", record_path.display())))?;
        cgroups
            .create(spec.limits)
            .map_err(|err| RuntimeError::Failed(format!("task {task}: {err}")))?;
        let env = config.environment(&spec.environment());
        launch::spawn(&Launch {
            task_id: task,
            task_dir: dir,
            argv,
            env: &env,
            rootfs,
            working_dir: &config.working_dir,
            netns: &spec.netns,
            cgroups: &cgroups,
            resolv_conf: spec.resolv_conf.as_deref(),
            files: &spec.files,
        })
    }

    /// The task's pid, if it is still in the task's cgroup (so a reused pid is never hit).
    fn live_pid(dir: &Path, cgroups: &TaskCgroups) -> Option<i32> {
        let pid: i32 = fs::read_to_string(dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        cgroups.pids().contains(&pid).then_some(pid)
    }

    fn signal(dir: &Path, cgroups: &TaskCgroups, signal: i32) {
        if let Some(pid) = Self::live_pid(dir, cgroups) {
            // SAFETY: kill takes no pointers; the pid was just seen in the task's cgroup.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// Waits until no process is left in the task's cgroup; false on timeout.
async fn wait_empty(cgroups: &TaskCgroups, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !cgroups.populated() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        let store = self.images.clone();
        let mut names = blocking(move || {
            store
                .list()
                .map_err(|err| RuntimeError::Failed(format!("listing images: {err}")))
        })
        .await?;
        names.insert(0, HOST_IMAGE.to_string());
        Ok(names)
    }

    async fn start(&self, spec: &TaskSpec, logs: LogSender) -> Result<Started, RuntimeError> {
        self.checked_dir(&spec.task_id)?;
        let (config, rootfs) = self.prepare_image(&spec.image).await?;
        let child = self.launch(spec, &config, rootfs.as_deref()).await?;
        let dir = self.task_dir(&spec.task_id);
        let exited = watch(
            spec.task_id.clone(),
            dir,
            logs,
            false,
            ExitSource::Child(child),
        );
        Ok(Started { exited })
    }

    async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let dir = self.checked_dir(task_id)?;
        let Some(cgroups) = self.task_cgroups(task_id) else {
            return Ok(());
        };
        if !cgroups.populated() {
            return Ok(());
        }
        Self::signal(&dir, &cgroups, libc::SIGTERM);
        if wait_empty(&cgroups, grace).await {
            return Ok(());
        }
        // SIGKILL to the task alone first, so the intermediate records how it ended.
        Self::signal(&dir, &cgroups, libc::SIGKILL);
        if wait_empty(&cgroups, Duration::from_secs(2)).await {
            return Ok(());
        }
        cgroups
            .kill()
            .map_err(|err| RuntimeError::Failed(format!("killing task {task_id}: {err}")))?;
        if wait_empty(&cgroups, KILL_TIMEOUT).await {
            return Ok(());
        }
        Err(RuntimeError::Failed(format!(
            "task {task_id}: processes {:?} survived SIGKILL for {} s (stuck in the kernel?); \
             see {}",
            cgroups.pids(),
            KILL_TIMEOUT.as_secs(),
            cgroups.v2.display()
        )))
    }

    async fn remove(&self, task_id: &str) -> Result<(), RuntimeError> {
        let dir = self.checked_dir(task_id)?;
        if !dir.exists() {
            return Ok(());
        }
        if let Some(cgroups) = self.task_cgroups(task_id) {
            if cgroups.populated() {
                self.stop(task_id, Duration::ZERO).await?;
            }
            let task = task_id.to_string();
            blocking(move || {
                cgroups.remove().map_err(|err| {
                    RuntimeError::Failed(format!("removing the cgroups of task {task}: {err}"))
                })
            })
            .await?;
        }
        blocking(move || {
            fs::remove_dir_all(&dir).map_err(failed(format!("removing {}", dir.display())))
        })
        .await
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let tasks = self.state_dir.join("tasks");
        let entries =
            fs::read_dir(&tasks).map_err(failed(format!("listing {}", tasks.display())))?;
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|id| valid_task_id(id))
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn adopt(&self, task_id: &str, logs: LogSender) -> Result<Started, RuntimeError> {
        let dir = self.checked_dir(task_id)?;
        if !dir.is_dir() {
            return Err(RuntimeError::Failed(format!(
                "task {task_id} is not in {}: nothing to adopt",
                dir.display()
            )));
        }
        let resolved = |status| {
            let (tx, exited) = tokio::sync::oneshot::channel();
            let _ = tx.send(status);
            Ok(Started { exited })
        };
        let source = match (read_exit(&dir), self.task_cgroups(task_id)) {
            (Some(status), _) => return resolved(status),
            // Its start failed before the cgroups were recorded: nothing ever ran.
            (None, None) => return resolved(ExitStatus::Unknown),
            (None, Some(cgroups)) => ExitSource::Cgroup(cgroups),
        };
        let exited = watch(task_id.to_string(), dir, logs, true, source);
        Ok(Started { exited })
    }

    async fn exec(
        &self,
        task_id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let dir = self.checked_dir(task_id)?;
        let not_running = || RuntimeError::Failed(format!("task {task_id} is not running"));
        let cgroups = self.task_cgroups(task_id).ok_or_else(not_running)?;
        let pid = Self::live_pid(&dir, &cgroups).ok_or_else(not_running)?;
        let procs = cgroups
            .open_procs()
            .map_err(|err| RuntimeError::Failed(format!("task {task_id}: {err}")))?;
        super::exec::run(pid, procs, argv, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_must_be_path_safe() {
        assert!(valid_task_id("abc123def456ghi789jkl012m"));
        assert!(valid_task_id("t-1_x"));
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_task_id(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn unknown_tasks_are_handled_quietly() {
        let state = tempfile::tempdir().unwrap();
        let images = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(state.path().into(), images.path().into()).unwrap();
        assert_eq!(runtime.name(), "process");
        assert_eq!(runtime.images().await.unwrap(), ["host"]);
        assert!(runtime.list().await.unwrap().is_empty());
        runtime.stop("nope", Duration::ZERO).await.unwrap();
        runtime.remove("nope").await.unwrap();
        assert!(runtime
            .adopt("nope", tokio::sync::mpsc::unbounded_channel().0)
            .await
            .is_err());
        assert!(runtime.stop("../x", Duration::ZERO).await.is_err());
    }

    #[tokio::test]
    async fn a_task_that_ended_is_adopted_at_once() {
        let state = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(state.path().into(), state.path().into()).unwrap();
        fs::create_dir_all(runtime.task_dir("t1")).unwrap();
        fs::write(runtime.task_dir("t1").join("exit"), "signal 9\n").unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let started = runtime.adopt("t1", tx).await.unwrap();
        assert_eq!(started.exited.await.unwrap(), ExitStatus::Signal(9));
        assert_eq!(runtime.list().await.unwrap(), ["t1"]);
    }
}
