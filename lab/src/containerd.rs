//! Each lab host's own containerd, for labs whose tasks run through containerd.
//!
//! A host's containerd runs inside the host's network namespace and cgroup (as meshd does), with
//! a private configuration: root and state under `<host dir>/containerd/`, its gRPC socket at
//! `<host dir>/containerd/containerd.sock` (or under `/run/mesh-lab/containerd/` when that path
//! is too long for a unix socket), the cri plugin disabled and no other listener. The images in
//! `<lab root>/images/*.tar` are imported into namespace `mesh` once it answers.
//!
//! containerd and runc also keep a little outside those directories, which a power cut and
//! teardown remove: the shims' sockets in `/run/containerd/s`, runc's state in
//! `/run/containerd/runc/<namespace>/<container>`, the containers' rootfs mounts under the state
//! directory, and the cgroups runc creates at `/mesh-lab/<lab>/<host>/<task>` in every cgroup v1
//! hierarchy (meshd gets `MESH_CGROUP_PARENT` so tasks land there).
//!
//! In a chroot of a plain directory (CI's), two things differ: no cgroup v1 hierarchy is
//! visible, so the lab mounts them under OWN_CGROUP_V1_DIR; and `/` is no mount's root, which
//! runc needs, so containerd gets a mount namespace of its own whose root is a recursive bind of
//! `/` onto itself (see `give_own_root`).

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::sys;

/// The containerd namespace images are imported into and meshd uses.
pub const NAMESPACE: &str = "mesh";
/// Where the lab mounts cgroup v1 hierarchies that runc needs but this process cannot see.
pub const OWN_CGROUP_V1_DIR: &str = "/run/mesh-lab/cgroup-v1";
/// Where sockets go whose natural path is too long.
const SHORT_SOCKET_DIR: &str = "/run/mesh-lab/containerd";
/// containerd's fixed directories under /run, whatever its configured state directory: shim
/// sockets, runc state, and the FIFOs its own client (ctr) makes.
const RUN_DIR: &str = "/run/containerd";
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
const RUNC_STATE_DIR: &str = "/run/containerd/runc";
const FIFO_DIR: &str = "/run/containerd/fifo";
/// The runtime v2 plugin's directory of task bundles, inside containerd's state directory.
const BUNDLES: &str = "io.containerd.runtime.v2.task";
/// Longest unix socket path (sun_path holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long containerd may take to answer after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Plugins a lab host's containerd runs without: Kubernetes' cri (and its listeners), the
/// snapshotters this kernel lacks, and `opt`, which writes to /opt.
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
];

/// Where one host's containerd keeps its files.
#[derive(Clone, Debug)]
pub struct ContainerdFiles {
    /// `<host dir>/containerd`.
    pub dir: PathBuf,
    socket: PathBuf,
}

impl ContainerdFiles {
    /// The files of `host`'s containerd in `lab`, whose host directory is `host_dir`.
    pub fn new(lab: &str, host: &str, host_dir: &Path) -> Self {
        let dir = host_dir.join("containerd");
        let natural = dir.join("containerd.sock");
        // containerd also listens on `<socket>.ttrpc` for its shims.
        let socket = if ttrpc_socket(&natural).as_os_str().len() <= MAX_SOCKET_PATH {
            natural
        } else {
            short_socket_dir(lab).join(format!("{host}.sock"))
        };
        ContainerdFiles { dir, socket }
    }
    /// The gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
    /// The private configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// Persistent data: metadata, content, snapshots.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    /// Runtime state (what /run holds on a real machine, gone at a power cut).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// containerd's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }
}

fn short_socket_dir(lab: &str) -> PathBuf {
    Path::new(SHORT_SOCKET_DIR).join(lab)
}

/// containerd's configuration for a lab host.
pub fn config_text(files: &ContainerdFiles) -> String {
    let disabled: Vec<String> = DISABLED_PLUGINS.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "# Written by the lab; rewritten on every start.\n\
         version = 2\n\
         root = {root:?}\n\
         state = {state:?}\n\
         disabled_plugins = [{disabled}]\n\
         \n\
         [grpc]\n  address = {socket:?}\n  tcp_address = \"\"\n\
         [ttrpc]\n  address = \"\"\n\
         [debug]\n  address = \"\"\n\
         [metrics]\n  address = \"\"\n",
        root = files.root().display().to_string(),
        state = files.state().display().to_string(),
        socket = files.socket().display().to_string(),
        disabled = disabled.join(", "),
    )
}

