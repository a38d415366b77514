//! Task cgroups for the process runtime.
//!
//! Every task gets a cgroup v2 directory, `<v2 mount><meshd's own v2 cgroup>/tasks/<task>`, used
//! to track it (`cgroup.events`), stop it and kill it (`cgroup.kill`). Limits go where the
//! controllers are: memory.max / cpu.max when the v2 hierarchy offers them, otherwise the v1
//! hierarchies (hybrid hosts), `<v1 mount><meshd's own v1 cgroup>/mesh-tasks/<task>`. Where a
//! hierarchy is not mounted (a chroot whose /sys is a plain bind mount) it is mounted under
//! `/run/mesh/cgroup`, never under /sys.
//!
//! The paths chosen for a task are recorded in its task directory ([`TaskCgroups`]), so a
//! restarted meshd removes exactly what an earlier one created.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::Limits;

/// Where hierarchies that are not visible get mounted.
pub const OWN_MOUNT_DIR: &str = "/run/mesh/cgroup";
/// The CFS period every CPU limit uses, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts, in microseconds.
pub const CPU_MIN_QUOTA_US: u64 = 1_000;
/// The v2 directory, under meshd's own cgroup, holding one cgroup per task.
pub const V2_PARENT: &str = "tasks";
/// The v1 directory, under meshd's own cgroup of a controller, holding one cgroup per task.
pub const V1_PARENT: &str = "mesh-tasks";

/// Why a cgroup operation failed.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// A file operation on a cgroup failed.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The system cannot give what was asked; the message says what to do.
    #[error("{0}")]
    Unsupported(String),
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        operation,
        path,
        source,
    }
}

/// The cgroups of one task, as recorded in its task directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCgroups {
    /// The v2 cgroup: tracking and killing, plus limits when v2 has the controllers.
    pub v2: PathBuf,
    /// The v1 memory cgroup holding the memory limit, when v2 has no memory controller.
    pub memory_v1: Option<PathBuf>,
    /// The v1 cpu cgroup holding the CPU quota, when v2 has no cpu controller.
    pub cpu_v1: Option<PathBuf>,
}

// ---- Pure logic: parsing and path computation ----

/// One line of /proc/self/mountinfo, the fields this module needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The directory of the filesystem mounted here (a cgroup path for cgroup mounts).
    pub root: String,
    /// Where it is mounted.
    pub point: PathBuf,
    /// Filesystem type: `cgroup` (v1) or `cgroup2`.
    pub fstype: String,
    /// Superblock options; a v1 hierarchy lists its controllers here.
    pub super_options: Vec<String>,
}

/// Parses /proc/self/mountinfo; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let (root, point) = (left.get(3)?, left.get(4)?);
            let fstype = right.next()?;
            let _source = right.next()?;
            let super_options = right.next().unwrap_or("");
            Some(Mount {
                root: unescape(root),
                point: PathBuf::from(unescape(point)),
                fstype: fstype.to_string(),
                super_options: super_options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escaping of spaces, tabs, newlines and backslashes in paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount to use (the first one).
pub fn find_v2(mounts: &[Mount]) -> Option<&Mount> {
    mounts.iter().find(|m| m.fstype == "cgroup2")
}

/// The v1 hierarchy that carries `controller`.
pub fn find_v1<'a>(mounts: &'a [Mount], controller: &str) -> Option<&'a Mount> {
    mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == controller))
}

/// Which cgroups a process is in, from /proc/<pid>/cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Its v2 cgroup (the `0::` line).
    pub v2: Option<String>,
    /// Its v1 cgroups: the controllers of each hierarchy and the path in it.
    pub v1: Vec<(Vec<String>, String)>,
}

impl Membership {
    /// Parses /proc/<pid>/cgroup.
    pub fn parse(text: &str) -> Membership {
        let mut membership = Membership::default();
        for line in text.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                membership.v2 = Some(path.to_string());
            } else {
                let controllers = controllers.split(',').map(str::to_string).collect();
                membership.v1.push((controllers, path.to_string()));
            }
        }
        membership
    }

    /// The path in the v1 hierarchy carrying `controller`.
    pub fn v1_path(&self, controller: &str) -> Option<&str> {
        self.v1
            .iter()
            .find(|(controllers, _)| controllers.iter().any(|c| c == controller))
            .map(|(_, path)| path.as_str())
    }
}

/// The directory of cgroup `path` (as /proc/self/cgroup names it) under `mount`, then `rest`.
/// A mount of a sub-tree (its root is not `/`) holds paths relative to that root.
pub fn cgroup_dir(mount: &Mount, path: &str, rest: &[&str]) -> PathBuf {
    let relative = match path.strip_prefix(mount.root.trim_end_matches('/')) {
        Some(tail) if mount.root != "/" && (tail.is_empty() || tail.starts_with('/')) => tail,
        _ => path,
    };
    let mut dir = mount.point.clone();
    dir.extend(relative.split('/').filter(|part| !part.is_empty()));
    dir.extend(rest);
    dir
}

