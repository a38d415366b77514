//! Lab operations: up, down, kill, start, stop-daemon, partition, heal, link changes, exec.
//!
//! Every mutating operation takes the lab's lock and re-reads its record first, so concurrent
//! commands from different processes see each other's changes.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::binaries::{self, LINKSHIM, MESHCTL, MESHD};
use crate::error::{LabError, Result};
use crate::inventory::{existing_resources, teardown};
use crate::net::{self, LossRule};
use crate::spec::{self, host_netns, LabSpec, LinkParams, Role};
use crate::state::{HostFiles, HostState, LabLock, LabState, Power};
use crate::sys;

/// A lab on this machine, as recorded.
pub struct Lab {
    pub(crate) state: LabState,
}

/// What `status` reports for one host.
#[derive(Clone, Debug, Serialize)]
pub struct HostStatus {
    /// Host name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Underlay address.
    pub address: Ipv4Addr,
    /// Powered on or off.
    pub power: Power,
    /// "running", "stopped" or "none" (clients run no daemon).
    pub daemon: &'static str,
    /// meshd's PID while it runs.
    pub daemon_pid: Option<i32>,
    /// Link parameters in force.
    pub link: LinkParams,
}

/// One line of `list`.
#[derive(Clone, Debug, Serialize)]
pub struct LabSummary {
    /// Lab name.
    pub name: String,
    /// Hosts recorded (0 when the record is missing).
    pub hosts: usize,
    /// Hosts powered on.
    pub hosts_on: usize,
    /// meshd processes alive.
    pub daemons_running: usize,
    /// "ok", or what is wrong and how to fix it.
    pub condition: String,
}

impl Lab {
    /// Builds a lab: switch, hosts, links, and meshd on every manager and worker. On any
    /// failure it removes what it built, so a failed `up` changes nothing.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        require_root()?;
        spec.validate()?;
        let _lock = LabLock::acquire(&spec.name)?;
        if let Some(found) = existing_resources(&spec.name) {
            return Err(LabError::Exists {
                name: spec.name.clone(),
                found,
            });
        }
        let hosts = spec.hosts();
        let meshd = if spec.start_daemons && hosts.iter().any(|h| h.role.runs_daemon()) {
            Some(binaries::find(MESHD)?)
        } else {
            None
        };
        if spec.link.needs_shim() {
            binaries::find(LINKSHIM)?;
        }
        if meshd.is_some() && spec.form_cluster {
            binaries::find(MESHCTL)?;
        }
        let dir = LabState::dir(&spec.name);
        fs::create_dir_all(&dir).map_err(LabError::io("creating", &dir))?;

