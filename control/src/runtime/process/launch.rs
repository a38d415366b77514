//! Starting a task: the code that runs between fork and exec.
//!
//! meshd spawns an *intermediate* process. In its pre-exec hook the intermediate joins the task's
//! cgroups and network namespace, unshares pid and uts namespaces and forks the *task*, which is
//! pid 1 of the new pid namespace. The task unshares a mount namespace of its own, sets up its
//! root filesystem and returns to std, which execs the command. The intermediate never execs:
//! it records the task's pid, waits for it, records how it ended in the `exit` file and exits.
//! It stays in meshd's mount namespace, so the task's mounts (and its pivot_root) never touch
//! it, and it ignores SIGTERM, so stopping the task never loses the exit status.
//!
//! Everything after fork must be async-signal-safe: no allocation, no locks. All paths are
//! prepared as C strings beforehand, and numbers are formatted into stack buffers.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;

use crate::runtime::cgroup::{self, TaskCgroups};
use crate::runtime::{ExitStatus, RuntimeError};

/// `open_tree` flag: clone the mount instead of opening it in place.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `move_mount` flag: the source is the descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// What one task runs, and where.
pub(super) struct Launch<'a> {
    pub task_id: &'a str,
    pub task_dir: &'a Path,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    /// The cached image rootfs, or `None` to run on the host's filesystem.
    pub rootfs: Option<&'a Path>,
    pub working_dir: &'a str,
    pub netns: &'a Path,
    pub cgroups: &'a TaskCgroups,
    /// Bound over /etc/resolv.conf when given.
    pub resolv_conf: Option<&'a Path>,
    /// Files bound read-only into the task (secrets and configs; image tasks only).
    pub files: &'a [crate::runtime::FileMount],
}

/// A file to bind into the task, prepared before fork: a detached bind mount of the source
/// (`open_tree(OPEN_TREE_CLONE)`, close-on-exec), attached with `move_mount` after the task has
/// entered its own root, so the target path is resolved inside the task's filesystem, never
/// the host's. (A plain bind from meshd's namespace is refused once the task's namespace is
/// its own: the kernel binds only mounts of the caller's namespace, or detached ones.)
struct BoundFile {
    /// The detached mount.
    tree_fd: RawFd,
    /// Directories to create first, outermost first.
    parents: Vec<CString>,
    /// The absolute path in the task.
    target: CString,
}

/// The mounts of a task with an image rootfs.
struct RootfsMounts {
    merged: CString,
    overlay_options: CString,
    dev: CString,
    proc: CString,
    tmp: CString,
    etc: CString,
}

/// Everything the pre-exec hook needs, prepared before fork.
struct Prepared {
    procs_fds: Vec<RawFd>,
    netns_fd: RawFd,
    hostname: Vec<u8>,
    /// Every visible mount point, made private one by one where `/` is not a mount (a chroot).
    mount_points: Vec<CString>,
    /// Namespace files pinned by bind mounts (other tasks' netns): detached in the task's mount
    /// namespace, so that it does not keep them alive.
    nsfs_mounts: Vec<CString>,
    rootfs: Option<RootfsMounts>,
    /// The file to bind, and where /etc/resolv.conf is before the root changes.
    resolv_conf: Option<(CString, CString)>,
    /// Secrets and configs, bound once the task is in its root.
    files: Vec<BoundFile>,
    working_dir: CString,
    pid_file: CString,
    exit_tmp: CString,
    exit_file: CString,
}

fn c_path(path: &Path) -> Result<CString, RuntimeError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::Failed(format!("{} contains a NUL byte", path.display())))
}

fn failed(what: &str, path: &Path) -> impl FnOnce(io::Error) -> RuntimeError {
    let message = format!("{what} {}", path.display());
    move |err| RuntimeError::Failed(format!("{message}: {err}"))
}

