//! The lab's record on disk: what was built, so later commands (and other processes) can act on
//! it. `lab down` never depends on it: it finds resources by their names.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::containerd::ContainerdFiles;
use crate::error::{LabError, Result};
use crate::spec::{LinkParams, Role, TaskRuntime};

/// Where labs keep their files unless MESH_LAB_DIR says otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/mesh-lab";

/// The directory holding every lab's files.
pub fn root_dir() -> PathBuf {
    std::env::var_os("MESH_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// Whether a host is powered on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    /// Namespace, link and (for daemon roles) meshd exist.
    On,
    /// `lab kill` cut it: processes, namespace and link are gone; its files remain.
    Off,
}

/// One host as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    /// m1, w2, c1, ...
    pub name: String,
    /// What the host is for.
    pub role: Role,
    /// Underlay address on the lab switch.
    pub address: Ipv4Addr,
    /// Link parameters set for this host alone, over the lab's defaults.
    pub link_override: LinkParams,
    /// Powered on or off.
    pub power: Power,
    /// meshd's PID while it was last started.
    pub daemon_pid: Option<i32>,
    /// The link shim's PID while the link needs one.
    pub shim_pid: Option<i32>,
    /// The host's containerd's PID, in a containerd lab.
    #[serde(default)]
    pub containerd_pid: Option<i32>,
}

/// A lab as recorded in `<root>/<name>/lab.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    /// The lab's name.
    pub name: String,
    /// Seconds since the epoch when `up` finished.
    pub created_unix: u64,
    /// Link parameters every host starts with.
    pub link: LinkParams,
    /// The meshd binary the hosts run, when they run one.
    pub meshd: Option<PathBuf>,
    /// What runs meshd's tasks (labs recorded before there was a choice used processes).
    #[serde(default)]
    pub runtime: TaskRuntime,
    /// Where the daemons' embedded DNS forwards outside names (a lab host's address).
    #[serde(default)]
    pub dns_upstream: Option<Ipv4Addr>,
    /// meshd's `lb_mode`, when the lab sets one.
    #[serde(default)]
    pub lb_mode: Option<String>,
    /// Hosts in creation order.
    pub hosts: Vec<HostState>,
    /// Cut host pairs, each stored once with the smaller name first.
    pub partitions: Vec<(String, String)>,
}

impl LabState {
    /// The lab's directory.
    pub fn dir(name: &str) -> PathBuf {
        root_dir().join(name)
    }

    fn file(name: &str) -> PathBuf {
        Self::dir(name).join("lab.json")
    }

    /// Reads a lab's record.
    pub fn load(name: &str) -> Result<Option<Self>> {
        let path = Self::file(name);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(LabError::io("reading", path)(err)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|err| LabError::CorruptState {
                path,
                reason: err.to_string(),
            })
    }

    /// Writes the record atomically (write a temporary file, then rename over).
    pub fn save(&self) -> Result<()> {
        let path = Self::file(&self.name);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("lab state serializes");
        fs::write(&tmp, text).map_err(LabError::io("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(LabError::io("renaming", &path))
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Result<&HostState> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| self.unknown_host(name))
    }

    /// A host by name, mutably.
    pub fn host_mut(&mut self, name: &str) -> Result<&mut HostState> {
        let error = self.unknown_host(name);
        self.hosts.iter_mut().find(|h| h.name == name).ok_or(error)
    }

    fn unknown_host(&self, name: &str) -> LabError {
        LabError::UnknownHost {
            lab: self.name.clone(),
            host: name.to_string(),
            hosts: self
                .hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The link parameters in force for a host.
    pub fn link_of(&self, host: &HostState) -> LinkParams {
        self.link.overlaid(&host.link_override)
    }
}

/// The directory of task images every lab host's meshd is given: `<root>/images`.
pub fn image_dir() -> PathBuf {
    root_dir().join("images")
}

/// Files of one host: `<root>/<lab>/hosts/<host>/`.
pub struct HostFiles {
    /// The host's directory.
    pub dir: PathBuf,
    lab: String,
    host: String,
}

impl HostFiles {
    /// The files of `host` in `lab`.
    pub fn new(lab: &str, host: &str) -> Self {
        HostFiles {
            dir: LabState::dir(lab).join("hosts").join(host),
            lab: lab.to_string(),
            host: host.to_string(),
        }
    }
    /// The host's containerd (in a containerd lab): config, root, state, socket, log.
    pub fn containerd(&self) -> ContainerdFiles {
        ContainerdFiles::new(&self.lab, &self.host, &self.dir)
    }
    /// meshd's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// meshd's configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("meshd.toml")
    }
    /// meshd's log (stdout and stderr).
    pub fn log(&self) -> PathBuf {
        self.dir.join("meshd.log")
    }
    /// The socket meshctl uses to reach this host's meshd.
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir().join("meshd.sock")
    }
}

/// An exclusive lock on one lab's name, held for the length of a mutating operation so two
/// commands never change the same lab at once.
pub struct LabLock {
    _file: File,
}

impl LabLock {
    /// Blocks until the lock on `name` is ours.
    pub fn acquire(name: &str) -> Result<Self> {
        let root = root_dir();
        fs::create_dir_all(&root).map_err(LabError::io("creating", &root))?;
        let path = root.join(format!(".{name}.lock"));
        let file = File::create(&path).map_err(LabError::io("creating", &path))?;
        // SAFETY: flock on an fd we own; it blocks and touches no memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(LabError::io("locking", path)(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(LabLock { _file: file })
    }

    /// The lock file's path (removed by `down`).
    pub fn path(name: &str) -> PathBuf {
        root_dir().join(format!(".{name}.lock"))
    }
}
