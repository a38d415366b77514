//! The containerd runtime against a real containerd: a one-host lab whose host runs its own
//! containerd (inside the host's network namespace and cgroup), the test image built by
//! `scripts/build-test-image.sh` and imported, and task network namespaces made here.
//! Needs root, containerd and ctr; otherwise it prints why it skipped. Dropping the lab removes
//! containerd, its shims and containers, mounts, cgroups and files, also when a check fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use control::runtime::containerd::ContainerdRuntime;
use control::runtime::{
    netns, ExitStatus, Limits, LogLine, Runtime, RuntimeError, Started, Stream, TaskSpec,
};
use lab::{LabSpec, ScopedLab, TaskRuntime, CONTAINERD_NAMESPACE};
use tokio::sync::mpsc;

/// How long any one task of these tests may take.
const TASK_TIMEOUT: Duration = Duration::from_secs(30);

fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (namespaces, cgroups, containerd)");
    }
    let installed = |bin: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(bin).is_file()))
    };
    if !installed("containerd") || !installed("ctr") {
        return Some("containerd or ctr is not installed (bash scripts/setup.sh)");
    }
    None
}

/// A task network namespace, removed on drop.
struct TaskNetns(PathBuf);

impl Drop for TaskNetns {
    fn drop(&mut self) {
        if let Err(err) = netns::remove(&self.0) {
            eprintln!("removing {}: {err}", self.0.display());
        }
    }
}

/// Everything one test run needs; fields drop in order: the namespace, then the lab (with the
/// host's files, where the runtime keeps its state as meshd would).
struct Fixture {
    netns: TaskNetns,
    socket: PathBuf,
    cgroup_parent: String,
    state: PathBuf,
    _images: tempfile::TempDir,
    _lab: ScopedLab,
}

impl Fixture {
    fn up() -> Fixture {
        let name = format!("ctrd-{}", std::process::id() % 1_000_000);
        let mut spec = LabSpec::new(&name, 0, 1);
        spec.start_daemons = false;
        spec.form_cluster = false;
        spec.runtime = TaskRuntime::Containerd;
        let lab = ScopedLab::up(&spec).unwrap_or_else(|err| panic!("lab up {name}: {err}"));
        let files = lab.files("w1").unwrap();
        let socket = files.containerd().socket().to_path_buf();
        let images = tempfile::tempdir().unwrap();
        let tarball = build_image(images.path());
        ctr(&socket, &["image", "import", &tarball.to_string_lossy()]);
        // Where meshd's agent pins task namespaces: under the host's directory, whose mounts
        // the host's containerd sees.
        let state = files.state_dir();
        std::fs::create_dir_all(state.join("netns")).unwrap();
        let ns = state.join("netns").join("task-ns");
        netns::create(&ns).expect("creating the task network namespace");
        Fixture {
            netns: TaskNetns(ns),
            socket,
            cgroup_parent: format!("/mesh-lab/{name}/w1"),
            state,
            _images: images,
            _lab: lab,
        }
    }

    async fn runtime(&self) -> ContainerdRuntime {
        connect(&self.socket, &self.state, &self.cgroup_parent).await
    }

    fn task(&self, command: &[&str]) -> TaskSpec {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TaskSpec {
            task_id: format!("ct{:08x}{n:015}", std::process::id()),
            slot: 1,
            service_name: "web".into(),
            node_id: "00000000000000aa".into(),
            image: "mesh-test:latest".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: vec!["GREETING=hi".into()],
            limits: Limits::default(),
            netns: self.netns.0.clone(),
            resolv_conf: None,
            files: Vec::new(),
        }
    }
}

async fn connect(socket: &Path, state: &Path, cgroup_parent: &str) -> ContainerdRuntime {
    ContainerdRuntime::connect(socket, CONTAINERD_NAMESPACE, state)
        .await
        .expect("connecting to the lab host's containerd")
        .with_cgroup_parent(cgroup_parent)
}

