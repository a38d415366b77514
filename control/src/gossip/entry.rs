//! The endpoint table's rows: one per task attached to a network, owned by the node that runs
//! the task. Keyed by (network id, task id).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::store::NodeId;

/// Longest string field accepted in an entry: IDs are 25 characters and names are short, so
/// this only stops a bug from producing rows that cannot fit a datagram.
pub const MAX_FIELD_LEN: usize = 128;

/// A task's health as its node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Health {
    /// The task has no health check: it serves once running.
    None,
    /// The health check has not passed yet.
    Starting,
    /// The health check passes.
    Healthy,
    /// The health check fails.
    Unhealthy,
    /// The task is stopping: load balancers keep its flows but send it no new ones, and DNS
    /// no longer names it.
    Draining,
}

impl Health {
    /// Whether load balancers and DNS should send traffic to it.
    pub fn is_serving(self) -> bool {
        matches!(self, Health::None | Health::Healthy)
    }
}

/// One task's presence on one network, as its node publishes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointEntry {
    /// The network's ID.
    pub network_id: String,
    /// The service's ID.
    pub service_id: String,
    /// The service's name (what `<service>` resolves).
    pub service_name: String,
    /// The task's ID.
    pub task_id: String,
    /// The task's name, e.g. `web.2.<task id>`.
    pub task_name: String,
    /// The task's slot in its service (replicated services), 0 for global ones.
    pub slot: u64,
    /// The task's address on the network.
    pub ip: Ipv4Addr,
    /// The task's MAC address on the network.
    pub mac: [u8; 6],
    /// The underlay IPv4 address of the task's host: the VXLAN tunnel endpoint.
    pub vtep: Ipv4Addr,
    /// Health as the task's node sees it.
    pub health: Health,
}

/// What is wrong with an entry handed to `publish`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// A string field is longer than [`MAX_FIELD_LEN`].
    #[error("endpoint {task_id:?} on {network_id:?}: field {field} is {len} bytes, over the {MAX_FIELD_LEN}-byte limit")]
    FieldTooLong {
        /// The entry's network.
        network_id: String,
        /// The entry's task.
        task_id: String,
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// The network or task ID is empty.
    #[error("endpoint {task_id:?} on {network_id:?}: network and task IDs must not be empty")]
    EmptyKey {
        /// The entry's network.
        network_id: String,
        /// The entry's task.
        task_id: String,
    },
    /// Two entries with the same (network, task).
    #[error("endpoint {task_id:?} on {network_id:?} is given twice; publish one entry per task and network")]
    Duplicate {
        /// The entry's network.
        network_id: String,
        /// The entry's task.
        task_id: String,
    },
}

impl EndpointEntry {
    /// Checks the sizes that keep every entry within one datagram.
    pub fn validate(&self) -> Result<(), EntryError> {
        if self.network_id.is_empty() || self.task_id.is_empty() {
            return Err(EntryError::EmptyKey {
                network_id: self.network_id.clone(),
                task_id: self.task_id.clone(),
            });
        }
        for (field, value) in [
            ("network_id", &self.network_id),
            ("service_id", &self.service_id),
            ("service_name", &self.service_name),
            ("task_id", &self.task_id),
            ("task_name", &self.task_name),
        ] {
            if value.len() > MAX_FIELD_LEN {
                return Err(EntryError::FieldTooLong {
                    network_id: self.network_id.clone(),
                    task_id: self.task_id.clone(),
                    field,
                    len: value.len(),
                });
            }
        }
        Ok(())
    }

    /// The fields that travel in a record: everything but the key, which the record's group
    /// (network) and task id carry.
    pub(crate) fn body(&self) -> EntryBody {
        EntryBody {
            service_id: self.service_id.clone(),
            service_name: self.service_name.clone(),
            task_name: self.task_name.clone(),
            slot: self.slot,
            ip: self.ip,
            mac: self.mac,
            vtep: self.vtep,
            health: self.health,
        }
    }

    /// Rebuilds an entry from its key and body.
    pub(crate) fn from_body(network_id: &str, task_id: &str, body: &EntryBody) -> EndpointEntry {
        EndpointEntry {
            network_id: network_id.to_string(),
            service_id: body.service_id.clone(),
            service_name: body.service_name.clone(),
            task_id: task_id.to_string(),
            task_name: body.task_name.clone(),
            slot: body.slot,
            ip: body.ip,
            mac: body.mac,
            vtep: body.vtep,
            health: body.health,
        }
    }
}

/// An entry without its key, as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBody {
    /// See [`EndpointEntry::service_id`].
    pub service_id: String,
    /// See [`EndpointEntry::service_name`].
    pub service_name: String,
    /// See [`EndpointEntry::task_name`].
    pub task_name: String,
    /// See [`EndpointEntry::slot`].
    pub slot: u64,
    /// See [`EndpointEntry::ip`].
    pub ip: Ipv4Addr,
    /// See [`EndpointEntry::mac`].
    pub mac: [u8; 6],
    /// See [`EndpointEntry::vtep`].
    pub vtep: Ipv4Addr,
    /// See [`EndpointEntry::health`].
    pub health: Health,
}

/// A visible, live row of the table: the entry, who owns it and the version it was written at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// The row.
    pub entry: EndpointEntry,
    /// The node that runs the task and alone may change the row.
    pub origin: NodeId,
    /// The origin's version of the row (hybrid clock: microseconds since the epoch or later).
    pub version: u64,
}

#[cfg(test)]
pub(crate) fn sample(network: &str, task: &str, ip_last: u8) -> EndpointEntry {
    EndpointEntry {
        network_id: network.into(),
        service_id: "svc".into(),
        service_name: "web".into(),
        task_id: task.into(),
        task_name: format!("web.1.{task}"),
        slot: 1,
        ip: Ipv4Addr::new(10, 0, 0, ip_last),
        mac: crate::network::mac_of(Ipv4Addr::new(10, 0, 0, ip_last)),
        vtep: Ipv4Addr::new(198, 18, 0, 2),
        health: Health::Healthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let mut entry = sample("n", "t", 2);
        assert!(entry.validate().is_ok());
        entry.task_name = "x".repeat(MAX_FIELD_LEN + 1);
        let err = entry.validate().unwrap_err().to_string();
        assert!(err.contains("task_name"), "{err}");
        entry.task_id.clear();
        assert!(matches!(entry.validate(), Err(EntryError::EmptyKey { .. })));
    }

    #[test]
    fn body_round_trips() {
        let entry = sample("n", "t", 2);
        assert_eq!(EndpointEntry::from_body("n", "t", &entry.body()), entry);
        assert!(Health::None.is_serving() && !Health::Starting.is_serving());
    }
}
