//! Local multi-host labs: every host is a network namespace with one veth to a lab switch (a
//! bridge in a namespace of its own), an underlay address in 198.18.0.0/24, and meshd running
//! inside it under the lab's directory.
//!
//! One implementation serves `meshctl lab`, `netns-tests` and `bench`. A lab is named; two labs
//! with different names coexist. Everything a lab creates carries its name, so `Lab::down` can
//! remove it all even when the command that built it crashed half way:
//! - network namespaces `mlab.<lab>.<host>` and `mlab.<lab>.switch` (and any namespace meshd
//!   creates, which it prefixes with its host's namespace name);
//! - the cgroup `mesh-lab/<lab>` holding every process the lab started (and, in a containerd
//!   lab, the same path in every cgroup v1 hierarchy, where runc puts the tasks);
//! - files under `$MESH_LAB_DIR/<lab>` (default /var/lib/mesh-lab).
//!
//! Nothing here touches the host's own namespace: links are created inside lab namespaces.

mod binaries;
mod cluster;
mod containerd;
mod error;
mod host;
mod inventory;
mod lab;
pub mod linkshim;
mod net;
mod spec;
mod state;
mod sys;
mod xdp;

pub use binaries::{find as find_binary, Binary, LINKSHIM, MESHCTL, MESHD};
pub use containerd::{ContainerdFiles, NAMESPACE as CONTAINERD_NAMESPACE};
pub use error::{LabError, Result};
pub use inventory::list;
pub use lab::{HostStatus, Lab, LabSummary, ScopedLab};
pub use spec::{
    host_netns, netns_prefix, switch_netns, HostPlan, LabSpec, LinkParams, Role, TaskRuntime,
};
pub use state::{image_dir, root_dir, HostFiles, HostState, LabState, Power};
pub use sys::in_netns;
