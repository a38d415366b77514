//! A host's life: power on (namespace, link, shim, meshd), power off (everything dies with
//! the namespace), and meshd's start and readiness.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::binaries::{self, LINKSHIM};
use crate::containerd::{self, ContainerdFiles};
use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::net;
use crate::spec::{self, host_netns, switch_netns, TaskRuntime};
use crate::state::{image_dir, HostFiles, HostState, LabState, Power};
use crate::sys;

/// How long meshd may take to open its control socket after it starts.
const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The data-path port meshd is configured with in a lab.
const DATA_PATH_PORT: u16 = 4789;
/// The port managers listen on for the cluster API and Raft.
const CLUSTER_PORT: u16 = 2377;

impl Lab {
    pub(crate) fn power_on_host(&mut self, index: usize) -> Result<()> {
        let lab = self.state.name.clone();
        let host = self.state.hosts[index].clone();
        let ns = host_netns(&lab, &host.name);
        sys::create_cgroup(&sys::cgroup_dir(&lab, Some(&host.name)))?;
        sys::add_netns(&ns)?;
        net::connect_host(
            &lab,
            &host.name,
            &ns,
            host.address,
            &self.state.link_of(&host),
        )?;
        net::prepare_lb_mode(
            &lab,
            &host.name,
            &ns,
            host.role,
            self.state.lb_mode.as_deref(),
        )?;
        self.state.hosts[index].power = Power::On;
        self.start_shim(index)?;
        if self.containerd_expected(index) {
            self.start_containerd(index)?;
        }
        if self.daemon_expected(index) {
            self.start_daemon(index)?;
        }
        Ok(())
    }

    pub(crate) fn power_off_host(&mut self, index: usize) -> Result<()> {
        let lab = self.state.name.clone();
        let host = self.state.hosts[index].name.clone();
        // Cut the wire before the processes die: a host that loses power sends nothing, so the
        // kernel's FINs and RSTs for the dying sockets must not reach the peers.
        net::disconnect_host(&lab, &host)?;
        sys::kill_cgroup(&sys::cgroup_dir(&lab, Some(&host)))?;
        self.stop_shim(index)?;
        // What a reboot clears: containerd's state (it lives in /run on a real machine), its
        // containers' mounts and cgroups.
        containerd::power_cut(
            &HostFiles::new(&lab, &host).containerd(),
            &sys::cgroup_relative(&lab, Some(&host)),
        )?;
        let ns = host_netns(&lab, &host);
        // Namespaces meshd made for this host go with it, as kernel state does in a power cut.
        for nested in sys::netns_with_prefix(&format!("{ns}.")) {
            sys::del_netns(&nested)?;
        }
        sys::del_netns(&ns)?;
        // meshd's bpffs (its pinned BPF links) is kernel state too: a reboot loses it.
        for mount in sys::mounts_of_type_under(&HostFiles::new(&lab, &host).dir, Some("bpf")) {
            sys::unmount(&mount)?;
        }
        let record = &mut self.state.hosts[index];
        record.power = Power::Off;
        record.daemon_pid = None;
        record.containerd_pid = None;
        Ok(())
    }

    /// Whether the host runs a containerd of its own: in a containerd lab, on managers and
    /// workers (with or without meshd).
    pub(crate) fn containerd_expected(&self, index: usize) -> bool {
        self.state.runtime == TaskRuntime::Containerd && self.state.hosts[index].role.runs_daemon()
    }

    /// Starts the host's containerd in its namespace and cgroup, waits until it answers and
    /// imports the lab's images into it.
    pub(crate) fn start_containerd(&mut self, index: usize) -> Result<()> {
        let lab = self.state.name.clone();
        let host = self.state.hosts[index].name.clone();
        let host_files = HostFiles::new(&lab, &host);
        let files = host_files.containerd();
        let pid = containerd::start(
            &files,
            &host_netns(&lab, &host),
            &sys::cgroup_dir(&lab, Some(&host)),
            &host_files.dir,
        )?;
        self.state.hosts[index].containerd_pid = Some(pid);
        containerd::import_images(&files, &image_dir())?;
        Ok(())
    }

