//! The network API on the leader: create (allocating subnet, gateway and VNI), list, inspect
//! and remove overlay networks.

use super::orchestrate::{now_ms, random_id};
use super::Manager;
use crate::api::format_node_id;
use crate::api::ApiResponse;
use crate::discovery::SeenEndpoint;
use crate::network::alloc::allocate_network;
use crate::network::{
    find_network, smallest_underlay_mtu, HostView, NetworkRecord, NetworkSpec, NetworkView,
};
use crate::service::TaskState;
use crate::store::{ClusterState, Command, NodeId};

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

/// Each host on the network with its gossip view of the network's endpoints, against the
/// control plane's running tasks on it: what each host misses, and what it still holds.
pub(super) fn host_views(
    state: &ClusterState,
    view: &NetworkView,
    reported: &std::collections::HashMap<NodeId, (u64, Vec<SeenEndpoint>)>,
) -> Vec<HostView> {
    let hosts: std::collections::BTreeSet<NodeId> = state
        .tasks
        .values()
        .filter(|t| !t.state.is_terminal())
        .filter(|t| t.attachments.iter().any(|a| a.network_id == view.id))
        .filter_map(|t| t.node_id)
        .collect();
    let running: Vec<&crate::network::EndpointView> = view
        .endpoints
        .iter()
        .filter(|e| e.state == TaskState::Running.as_str())
        .collect();
    hosts
        .into_iter()
        .map(|node_id| {
            let node = state
                .nodes
                .get(&node_id)
                .map_or_else(|| format_node_id(node_id), |n| n.name.clone());
            let (reported_ms, all) = reported.get(&node_id).cloned().unwrap_or_default();
            let endpoints: Vec<SeenEndpoint> = all
                .into_iter()
                .filter(|e| e.network_id == view.id)
                .collect();
            let missing = running
                .iter()
                .filter(|r| {
                    !endpoints
                        .iter()
                        .any(|e| e.task_id == r.task_id && e.ip == r.ip)
                })
                .map(|r| format!("{} {}", r.task, r.ip))
                .collect();
            let extra = endpoints
                .iter()
                .filter(|e| {
                    !running
                        .iter()
                        .any(|r| r.task_id == e.task_id && r.ip == e.ip)
                })
                .map(|e| format!("{} {}", e.task_name, e.ip))
                .collect();
            HostView {
                node,
                reported_ms,
                endpoints,
                missing,
                extra,
            }
        })
        .collect()
}