/// Starts containerd with `files` inside network namespace `netns` and `cgroup`, then waits
/// until it answers. Returns its PID. Mounts made under `shared` (the host's directory: meshd's
/// task namespaces, containerd's rootfs mounts) are seen by containerd and this process alike,
/// also when containerd needs a mount namespace of its own (see `give_own_root`).
pub fn start(files: &ContainerdFiles, netns: &str, cgroup: &Path, shared: &Path) -> Result<i32> {
    ensure_cgroup_v1()?;
    fs::create_dir_all(&files.dir).map_err(LabError::io("creating", &files.dir))?;
    if let Some(parent) = files.socket().parent() {
        fs::create_dir_all(parent).map_err(LabError::io("creating", parent))?;
    }
    fs::write(files.config(), config_text(files))
        .map_err(LabError::io("writing", files.config()))?;
    // A socket left by a killed instance would make the readiness check pass at once.
    let _ = fs::remove_file(files.socket());
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(files.log())
        .map_err(LabError::io("opening", files.log()))?;
    let log_err = log
        .try_clone()
        .map_err(LabError::io("opening", files.log()))?;
    let mut command = Command::new("containerd");
    command
        .arg("--config")
        .arg(files.config())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let _entry = sys::enter_netns(&mut command, netns, Some(cgroup))?;
    // SAFETY: setsid is async-signal-safe; a session of its own keeps containerd out of the
    // terminal's process group.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    if !root_is_mount_point() {
        give_own_root(&mut command, shared)?;
    }
    let child = command.spawn().map_err(|err| LabError::Command {
        command: "containerd".into(),
        detail: if err.kind() == std::io::ErrorKind::NotFound {
            "not installed; run `bash scripts/setup.sh`".into()
        } else {
            err.to_string()
        },
    })?;
    let pid = child.id() as i32;
    wait_ready(files, pid)?;
    Ok(pid)
}

/// Whether this process's root directory is the root of a mount. It is not in a chroot of a
/// plain directory (CI's), where runc cannot start a container: it changes the propagation
/// of `/`, which only a mount's root has.
fn root_is_mount_point() -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .any(|line| line.split_whitespace().nth(4) == Some("/"))
}