/// Spawns the intermediate; returns once the task has exec'd its command (or failed to).
pub(super) fn spawn(launch: &Launch) -> Result<tokio::process::Child, RuntimeError> {
    let dir = launch.task_dir;
    let output = |name: &str| {
        let path = dir.join(name);
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&path)
            .map_err(failed("creating", &path))
    };
    let (stdout, stderr) = (output("stdout")?, output("stderr")?);
    let netns = File::open(launch.netns).map_err(|err| {
        RuntimeError::Failed(format!(
            "opening the task's network namespace {}: {err} (the agent creates it with \
             runtime::netns::create before start)",
            launch.netns.display()
        ))
    })?;
    let procs = launch
        .cgroups
        .open_procs()
        .map_err(|err| RuntimeError::Failed(err.to_string()))?;
    let mounts = cgroup::parse_mountinfo(
        &std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(failed("reading", Path::new("/proc/self/mountinfo")))?,
    );
    let rootfs = match launch.rootfs {
        Some(lower) => Some(rootfs_mounts(lower, dir)?),
        None => None,
    };
    let resolv_conf = match launch.resolv_conf {
        Some(file) => {
            let target = match launch.rootfs {
                Some(_) => dir.join("merged/etc/resolv.conf"),
                None => Path::new("/etc/resolv.conf").to_path_buf(),
            };
            Some((c_path(file)?, c_path(&target)?))
        }
        None => None,
    };
    if launch.rootfs.is_none() && !launch.files.is_empty() {
        return Err(RuntimeError::Failed(
            "secrets and configs need an image: a task on the host's filesystem would see every other task's".into(),
        ));
    }
    let mut sources = Vec::with_capacity(launch.files.len());
    let mut files = Vec::with_capacity(launch.files.len());
    for file in launch.files {
        let path = c_path(&file.source)?;
        // SAFETY: a valid NUL-terminated path; the returned descriptor is checked and owned.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                path.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(failed("cloning a mount of", &file.source)(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: open_tree returned a fresh descriptor that nothing else owns.
        let source = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) };
        let target = Path::new(&file.target);
        let parents = target
            .ancestors()
            .skip(1)
            .filter(|p| p.parent().is_some())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(c_path)
            .collect::<Result<_, _>>()?;
        files.push(BoundFile {
            tree_fd: source.as_raw_fd(),
            parents,
            target: c_path(target)?,
        });
        sources.push(source);
    }
    let prepared = Prepared {
        procs_fds: procs.iter().map(|f| f.as_raw_fd()).collect(),
        netns_fd: netns.as_raw_fd(),
        hostname: launch.task_id.bytes().take(12).collect(),
        mount_points: mounts
            .iter()
            .map(|m| c_path(&m.point))
            .collect::<Result<_, _>>()?,
        nsfs_mounts: mounts
            .iter()
            .rev()
            .filter(|m| m.fstype == "nsfs")
            .map(|m| c_path(&m.point))
            .collect::<Result<_, _>>()?,
        rootfs,
        resolv_conf,
        files,
        working_dir: CString::new(launch.working_dir)
            .map_err(|_| RuntimeError::Failed("the working directory contains a NUL".into()))?,
        pid_file: c_path(&dir.join("pid"))?,
        exit_tmp: c_path(&dir.join("exit.tmp"))?,
        exit_file: c_path(&dir.join("exit"))?,
    };
    let (program, args) = launch
        .argv
        .split_first()
        .ok_or_else(|| RuntimeError::Failed("the task has no command".into()))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: the hook runs in the forked child and calls only async-signal-safe functions
    // (write, setns, unshare, fork, mount, chdir, waitpid, open, rename, _exit) on data prepared
    // above; it allocates nothing. The descriptors it uses stay open until `spawn` returns
    // because `netns` and `procs` live until the end of this function.
    unsafe {
        command.pre_exec(move || pre_exec(&prepared));
    }
    let child = command.spawn();
    drop((netns, procs, sources));
    child.map_err(|err| RuntimeError::Failed(format!("starting {program:?}: {err}")))
}

fn rootfs_mounts(lower: &Path, dir: &Path) -> Result<RootfsMounts, RuntimeError> {
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).map_err(failed("creating", d))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    // overlayfs splits its options on ',' and lowerdir on ':'.
    if [lower, dir].iter().any(|p| {
        let s = p.as_os_str().as_bytes();
        s.contains(&b',') || s.contains(&b':')
    }) {
        return Err(RuntimeError::Failed(format!(
            "the state directory path {} contains ',' or ':', which overlayfs cannot take; \
             choose another state_dir",
            dir.display()
        )));
    }
    Ok(RootfsMounts {
        merged: c_path(&merged)?,
        overlay_options: CString::new(options).expect("paths were checked for NUL"),
        dev: c_path(&merged.join("dev"))?,
        proc: c_path(&merged.join("proc"))?,
        tmp: c_path(&merged.join("tmp"))?,
        etc: c_path(&merged.join("etc"))?,
    })
}