        let mut lab = Lab {
            state: LabState {
                name: spec.name.clone(),
                created_unix: 0,
                link: spec.link,
                meshd,
                runtime: spec.runtime,
                lb_mode: spec.lb_mode.clone(),
                dns_upstream: match &spec.dns_upstream_host {
                    Some(name) => Some(
                        hosts
                            .iter()
                            .find(|h| &h.name == name)
                            .map(|h| h.address)
                            .ok_or_else(|| LabError::InvalidSpec {
                                field: "dns_upstream_host",
                                value: name.clone(),
                                reason: "not a host of the lab; name one of its hosts, e.g. c1"
                                    .into(),
                            })?,
                    ),
                    None => None,
                },
                hosts: hosts
                    .iter()
                    .map(|plan| HostState {
                        name: plan.name.clone(),
                        role: plan.role,
                        address: plan.address,
                        link_override: LinkParams::default(),
                        power: Power::Off,
                        daemon_pid: None,
                        shim_pid: None,
                        containerd_pid: None,
                    })
                    .collect(),
                partitions: Vec::new(),
            },
        };
        match lab.build(spec.form_cluster) {
            Ok(()) => Ok(lab),
            Err(err) => {
                tracing::warn!(lab = %spec.name, error = %err, "lab up failed; removing what it built");
                if let Err(cleanup) = teardown(&spec.name) {
                    tracing::warn!(lab = %spec.name, error = %cleanup, "cleanup after failed up");
                }
                Err(err)
            }
        }
    }

    fn build(&mut self, form_cluster: bool) -> Result<()> {
        let name = self.state.name.clone();
        sys::create_cgroup(&sys::cgroup_dir(&name, None))?;
        net::create_switch(&name)?;
        for index in 0..self.state.hosts.len() {
            self.power_on_host(index)?;
        }
        self.apply_switch_rules()?;
        self.state.created_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.state.save()?;
        for index in 0..self.state.hosts.len() {
            self.wait_daemon_ready(index)?;
        }
        if form_cluster && self.state.meshd.is_some() {
            self.form_cluster()?;
        }
        Ok(())
    }

    /// Opens an existing lab by name.
    pub fn open(name: &str) -> Result<Lab> {
        spec::validate_lab_name(name)?;
        match LabState::load(name)? {
            Some(state) => Ok(Lab { state }),
            None => Err(LabError::UnknownLab {
                name: name.to_string(),
            }),
        }
    }

    /// Removes every namespace, link, process, mount, cgroup and file of lab `name`. Works from
    /// names alone, so it also cleans up after a crashed `up`. Idempotent in effect: a second
    /// call reports that the lab is unknown.
    pub fn down(name: &str) -> Result<()> {
        require_root()?;
        spec::validate_lab_name(name)?;
        let lock = LabLock::acquire(name)?;
        let found = teardown(name)?;
        drop(lock);
        let _ = fs::remove_file(LabLock::path(name));
        if !found {
            return Err(LabError::UnknownLab {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The lab's record.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// The hosts, in creation order.
    pub fn hosts(&self) -> &[HostState] {
        &self.state.hosts
    }

    /// A host's underlay address.
    pub fn address(&self, host: &str) -> Result<Ipv4Addr> {
        Ok(self.state.host(host)?.address)
    }

    /// A host's network namespace name.
    pub fn netns(&self, host: &str) -> Result<String> {
        self.state.host(host)?;
        Ok(host_netns(&self.state.name, host))
    }

    /// The files of a host (state dir, config, log, control socket).
    pub fn files(&self, host: &str) -> Result<HostFiles> {
        self.state.host(host)?;
        Ok(HostFiles::new(&self.state.name, host))
    }

    /// Every host's power, daemon and link.
    pub fn status(&self) -> Vec<HostStatus> {
        self.state
            .hosts
            .iter()
            .map(|host| {
                let running = host.daemon_pid.filter(|&pid| sys::process_alive(pid));
                HostStatus {
                    name: host.name.clone(),
                    role: host.role,
                    address: host.address,
                    power: host.power,
                    daemon: match (
                        host.role.runs_daemon() && self.state.meshd.is_some(),
                        running,
                    ) {
                        (false, _) => "none",
                        (true, Some(_)) => "running",
                        (true, None) => "stopped",
                    },
                    daemon_pid: running,
                    link: self.state.link_of(host),
                }
            })
            .collect()
    }

    /// Simulates power loss: every process of the host dies (meshd and its tasks), its
    /// namespace and kernel state vanish and its link goes down. Its files remain.
    pub fn kill(&mut self, host: &str) -> Result<()> {
        let _lock = self.relock()?;
        let index = self.index_of(host)?;
        self.require_power(
            index,
            Power::On,
            "already off; `meshctl lab start` powers it on",
        )?;
        self.power_off_host(index)?;
        self.apply_switch_rules()?;
        self.state.save()
    }

    /// Powers a killed host back on with its files, or restarts meshd on a host whose daemon
    /// was stopped.
    pub fn start(&mut self, host: &str) -> Result<()> {
        let _lock = self.relock()?;
        let index = self.index_of(host)?;
        if self.state.hosts[index].power == Power::Off {
            self.power_on_host(index)?;
            self.apply_switch_rules()?;
        } else if self.daemon_expected(index) && !self.daemon_running(index) {
            self.start_daemon(index)?;
        } else {
            return Err(self.host_state_error(
                index,
                "running",
                "nothing to start; `meshctl lab kill` powers it off",
            ));
        }
        self.state.save()?;
        self.wait_daemon_ready(index)
    }

    /// Kills only meshd (SIGKILL, as in a crash); tasks and kernel state stay.
    pub fn stop_daemon(&mut self, host: &str) -> Result<()> {
        let _lock = self.relock()?;
        let index = self.index_of(host)?;
        self.require_power(index, Power::On, "powered off; its daemon is already gone")?;
        let pid = match self.state.hosts[index].daemon_pid {
            Some(pid) if sys::process_alive(pid) => pid,
            _ => {
                return Err(self.host_state_error(
                    index,
                    "without a running meshd",
                    "`meshctl lab start` starts it",
                ))
            }
        };
        sys::signal(pid, libc::SIGKILL);
        // Exit releases meshd's BPF links and namespaces under the kernel's rtnl lock: on a
        // loaded machine that takes seconds, and a new meshd must find the state dir free.
        sys::wait_until(Duration::from_secs(30), || !sys::process_alive(pid));
        self.state.hosts[index].daemon_pid = None;
        self.state.save()
    }

    /// Cuts every host in `hosts` off from every host in `from`, both directions, at the lab
    /// switch. Partitions add up until `heal`.
    pub fn partition(&mut self, hosts: &[String], from: &[String]) -> Result<()> {
        let _lock = self.relock()?;
        if hosts.is_empty() || from.is_empty() {
            return Err(LabError::InvalidSpec {
                field: "partition",
                value: format!("{hosts:?} --from {from:?}"),
                reason: "name at least one host on each side".into(),
            });
        }
        for name in hosts.iter().chain(from) {
            self.index_of(name)?;
        }
        let mut pairs: BTreeSet<(String, String)> = self.state.partitions.iter().cloned().collect();
        for a in hosts {
            for b in from {
                if a == b {
                    return Err(LabError::InvalidSpec {
                        field: "partition",
                        value: a.clone(),
                        reason: "a host cannot be cut off from itself; list it on one side only"
                            .into(),
                    });
                }
                pairs.insert(ordered(a, b));
            }
        }
        self.state.partitions = pairs.into_iter().collect();
        self.apply_switch_rules()?;
        self.state.save()
    }

    /// Removes every partition.
    pub fn heal(&mut self) -> Result<()> {
        let _lock = self.relock()?;
        self.state.partitions.clear();
        self.apply_switch_rules()?;
        self.state.save()
    }

    /// Changes one host's link parameters (fields left None keep their value).
    pub fn set_link(&mut self, host: &str, change: LinkParams) -> Result<()> {
        change.validate()?;
        let _lock = self.relock()?;
        let index = self.index_of(host)?;
        let before = self.state.link_of(&self.state.hosts[index]);
        let override_now = self.state.hosts[index].link_override.overlaid(&change);
        self.state.hosts[index].link_override = override_now;
        let after = self.state.link_of(&self.state.hosts[index]);
        if after.needs_shim() {
            binaries::find(LINKSHIM)?;
        }
        if self.state.hosts[index].power == Power::On {
            let (lab, ns) = (self.state.name.clone(), host_netns(&self.state.name, host));
            if before.needs_shim() != after.needs_shim() {
                // The link changes shape: rebuild it (the host keeps its namespace and processes).
                self.stop_shim(index)?;
                net::disconnect_host(&lab, host)?;
                net::connect_host(&lab, host, &ns, self.state.hosts[index].address, &after)?;
                net::prepare_lb_mode(
                    &lab,
                    host,
                    &ns,
                    self.state.hosts[index].role,
                    self.state.lb_mode.as_deref(),
                )?;
                self.start_shim(index)?;
            } else {
                net::set_mtu(&lab, host, &ns, &after)?;
                if after.needs_shim() && before.delay_ms != after.delay_ms {
                    self.stop_shim(index)?;
                    self.start_shim(index)?;
                }
            }
            self.apply_switch_rules()?;
        }
        self.state.save()
    }

    /// Runs `argv` inside a host to completion with inherited stdio.
    pub fn exec(&self, host: &str, argv: &[String]) -> Result<ExitStatus> {
        let (mut command, _entry) = self.command(host, argv)?;
        command.status().map_err(LabError::io("running", &argv[0]))
    }

    /// Runs `argv` inside a host and captures its output.
    pub fn output<S: AsRef<str>>(&self, host: &str, argv: &[S]) -> Result<Output> {
        let argv: Vec<String> = argv.iter().map(|s| s.as_ref().to_string()).collect();
        let (mut command, _entry) = self.command(host, &argv)?;
        command.stdin(Stdio::null());
        command.output().map_err(LabError::io("running", &argv[0]))
    }

    /// Starts `argv` inside a host in the background (it dies with the host).
    pub fn spawn<S: AsRef<str>>(
        &self,
        host: &str,
        argv: &[S],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Child> {
        let argv: Vec<String> = argv.iter().map(|s| s.as_ref().to_string()).collect();
        let (mut command, _entry) = self.command(host, &argv)?;
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        command.spawn().map_err(LabError::io("starting", &argv[0]))
    }

    /// A command that will run inside the host's namespace and cgroup, with MESH_LAB,
    /// MESH_HOST and MESH_SOCKET set so meshctl finds the host's meshd. Keep the Entry until the
    /// command has spawned.
    fn command(&self, host: &str, argv: &[String]) -> Result<(Command, sys::Entry)> {
        let index = self.index_of(host)?;
        self.require_power(
            index,
            Power::On,
            "powered off; `meshctl lab start` powers it on",
        )?;
        let Some((program, args)) = argv.split_first() else {
            return Err(LabError::InvalidSpec {
                field: "command",
                value: "(none)".into(),
                reason: "give the command to run after --".into(),
            });
        };
        let files = HostFiles::new(&self.state.name, host);
        let mut command = Command::new(program);
        command
            .args(args)
            .env("MESH_LAB", &self.state.name)
            .env("MESH_HOST", host)
            .env("MESH_SOCKET", files.control_socket());
        let cgroup = sys::cgroup_dir(&self.state.name, Some(host));
        let entry = sys::enter_netns(
            &mut command,
            &host_netns(&self.state.name, host),
            Some(&cgroup),
        )?;
        Ok((command, entry))
    }

    pub(crate) fn relock(&mut self) -> Result<LabLock> {
        let lock = LabLock::acquire(&self.state.name)?;
        self.state = LabState::load(&self.state.name)?.ok_or_else(|| LabError::UnknownLab {
            name: self.state.name.clone(),
        })?;
        Ok(lock)
    }

    pub(crate) fn index_of(&self, host: &str) -> Result<usize> {
        self.state.host(host)?;
        Ok(self
            .state
            .hosts
            .iter()
            .position(|h| h.name == host)
            .expect("host() found it"))
    }

    pub(crate) fn require_power(
        &self,
        index: usize,
        power: Power,
        hint: &'static str,
    ) -> Result<()> {
        if self.state.hosts[index].power == power {
            return Ok(());
        }
        let state = match self.state.hosts[index].power {
            Power::On => "powered on",
            Power::Off => "powered off",
        };
        Err(self.host_state_error(index, state, hint))
    }

    pub(crate) fn host_state_error(
        &self,
        index: usize,
        state: &'static str,
        hint: &'static str,
    ) -> LabError {
        LabError::HostState {
            lab: self.state.name.clone(),
            host: self.state.hosts[index].name.clone(),
            state,
            hint,
        }
    }

    pub(crate) fn daemon_expected(&self, index: usize) -> bool {
        self.state.meshd.is_some() && self.state.hosts[index].role.runs_daemon()
    }

    pub(crate) fn daemon_running(&self, index: usize) -> bool {
        self.state.hosts[index]
            .daemon_pid
            .is_some_and(sys::process_alive)
    }

    pub(crate) fn apply_switch_rules(&self) -> Result<()> {
        let address = |name: &str| self.state.host(name).map(|h| h.address);
        let cuts = self
            .state
            .partitions
            .iter()
            .map(|(a, b)| Ok((address(a)?, address(b)?, format!("{a}<->{b}"))))
            .collect::<Result<Vec<_>>>()?;
        let losses: Vec<LossRule> = self
            .state
            .hosts
            .iter()
            .filter(|h| h.power == Power::On)
            .filter_map(|h| {
                let link = self.state.link_of(h);
                link.loss_pct.map(|loss_pct| LossRule {
                    port: net::bridge_port(&h.name, &link),
                    loss_pct,
                })
            })
            .collect();
        net::apply_switch_rules(&self.state.name, &cuts, &losses)
    }
}

/// A lab that is removed when dropped, also while a panic unwinds: what tests and benchmarks use
/// so they never leave a lab behind.
pub struct ScopedLab(Lab);

impl ScopedLab {
    /// Brings up a lab that lives as long as the returned value.
    pub fn up(spec: &LabSpec) -> Result<ScopedLab> {
        Lab::up(spec).map(ScopedLab)
    }
}

impl std::ops::Deref for ScopedLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.0
    }
}

impl std::ops::DerefMut for ScopedLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.0
    }
}

impl Drop for ScopedLab {
    fn drop(&mut self) {
        if let Err(err) = Lab::down(self.0.name()) {
            eprintln!("removing lab {}: {err}", self.0.name());
        }
    }
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

fn require_root() -> Result<()> {
    if sys::is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_pairs_are_stored_once() {
        assert_eq!(ordered("w1", "m1"), ordered("m1", "w1"));
    }
}
