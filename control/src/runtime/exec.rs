//! Running a command inside a running task, as health checks do (`docker exec`), for any
//! runtime that can name the task's main process.
//!
//! The command joins the task the way `nsenter --all --root --wd` would, from the task's pid:
//! its cgroups (the runtime hands over their `cgroup.procs`), its ipc, uts, network, cgroup and
//! mount namespaces, its root directory (chroot to `/proc/<pid>/root`, which is right whether
//! the task pivoted or chrooted), its working directory and its environment (as the task's
//! main process was started). The pid namespace is entered by the thread that forks (setns on
//! a pid namespace only affects children), so the command is a process of the task's pid
//! namespace, killed with its process group when it outlives its timeout.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::process::Stdio;
use std::time::Duration;

use super::{ExecOutput, ExitStatus, RuntimeError};

/// The most output kept of one command (its end is kept: that is where errors are).
pub const MAX_OUTPUT: usize = 4096;

/// Namespaces joined, in order (the mount namespace last: it changes what paths mean).
const NAMESPACES: [(&str, libc::c_int); 5] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

/// Everything the child joins, opened before fork.
struct Joined {
    procs: Vec<File>,
    namespaces: Vec<(File, libc::c_int)>,
    root: File,
    cwd: File,
}

/// Runs `argv` inside the task whose main process is `pid` (in meshd's pid namespace),
/// joining the cgroups whose `cgroup.procs` are `procs`; kills it after `timeout`.
pub async fn run(
    pid: i32,
    procs: Vec<File>,
    argv: &[String],
    timeout: Duration,
) -> Result<ExecOutput, RuntimeError> {
    if argv.is_empty() {
        return Err(RuntimeError::Failed("exec: no command given".into()));
    }
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let argv = argv.to_vec();
    // A thread of its own: entering the task's pid namespace is for good.
    std::thread::Builder::new()
        .name("mesh-exec".into())
        .spawn(move || {
            let _runtime = handle.enter();
            let _ = tx.send(spawn(pid, procs, &argv));
        })
        .map_err(|err| RuntimeError::Failed(format!("exec: starting a thread: {err}")))?;
    let child = rx
        .await
        .map_err(|_| RuntimeError::Failed("exec: the spawning thread died".into()))??;
    let group = child.id().map(|id| id as i32);
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            let status = output.status;
            let exit = match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(code), _) => ExitStatus::Code(code),
                (None, Some(signal)) => ExitStatus::Signal(signal),
                (None, None) => ExitStatus::Unknown,
            };
            let mut text = output.stdout;
            text.extend_from_slice(&output.stderr);
            Ok(ExecOutput {
                exit: Some(exit),
                output: tail(&text),
            })
        }
        Ok(Err(err)) => Err(RuntimeError::Failed(format!(
            "exec: waiting for the command: {err}"
        ))),
        Err(_) => {
            if let Some(group) = group {
                // SAFETY: kill takes no pointers; the group is the command's own (it is its
                // leader, and the child is not reaped before the future drops).
                unsafe { libc::kill(-group, libc::SIGKILL) };
            }
            Ok(ExecOutput {
                exit: None,
                output: String::new(),
            })
        }
    }
}

/// The last [`MAX_OUTPUT`] bytes of `bytes`, trimmed, invalid UTF-8 replaced.
pub fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(MAX_OUTPUT);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

/// The task's environment, from its main process.
fn environment(pid: i32) -> Result<Vec<(String, String)>, RuntimeError> {
    let path = format!("/proc/{pid}/environ");
    let raw = std::fs::read(&path)
        .map_err(|err| RuntimeError::Failed(format!("exec: reading {path}: {err}")))?;
    Ok(parse_environ(&raw))
}

/// Splits a `/proc/<pid>/environ` into `KEY=VALUE` pairs (entries without '=' are dropped).
pub fn parse_environ(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (key, value) = entry.split_once('=')?;
            (!key.is_empty()).then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

fn spawn(
    pid: i32,
    procs: Vec<File>,
    argv: &[String],
) -> Result<tokio::process::Child, RuntimeError> {
    let open = |what: &str| {
        let path = format!("/proc/{pid}/{what}");
        File::open(&path).map_err(|err| {
            RuntimeError::Failed(format!(
                "exec: opening {path}: {err} (has the task exited?)"
            ))
        })
    };
    let mut namespaces = Vec::new();
    for (name, flag) in NAMESPACES {
        namespaces.push((open(&format!("ns/{name}"))?, flag));
    }
    let joined = Joined {
        procs,
        namespaces,
        root: open("root")?,
        cwd: open("cwd")?,
    };
    let env = environment(pid)?;
    let pid_ns = open("ns/pid")?;
    // SAFETY: setns takes a descriptor we hold open; it changes only the namespace this
    // thread's children are born in, and the thread ends after this spawn.
    if unsafe { libc::setns(pid_ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(RuntimeError::Failed(format!(
            "exec: entering the task's pid namespace: {err}"
        )));
    }
    let (program, args) = argv.split_first().expect("checked non-empty");
    let dot = CString::new(".").expect("no NUL");
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let fds: Vec<RawFd> = joined.procs.iter().map(|f| f.as_raw_fd()).collect();
    let namespaces: Vec<(RawFd, libc::c_int)> = joined
        .namespaces
        .iter()
        .map(|(f, flag)| (f.as_raw_fd(), *flag))
        .collect();
    let (root, cwd) = (joined.root.as_raw_fd(), joined.cwd.as_raw_fd());
    // SAFETY: the hook runs in the forked child and calls only async-signal-safe functions
    // (write, setns, fchdir, chroot, chdir) on descriptors `joined` keeps open until the spawn
    // returns and on a string made before fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for &(fd, flag) in &namespaces {
                if libc::setns(fd, flag) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::fchdir(root) != 0 || libc::chroot(dot.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fchdir(cwd) != 0 && libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn();
    drop((joined, pid_ns));
    child.map_err(|err| {
        RuntimeError::Failed(format!("exec: starting {program:?} in the task: {err}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_splits_on_nul_and_keeps_values_with_equals() {
        assert_eq!(
            parse_environ(b"PATH=/bin:/usr/bin\0A=b=c\0junk\0=x\0\0"),
            [
                ("PATH".to_string(), "/bin:/usr/bin".to_string()),
                ("A".to_string(), "b=c".to_string())
            ]
        );
    }

    #[test]
    fn output_keeps_its_end() {
        let long = "x".repeat(MAX_OUTPUT) + "the error\n";
        let kept = tail(long.as_bytes());
        assert!(
            kept.ends_with("the error") && kept.len() == MAX_OUTPUT - 1,
            "{}",
            kept.len()
        );
        assert_eq!(tail(b"  ok \n"), "ok");
    }

    #[tokio::test]
    async fn a_command_runs_in_another_process_namespaces_with_its_environment() {
        // SAFETY: geteuid takes nothing.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        // Our own process stands in for a task: same namespaces, so only the plumbing is tested.
        let pid = std::process::id() as i32;
        let argv = ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"].map(String::from);
        let out = run(pid, Vec::new(), &argv, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out.exit, Some(ExitStatus::Code(3)));
        assert_eq!(out.output, "out\nerr");
        let argv = ["/bin/sh", "-c", "sleep 10"].map(String::from);
        let out = run(pid, Vec::new(), &argv, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(out.exit, None);
    }
}