// ---- After fork: async-signal-safe code only ----

/// Writes "mesh process runtime: <step> failed (errno N)" to the task's stderr file and
/// returns the error std reports to the spawning meshd.
fn fail(step: &[u8]) -> io::Error {
    let err = io::Error::last_os_error();
    let mut buf = [0u8; 20];
    let errno = format_decimal(
        err.raw_os_error().unwrap_or(0).unsigned_abs().into(),
        &mut buf,
    );
    for part in [
        b"mesh process runtime: ".as_slice(),
        step,
        b" failed (errno ",
        errno,
        b")\n",
    ] {
        write_all(2, part);
    }
    err
}

fn write_all(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: bytes is a valid buffer of the given length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n.unsigned_abs()..];
    }
}

fn pre_exec(p: &Prepared) -> io::Result<()> {
    for &fd in &p.procs_fds {
        // SAFETY: fd is an open cgroup.procs file; "0" moves the calling process.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(fail(b"joining the task's cgroup"));
        }
    }
    // SAFETY: setns and unshare take no pointers; this process is single-threaded after fork.
    if unsafe { libc::setns(p.netns_fd, libc::CLONE_NEWNET) } != 0 {
        return Err(fail(b"joining the network namespace"));
    }
    // SAFETY: as above.
    if unsafe { libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWUTS) } != 0 {
        return Err(fail(b"creating pid and uts namespaces"));
    }
    // SAFETY: fork in a single-threaded process; the child continues with async-signal-safe
    // code only.
    match unsafe { libc::fork() } {
        -1 => Err(fail(b"forking the task")),
        0 => task(p),
        pid => intermediate(p, pid),
    }
}

/// The task (pid 1 of its pid namespace): builds its filesystem view, then returns to exec.
fn task(p: &Prepared) -> io::Result<()> {
    // SAFETY: every pointer passed below is a NUL-terminated string prepared before fork (or
    // null where the call allows it); the calls only change this process's namespaces.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(fail(b"creating a mount namespace"));
        }
        // Nothing mounted from here on may propagate back to meshd's namespace.
        let private = libc::MS_REC | libc::MS_PRIVATE;
        if mount(None, c"/", None, private, None) != 0 {
            // In a chroot `/` is not a mount point: make each visible mount private instead.
            for point in &p.mount_points {
                mount(None, point, None, private, None);
            }
        }
        for point in &p.nsfs_mounts {
            libc::umount2(point.as_ptr(), libc::MNT_DETACH);
        }
        if libc::sethostname(p.hostname.as_ptr().cast(), p.hostname.len()) != 0 {
            return Err(fail(b"setting the hostname"));
        }
        let safe = libc::MS_NOSUID | libc::MS_NODEV;
        match &p.rootfs {
            Some(r) => {
                let overlay = Some(r.overlay_options.as_c_str());
                if mount(Some(c"overlay"), &r.merged, Some(c"overlay"), 0, overlay) != 0 {
                    return Err(fail(b"mounting the overlay rootfs"));
                }
                // Created in the upper layer if the image lacks them; the rootfs is untouched.
                libc::mkdir(r.dev.as_ptr(), 0o755);
                libc::mkdir(r.proc.as_ptr(), 0o555);
                libc::mkdir(r.tmp.as_ptr(), 0o1777);
                libc::mkdir(r.etc.as_ptr(), 0o755);
                let bind = libc::MS_BIND | libc::MS_REC;
                if mount(Some(c"/dev"), &r.dev, None, bind, None) != 0 {
                    return Err(fail(b"binding /dev"));
                }
                if mount(
                    Some(c"proc"),
                    &r.proc,
                    Some(c"proc"),
                    safe | libc::MS_NOEXEC,
                    None,
                ) != 0
                {
                    return Err(fail(b"mounting /proc"));
                }
                if mount(
                    Some(c"tmpfs"),
                    &r.tmp,
                    Some(c"tmpfs"),
                    safe,
                    Some(c"mode=1777"),
                ) != 0
                {
                    return Err(fail(b"mounting /tmp"));
                }
                bind_resolv_conf(p, true)?;
                if libc::chdir(r.merged.as_ptr()) != 0 {
                    return Err(fail(b"entering the rootfs"));
                }
                // pivot_root drops every host mount from the task's view; it needs `/` to be a
                // mount point, which it is not in a chroot, where chroot has to do.
                let dot = c".".as_ptr();
                if libc::syscall(libc::SYS_pivot_root, dot, dot) == 0 {
                    libc::umount2(dot, libc::MNT_DETACH);
                } else if libc::chroot(dot) != 0 {
                    return Err(fail(b"entering the rootfs (pivot_root and chroot)"));
                }
                if libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(fail(b"entering the rootfs"));
                }
                bind_files(p)?;
            }
            None => {
                if mount(
                    Some(c"proc"),
                    c"/proc",
                    Some(c"proc"),
                    safe | libc::MS_NOEXEC,
                    None,
                ) != 0
                {
                    return Err(fail(b"mounting /proc"));
                }
                bind_resolv_conf(p, false)?;
            }
        }
        if libc::chdir(p.working_dir.as_ptr()) != 0 {
            return Err(fail(b"entering the working directory"));
        }
    }
    Ok(())
}

