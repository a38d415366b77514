//! The process runtime on a real kernel: namespaces, overlay rootfs, cgroups, stop, adopt.
//! Needs root; prints "skipped: needs root" otherwise. Each test builds a busybox OCI image and
//! a network namespace of its own in a temporary directory, and a guard removes its tasks,
//! cgroups and namespace even when an assertion fails.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::runtime::image::write_layout;
use control::runtime::process::ProcessRuntime;
use control::runtime::{
    netns, ExitStatus, FileMount, Limits, LogLine, Runtime, RuntimeError, Stream, TaskSpec,
};
use tokio::sync::mpsc;

/// Generous: these tasks take milliseconds, but CI machines stall.
const TIMEOUT: Duration = Duration::from_secs(60);

fn is_root() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A layer with /bin/busybox, its applets as symlinks, and the usual empty directories.
fn busybox_layer() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, link: Option<&str>, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1);
        header.set_size(data.len() as u64);
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    };
    for dir in ["bin/", "etc/", "proc/", "dev/", "tmp/", "root/"] {
        add(dir, tar::EntryType::Directory, 0o755, None, b"");
    }
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    add(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        None,
        &busybox,
    );
    for applet in ["sh", "sleep", "cat", "echo", "ls", "hostname", "ps"] {
        let path = format!("bin/{applet}");
        add(&path, tar::EntryType::Symlink, 0o777, Some("busybox"), b"");
    }
    builder.into_inner().unwrap()
}

