//! The lab's edge with the system: running iproute2 and nft, entering namespaces, cgroups and
//! process liveness. Everything the lab does to the kernel goes through here.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// Where named network namespaces live (iproute2's convention).
pub const NETNS_DIR: &str = "/run/netns";
/// Where the lab mounts a cgroup v2 hierarchy of its own when the system has none mounted.
pub const OWN_CGROUP2_MOUNT: &str = "/run/mesh-lab/cgroup2";
/// The parent cgroup of every lab.
pub const CGROUP_PARENT: &str = "mesh-lab";

/// Runs a command to completion; a non-zero exit becomes an error carrying its stderr.
pub fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.args(args);
    output_of(command)
}

/// Runs `program args` inside network namespace `netns`.
pub fn run_in<I, S>(netns: &str, program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.args(args);
    let _entry = enter_netns(&mut command, netns, None)?;
    output_of(command)
}

/// Feeds `input` to `program args` on stdin inside `netns` (nft -f -).
pub fn run_in_with_input(netns: &str, program: &str, args: &[&str], input: &str) -> Result<String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let _entry = enter_netns(&mut command, netns, None)?;
    let described = describe(&command);
    let failed = |err: std::io::Error| LabError::Command {
        command: described.clone(),
        detail: err.to_string(),
    };
    let mut child = command.spawn().map_err(failed)?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .map_err(failed)?;
    let output = child.wait_with_output().map_err(failed)?;
    check_output(described, output)
}

fn output_of(mut command: Command) -> Result<String> {
    let described = describe(&command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|err| LabError::Command {
            command: described.clone(),
            detail: if err.kind() == std::io::ErrorKind::NotFound {
                "not installed; run `bash scripts/setup.sh`".to_string()
            } else {
                err.to_string()
            },
        })?;
    check_output(described, output)
}