    pub(crate) fn start_daemon(&mut self, index: usize) -> Result<()> {
        let lab = self.state.name.clone();
        let host = self.state.hosts[index].clone();
        let meshd = self
            .state
            .meshd
            .clone()
            .expect("daemon_expected checked meshd");
        let files = HostFiles::new(&lab, &host.name);
        fs::create_dir_all(files.state_dir())
            .map_err(LabError::io("creating", files.state_dir()))?;
        let containerd = self.containerd_expected(index).then(|| files.containerd());
        fs::write(
            files.config(),
            daemon_config(&host, &files, containerd.as_ref(), &self.state),
        )
        .map_err(LabError::io("writing", files.config()))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(files.log())
            .map_err(LabError::io("opening", files.log()))?;
        let log_err = log
            .try_clone()
            .map_err(LabError::io("opening", files.log()))?;
        let ns = host_netns(&lab, &host.name);
        let mut command = Command::new(&meshd);
        command
            .arg("--config")
            .arg(files.config())
            .env("MESH_LAB", &lab)
            .env("MESH_NETNS_PREFIX", format!("{ns}."))
            .env(
                "MESH_CGROUP_PARENT",
                sys::cgroup_relative(&lab, Some(&host.name)),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let cgroup = sys::cgroup_dir(&lab, Some(&host.name));
        let _entry = sys::enter_netns(&mut command, &ns, Some(&cgroup))?;
        // SAFETY: setsid is async-signal-safe; a new session keeps the daemon out of the
        // terminal's process group, so ^C on meshctl does not reach it.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = command.spawn().map_err(LabError::io("starting", &meshd))?;
        self.state.hosts[index].daemon_pid = Some(child.id() as i32);
        Ok(())
    }

    pub(crate) fn wait_daemon_ready(&self, index: usize) -> Result<()> {
        let host = &self.state.hosts[index];
        let Some(pid) = host.daemon_pid else {
            return Ok(());
        };
        let files = HostFiles::new(&self.state.name, &host.name);
        let socket = files.control_socket();
        let ready = sys::wait_until(DAEMON_READY_TIMEOUT, || {
            socket.exists() || !sys::process_alive(pid)
        });
        if ready && sys::process_alive(pid) {
            return Ok(());
        }
        let log = fs::read_to_string(files.log()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Err(LabError::Command {
            command: format!("meshd on {}", host.name),
            detail: format!(
                "{} before opening {}; last log lines:\n{}",
                if ready {
                    "exited"
                } else {
                    "not ready after 20 s"
                },
                socket.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        })
    }

    pub(crate) fn start_shim(&mut self, index: usize) -> Result<()> {
        let lab = self.state.name.clone();
        let host = self.state.hosts[index].clone();
        let link = self.state.link_of(&host);
        if !link.needs_shim() || host.power == Power::Off {
            return Ok(());
        }
        let shim = binaries::find(LINKSHIM)?;
        let cgroup = shim_cgroup(&lab, &host.name);
        sys::create_cgroup(&cgroup)?;
        let mut command = Command::new(&shim);
        command
            .arg(spec::switch_port(&host.name))
            .arg(net::shim_port(&host.name))
            .arg(link.delay_ms.unwrap_or(0).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let _entry = sys::enter_netns(&mut command, &switch_netns(&lab), Some(&cgroup))?;
        let child = command.spawn().map_err(LabError::io("starting", &shim))?;
        self.state.hosts[index].shim_pid = Some(child.id() as i32);
        Ok(())
    }

    pub(crate) fn stop_shim(&mut self, index: usize) -> Result<()> {
        let cgroup = shim_cgroup(&self.state.name, &self.state.hosts[index].name);
        sys::destroy_cgroup(&cgroup)?;
        self.state.hosts[index].shim_pid = None;
        Ok(())
    }
}

fn shim_cgroup(lab: &str, host: &str) -> PathBuf {
    sys::cgroup_dir(lab, Some(&format!("shim-{host}")))
}

/// meshd's configuration for a lab host (the format meshd documents in its --help); tasks run
/// through `containerd` when given.
fn daemon_config(
    host: &HostState,
    files: &HostFiles,
    containerd: Option<&ContainerdFiles>,
    lab: &LabState,
) -> String {
    let mut config = format!(
        "# Written by the lab for host {name}; the lab rewrites it on every start.\n\
         node_name = \"{name}\"\n\
         listen_addr = \"{addr}:{CLUSTER_PORT}\"\n\
         advertise_addr = \"{addr}\"\n\
         data_path_port = {DATA_PATH_PORT}\n\
         state_dir = \"{state}\"\n\
         log_level = \"info\"\n\
         image_dir = \"{images}\"\n\
         dns_upstreams = [{upstream}]\n",
        upstream = lab
            .dns_upstream
            .map_or_else(String::new, |ip| format!("\"{ip}\"")),
        name = host.name,
        addr = host.address,
        state = files.state_dir().display(),
        images = image_dir().display(),
    );
    if let Some(containerd) = containerd {
        config.push_str(&format!(
            "containerd_socket = \"{}\"\n",
            containerd.socket().display()
        ));
    }
    if let Some(mode) = &lab.lb_mode {
        config.push_str(&format!("lb_mode = \"{mode}\"\n"));
    }
    config
}