/// Binds the task's resolv.conf read-only over /etc/resolv.conf (created if the image lacks
/// one; in the overlay's upper layer, so the image is untouched).
fn bind_resolv_conf(p: &Prepared, create: bool) -> io::Result<()> {
    let Some((source, target)) = &p.resolv_conf else {
        return Ok(());
    };
    // SAFETY: NUL-terminated paths prepared before fork; open, close and mount are
    // async-signal-safe.
    unsafe {
        // Never create files on the host's own filesystem.
        if create {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            let fd = libc::open(target.as_ptr(), flags, 0o644);
            if fd >= 0 {
                libc::close(fd);
            }
        }
        let bind = libc::MS_BIND;
        if mount(Some(source), target, None, bind, None) != 0 {
            return Err(fail(b"binding /etc/resolv.conf"));
        }
        let read_only = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        if mount(None, target, None, read_only, None) != 0 {
            return Err(fail(b"making /etc/resolv.conf read-only"));
        }
    }
    Ok(())
}

/// Binds each secret and config read-only at its target, creating the target (and its
/// directories) in the task's own root (the overlay's upper layer) when the image lacks them.
fn bind_files(p: &Prepared) -> io::Result<()> {
    for file in &p.files {
        // SAFETY: NUL-terminated strings and a descriptor prepared before fork; mkdir, open,
        // close, mount and the raw move_mount syscall are async-signal-safe. The task is already in its own root, so no path here reaches
        // the host's filesystem.
        unsafe {
            for dir in &file.parents {
                libc::mkdir(dir.as_ptr(), 0o755);
            }
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            let fd = libc::open(file.target.as_ptr(), flags, 0o400);
            if fd >= 0 {
                libc::close(fd);
            }
            let attached = libc::syscall(
                libc::SYS_move_mount,
                file.tree_fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                file.target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            );
            if attached != 0 {
                return Err(fail(b"binding a secret or config file"));
            }
            let read_only = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC;
            if mount(None, &file.target, None, read_only, None) != 0 {
                return Err(fail(b"making a secret or config file read-only"));
            }
        }
    }
    Ok(())
}

/// mount(2) with optional strings.
///
/// # Safety
/// Only async-signal-safe; the arguments are valid C strings.
unsafe fn mount(
    source: Option<&std::ffi::CStr>,
    target: &std::ffi::CStr,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
    data: Option<&std::ffi::CStr>,
) -> libc::c_int {
    let ptr = |s: Option<&std::ffi::CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a valid NUL-terminated string (the caller's contract).
    unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    }
}