/// Makes `command` (containerd, and so its shims and runc) start in a mount namespace of its
/// own whose root is a mount: a recursive bind of `/` onto `/` itself, chrooted into, so every
/// path means what it means here. `shared` becomes a shared mount first, so mounts made under
/// it later, on either side, appear on both.
///
/// The bind goes onto the root directory, not onto a directory below it: a mount point is a
/// directory of the filesystem this process shares, and removing that directory here (as a
/// teardown would, or anything cleaning up a directory it believes empty) silently detaches
/// every mount on it in every other namespace. containerd's root would then hang in no
/// namespace: it keeps running, but the kernel refuses mounts whose paths resolve through a
/// detached tree, and every container start fails with overlayfs's "failed to clone
/// upperpath" (EINVAL). Only the chroot's own directory, which nothing removes while the
/// chroot is in use, is safe to mount on.
fn give_own_root(command: &mut Command, shared: &Path) -> Result<()> {
    fs::create_dir_all(shared).map_err(LabError::io("creating", shared))?;
    let dir = shared.to_string_lossy().into_owned();
    if !sys::mounts_under(shared).contains(&shared.to_path_buf()) {
        sys::run("mount", ["--bind", &dir, &dir])?;
    }
    sys::run("mount", ["--make-shared", &dir])?;
    // SAFETY: the closure runs in the forked child before exec and makes only system calls
    // (async-signal-safe) on static strings. unshare affects the child alone.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::MS_BIND | libc::MS_REC;
            let root = c"/".as_ptr();
            let null = std::ptr::null();
            // A lookup of `/..` steps from the root directory into the mount just stacked on
            // it (the bind), which then becomes this process's root and working directory.
            if libc::mount(root, root, null, flags, null.cast()) != 0
                || libc::chdir(c"/..".as_ptr()) != 0
                || libc::chroot(c".".as_ptr()) != 0
                || libc::chdir(root) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Waits until containerd answers on its socket; an early exit is an error with its log.
fn wait_ready(files: &ContainerdFiles, pid: i32) -> Result<()> {
    let socket = files.socket().to_string_lossy().into_owned();
    let answered = sys::wait_until(READY_TIMEOUT, || {
        !sys::process_alive(pid)
            || (files.socket().exists() && sys::run("ctr", ["-a", &socket, "version"]).is_ok())
    });
    if answered && sys::process_alive(pid) {
        return Ok(());
    }
    let log = fs::read_to_string(files.log()).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    Err(LabError::Command {
        command: format!("containerd --config {}", files.config().display()),
        detail: format!(
            "{} before answering on {socket}; last log lines:\n{}",
            if answered {
                "exited"
            } else {
                "not ready after 15 s"
            },
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ),
    })
}

/// Imports every `*.tar` OCI layout in `image_dir` whose images containerd does not have yet.
/// Returns the tarballs imported.
pub fn import_images(files: &ContainerdFiles, image_dir: &Path) -> Result<Vec<PathBuf>> {
    let Ok(entries) = fs::read_dir(image_dir) else {
        return Ok(Vec::new());
    };
    let mut tarballs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    tarballs.sort();
    let socket = files.socket().to_string_lossy().into_owned();
    let present = sys::run("ctr", ["-a", &socket, "-n", NAMESPACE, "image", "ls", "-q"])?;
    let present: Vec<&str> = present.lines().collect();
    let mut imported = Vec::new();
    for tarball in tarballs {
        let names = image_names(&tarball);
        if !names.is_empty() && names.iter().all(|n| present.contains(&n.as_str())) {
            continue;
        }
        let path = tarball.to_string_lossy().into_owned();
        sys::run(
            "ctr",
            ["-a", &socket, "-n", NAMESPACE, "image", "import", &path],
        )?;
        imported.push(tarball);
    }
    Ok(imported)
}

/// The image names an OCI layout tarball's index.json announces (empty when unreadable).
fn image_names(tarball: &Path) -> Vec<String> {
    let path = tarball.to_string_lossy().into_owned();
    let Ok(listing) = sys::run("tar", ["-tf", &path]) else {
        return Vec::new();
    };
    let Some(member) = listing
        .lines()
        .find(|m| *m == "index.json" || *m == "./index.json")
    else {
        return Vec::new();
    };
    let Ok(index) = sys::run("tar", ["-xOf", &path, member]) else {
        return Vec::new();
    };
    index_image_names(&index)
}

/// The `io.containerd.image.name` annotations of an OCI index.
fn index_image_names(index: &str) -> Vec<String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(index) else {
        return Vec::new();
    };
    value["manifests"]
        .as_array()
        .map(|manifests| {
            manifests
                .iter()
                .filter_map(|m| m["annotations"]["io.containerd.image.name"].as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Makes every cgroup v1 hierarchy this process belongs to visible to runc: where none of
/// them is mounted (a chroot whose /sys shows no cgroup filesystem), mounts each under
/// OWN_CGROUP_V1_DIR. Mounting an existing hierarchy again is allowed and shares its cgroups.
/// Nothing is ever mounted under /sys.
pub fn ensure_cgroup_v1() -> Result<()> {
    let membership = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for controllers in missing_v1_hierarchies(&membership, &mountinfo) {
        let point = Path::new(OWN_CGROUP_V1_DIR).join(&controllers);
        fs::create_dir_all(&point).map_err(LabError::io("creating", &point))?;
        let point = point.to_string_lossy().into_owned();
        sys::run(
            "mount",
            ["-t", "cgroup", "-o", &controllers, "cgroup", &point],
        )?;
    }
    Ok(())
}

/// The controller lists (`cpu`, `cpu,cpuacct`, ...) of the v1 hierarchies in a
/// `/proc/self/cgroup` text that no cgroup mount in a mountinfo text carries. Named
/// hierarchies (`name=systemd`) hold no controller and are left alone.
fn missing_v1_hierarchies(membership: &str, mountinfo: &str) -> Vec<String> {
    let mounted: Vec<Vec<&str>> = mountinfo
        .lines()
        .filter_map(|line| line.split_once(" - ").map(|(_, right)| right))
        .filter_map(|right| {
            let fields: Vec<&str> = right.split_whitespace().collect();
            (fields.first() == Some(&"cgroup"))
                .then(|| fields.get(2).map(|o| o.split(',').collect()))
                .flatten()
        })
        .collect();
    membership
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .filter(|controllers| !controllers.is_empty() && !controllers.starts_with("name="))
        .filter(|controllers| {
            let wanted: Vec<&str> = controllers.split(',').collect();
            !mounted
                .iter()
                .any(|options| wanted.iter().all(|c| options.contains(c)))
        })
        .map(str::to_string)
        .collect()
}

/// What a power cut leaves of a host's containerd, removed as a reboot would: its containers'
/// rootfs mounts and state directory, runc's state and the shims' sockets of its containers,
/// and its tasks' cgroup v1 directories (`cgroup`, relative to each hierarchy's root).
/// containerd and its shims must be dead already.
pub fn power_cut(files: &ContainerdFiles, cgroup: &str) -> Result<()> {
    let state = files.state();
    if state.exists() {
        for mount in sys::mounts_under(&state) {
            sys::unmount(&mount)?;
        }
        for (namespace, container) in bundles(&state) {
            let bundle = state.join(BUNDLES).join(&namespace).join(&container);
            if let Some(socket) = shim_socket(&bundle) {
                let _ = fs::remove_file(socket);
            }
            let runc = Path::new(RUNC_STATE_DIR).join(&namespace).join(&container);
            if runc.exists() {
                fs::remove_dir_all(&runc).map_err(LabError::io("removing", &runc))?;
            }
        }
        fs::remove_dir_all(&state).map_err(LabError::io("removing", &state))?;
    }
    let _ = fs::remove_file(files.socket());
    let _ = fs::remove_file(ttrpc_socket(files.socket()));
    remove_v1_cgroups(cgroup)
}

/// The socket containerd opens for its shims next to the gRPC one.
fn ttrpc_socket(socket: &Path) -> PathBuf {
    let mut path = socket.as_os_str().to_owned();
    path.push(".ttrpc");
    PathBuf::from(path)
}

/// Removes what the lab's containerds left outside the lab's directory: the short sockets'
/// directory and the lab's cgroup v1 trees. Called by teardown after every process is dead
/// and each host's `power_cut`.
pub fn teardown(lab: &str, cgroup: &str) -> Result<()> {
    let dir = short_socket_dir(lab);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(LabError::io("removing", &dir))?;
    }
    remove_v1_cgroups(cgroup)?;
    remove_empty_run_dirs();
    // The parent all labs share goes with the last of them (rmdir fails while others remain).
    let parent = Path::new(cgroup.trim_start_matches('/')).parent();
    if let Some(parent) = parent.filter(|p| !p.as_os_str().is_empty()) {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mount in v1_mounts(&mountinfo) {
            let _ = fs::remove_dir(mount.join(parent));
        }
    }
    Ok(())
}

/// Removes containerd's directories under /run when nothing is left in them (another
/// containerd on this machine recreates them as it needs them).
fn remove_empty_run_dirs() {
    if let Ok(namespaces) = fs::read_dir(RUNC_STATE_DIR) {
        for ns in namespaces.flatten() {
            let _ = fs::remove_dir(ns.path());
        }
    }
    for dir in [RUNC_STATE_DIR, SHIM_SOCKET_DIR, FIFO_DIR, RUN_DIR] {
        let _ = fs::remove_dir(dir);
    }
}

/// `(namespace, container)` of every task bundle in a containerd state directory.
fn bundles(state: &Path) -> Vec<(String, String)> {
    let names = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let root = state.join(BUNDLES);
    names(&root)
        .into_iter()
        .flat_map(|ns| {
            names(&root.join(&ns))
                .into_iter()
                .map(move |id| (ns.clone(), id))
        })
        .collect()
}

/// The shim's socket, as its bundle records it (`unix:///run/containerd/s/<hash>`).
fn shim_socket(bundle: &Path) -> Option<PathBuf> {
    let address = fs::read_to_string(bundle.join("address")).ok()?;
    let path = PathBuf::from(address.trim().strip_prefix("unix://")?);
    path.starts_with(SHIM_SOCKET_DIR).then_some(path)
}

/// Removes cgroup `relative` (and everything below it) in every cgroup v1 hierarchy.
fn remove_v1_cgroups(relative: &str) -> Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for mount in v1_mounts(&mountinfo) {
        let dir = mount.join(relative.trim_start_matches('/'));
        if dir.exists() {
            remove_tree(&dir)?;
        }
    }
    Ok(())
}

/// Mount points of cgroup v1 hierarchies' roots.
fn v1_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split_whitespace().collect();
            let point = fields.get(4)?;
            (right.split_whitespace().next() == Some("cgroup") && fields.get(3) == Some(&"/"))
                .then(|| PathBuf::from(point.replace("\\040", " ")))
        })
        .collect()
}

