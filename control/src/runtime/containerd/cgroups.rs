//! Finding and deleting a task's cgroups. runc creates the container's cgroupsPath in every
//! hierarchy it uses (each cgroup v1 controller, and on hybrid systems the v2 one as well) and
//! deletes them when the task is deleted; after a crash they stay behind, so `remove` deletes
//! whatever is left.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Mount points of every cgroup hierarchy this process sees, v1 and v2, each hierarchy once.
pub fn hierarchies() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_hierarchies(&mountinfo)
}

/// The cgroup mount points in a `/proc/<pid>/mountinfo` text. Only mounts of a hierarchy's
/// root count (a bind mount of a subtree names paths relative to something else), and a
/// hierarchy mounted twice counts once.
pub fn parse_hierarchies(mountinfo: &str) -> Vec<PathBuf> {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split_whitespace().collect();
        let fstype = right.split_whitespace().next().unwrap_or_default();
        let (Some(device), Some(root), Some(point)) = (fields.get(2), fields.get(3), fields.get(4))
        else {
            continue;
        };
        if matches!(fstype, "cgroup" | "cgroup2") && *root == "/" && seen.insert(*device) {
            found.push(PathBuf::from(unescape(point)));
        }
    }
    found
}

/// The directories of cgroup `path` (absolute, as in an OCI spec) that exist.
pub fn dirs(path: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|mount| mount.join(path.trim_start_matches('/')))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// Deletes cgroup `path` in every hierarchy (its processes must be gone). A cgroup that is
/// not there is not an error.
pub fn remove(path: &str) -> io::Result<()> {
    for dir in dirs(path) {
        remove_dir(&dir)?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    // Children first (runc makes none, but a task could); a just-killed process may take a
    // moment to leave, so EBUSY is retried for a while.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dir(&entry.path())?;
            }
        }
    }
    let mut attempts = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if attempts >= 50 => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("removing cgroup {}: {err}", dir.display()),
                ))
            }
            Err(_) => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn unescape(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as octal.
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 27 0:38 / /run/mesh-lab/cgroup2 rw,relatime - cgroup2 none rw
51 27 0:32 /sub /run/x rw,relatime - cgroup cgroup rw,memory
52 27 0:40 / /run/mesh-lab/cgroup-v1/a\\040b rw shared:5 - cgroup cgroup rw,pids
";

    #[test]
    fn every_hierarchy_root_is_found_once() {
        let found = parse_hierarchies(MOUNTINFO);
        let expected: Vec<PathBuf> = [
            "/sys/fs/cgroup/cpu",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/unified",
            "/run/mesh-lab/cgroup-v1/a b",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(found, expected);
        assert!(parse_hierarchies("garbage\n").is_empty());
    }
}