/// The intermediate: records the task's pid, waits for it, records its exit, exits.
fn intermediate(p: &Prepared, pid: libc::pid_t) -> ! {
    // SAFETY: signal, open, write, close, waitpid, rename and _exit are async-signal-safe and
    // get valid pointers to stack buffers and prepared C strings.
    unsafe {
        // meshd's handlers (tokio's SIGCHLD) must not run here; stopping the task must not
        // stop its watcher.
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(signal, libc::SIG_IGN);
        }
        let mut buf = [0u8; 20];
        write_file(
            &p.pid_file,
            format_decimal(pid.unsigned_abs().into(), &mut buf),
        );
        // Closing every descriptor (std's exec-status socket among them) lets spawn return
        // as soon as the task has exec'd, and keeps no file of meshd open.
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
            for fd in 0..1024 {
                libc::close(fd);
            }
        }
        let mut status = 0;
        loop {
            let got = libc::waitpid(pid, &mut status, 0);
            if got == pid {
                break;
            }
            if got < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                libc::_exit(1);
            }
        }
        let mut buf = [0u8; 32];
        let len = encode_exit(status, &mut buf);
        // Written whole, then renamed: a reader never sees half a status.
        write_file(&p.exit_tmp, &buf[..len]);
        libc::rename(p.exit_tmp.as_ptr(), p.exit_file.as_ptr());
        libc::_exit(0)
    }
}

fn write_file(path: &CString, bytes: &[u8]) {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
    // SAFETY: path is a valid C string; the fd is ours and closed once.
    unsafe {
        let fd = libc::open(path.as_ptr(), flags, 0o644);
        if fd >= 0 {
            write_all(fd, bytes);
            libc::close(fd);
        }
    }
}

// ---- Number formatting and the exit file, without allocation ----

/// Formats `n` in decimal into `buf`, returning the digits.
pub(super) fn format_decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

/// Writes the exit file's content for a waitpid status (`code N` or `signal N`, then a newline)
/// into `buf`, returning its length.
pub(super) fn encode_exit(status: libc::c_int, buf: &mut [u8; 32]) -> usize {
    let (word, number): (&[u8], i32) = if libc::WIFSIGNALED(status) {
        (b"signal ", libc::WTERMSIG(status))
    } else {
        (b"code ", libc::WEXITSTATUS(status))
    };
    let mut digits = [0u8; 20];
    let digits = format_decimal(number.unsigned_abs().into(), &mut digits);
    let mut len = 0;
    for part in [word, digits, b"\n"] {
        buf[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    len
}

/// Parses an exit file; `None` if it is not one.
pub(super) fn parse_exit(text: &str) -> Option<ExitStatus> {
    let (word, number) = text.trim().split_once(' ')?;
    let number: i32 = number.parse().ok()?;
    match word {
        "code" => Some(ExitStatus::Code(number)),
        "signal" => Some(ExitStatus::Signal(number)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(status: libc::c_int) -> String {
        let mut buf = [0u8; 32];
        let len = encode_exit(status, &mut buf);
        String::from_utf8(buf[..len].to_vec()).unwrap()
    }

    #[test]
    fn decimal_formatting() {
        let mut buf = [0u8; 20];
        assert_eq!(format_decimal(0, &mut buf), b"0");
        assert_eq!(format_decimal(4194304, &mut buf), b"4194304");
        assert_eq!(format_decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }

    #[test]
    fn exit_statuses_round_trip() {
        // waitpid encodes an exit code in bits 8..16 and a killing signal in bits 0..7.
        assert_eq!(encoded(3 << 8), "code 3\n");
        assert_eq!(encoded(0), "code 0\n");
        assert_eq!(encoded(255 << 8), "code 255\n");
        assert_eq!(encoded(libc::SIGKILL), "signal 9\n");
        assert_eq!(encoded(libc::SIGTERM | 0x80), "signal 15\n"); // with a core dump
        assert_eq!(parse_exit(&encoded(3 << 8)), Some(ExitStatus::Code(3)));
        assert_eq!(
            parse_exit(&encoded(libc::SIGKILL)),
            Some(ExitStatus::Signal(9))
        );
    }

    #[test]
    fn bad_exit_files_are_refused() {
        assert_eq!(parse_exit(""), None);
        assert_eq!(parse_exit("code"), None);
        assert_eq!(parse_exit("code x"), None);
        assert_eq!(parse_exit("died 3"), None);
    }
}