fn remove_tree(dir: &Path) -> Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    let mut last = None;
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => last = Some(err),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(LabError::Io {
        operation: "removing cgroup",
        path: dir.to_path_buf(),
        source: last.expect("the loop ran"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 31 0:31 /sub /mnt/x rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn only_unmounted_controller_hierarchies_are_missing() {
        let membership =
            "9:name=systemd:/\n8:pids:/\n4:memory:/x\n2:cpu,cpuacct:/\n1:cpu:/\n0::/\n";
        assert_eq!(
            missing_v1_hierarchies(membership, MOUNTINFO),
            ["cpu,cpuacct"]
        );
        // In a chroot that sees no cgroup mount, every controller hierarchy is missing.
        assert_eq!(
            missing_v1_hierarchies(membership, ""),
            ["pids", "memory", "cpu,cpuacct", "cpu"]
        );
    }

    #[test]
    fn v1_mounts_are_hierarchy_roots_only() {
        assert_eq!(
            v1_mounts(MOUNTINFO),
            [
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
    }

    #[test]
    fn the_socket_moves_when_its_path_is_too_long() {
        let short =
            ContainerdFiles::new("demo", "w1", Path::new("/var/lib/mesh-lab/demo/hosts/w1"));
        assert_eq!(
            short.socket(),
            Path::new("/var/lib/mesh-lab/demo/hosts/w1/containerd/containerd.sock")
        );
        let deep = format!("/tmp/{}/hosts/w1", "d".repeat(80));
        let long = ContainerdFiles::new("demo", "w1", Path::new(&deep));
        assert_eq!(
            long.socket(),
            Path::new("/run/mesh-lab/containerd/demo/w1.sock")
        );
        assert!(long.config().starts_with(&deep));
    }

    #[test]
    fn config_is_private_and_disables_cri() {
        let files = ContainerdFiles::new("demo", "w1", Path::new("/l/demo/hosts/w1"));
        let text = config_text(&files);
        assert!(text.contains("root = \"/l/demo/hosts/w1/containerd/root\""));
        assert!(text.contains("state = \"/l/demo/hosts/w1/containerd/state\""));
        assert!(text.contains("address = \"/l/demo/hosts/w1/containerd/containerd.sock\""));
        assert!(text.contains("\"io.containerd.grpc.v1.cri\""));
        assert!(text.contains("[debug]\n  address = \"\""));
        assert!(text.contains("[metrics]\n  address = \"\""));
    }

    #[test]
    fn index_names_come_from_the_containerd_annotation() {
        let index = r#"{"schemaVersion":2,"manifests":[{"digest":"sha256:00","annotations":{"io.containerd.image.name":"mesh-test:latest","org.opencontainers.image.ref.name":"latest"}}]}"#;
        assert_eq!(index_image_names(index), ["mesh-test:latest"]);
        assert!(index_image_names("{}").is_empty());
        assert!(index_image_names("nope").is_empty());
    }
}