/// One test's runtime, image directory and network namespace, cleaned up on drop.
struct Fixture {
    dir: tempfile::TempDir,
    runtime: Arc<ProcessRuntime>,
    netns: PathBuf,
    tasks: Mutex<Vec<String>>,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        if !is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"});
        write_layout(
            &images.join("mesh-test.tar"),
            "mesh-test:latest",
            &config,
            &[busybox_layer()],
        )
        .unwrap();
        let netns = dir.path().join("netns");
        netns::create(&netns).unwrap();
        let runtime = ProcessRuntime::new(dir.path().join("state"), images).unwrap();
        Some(Fixture {
            dir,
            runtime: Arc::new(runtime),
            netns,
            tasks: Mutex::new(Vec::new()),
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn images_dir(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    /// A spec with a fresh task ID, which the guard will clean up.
    fn spec(&self, image: &str, command: &[&str]) -> TaskSpec {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let id = format!(
            "p{:07}{:04}{:09}",
            std::process::id() % 10_000_000,
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        self.tasks.lock().unwrap().push(id.clone());
        TaskSpec {
            task_id: id,
            slot: 2,
            service_name: "web".into(),
            node_id: "00000000000000ff".into(),
            image: image.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: vec!["GREETING=hi".into()],
            limits: Limits::default(),
            netns: self.netns.clone(),
            resolv_conf: None,
            files: Vec::new(),
        }
    }

    /// Runs a task to its end; returns how it ended and every line it wrote.
    async fn run(&self, spec: &TaskSpec) -> (ExitStatus, Vec<LogLine>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let started = self.runtime.start(spec, tx).await.unwrap();
        let status = tokio::time::timeout(TIMEOUT, started.exited)
            .await
            .expect("the task ends")
            .unwrap();
        // Every line is sent before the exit status.
        let lines = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        (status, lines)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let runtime = self.runtime.clone();
        let ids = std::mem::take(&mut *self.tasks.lock().unwrap());
        // Drop cannot await, and the test's own executor may be gone: a thread of its own.
        let _ = std::thread::spawn(move || {
            let executor = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            executor.block_on(async {
                for id in ids {
                    let _ = runtime.stop(&id, Duration::ZERO).await;
                    let _ = runtime.remove(&id).await;
                }
            });
        })
        .join();
        let _ = netns::remove(&self.netns);
    }
}

fn stdout(lines: &[LogLine]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.stream == Stream::Stdout)
        .map(|l| l.line.as_str())
        .collect()
}

#[tokio::test]
async fn a_host_task_reports_output_exit_code_and_only_its_environment() {
    let Some(fx) = Fixture::new() else { return };
    let spec = fx.spec("host", &["sh", "-c", "echo out; echo err >&2; env; exit 3"]);
    let (status, lines) = fx.run(&spec).await;
    assert_eq!(status, ExitStatus::Code(3));
    assert!(lines.iter().all(|l| l.task_id == spec.task_id));
    let has = |stream, text: &str| lines.iter().any(|l| l.stream == stream && l.line == text);
    assert!(has(Stream::Stdout, "out"), "{lines:?}");
    assert!(has(Stream::Stderr, "err"), "{lines:?}");
    assert!(!has(Stream::Stdout, "err") && !has(Stream::Stderr, "out"));
    let out = stdout(&lines);
    for expected in [
        format!("MESH_TASK_ID={}", spec.task_id),
        "MESH_TASK_SLOT=2".into(),
        "MESH_SERVICE_NAME=web".into(),
        "MESH_NODE_ID=00000000000000ff".into(),
        "GREETING=hi".into(),
    ] {
        assert!(
            out.contains(&expected.as_str()),
            "{expected} missing: {out:?}"
        );
    }
    // Nothing of the test process's environment leaks in; the shell adds only its own.
    let allowed = ["PATH", "GREETING", "PWD", "SHLVL", "OLDPWD", "_"];
    for line in out.iter().filter(|l| l.contains('=')) {
        let key = line.split('=').next().unwrap();
        assert!(
            key.starts_with("MESH_") || allowed.contains(&key),
            "{key} leaked into the task: {out:?}"
        );
    }
}

#[tokio::test]
async fn a_given_resolv_conf_is_what_the_task_sees_read_only() {
    let Some(fx) = Fixture::new() else { return };
    let script = "cat /etc/resolv.conf; echo x >> /etc/resolv.conf || echo read-only";
    for image in ["mesh-test:latest", "host"] {
        let mut spec = fx.spec(image, &["sh", "-c", script]);
        let file = fx.state_dir().join(format!("{}.resolv.conf", spec.task_id));
        std::fs::write(&file, "nameserver 127.0.0.11\n").unwrap();
        spec.resolv_conf = Some(file);
        let (status, lines) = fx.run(&spec).await;
        assert_eq!(status, ExitStatus::Code(0), "{image}: {lines:?}");
        assert_eq!(
            stdout(&lines),
            ["nameserver 127.0.0.11", "read-only"],
            "{image}"
        );
    }
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(
        !host.contains("127.0.0.11"),
        "the host's resolv.conf changed"
    );
}

#[tokio::test]
async fn secret_and_config_files_are_bound_read_only_inside_the_image_only() {
    let Some(fx) = Fixture::new() else { return };
    let script = "cat /run/secrets/pw; echo; stat -c %a /run/secrets/pw; cat /etc/app.conf; \
                  echo x > /run/secrets/pw || echo read-only";
    let mut spec = fx.spec("mesh-test:latest", &["sh", "-c", script]);
    let source = fx.state_dir().join(format!("{}.pw", spec.task_id));
    std::fs::write(&source, "hunter2").unwrap();
    std::fs::set_permissions(&source, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    let config = fx.state_dir().join(format!("{}.conf", spec.task_id));
    std::fs::write(&config, "x=1\n").unwrap();
    spec.files = vec![
        FileMount {
            source: source.clone(),
            target: "/run/secrets/pw".into(),
        },
        FileMount {
            source: config,
            target: "/etc/app.conf".into(),
        },
    ];
    let (status, lines) = fx.run(&spec).await;
    assert_eq!(status, ExitStatus::Code(0), "{lines:?}");
    assert_eq!(stdout(&lines), ["hunter2", "400", "x=1", "read-only"]);
    assert_eq!(std::fs::read_to_string(&source).unwrap(), "hunter2");
    assert!(std::fs::read_to_string("/run/secrets/pw").unwrap_or_default() != "hunter2");
    // On the host's filesystem a task could read every other task's secrets: refused.
    let mut host = fx.spec("host", &["true"]);
    host.files = spec.files.clone();
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = fx.runtime.start(&host, tx).await.err().expect("refused");
    assert!(err.to_string().contains("need an image"), "{err}");
}

#[tokio::test]
async fn an_image_task_sees_its_own_pid_net_uts_and_root() {
    let Some(fx) = Fixture::new() else { return };
    let script = "echo pid=$$; cat /proc/net/dev; echo host=$(hostname); ls /bin/busybox; \
                  [ -e /etc/debian_version ] && echo host-files-visible; \
                  echo written > /written-by-task; ps";
    let spec = fx.spec("mesh-test:latest", &["sh", "-c", script]);
    let (status, lines) = fx.run(&spec).await;
    let out = stdout(&lines);
    assert_eq!(status, ExitStatus::Code(0), "{lines:?}");
    assert!(
        out.contains(&"pid=1"),
        "not pid 1 of its namespace: {out:?}"
    );
    let interfaces: Vec<&str> = out
        .iter()
        .filter(|l| l.contains(':') && !l.contains('|'))
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"], "not in the given netns: {out:?}");
    let hostname = format!("host={}", &spec.task_id[..12]);
    assert!(out.contains(&hostname.as_str()), "{out:?}");
    assert!(out.contains(&"/bin/busybox"), "{out:?}");
    assert!(
        !out.contains(&"host-files-visible"),
        "sees the host's root: {out:?}"
    );
    // A fresh /proc of its own pid namespace: ps sees the shell and itself only.
    let processes = out
        .iter()
        .skip_while(|l| !l.contains("PID"))
        .skip(1)
        .count();
    assert!((1..=3).contains(&processes), "{out:?}");
    // The write went to the task's upper layer; the shared cached rootfs is unchanged.
    let cache = fx.state_dir().join("images");
    let rootfs = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path().join("rootfs"))
        .find(|p| p.is_dir())
        .expect("an unpacked rootfs");
    assert!(rootfs.join("bin/busybox").exists());
    assert!(!rootfs.join("written-by-task").exists());
    let upper = fx.runtime.task_dir(&spec.task_id).join("upper");
    assert!(upper.join("written-by-task").exists());
}

/// The value of a cgroup file, trimmed.
fn cgroup_file(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.join(name).display()))
        .trim()
        .to_string()
}

#[tokio::test]
async fn limits_land_in_the_task_cgroups() {
    let Some(fx) = Fixture::new() else { return };
    let mut spec = fx.spec("mesh-test:latest", &["cat", "/proc/self/cgroup"]);
    spec.limits = Limits {
        nano_cpus: 500_000_000,
        memory_bytes: 64 << 20,
    };
    let (status, lines) = fx.run(&spec).await;
    assert_eq!(status, ExitStatus::Code(0), "{lines:?}");
    let inside = stdout(&lines);
    let id = &spec.task_id;
    let cgroups = fx.runtime.task_cgroups(id).expect("cgroups are recorded");
    let member_of = |controller: &str, suffix: &str| {
        inside.iter().any(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
            controllers.is_some_and(|c| c.split(',').any(|c| c == controller))
                && path.is_some_and(|p| p.ends_with(suffix))
        })
    };
    assert!(member_of("", &format!("/tasks/{id}")), "{inside:?}");
    match &cgroups.memory_v1 {
        Some(dir) => {
            assert!(dir.ends_with(format!("mesh-tasks/{id}")));
            assert_eq!(cgroup_file(dir, "memory.limit_in_bytes"), "67108864");
            assert!(
                member_of("memory", &format!("/mesh-tasks/{id}")),
                "{inside:?}"
            );
        }
        None => assert_eq!(cgroup_file(&cgroups.v2, "memory.max"), "67108864"),
    }
    match &cgroups.cpu_v1 {
        Some(dir) => {
            assert_eq!(cgroup_file(dir, "cpu.cfs_period_us"), "100000");
            assert_eq!(cgroup_file(dir, "cpu.cfs_quota_us"), "50000");
            assert!(member_of("cpu", &format!("/mesh-tasks/{id}")), "{inside:?}");
        }
        None => assert_eq!(cgroup_file(&cgroups.v2, "cpu.max"), "50000 100000"),
    }
}

