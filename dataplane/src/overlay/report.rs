//! What an `apply` changed, as plain data: for logs and tests.

use std::fmt;
use std::net::Ipv4Addr;

use super::names::fmt_mac;

/// What one `apply` (or `clear`) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Every change made to the kernel, in order.
    pub changes: Vec<Change>,
    /// Local endpoints left alone because their task's namespace no longer exists.
    pub skipped: Vec<Skipped>,
}

impl Applied {
    /// Whether the kernel was already as desired.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Records a change to `network`.
    pub(crate) fn push(&mut self, network: &str, action: Action) {
        self.changes.push(Change {
            network: network.to_string(),
            action,
        });
    }
}

/// One change to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The network it belongs to (empty for the underlay's own leftovers).
    pub network: String,
    /// What was done.
    pub action: Action,
}

/// What was done. Devices are named as in their namespace; a task's device as `task/eth0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The network's namespace was created and pinned.
    NetworkCreated,
    /// The network's namespace, devices and veths were removed.
    NetworkRemoved,
    /// A device was created.
    DeviceCreated {
        /// Its name.
        device: String,
    },
    /// A device was deleted and created again, because it could not be changed in place.
    DeviceRecreated {
        /// Its name.
        device: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A device's MTU, MAC, master or state was corrected.
    DeviceFixed {
        /// Its name.
        device: String,
        /// What was corrected: "mtu 1450, up".
        fixes: String,
    },
    /// A device no endpoint wants was deleted.
    DeviceRemoved {
        /// Its name.
        device: String,
    },
    /// An address was added to a device.
    AddressAdded {
        /// The device.
        device: String,
        /// The address.
        ip: Ipv4Addr,
        /// Its prefix length.
        prefix_len: u8,
    },
    /// An address was removed from a device.
    AddressRemoved {
        /// The device.
        device: String,
        /// The address.
        ip: Ipv4Addr,
        /// Its prefix length.
        prefix_len: u8,
    },
    /// A task's default route was set.
    RouteSet {
        /// The task's device.
        device: String,
        /// The gateway.
        gateway: Ipv4Addr,
    },
    /// A sysctl of the network namespace was set.
    SysctlSet {
        /// Its name: "net.ipv4.ip_forward".
        key: String,
        /// The value written.
        value: String,
    },
    /// A neighbour entry (IP → MAC) was set on the vxlan device (or, for the leg's next hop,
    /// on `gw0`).
    NeighbourSet {
        /// The remote endpoint's IP.
        ip: Ipv4Addr,
        /// Its MAC.
        mac: [u8; 6],
    },
    /// A neighbour entry was removed from the vxlan device.
    NeighbourRemoved {
        /// The IP.
        ip: Ipv4Addr,
        /// The MAC it pointed to.
        mac: [u8; 6],
    },
    /// An FDB entry (MAC → VTEP) was set on the vxlan device.
    FdbSet {
        /// The remote endpoint's MAC.
        mac: [u8; 6],
        /// The VTEP it is behind.
        vtep: Ipv4Addr,
    },
    /// An FDB entry was removed from the vxlan device.
    FdbRemoved {
        /// The MAC.
        mac: [u8; 6],
        /// The VTEP it pointed to.
        vtep: Ipv4Addr,
    },
}

/// A local endpoint `apply` could not attach, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Its network.
    pub network: String,
    /// Its task.
    pub task_id: String,
    /// Why: "task namespace /run/... is gone".
    pub reason: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.network.is_empty() {
            write!(f, "network {}: ", self.network)?;
        }
        match &self.action {
            Action::NetworkCreated => write!(f, "namespace created"),
            Action::NetworkRemoved => write!(f, "removed"),
            Action::DeviceCreated { device } => write!(f, "{device} created"),
            Action::DeviceRecreated { device, reason } => {
                write!(f, "{device} recreated ({reason})")
            }
            Action::DeviceFixed { device, fixes } => write!(f, "{device} fixed: {fixes}"),
            Action::DeviceRemoved { device } => write!(f, "{device} removed"),
            Action::AddressAdded {
                device,
                ip,
                prefix_len,
            } => write!(f, "{device} address {ip}/{prefix_len} added"),
            Action::AddressRemoved {
                device,
                ip,
                prefix_len,
            } => write!(f, "{device} address {ip}/{prefix_len} removed"),
            Action::RouteSet { device, gateway } => {
                write!(f, "{device} default route via {gateway}")
            }
            Action::SysctlSet { key, value } => write!(f, "sysctl {key} = {value}"),
            Action::NeighbourSet { ip, mac } => write!(f, "neighbour {ip} -> {}", fmt_mac(mac)),
            Action::NeighbourRemoved { ip, mac } => {
                write!(f, "neighbour {ip} -> {} removed", fmt_mac(mac))
            }
            Action::FdbSet { mac, vtep } => write!(f, "fdb {} -> {vtep}", fmt_mac(mac)),
            Action::FdbRemoved { mac, vtep } => {
                write!(f, "fdb {} -> {vtep} removed", fmt_mac(mac))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_as_one_line_each() {
        let mut applied = Applied::default();
        assert!(applied.is_empty());
        applied.push(
            "web",
            Action::FdbSet {
                mac: [2, 0x42, 10, 0, 0, 3],
                vtep: Ipv4Addr::new(198, 18, 0, 2),
            },
        );
        applied.push(
            "web",
            Action::DeviceFixed {
                device: "br0".into(),
                fixes: "mtu 1450".into(),
            },
        );
        assert!(!applied.is_empty());
        let lines: Vec<String> = applied.changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "network web: fdb 02:42:0a:00:00:03 -> 198.18.0.2",
                "network web: br0 fixed: mtu 1450"
            ]
        );
    }
}
