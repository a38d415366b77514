//! The network API on the leader: create (allocating subnet, gateway and VNI), list, inspect
//! and remove overlay networks.

use super::orchestrate::{now_ms, random_id};
use super::Manager;
use crate::api::ApiResponse;
use crate::network::alloc::allocate_network;
use crate::network::{
    find_network, smallest_underlay_mtu, NetworkRecord, NetworkSpec, NetworkView,
};
use crate::store::{ClusterState, Command};

/// MTUs an overlay accepts: IPv4's minimum for a full header set, up to jumbo frames.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9000;

impl Manager {
    pub(super) async fn create_network(&self, spec: NetworkSpec) -> ApiResponse {
        if let Err(why) = crate::service::spec::validate_name(&spec.name) {
            return ApiResponse::Error(why);
        }
        if spec.driver != "overlay" {
            return ApiResponse::Error(format!(
                "--driver {:?} is not supported; Mesh networks use --driver overlay",
                spec.driver
            ));
        }
        if let Some(mtu) = spec.mtu.filter(|m| !MTU_RANGE.contains(m)) {
            return ApiResponse::Error(format!(
                "--opt mtu={mtu} is out of range; give {}-{}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            ));
        }
        let planned = self.read(|state| {
            if state.network_named(&spec.name).is_some() {
                return Err(format!(
                    "a network named {} already exists; choose another name",
                    spec.name
                ));
            }
            let allocated = allocate_network(state, &spec)?;
            Ok((allocated, mtu_warnings(state, &spec)))
        });
        let (allocated, warnings) = match planned {
            Ok(planned) => planned,
            Err(why) => return ApiResponse::Error(why),
        };
        let id = random_id();
        let record = NetworkRecord {
            id: id.clone(),
            name: spec.name,
            subnet: allocated.subnet,
            gateway: allocated.gateway,
            vni: allocated.vni,
            mtu: spec.mtu,
            attachable: spec.attachable,
            labels: spec.labels,
            created_ms: now_ms(),
        };
        match self.apply(Command::CreateNetwork(record)).await {
            Ok(()) => ApiResponse::Done {
                message: id,
                warnings,
            },
            Err(answer) => answer,
        }
    }

    pub(super) async fn remove_network(&self, key: &str) -> ApiResponse {
        let found = self.read(|state| {
            let network = find_network(state, key)?;
            state.network_in_use(network)?;
            Ok::<_, String>(network.clone())
        });
        let network = match found {
            Ok(network) => network,
            Err(why) => return ApiResponse::Error(why),
        };
        match self.apply(Command::RemoveNetwork { id: network.id }).await {
            Ok(()) => super::api::done(network.name),
            Err(answer) => answer,
        }
    }
}

/// Networks by name.
pub(super) fn list_networks(state: &ClusterState) -> ApiResponse {
    let mut views: Vec<NetworkView> = state
        .networks
        .values()
        .map(|n| NetworkView::of(n, state))
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    ApiResponse::Networks(views)
}

/// Says when the underlay leaves less than a standard 1500-byte frame, or when the given MTU
/// does not fit the underlay (large packets would be dropped: a black hole).
fn mtu_warnings(state: &ClusterState, spec: &NetworkSpec) -> Vec<String> {
    let underlay = smallest_underlay_mtu(state);
    let mut warnings = Vec::new();
    if underlay < 1500 {
        warnings.push(format!(
            "the smallest underlay MTU in the cluster is {underlay}: the overlay MTU is {} (tasks see less than the usual 1500)",
            underlay - crate::network::VXLAN_OVERHEAD
        ));
    }
    if let Some(mtu) = spec.mtu {
        if mtu + crate::network::VXLAN_OVERHEAD > underlay {
            warnings.push(format!(
                "--opt mtu={mtu} plus 50 bytes of VXLAN exceeds the underlay MTU {underlay}: large packets will be dropped; use at most {}",
                underlay - crate::network::VXLAN_OVERHEAD
            ));
        }
    }
    warnings
}