#[tokio::test]
async fn exec_runs_inside_the_task_and_is_killed_at_its_timeout() {
    let Some(fx) = Fixture::new() else { return };
    let spec = fx.spec(
        "mesh-test:latest",
        &["sh", "-c", "echo made > /tmp/mark; exec sleep 1000"],
    );
    let (tx, _rx) = mpsc::unbounded_channel();
    let _started = fx.runtime.start(&spec, tx).await.unwrap();
    let id = &spec.task_id;
    let argv = |script: &str| ["sh".to_string(), "-c".to_string(), script.to_string()];
    // The task's /tmp is a tmpfs of its own mount namespace: only a command inside sees it.
    let mut seen = None;
    for _ in 0..100 {
        let out = fx
            .runtime
            .exec(id, &argv("cat /tmp/mark"), Duration::from_secs(5))
            .await
            .unwrap();
        if out.exit == Some(ExitStatus::Code(0)) {
            seen = Some(out.output);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.as_deref(), Some("made"));
    let script = "echo env=$GREETING/$MESH_TASK_SLOT; echo host=$(hostname); echo pid=$$; \
                  [ -e /etc/debian_version ] && echo host-files-visible; cat /proc/self/cgroup; \
                  echo oops >&2; exit 4";
    let out = fx
        .runtime
        .exec(id, &argv(script), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(out.exit, Some(ExitStatus::Code(4)), "{}", out.output);
    let lines: Vec<&str> = out.output.lines().collect();
    assert!(lines.contains(&"env=hi/2"), "{lines:?}");
    let hostname = format!("host={}", &id[..12]);
    assert!(lines.contains(&hostname.as_str()), "{lines:?}");
    let pid: u32 = lines
        .iter()
        .find_map(|l| l.strip_prefix("pid="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (2..100).contains(&pid),
        "not in the task's pid namespace: {lines:?}"
    );
    assert!(!lines.contains(&"host-files-visible"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains(id.as_str())),
        "not in the task's cgroup: {lines:?}"
    );
    assert_eq!(lines.last(), Some(&"oops"));
    let begun = std::time::Instant::now();
    let out = fx
        .runtime
        .exec(id, &argv("sleep 30"), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(out.exit, None);
    assert!(begun.elapsed() < Duration::from_secs(5));
    fx.runtime.stop(id, Duration::ZERO).await.unwrap();
    let gone = fx
        .runtime
        .exec(id, &argv("true"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(gone.to_string().contains("not running"), "{gone}");
}

#[tokio::test]
async fn stop_kills_and_remove_leaves_nothing() {
    let Some(fx) = Fixture::new() else { return };
    let spec = fx.spec("mesh-test:latest", &["sleep", "1000"]);
    let (tx, _rx) = mpsc::unbounded_channel();
    let started = fx.runtime.start(&spec, tx).await.unwrap();
    let id = &spec.task_id;
    let cgroups = fx.runtime.task_cgroups(id).unwrap();
    assert!(cgroups.populated());
    fx.runtime.stop(id, Duration::from_secs(1)).await.unwrap();
    let status = tokio::time::timeout(TIMEOUT, started.exited)
        .await
        .unwrap()
        .unwrap();
    // pid 1 of a namespace ignores SIGTERM without a handler, so SIGKILL ends it.
    assert!(
        matches!(status, ExitStatus::Signal(15) | ExitStatus::Signal(9)),
        "{status:?}"
    );
    fx.runtime.stop(id, Duration::from_secs(1)).await.unwrap();
    assert_eq!(fx.runtime.list().await.unwrap(), [id.as_str()]);
    fx.runtime.remove(id).await.unwrap();
    for dir in cgroups.dirs() {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    assert!(!fx.runtime.task_dir(id).exists());
    assert!(fx.runtime.list().await.unwrap().is_empty());
    fx.runtime.remove(id).await.unwrap();
}

#[tokio::test]
async fn a_new_runtime_adopts_a_running_task() {
    let Some(fx) = Fixture::new() else { return };
    let spec = fx.spec("host", &["sh", "-c", "sleep 2; echo after"]);
    let first = ProcessRuntime::new(fx.state_dir(), fx.images_dir()).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let started = first.start(&spec, tx).await.unwrap();
    drop((started, first));
    let second = ProcessRuntime::new(fx.state_dir(), fx.images_dir()).unwrap();
    assert_eq!(second.list().await.unwrap(), [spec.task_id.as_str()]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let adopted = second.adopt(&spec.task_id, tx).await.unwrap();
    let status = tokio::time::timeout(TIMEOUT, adopted.exited)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    let lines: Vec<LogLine> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(stdout(&lines), ["after"]);
    // Adopting it again, ended, resolves at once with the same status.
    let (tx, _rx) = mpsc::unbounded_channel();
    let again = second.adopt(&spec.task_id, tx).await.unwrap();
    assert_eq!(again.exited.await.unwrap(), ExitStatus::Code(0));
}

#[tokio::test]
async fn unknown_images_and_commands_fail_cleanly() {
    let Some(fx) = Fixture::new() else { return };
    let images = fx.runtime.images().await.unwrap();
    assert_eq!(images, ["host", "mesh-test:latest"]);
    let (tx, _rx) = mpsc::unbounded_channel();
    let spec = fx.spec("nosuch:1", &["true"]);
    match fx.runtime.start(&spec, tx.clone()).await {
        Err(RuntimeError::NoSuchImage { image, fix }) => {
            assert_eq!(image, "nosuch:1");
            assert!(
                fix.contains(&fx.images_dir().display().to_string()),
                "{fix}"
            );
            assert!(fix.contains("scripts/build-test-image.sh"), "{fix}");
        }
        other => panic!("expected NoSuchImage, got {:?}", other.err()),
    }
    let spec = fx.spec("mesh-test:latest", &["/no/such/program"]);
    let err = fx
        .runtime
        .start(&spec, tx)
        .await
        .err()
        .expect("start fails");
    assert!(err.to_string().contains("/no/such/program"), "{err}");
    assert!(fx.runtime.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_image_of_build_test_image_sh_runs() {
    let Some(fx) = Fixture::new() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image.sh");
    if !script.exists() {
        eprintln!("skipped: {} is missing", script.display());
        return;
    }
    let images = fx.dir.path().join("built");
    let built = std::process::Command::new("bash")
        .arg(&script)
        .arg(&images)
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let runtime = ProcessRuntime::new(fx.state_dir(), images).unwrap();
    assert_eq!(
        runtime.images().await.unwrap(),
        ["host", "mesh-test:latest"]
    );
    let spec = fx.spec(
        "mesh-test:latest",
        &["sh", "-c", "echo hello from $(hostname)"],
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = runtime.start(&spec, tx).await.unwrap();
    let status = tokio::time::timeout(TIMEOUT, started.exited)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    let lines: Vec<LogLine> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    let expected = format!("hello from {}", &spec.task_id[..12]);
    assert_eq!(stdout(&lines), [expected.as_str()]);
}

#[tokio::test]
async fn the_image_config_gives_command_env_and_working_dir() {
    let Some(fx) = Fixture::new() else { return };
    let config = serde_json::json!({
        "Env": ["PATH=/bin", "FROM_IMAGE=yes"],
        "Entrypoint": ["sh", "-c"],
        "Cmd": ["echo cmd $FROM_IMAGE $(pwd)"],
        "WorkingDir": "/root",
    });
    let tarball = fx.images_dir().join("entry.tar");
    write_layout(&tarball, "mesh-entry:1", &config, &[busybox_layer()]).unwrap();
    let (status, lines) = fx.run(&fx.spec("mesh-entry:1", &[])).await;
    assert_eq!(status, ExitStatus::Code(0), "{lines:?}");
    assert_eq!(stdout(&lines), ["cmd yes /root"]);
    // A command replaces Cmd and keeps the Entrypoint.
    let (status, lines) = fx.run(&fx.spec("mesh-entry:1", &["echo replaced"])).await;
    assert_eq!(status, ExitStatus::Code(0), "{lines:?}");
    assert_eq!(stdout(&lines), ["replaced"]);
}