fn build_image(out: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(out)
        .output()
        .expect("running build-test-image.sh");
    assert!(
        output.status.success(),
        "build-test-image.sh: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

fn ctr(socket: &Path, args: &[&str]) -> String {
    let output = Command::new("ctr")
        .arg("-a")
        .arg(socket)
        .args(["-n", CONTAINERD_NAMESPACE])
        .args(args)
        .output()
        .expect("running ctr");
    assert!(
        output.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits for a task's end and returns it with every line it wrote.
async fn finish(
    started: Started,
    mut logs: mpsc::UnboundedReceiver<LogLine>,
) -> (ExitStatus, Vec<LogLine>) {
    let status = tokio::time::timeout(TASK_TIMEOUT, started.exited)
        .await
        .expect("the task did not exit in time")
        .expect("the runtime dropped the exit channel");
    let mut lines = Vec::new();
    while let Ok(line) = logs.try_recv() {
        lines.push(line);
    }
    (status, lines)
}

async fn run(runtime: &ContainerdRuntime, task: &TaskSpec) -> (ExitStatus, Vec<LogLine>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let started = runtime.start(task, tx).await.expect("starting the task");
    let result = finish(started, rx).await;
    runtime
        .remove(&task.task_id)
        .await
        .expect("removing the task");
    result
}

fn text(lines: &[LogLine], stream: Stream) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.line.as_str())
        .collect()
}

/// The first of `files` found in any of `dirs`, trimmed.
fn cgroup_value(dirs: &[PathBuf], files: &[&str]) -> Option<String> {
    dirs.iter()
        .flat_map(|dir| files.iter().map(move |f| dir.join(f)))
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|v| v.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_in_containerd_with_output_limits_stop_and_adoption() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let fixture = Fixture::up();
    let runtime = fixture.runtime().await;
    assert_eq!(runtime.name(), "containerd");
    let images = runtime.images().await.unwrap();
    assert!(
        images.contains(&"mesh-test:latest".to_string()),
        "{images:?}"
    );

    // Output arrives line by line on the right stream, and the exit code comes back.
    let task = fixture.task(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let (status, lines) = run(&runtime, &task).await;
    assert_eq!(status, ExitStatus::Code(3));
    assert_eq!(text(&lines, Stream::Stdout), ["out"]);
    assert_eq!(text(&lines, Stream::Stderr), ["err"]);
    assert!(lines.iter().all(|l| l.task_id == task.task_id));

    // The task sees its MESH_* variables, its --env and the image's PATH; its hostname is the
    // start of its ID.
    let task = fixture.task(&["sh", "-c", "echo $MESH_TASK_ID $GREETING $PATH; hostname"]);
    let (status, lines) = run(&runtime, &task).await;
    assert_eq!(status, ExitStatus::Code(0));
    let out = text(&lines, Stream::Stdout);
    assert!(
        out[0].starts_with(&format!("{} hi /usr/local/sbin:", task.task_id)),
        "{out:?}"
    );
    assert_eq!(out[1], &task.task_id[..12]);

    // It joined the namespace made for it: only loopback there.
    let task = fixture.task(&["cat", "/proc/net/dev"]);
    let (status, lines) = run(&runtime, &task).await;
    assert_eq!(status, ExitStatus::Code(0));
    let interfaces: Vec<&str> = text(&lines, Stream::Stdout)
        .into_iter()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"]);

    // A given resolv.conf is what the task sees, read-only.
    let mut task = fixture.task(&[
        "sh",
        "-c",
        "cat /etc/resolv.conf; echo x >> /etc/resolv.conf || echo read-only",
    ]);
    let resolv = std::env::temp_dir().join(format!("{}.resolv.conf", task.task_id));
    std::fs::write(&resolv, "nameserver 127.0.0.11\n").unwrap();
    task.resolv_conf = Some(resolv.clone());
    let (status, lines) = run(&runtime, &task).await;
    std::fs::remove_file(&resolv).unwrap();
    assert_eq!(status, ExitStatus::Code(0), "{lines:?}");
    assert_eq!(
        text(&lines, Stream::Stdout),
        ["nameserver 127.0.0.11", "read-only"]
    );

    // Limits land in the container's cgroup; stop ends a task that ignores SIGTERM (sleep as
    // pid 1) with SIGKILL; remove leaves nothing.
    let mut task = fixture.task(&["sleep", "1000"]);
    task.limits = Limits {
        nano_cpus: 500_000_000,
        memory_bytes: 64 << 20,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let started = runtime.start(&task, tx).await.unwrap();
    let dirs = runtime.cgroup_dirs(&task.task_id);
    assert!(
        !dirs.is_empty(),
        "no cgroup for {}",
        runtime.cgroups_path(&task.task_id)
    );
    let memory = cgroup_value(&dirs, &["memory.limit_in_bytes", "memory.max"]);
    assert_eq!(memory.as_deref(), Some("67108864"));
    let quota = cgroup_value(&dirs, &["cpu.cfs_quota_us", "cpu.max"]).unwrap();
    assert!(quota == "50000" || quota == "50000 100000", "{quota}");
    assert!(runtime.list().await.unwrap().contains(&task.task_id));
    // exec (health checks) runs inside the container: its env, uts, net and root; a command
    // past its timeout is killed.
    let argv = |script: &str| ["sh".to_string(), "-c".to_string(), script.to_string()];
    let script = "echo $GREETING; hostname; [ -e /etc/debian_version ] && echo host-root; \
                  cat /proc/net/dev; exit 2";
    let out = runtime
        .exec(&task.task_id, &argv(script), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(out.exit, Some(ExitStatus::Code(2)), "{}", out.output);
    let lines: Vec<&str> = out.output.lines().collect();
    assert_eq!(lines[..2], ["hi", &task.task_id[..12]], "{lines:?}");
    assert!(!lines.contains(&"host-root"), "{lines:?}");
    let interfaces: Vec<&str> = lines[2..]
        .iter()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|l| l.trim())
        .collect();
    assert_eq!(interfaces, ["lo"], "{lines:?}");
    let out = runtime
        .exec(&task.task_id, &argv("sleep 30"), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(out.exit, None);
    runtime
        .stop(&task.task_id, Duration::from_millis(300))
        .await
        .unwrap();
    let (status, _) = finish(started, rx).await;
    assert!(matches!(status, ExitStatus::Signal(_)), "{status:?}");
    runtime
        .stop(&task.task_id, Duration::from_secs(1))
        .await
        .unwrap();
    runtime.remove(&task.task_id).await.unwrap();
    runtime.remove(&task.task_id).await.unwrap();
    assert!(!runtime.list().await.unwrap().contains(&task.task_id));
    assert!(!ctr(&fixture.socket, &["containers", "ls", "-q"]).contains(&task.task_id));
    assert!(!ctr(&fixture.socket, &["snapshots", "ls"]).contains(&task.task_id));
    assert!(runtime.cgroup_dirs(&task.task_id).is_empty());
    assert!(!fixture
        .state
        .join("containerd-io")
        .join(&task.task_id)
        .exists());

    // An image this containerd lacks says how to get it.
    let mut task = fixture.task(&["true"]);
    task.image = "no-such-image:1".into();
    let (tx, _rx) = mpsc::unbounded_channel();
    match runtime.start(&task, tx).await {
        Err(RuntimeError::NoSuchImage { image, fix }) => {
            assert_eq!(image, "no-such-image:1");
            assert!(fix.contains("scripts/build-test-image.sh"), "{fix}");
            assert!(fix.contains("-n mesh image import"), "{fix}");
        }
        Err(other) => panic!("expected NoSuchImage, got {other}"),
        Ok(_) => panic!("a missing image started"),
    }
    assert!(!runtime.list().await.unwrap().contains(&task.task_id));

    // A task started by a meshd that then went away (its tokio runtime dropped, so its output
    // readers and watcher are gone) is found and adopted by the next one, which gets its later
    // output and its exit.
    let task = fixture.task(&["sh", "-c", "sleep 2; echo late; exit 7"]);
    let (socket, state, parent) = (
        fixture.socket.clone(),
        fixture.state.clone(),
        fixture.cgroup_parent.clone(),
    );
    let first_task = task.clone();
    std::thread::spawn(move || {
        let earlier = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        earlier.block_on(async {
            let (tx, _logs) = mpsc::unbounded_channel();
            let first = connect(&socket, &state, &parent).await;
            first.start(&first_task, tx).await.unwrap();
        });
    })
    .join()
    .expect("the first meshd's thread");
    let restarted = fixture.runtime().await;
    assert!(restarted.list().await.unwrap().contains(&task.task_id));
    let (tx, rx) = mpsc::unbounded_channel();
    let adopted = restarted.adopt(&task.task_id, tx).await.unwrap();
    let (status, lines) = finish(adopted, rx).await;
    assert_eq!(status, ExitStatus::Code(7));
    assert_eq!(text(&lines, Stream::Stdout), ["late"]);
    // Adopting it again once it exited resolves at once, with the code containerd kept.
    let (tx, rx) = mpsc::unbounded_channel();
    let again = restarted.adopt(&task.task_id, tx).await.unwrap();
    assert_eq!(finish(again, rx).await.0, ExitStatus::Code(7));
    restarted.remove(&task.task_id).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let gone = restarted.adopt(&task.task_id, tx).await.unwrap();
    assert_eq!(finish(gone, rx).await.0, ExitStatus::Unknown);
    assert!(restarted.list().await.unwrap().is_empty());
}
