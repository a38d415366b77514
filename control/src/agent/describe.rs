//! What the agent tells the managers about its node: runtime, CPUs, memory and images.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::runtime::Runtime;
use crate::store::NodeDescription;

/// How long a list of images is reused before the runtime is asked again.
const IMAGES_TTL: Duration = Duration::from_secs(3);

pub(super) struct Describer {
    runtime: Arc<dyn Runtime>,
    underlay_ip: Option<std::net::Ipv4Addr>,
    gossip_port: u16,
    cached: Mutex<Option<(Instant, NodeDescription)>>,
}

impl Describer {
    pub(super) fn new(
        runtime: Arc<dyn Runtime>,
        underlay_ip: Option<std::net::Ipv4Addr>,
        gossip_port: u16,
    ) -> Self {
        Describer {
            runtime,
            underlay_ip,
            gossip_port,
            cached: Mutex::new(None),
        }
    }

    pub(super) async fn describe(&self) -> NodeDescription {
        let mut cached = self.cached.lock().await;
        if let Some((at, description)) = cached.as_ref() {
            if at.elapsed() < IMAGES_TTL {
                return description.clone();
            }
        }
        let description =
            describe_node(self.runtime.as_ref(), self.underlay_ip, self.gossip_port).await;
        *cached = Some((Instant::now(), description.clone()));
        description
    }
}

/// What this node has: its runtime and images, CPUs, memory and underlay MTU. Sent with the
/// join (so a service can use the node's images at once) and with every agent report.
pub async fn describe_node(
    runtime: &dyn Runtime,
    underlay_ip: Option<std::net::Ipv4Addr>,
    gossip_port: u16,
) -> NodeDescription {
    let mut images = match runtime.images().await {
        Ok(images) => images,
        Err(err) => {
            tracing::warn!(error = %err, "listing images");
            Vec::new()
        }
    };
    images.sort();
    NodeDescription {
        runtime: runtime.name().into(),
        nano_cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
            * 1_000_000_000,
        memory_bytes: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| mem_total(&text))
            .unwrap_or(0),
        images,
        underlay_mtu: underlay_ip.map_or(0, underlay_mtu),
        gossip_port,
    }
}

/// The MTU of the interface holding the underlay address (0 when unknown).
fn underlay_mtu(ip: std::net::Ipv4Addr) -> u32 {
    dataplane::overlay::underlay_mtu(ip, None).unwrap_or_else(|err| {
        tracing::warn!(error = %err, "reading the underlay MTU");
        0
    })
}

/// MemTotal from /proc/meminfo, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_meminfo() {
        assert_eq!(
            mem_total("MemFree: 5 kB\nMemTotal:       24576000 kB\n"),
            Some(24576000 * 1024)
        );
        assert_eq!(mem_total("nothing"), None);
    }
}