fn check_output(described: String, output: std::process::Output) -> Result<String> {
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(LabError::Command {
        command: described,
        detail: format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Holds the files a command's pre-exec hook refers to: keep it until the command has spawned.
#[must_use = "the command's namespace and cgroup files must stay open until it spawns"]
pub struct Entry {
    _files: Vec<File>,
}

/// Makes `command` start inside network namespace `netns` and, when given, inside `cgroup`,
/// both before it runs a single instruction of its own (so nothing it forks escapes).
pub fn enter_netns(command: &mut Command, netns: &str, cgroup: Option<&Path>) -> Result<Entry> {
    let ns_path = Path::new(NETNS_DIR).join(netns);
    let ns_file =
        File::open(&ns_path).map_err(LabError::io("opening network namespace", &ns_path))?;
    let procs = match cgroup {
        Some(dir) => {
            let path = dir.join("cgroup.procs");
            Some(
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(LabError::io("opening", path))?,
            )
        }
        None => None,
    };
    let ns_fd = ns_file.as_raw_fd();
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (write, setns). The fds stay valid because the returned Entry owns the files and
    // callers keep it until the command has spawned.
    unsafe {
        command.pre_exec(move || {
            if let Some(fd) = procs_fd {
                // Writing "0" moves the writing process itself into the cgroup.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(Entry {
        _files: std::iter::once(ns_file).chain(procs).collect(),
    })
}

/// Runs `f` on a new thread that has entered network namespace `netns`, and returns its result.
/// setns changes only the calling thread, so the caller's threads stay where they are: this is
/// how tests and benchmarks bind sockets and attach programs inside lab hosts without spawning
/// processes. Panics in `f` propagate.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let path = Path::new(NETNS_DIR).join(netns);
    let file = File::open(&path).map_err(LabError::io("opening network namespace", &path))?;
    let handle = std::thread::spawn(move || {
        // SAFETY: setns on a descriptor we own; it changes only this thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    });
    match handle.join() {
        Ok(result) => result.map_err(LabError::io("entering network namespace", path)),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Whether a named network namespace exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Every named namespace whose name starts with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Creates a named network namespace with its loopback up.
pub fn add_netns(name: &str) -> Result<()> {
    run("ip", ["netns", "add", name])?;
    run_in(name, "ip", ["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a named namespace; a missing one is not an error.
pub fn del_netns(name: &str) -> Result<()> {
    if !netns_exists(name) {
        return Ok(());
    }
    run("ip", ["netns", "del", name]).map(drop)
}

/// The PIDs of every process whose network namespace is `netns`.
pub fn netns_pids(netns: &str) -> Vec<i32> {
    match run("ip", ["netns", "pids", netns]) {
        Ok(out) => out.lines().filter_map(|l| l.trim().parse().ok()).collect(),
        Err(_) => Vec::new(),
    }
}

/// The cgroup holding every lab's cgroup, inside the cgroup v2 hierarchy (whose `cgroup.kill`
/// kills a whole host at once).
pub fn cgroup_parent() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(cgroup2_root).join(CGROUP_PARENT)
}

/// The mount point of the cgroup v2 hierarchy: the system's (/sys/fs/cgroup or, on hybrid
/// systems, /sys/fs/cgroup/unified), or one the lab mounts itself where none is visible (a
/// chroot, a minimal container).
fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if let Some(mount) = mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| unescape_mount_path(point))
    }) {
        return mount;
    }
    let own = PathBuf::from(OWN_CGROUP2_MOUNT);
    if fs::create_dir_all(&own).is_ok() {
        if let Err(err) = run("mount", ["-t", "cgroup2", "none", OWN_CGROUP2_MOUNT]) {
            tracing::warn!(error = %err, "mounting a cgroup v2 hierarchy for the lab");
        }
    }
    own
}

/// The cgroup directory of a lab, or of one of its hosts.
pub fn cgroup_dir(lab: &str, host: Option<&str>) -> PathBuf {
    let dir = cgroup_parent().join(lab);
    match host {
        Some(host) => dir.join(host),
        None => dir,
    }
}

/// The cgroup path of a lab or host relative to a hierarchy's root (`/mesh-lab/<lab>/<host>`),
/// as runc and meshd name cgroups.
pub fn cgroup_relative(lab: &str, host: Option<&str>) -> String {
    match host {
        Some(host) => format!("/{CGROUP_PARENT}/{lab}/{host}"),
        None => format!("/{CGROUP_PARENT}/{lab}"),
    }
}

/// Creates a cgroup directory and its parents.
pub fn create_cgroup(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(LabError::io("creating cgroup", dir))
}

/// Kills every process in a cgroup and its descendants, waits until they are gone, and removes
/// the cgroups, deepest first. A missing cgroup is not an error.
pub fn destroy_cgroup(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    kill_cgroup(dir)?;
    remove_cgroup_tree(dir)
}

/// Kills every process in a cgroup tree (cgroup.kill) and waits for it to empty.
pub fn kill_cgroup(dir: &Path) -> Result<()> {
    let kill = dir.join("cgroup.kill");
    if !kill.exists() {
        return Ok(());
    }
    fs::write(&kill, "1").map_err(LabError::io("writing", &kill))?;
    wait_until(Duration::from_secs(10), || cgroup_is_empty(dir));
    if !cgroup_is_empty(dir) {
        return Err(LabError::Command {
            command: format!("echo 1 > {}", kill.display()),
            detail: "processes survived for 10 s".into(),
        });
    }
    Ok(())
}

fn cgroup_is_empty(dir: &Path) -> bool {
    // cgroup.events says "populated 0" once no process is left anywhere in the subtree.
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|l| l == "populated 0"))
        .unwrap_or(true)
}

fn remove_cgroup_tree(dir: &Path) -> Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path())?;
            }
        }
    }
    // A cgroup can be removed only when empty; a just-killed process may take a moment to go.
    let mut last_error = None;
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => last_error = Some(err),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(LabError::Io {
        operation: "removing cgroup",
        path: dir.to_path_buf(),
        source: last_error.expect("the loop ran"),
    })
}

/// Whether `pid` is a live process (a zombie counts as dead: it is only waiting to be reaped).
pub fn process_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain ") ".
    match stat.rfind(')') {
        Some(end) => !matches!(stat[end + 1..].trim_start().chars().next(), Some('Z' | 'X')),
        None => false,
    }
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill has no memory effects; a stale pid at worst fails with ESRCH.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Polls `done` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Mount points at or below `dir`, deepest first, so they can be unmounted in order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mounts_of_type_under(dir, None)
}

/// Mount points at or below `dir` of filesystem type `fstype` (any when `None`), deepest first.
pub fn mounts_of_type_under(dir: &Path, fstype: Option<&str>) -> Vec<PathBuf> {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (path, kind) = (fields.next()?, fields.next()?);
            fstype.is_none_or(|t| t == kind).then_some(path)
        })
        .map(unescape_mount_path)
        .filter(|path| path.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unescape_mount_path(field: &str) -> PathBuf {
    // /proc/mounts escapes space, tab, newline and backslash as octal.
    PathBuf::from(
        field
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\"),
    )
}

/// Lazily unmounts `path`.
pub fn unmount(path: &Path) -> Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        LabError::Command {
            command: format!("umount {}", path.display()),
            detail: "path contains a NUL byte".into(),
        }
    })?;
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(LabError::io("unmounting", path)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path("/var/lib/a\\040b"),
            PathBuf::from("/var/lib/a b")
        );
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not_a_process() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(0));
        assert!(!process_alive(i32::MAX));
    }
}
