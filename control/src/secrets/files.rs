//! A task's secret and config files on its node: a tmpfs per task at
//! `<state_dir>/secrets/<task id>` (mode 0700, never swapped where the kernel allows), one
//! file per reference with the requested owner and mode. The runtime binds each file
//! read-only into the task; the tmpfs goes when the task is removed or the node leaves.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Kind, SecretRef};
use crate::runtime::FileMount;

/// The directory holding every task's tmpfs.
pub fn root(state_dir: &Path) -> PathBuf {
    state_dir.join("secrets")
}

/// One file a task gets: what it is, where, and its bytes.
pub struct TaskFile<'a> {
    /// Secret or config.
    pub kind: Kind,
    /// The service's reference: target, owner, mode.
    pub reference: &'a SecretRef,
    /// The plaintext.
    pub data: &'a [u8],
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    let (Ok(this), Some(Ok(parent))) = (
        fs::symlink_metadata(dir),
        dir.parent().map(fs::symlink_metadata),
    ) else {
        return false;
    };
    this.dev() != parent.dev()
}

/// Mounts a fresh tmpfs for `task_id` and writes its files; returns the binds the runtime
/// makes. On error nothing is left behind.
pub fn prepare(
    state_dir: &Path,
    task_id: &str,
    files: &[TaskFile],
) -> Result<Vec<FileMount>, String> {
    if !crate::runtime::process::valid_task_id(task_id) {
        return Err(format!("task ID {task_id:?} cannot name a directory"));
    }
    let root = root(state_dir);
    fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| format!("securing {}: {e}", root.display()))?;
    let dir = root.join(task_id);
    // A leftover from a crash: start clean.
    remove(state_dir, task_id)?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let total: usize = files.iter().map(|f| f.data.len()).sum();
    // Room for the data and the inodes, in whole pages.
    let size_kib = total.div_ceil(1024) + 4 * files.len() + 64;
    let written = mount_tmpfs(&dir, size_kib).and_then(|()| write_files(&dir, files));
    match written {
        Ok(mounts) => Ok(mounts),
        Err(why) => {
            let _ = remove(state_dir, task_id);
            Err(why)
        }
    }
}

fn mount_tmpfs(dir: &Path, size_kib: usize) -> Result<(), String> {
    let target = c_path(dir)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // noswap (Linux 6.4+) keeps the plaintext off swap; older kernels refuse the option.
    for options in [
        format!("mode=0700,size={size_kib}k,noswap"),
        format!("mode=0700,size={size_kib}k"),
    ] {
        let data = CString::new(options).expect("no NUL");
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            break;
        }
    }
    Err(format!(
        "mounting a tmpfs for the task's secrets at {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    ))
}

fn write_files(dir: &Path, files: &[TaskFile]) -> Result<Vec<FileMount>, String> {
    let mut mounts = Vec::with_capacity(files.len());
    for (index, file) in files.iter().enumerate() {
        let path = dir.join(format!("{}-{index}", file.kind.as_str()));
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        out.write_all(file.data)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        let reference = file.reference;
        std::os::unix::fs::fchown(&out, Some(reference.uid), Some(reference.gid))
            .map_err(|e| format!("setting the owner of {}: {e}", path.display()))?;
        out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(reference.mode))
            .map_err(|e| format!("setting the mode of {}: {e}", path.display()))?;
        mounts.push(FileMount {
            source: path,
            target: reference.path_in_task(file.kind),
        });
    }
    Ok(mounts)
}

/// Unmounts and removes a task's tmpfs; a task without one is not an error.
pub fn remove(state_dir: &Path, task_id: &str) -> Result<(), String> {
    let dir = root(state_dir).join(task_id);
    // Mounted twice (a crash between mount and record) is possible: unmount until plain.
    for _ in 0..8 {
        if !is_mount_point(&dir) {
            break;
        }
        let target = c_path(&dir)?;
        // SAFETY: a valid NUL-terminated path; MNT_DETACH takes effect once no task holds it.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(format!(
                "unmounting {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(format!("removing {}: {err}", dir.display())),
    }
}

/// Removes every task's tmpfs (the node leaves the cluster).
pub fn clear(state_dir: &Path) {
    let Ok(entries) = fs::read_dir(root(state_dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Err(why) = remove(state_dir, &name) {
            tracing::warn!(task = %name, error = %why, "removing a task's secrets");
        }
    }
}

/// Task IDs that have a secrets directory here.
pub fn tasks_with_files(state_dir: &Path) -> Vec<String> {
    fs::read_dir(root(state_dir))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_what_is_not_there_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        remove(dir.path(), "t1").unwrap();
        clear(dir.path());
        assert!(tasks_with_files(dir.path()).is_empty());
        let plain = root(dir.path()).join("t2");
        fs::create_dir_all(&plain).unwrap();
        assert!(!is_mount_point(&plain));
        assert_eq!(tasks_with_files(dir.path()), ["t2"]);
        clear(dir.path());
        assert!(!plain.exists());
    }

    #[test]
    fn files_land_on_a_private_tmpfs_with_their_owner_and_mode_and_go_with_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = SecretRef::parse(Kind::Secret, "source=pw,uid=7,gid=8,mode=0440").unwrap();
        let config = SecretRef::parse(Kind::Config, "source=app,target=/etc/app.conf").unwrap();
        let files = [
            TaskFile {
                kind: Kind::Secret,
                reference: &secret,
                data: b"hunter2",
            },
            TaskFile {
                kind: Kind::Config,
                reference: &config,
                data: b"x=1",
            },
        ];
        let mounts = prepare(dir.path(), "t1", &files).unwrap();
        let task_dir = root(dir.path()).join("t1");
        assert!(is_mount_point(&task_dir));
        assert_eq!(mounts[0].target, "/run/secrets/pw");
        assert_eq!(mounts[1].target, "/etc/app.conf");
        assert_eq!(fs::read(&mounts[0].source).unwrap(), b"hunter2");
        let meta = fs::metadata(&mounts[0].source).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o440, 7, 8)
        );
        assert_eq!(
            fs::metadata(&mounts[1].source).unwrap().mode() & 0o7777,
            0o444
        );
        assert_eq!(fs::metadata(&task_dir).unwrap().mode() & 0o777, 0o700);
        // Preparing again (a restarted start) replaces, never stacks.
        prepare(dir.path(), "t1", &files).unwrap();
        remove(dir.path(), "t1").unwrap();
        assert!(!task_dir.exists());
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&task_dir.display().to_string()));
    }

    #[test]
    fn bad_task_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(prepare(dir.path(), "../x", &[]).is_err());
    }
}
