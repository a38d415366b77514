//! Finding and removing a lab's resources by name alone, so listing and teardown work even
//! when the lab's record is missing (a crashed `up`).

use std::collections::BTreeSet;
use std::fs;

use crate::containerd;
use crate::error::{LabError, Result};
use crate::lab::{Lab, LabSummary};
use crate::spec::{self, host_netns, netns_prefix};
use crate::state::{root_dir, HostFiles, LabState, Power};
use crate::sys;

/// Every lab on this machine: recorded ones and the remains of crashed ones.
pub fn list() -> Result<Vec<LabSummary>> {
    let mut names = BTreeSet::new();
    if let Ok(entries) = fs::read_dir(root_dir()) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                names.extend(entry.file_name().into_string().ok());
            }
        }
    }
    for ns in sys::netns_with_prefix("mlab.") {
        if let Some(name) = ns.split('.').nth(1) {
            names.insert(name.to_string());
        }
    }
    if let Ok(entries) = fs::read_dir(sys::cgroup_parent()) {
        names.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok()),
        );
    }
    names
        .into_iter()
        .filter(|name| spec::validate_lab_name(name).is_ok())
        .map(|name| {
            Ok(match LabState::load(&name) {
                Ok(Some(state)) => {
                    let lab = Lab { state };
                    let status = lab.status();
                    let hosts_on = status.iter().filter(|h| h.power == Power::On).count();
                    let missing = lab
                        .hosts()
                        .iter()
                        .filter(|h| h.power == Power::On && !sys::netns_exists(&host_netns(&name, &h.name)))
                        .count();
                    LabSummary {
                        hosts: status.len(),
                        hosts_on,
                        daemons_running: status.iter().filter(|h| h.daemon == "running").count(),
                        condition: if missing == 0 {
                            "ok".into()
                        } else {
                            format!("{missing} hosts lost their namespace (reboot?); run `meshctl lab down {name}`")
                        },
                        name,
                    }
                }
                Ok(None) | Err(_) => LabSummary {
                    condition: format!("incomplete (no usable record); run `meshctl lab down {name}`"),
                    name,
                    hosts: 0,
                    hosts_on: 0,
                    daemons_running: 0,
                },
            })
        })
        .collect()
}

/// What of lab `name` already exists, if anything.
pub(crate) fn existing_resources(name: &str) -> Option<String> {
    let mut found = Vec::new();
    if LabState::dir(name).exists() {
        found.push(format!("files in {}", LabState::dir(name).display()));
    }
    let namespaces = sys::netns_with_prefix(&netns_prefix(name));
    if !namespaces.is_empty() {
        found.push(format!("{} network namespaces", namespaces.len()));
    }
    if sys::cgroup_dir(name, None).exists() {
        found.push("a cgroup".into());
    }
    (!found.is_empty()).then(|| found.join(", "))
}

/// Removes everything of lab `name`; returns whether anything was there.
pub(crate) fn teardown(name: &str) -> Result<bool> {
    let mut found = false;
    let cgroup = sys::cgroup_dir(name, None);
    if cgroup.exists() {
        found = true;
        sys::destroy_cgroup(&cgroup)?;
    }
    // Processes that entered a lab namespace from outside the cgroup (ip netns exec by hand).
    let namespaces = sys::netns_with_prefix(&netns_prefix(name));
    for ns in &namespaces {
        for pid in sys::netns_pids(ns) {
            sys::signal(pid, libc::SIGKILL);
        }
    }
    for ns in namespaces.iter().rev() {
        found = true;
        sys::del_netns(ns)?;
    }
    let dir = LabState::dir(name);
    // Hosts' containerds leave runc state, shim sockets and cgroups outside the lab directory.
    if let Ok(hosts) = fs::read_dir(dir.join("hosts")) {
        for host in hosts.flatten() {
            if let Ok(host) = host.file_name().into_string() {
                containerd::power_cut(
                    &HostFiles::new(name, &host).containerd(),
                    &sys::cgroup_relative(name, Some(&host)),
                )?;
            }
        }
    }
    containerd::teardown(name, &sys::cgroup_relative(name, None))?;
    if dir.exists() {
        found = true;
        for mount in sys::mounts_under(&dir) {
            sys::unmount(&mount)?;
        }
        fs::remove_dir_all(&dir).map_err(LabError::io("removing", &dir))?;
    }
    Ok(found)
}