/// The CFS quota, in microseconds per [`CPU_PERIOD_US`], for `nano_cpus` billionths of a CPU.
pub fn cpu_quota_us(nano_cpus: u64) -> u64 {
    let quota = u128::from(nano_cpus) * u128::from(CPU_PERIOD_US) / 1_000_000_000;
    u64::try_from(quota)
        .unwrap_or(u64::MAX)
        .max(CPU_MIN_QUOTA_US)
}

/// The content of a v2 `cpu.max` file for `nano_cpus`.
pub fn cpu_max(nano_cpus: u64) -> String {
    format!("{} {CPU_PERIOD_US}", cpu_quota_us(nano_cpus))
}

/// Whether a v2 `cgroup.events` file says processes are left in the cgroup or below.
pub fn events_populated(events: &str) -> bool {
    !events.lines().any(|line| line.trim() == "populated 0")
}

// ---- I/O: discovery, creation, limits, killing, removal ----

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_err("reading", path))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("writing", path))
}

fn mounts() -> Result<Vec<Mount>, CgroupError> {
    Ok(parse_mountinfo(&read(Path::new("/proc/self/mountinfo"))?))
}

/// Mounts a hierarchy at `/run/mesh/cgroup/<name>`; `options` chooses v1 controllers.
fn mount_own(name: &str, fstype: &str, options: &str) -> Result<(), CgroupError> {
    let target = Path::new(OWN_MOUNT_DIR).join(name);
    fs::create_dir_all(&target).map_err(io_err("creating", &target))?;
    let c = |s: &[u8]| CString::new(s).expect("no NUL in mount arguments");
    let (source, fstype_c, options_c) = (c(b"cgroup"), c(fstype.as_bytes()), c(options.as_bytes()));
    let target_c = c(target.as_os_str().as_bytes());
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            options_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io_err("mounting a cgroup hierarchy at", &target)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The v2 mount, mounting one under /run/mesh/cgroup when none is visible.
fn v2_mount() -> Result<Mount, CgroupError> {
    if let Some(mount) = find_v2(&mounts()?) {
        return Ok(mount.clone());
    }
    mount_own("unified", "cgroup2", "").map_err(|err| {
        CgroupError::Unsupported(format!(
            "no cgroup v2 hierarchy is mounted and mounting one failed ({err}); \
             mount one (`mount -t cgroup2 none {OWN_MOUNT_DIR}/unified`)"
        ))
    })?;
    find_v2(&mounts()?).cloned().ok_or_else(|| {
        CgroupError::Unsupported("a cgroup v2 mount vanished right after mounting".into())
    })
}

/// The v1 hierarchy of `controller`, mounting it under /run/mesh/cgroup when none is visible.
fn v1_mount(controller: &str) -> Result<Mount, CgroupError> {
    if let Some(mount) = find_v1(&mounts()?, controller) {
        return Ok(mount.clone());
    }
    // A hierarchy is mounted again with exactly its set of controllers; cpu often shares one
    // with cpuacct.
    let first = mount_own(controller, "cgroup", controller);
    if first.is_err() && controller == "cpu" {
        mount_own(controller, "cgroup", "cpu,cpuacct")
    } else {
        first
    }
    .map_err(|err| {
        CgroupError::Unsupported(format!(
            "the {controller} controller is neither in the cgroup v2 hierarchy nor in a visible \
             v1 one, and mounting it failed ({err}); mount it (`mount -t cgroup -o {controller} \
             cgroup {OWN_MOUNT_DIR}/{controller}`) or run the task without limits"
        ))
    })?;
    find_v1(&mounts()?, controller)
        .cloned()
        .ok_or_else(|| CgroupError::Unsupported(format!("the {controller} hierarchy vanished")))
}

/// Chooses (without creating anything but missing mounts) the cgroups of task `task_id`.
pub fn plan(task_id: &str, limits: Limits) -> Result<TaskCgroups, CgroupError> {
    let own = Membership::parse(&read(Path::new("/proc/self/cgroup"))?);
    let v2_own = own.v2.clone().unwrap_or_else(|| "/".into());
    let v2_mount = v2_mount()?;
    let v2 = cgroup_dir(&v2_mount, &v2_own, &[V2_PARENT, task_id]);
    let v2_controllers = v2_controllers(&cgroup_dir(&v2_mount, &v2_own, &[]));
    let v1_dir = |controller: &str| -> Result<PathBuf, CgroupError> {
        let mount = v1_mount(controller)?;
        let path = own.v1_path(controller).unwrap_or("/");
        Ok(cgroup_dir(&mount, path, &[V1_PARENT, task_id]))
    };
    let needs_v1 = |controller: &str, limit: u64| {
        limit != 0 && !v2_controllers.iter().any(|c| c == controller)
    };
    Ok(TaskCgroups {
        v2,
        memory_v1: match needs_v1("memory", limits.memory_bytes) {
            true => Some(v1_dir("memory")?),
            false => None,
        },
        cpu_v1: match needs_v1("cpu", limits.nano_cpus) {
            true => Some(v1_dir("cpu")?),
            false => None,
        },
    })
}

/// The controllers a v2 cgroup can hand to its children.
fn v2_controllers(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Creates a cgroup and its missing parents. A concurrent `remove` may delete an emptied parent
/// between the two steps, hence the second try.
fn create_dir(dir: &Path) -> Result<(), CgroupError> {
    let first = fs::create_dir_all(dir);
    if first.is_err() {
        fs::create_dir_all(dir).map_err(io_err("creating cgroup", dir))?;
    }
    Ok(())
}

impl TaskCgroups {
    /// Creates the cgroups and writes the limits; on error nothing is left behind.
    pub fn create(&self, limits: Limits) -> Result<(), CgroupError> {
        let result = self.create_inner(limits);
        if result.is_err() {
            let _ = self.remove();
        }
        result
    }

    fn create_inner(&self, limits: Limits) -> Result<(), CgroupError> {
        let parent = self.v2.parent().expect("a task cgroup has a parent");
        let own = parent.parent().expect("the tasks cgroup has a parent");
        let mut v2_enable = Vec::new();
        if limits.memory_bytes != 0 && self.memory_v1.is_none() {
            v2_enable.push("memory");
        }
        if limits.nano_cpus != 0 && self.cpu_v1.is_none() {
            v2_enable.push("cpu");
        }
        // The task's cgroup first: it keeps `tasks` from being removed as empty meanwhile.
        create_dir(&self.v2)?;
        for controller in &v2_enable {
            // Each level hands the controller to the next: meshd's cgroup, then `tasks`.
            for dir in [own, parent] {
                let control = dir.join("cgroup.subtree_control");
                let result = fs::write(&control, format!("+{controller}"));
                if let Err(err) = result {
                    let why = if err.raw_os_error() == Some(libc::EBUSY) {
                        "meshd's own cgroup holds processes (meshd), and cgroup v2 hands \
                         controllers to children only of cgroups without processes (the root \
                         cgroup excepted); run meshd in the root cgroup, or start the task \
                         without limits"
                    } else {
                        "check that the controller is delegated to meshd's cgroup"
                    };
                    return Err(CgroupError::Unsupported(format!(
                        "cannot enable the {controller} controller in {}: {err}; {why}",
                        control.display()
                    )));
                }
            }
        }
        if limits.memory_bytes != 0 {
            match &self.memory_v1 {
                Some(dir) => {
                    create_dir(dir)?;
                    write(
                        &dir.join("memory.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                }
                None => write(
                    &self.v2.join("memory.max"),
                    &limits.memory_bytes.to_string(),
                )?,
            }
        }
        if limits.nano_cpus != 0 {
            match &self.cpu_v1 {
                Some(dir) => {
                    create_dir(dir)?;
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    let quota = cpu_quota_us(limits.nano_cpus).to_string();
                    write(&dir.join("cpu.cfs_quota_us"), &quota)?;
                }
                None => write(&self.v2.join("cpu.max"), &cpu_max(limits.nano_cpus))?,
            }
        }
        Ok(())
    }

    /// Every cgroup directory of the task, v2 first.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.v2.as_path())
            .chain(self.memory_v1.as_deref())
            .chain(self.cpu_v1.as_deref())
    }

    /// Opens every `cgroup.procs` for writing, for the spawned process to join with "0".
    pub fn open_procs(&self) -> Result<Vec<File>, CgroupError> {
        self.dirs()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("opening", &path))
            })
            .collect()
    }

    /// Whether a process is left in the task's v2 cgroup; a missing cgroup is empty.
    pub fn populated(&self) -> bool {
        fs::read_to_string(self.v2.join("cgroup.events"))
            .map(|events| events_populated(&events))
            .unwrap_or(false)
    }

    /// The PIDs (in meshd's pid namespace) in the task's v2 cgroup.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.v2.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// Kills every process of the task: `cgroup.kill`, or SIGKILL to each PID where the kernel
    /// has no `cgroup.kill` (before 5.14).
    pub fn kill(&self) -> Result<(), CgroupError> {
        let kill = self.v2.join("cgroup.kill");
        if kill.exists() {
            return write(&kill, "1");
        }
        for pid in self.pids() {
            // SAFETY: kill takes no pointers; the PID was just read from the task's cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Ok(())
    }

    /// Deletes the task's cgroups (they must be empty; a just-killed process may take a
    /// moment to leave) and their parents when they are left empty. Missing ones are fine.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            remove_dir(dir)?;
            // Fails while other tasks remain, which is the point.
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        Ok(())
    }
}

fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if tries < 100 && err.raw_os_error() == Some(libc::EBUSY) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => return Err(io_err("removing cgroup", dir)(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpu\\040acct rw,relatime shared:7 - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
bad line
";

    #[test]
    fn mountinfo_finds_both_kinds_of_hierarchy() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 5);
        assert_eq!(
            find_v2(&mounts).unwrap().point,
            Path::new("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            find_v1(&mounts, "memory").unwrap().point,
            Path::new("/sys/fs/cgroup/memory")
        );
        // "cpu" must not match the cpuacct hierarchy, nor the reverse.
        assert_eq!(
            find_v1(&mounts, "cpu").unwrap().point,
            Path::new("/sys/fs/cgroup/cpu")
        );
        assert_eq!(
            find_v1(&mounts, "cpuacct").unwrap().point,
            Path::new("/sys/fs/cgroup/cpu acct")
        );
        assert!(find_v1(&mounts, "pids").is_none());
        assert!(find_v2(&parse_mountinfo("")).is_none());
    }

    #[test]
    fn proc_cgroup_gives_own_paths() {
        let own = Membership::parse("5:cpu,cpuacct:/a\n4:memory:/process_api/x\n0::/lab/m1\n");
        assert_eq!(own.v2.as_deref(), Some("/lab/m1"));
        assert_eq!(own.v1_path("memory"), Some("/process_api/x"));
        assert_eq!(own.v1_path("cpuacct"), Some("/a"));
        assert_eq!(own.v1_path("pids"), None);
        assert_eq!(Membership::parse("garbage").v2, None);
    }

    fn mount(root: &str, point: &str) -> Mount {
        Mount {
            root: root.into(),
            point: point.into(),
            fstype: "cgroup2".into(),
            super_options: vec![],
        }
    }

    #[test]
    fn task_dirs_sit_under_the_own_cgroup() {
        let unified = mount("/", "/sys/fs/cgroup/unified");
        assert_eq!(
            cgroup_dir(&unified, "/", &[V2_PARENT, "t1"]),
            Path::new("/sys/fs/cgroup/unified/tasks/t1")
        );
        assert_eq!(
            cgroup_dir(&unified, "/mesh-lab/L/w1", &[V2_PARENT, "t1"]),
            Path::new("/sys/fs/cgroup/unified/mesh-lab/L/w1/tasks/t1")
        );
        let memory = mount("/", "/run/mesh/cgroup/memory");
        assert_eq!(
            cgroup_dir(&memory, "/process_api/x", &[V1_PARENT, "t1"]),
            Path::new("/run/mesh/cgroup/memory/process_api/x/mesh-tasks/t1")
        );
    }

    #[test]
    fn a_subtree_mount_strips_its_root() {
        let sub = mount("/docker/abc", "/sys/fs/cgroup");
        assert_eq!(
            cgroup_dir(&sub, "/docker/abc/meshd", &["tasks"]),
            Path::new("/sys/fs/cgroup/meshd/tasks")
        );
        assert_eq!(
            cgroup_dir(&sub, "/docker/abc", &[]),
            Path::new("/sys/fs/cgroup")
        );
        // A sibling that merely shares the prefix is not inside the root.
        assert_eq!(
            cgroup_dir(&sub, "/docker/abcd", &[]),
            Path::new("/sys/fs/cgroup/docker/abcd")
        );
    }

    #[test]
    fn cpu_quota_scales_with_the_period_and_has_a_floor() {
        assert_eq!(cpu_quota_us(500_000_000), 50_000);
        assert_eq!(cpu_quota_us(1_000_000_000), 100_000);
        assert_eq!(cpu_quota_us(2_500_000_000), 250_000);
        assert_eq!(cpu_quota_us(1), CPU_MIN_QUOTA_US);
        assert_eq!(cpu_quota_us(u64::MAX), 1_844_674_407_370_955);
        assert_eq!(cpu_max(500_000_000), "50000 100000");
    }

    #[test]
    fn events_tell_populated() {
        assert!(events_populated("populated 1\nfrozen 0\n"));
        assert!(!events_populated("populated 0\nfrozen 0\n"));
    }

    #[test]
    fn task_cgroups_round_trip_through_json() {
        let cgroups = TaskCgroups {
            v2: "/a/tasks/t".into(),
            memory_v1: Some("/m/mesh-tasks/t".into()),
            cpu_v1: None,
        };
        let json = serde_json::to_string(&cgroups).unwrap();
        assert_eq!(serde_json::from_str::<TaskCgroups>(&json).unwrap(), cgroups);
        assert_eq!(cgroups.dirs().count(), 2);
    }
}
