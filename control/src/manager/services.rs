//! The service API on the leader: create, scale and remove services, and the reads behind
//! `service ls`, `ps`, `inspect` and `logs`.

use std::collections::BTreeMap;

use super::orchestrate::{now_ms, random_id};
use super::Manager;
use crate::api::ApiResponse;
use crate::network::alloc::allocate_vips;
use crate::service::spec::{PublishMode, ServiceMode, ServiceSpec};
use crate::service::view::{find_service, LogEntry, ServiceView, TaskView};
use crate::service::ServiceRecord;
use crate::store::{ClusterState, Command};

/// The network services that publish ports without one of their own are attached to.
pub const INGRESS_NETWORK: &str = "ingress";

/// Ports handed out when `--publish` names no published port.
pub const AUTO_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

impl Manager {
    /// Checks a spec for service `this` (None: a new one) against the cluster, and completes
    /// it: the ingress network, secret IDs, assigned ports.
    async fn complete_spec(
        &self,
        spec: &mut ServiceSpec,
        this: Option<&str>,
    ) -> Result<(), ApiResponse> {
        spec.validate().map_err(ApiResponse::Error)?;
        self.attach_ingress_network(spec).await?;
        self.read(|state| {
            super::secrets::resolve_refs(state, spec)?;
            check_image(state, &spec.image)?;
            check_networks(state, spec)?;
            assign_ports(state, this, spec)
        })
        .map_err(ApiResponse::Error)
    }

    pub(super) async fn create_service(&self, mut spec: ServiceSpec) -> ApiResponse {
        if let Err(answer) = self.complete_spec(&mut spec, None).await {
            return answer;
        }
        let now = now_ms();
        let id = random_id();
        let mut record = ServiceRecord::new(id.clone(), spec, now);
        // VIPs come from the state as read here; a create or a task placed meanwhile may take
        // the same address, and the store refuses the later write. Allocate again then.
        let mut attempts = 0;
        loop {
            // From scratch each time: allocate_vips keeps the addresses a record holds, and
            // the one refused must not be chosen again.
            record.vips.clear();
            match self.read(|state| allocate_vips(state, &record)) {
                Ok(vips) => record.vips = vips,
                Err(why) => return ApiResponse::Error(why),
            }
            match self
                .apply(Command::CreateService(Box::new(record.clone())))
                .await
            {
                Ok(()) => return super::api::done(id),
                Err(ApiResponse::Error(why))
                    if why.contains(crate::store::ADDRESS_RACE) && attempts < 5 =>
                {
                    attempts += 1;
                }
                Err(answer) => return answer,
            }
        }
    }

    /// `service update`: `spec` replaces the spec of the service at `version` (what the CLI
    /// read and changed); a service changed since is refused, so no change is lost. Checked
    /// like a create; VIPs follow the networks.
    pub(super) async fn update_service(
        &self,
        key: &str,
        mut spec: ServiceSpec,
        version: u64,
        resume: bool,
    ) -> ApiResponse {
        let found = self.read(|state| find_service(state, key).cloned());
        let service = match found {
            Ok(service) => service,
            Err(why) => return ApiResponse::Error(why),
        };
        if service.version != version {
            return ApiResponse::Error(format!(
                "service {} changed while this update was prepared (version {version}, now {}); run the command again",
                service.spec.name, service.version
            ));
        }
        if spec.name != service.spec.name {
            return ApiResponse::Error(format!(
                "a service cannot be renamed ({} to {}); create a new one",
                service.spec.name, spec.name
            ));
        }
        if let (ServiceMode::Global, ServiceMode::Replicated { .. })
        | (ServiceMode::Replicated { .. }, ServiceMode::Global) = (service.spec.mode, spec.mode)
        {
            return ApiResponse::Error(format!(
                "service {} cannot change between replicated and global; create a new one",
                spec.name
            ));
        }
        if let Err(answer) = self.complete_spec(&mut spec, Some(&service.id)).await {
            return answer;
        }
        let mut attempts = 0;
        loop {
            let mut next = service.clone();
            next.spec = spec.clone();
            let vips = match self.read(|state| allocate_vips(state, &next)) {
                Ok(vips) => vips,
                Err(why) => return ApiResponse::Error(why),
            };
            let command = Command::UpdateService {
                id: service.id.clone(),
                spec: Box::new(spec.clone()),
                at_ms: now_ms(),
                resume,
                vips: (vips != service.vips).then_some(vips),
            };
            match self.apply(command).await {
                Ok(()) => return super::api::done(service.spec.name.clone()),
                Err(ApiResponse::Error(why))
                    if why.contains(crate::store::ADDRESS_RACE) && attempts < 5 =>
                {
                    attempts += 1;
                }
                Err(answer) => return answer,
            }
        }
    }

    /// `service rollback`: back to the previous spec, replacing tasks by the rollback policy.
    pub(super) async fn rollback_service(&self, key: &str) -> ApiResponse {
        let found = self.read(|state| find_service(state, key).cloned());
        let service = match found {
            Ok(service) => service,
            Err(why) => return ApiResponse::Error(why),
        };
        let command = Command::RollbackService {
            id: service.id.clone(),
            version: service.version,
            at_ms: now_ms(),
            reason: "manually requested rollback".into(),
        };
        match self.apply(command).await {
            Ok(()) => super::api::done(service.spec.name),
            Err(answer) => answer,
        }
    }

    /// A service that publishes ports on no network of its own gets the cluster's `ingress`
    /// network (created the first time), as Docker does: the routing mesh reaches tasks over
    /// an overlay.
    async fn attach_ingress_network(&self, spec: &mut ServiceSpec) -> Result<(), ApiResponse> {
        if spec.ports.is_empty() || !spec.networks.is_empty() {
            return Ok(());
        }
        let exists = self.read(|state| state.network_named(INGRESS_NETWORK).is_some());
        if !exists {
            let created = self
                .create_network(crate::network::NetworkSpec {
                    name: INGRESS_NETWORK.into(),
                    driver: "overlay".into(),
                    ..Default::default()
                })
                .await;
            let raced = self.read(|state| state.network_named(INGRESS_NETWORK).is_some());
            if let ApiResponse::Error(why) = created {
                if !raced {
                    return Err(ApiResponse::Error(format!(
                        "creating the ingress network for the published ports: {why}"
                    )));
                }
            }
        }
        spec.networks = vec![INGRESS_NETWORK.into()];
        Ok(())
    }

    pub(super) async fn scale_service(&self, key: &str, replicas: u64) -> ApiResponse {
        let found = self.read(|state| find_service(state, key).cloned());
        let service = match found {
            Ok(service) => service,
            Err(why) => return ApiResponse::Error(why),
        };
        if service.spec.mode == ServiceMode::Global {
            return ApiResponse::Error(format!(
                "{} is a global service: it runs one task per node and cannot be scaled",
                service.spec.name
            ));
        }
        let mut spec = service.spec.clone();
        spec.mode = ServiceMode::Replicated { replicas };
        let command = Command::UpdateService {
            id: service.id.clone(),
            spec: Box::new(spec),
            at_ms: now_ms(),
            resume: false,
            vips: None,
        };
        match self.apply(command).await {
            Ok(()) => super::api::done(format!("{} scaled to {replicas}", service.spec.name)),
            Err(answer) => answer,
        }
    }

    pub(super) async fn remove_service(&self, key: &str) -> ApiResponse {
        let found = self.read(|state| find_service(state, key).cloned());
        let service = match found {
            Ok(service) => service,
            Err(why) => return ApiResponse::Error(why),
        };
        match self.apply(Command::RemoveService { id: service.id }).await {
            Ok(()) => super::api::done(service.spec.name),
            Err(answer) => answer,
        }
    }

    /// Output of a service's tasks after the given per-task line numbers, oldest first.
    pub(super) fn service_logs(
        &self,
        state: &ClusterState,
        key: &str,
        after: &BTreeMap<String, u64>,
    ) -> ApiResponse {
        let service = match find_service(state, key) {
            Ok(service) => service,
            Err(why) => return ApiResponse::Error(why),
        };
        let buffer = self.logs.lock().expect("log buffer lock");
        let mut entries: Vec<LogEntry> = Vec::new();
        for task in state.tasks.values().filter(|t| t.service_id == service.id) {
            let view = TaskView::of(task, state);
            let from = after.get(&task.id).copied().unwrap_or(0);
            entries.extend(buffer.read(&task.id, from).map(|r| LogEntry {
                task_id: task.id.clone(),
                task_name: view.name.clone(),
                service: service.spec.name.clone(),
                node: view.node.clone(),
                seq: r.seq,
                stream: r.stream,
                line: r.line.clone(),
                at_ms: r.at_ms,
            }));
        }
        entries.sort_by(|a, b| (a.at_ms, &a.task_id, a.seq).cmp(&(b.at_ms, &b.task_id, b.seq)));
        ApiResponse::Logs(entries)
    }
}

/// Services as `service ls` shows them, by name.
pub(super) fn list_services(state: &ClusterState) -> ApiResponse {
    let mut views: Vec<ServiceView> = state
        .services
        .values()
        .map(|s| ServiceView::of(s, state))
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    ApiResponse::Services(views)
}

/// Tasks of some services (all when `keys` is empty): by service, slot, newest first.
pub(super) fn list_tasks(state: &ClusterState, keys: &[String]) -> ApiResponse {
    let mut ids = Vec::new();
    for key in keys {
        match find_service(state, key) {
            Ok(service) => ids.push(service.id.clone()),
            Err(why) => return ApiResponse::Error(why),
        }
    }
    let mut tasks: Vec<_> = state
        .tasks
        .values()
        .filter(|t| ids.is_empty() || ids.contains(&t.service_id))
        .collect();
    tasks.sort_by(|a, b| {
        (
            &a.service_id,
            a.slot,
            a.node_id,
            std::cmp::Reverse(a.created_ms),
        )
            .cmp(&(
                &b.service_id,
                b.slot,
                b.node_id,
                std::cmp::Reverse(b.created_ms),
            ))
    });
    ApiResponse::Tasks(tasks.into_iter().map(|t| TaskView::of(t, state)).collect())
}

/// Refuses networks that do not exist.
fn check_networks(state: &ClusterState, spec: &ServiceSpec) -> Result<(), String> {
    for name in &spec.networks {
        if state.network_named(name).is_none() {
            return Err(format!(
                "--network {name}: no such network; create it with `meshctl network create --driver overlay {name}`"
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = spec.networks.iter().find(|n| !seen.insert(*n)) {
        return Err(format!("--network {twice} is given twice"));
    }
    Ok(())
}

/// Refuses an image no node can run: the task would be rejected everywhere.
fn check_image(state: &ClusterState, image: &str) -> Result<(), String> {
    if state
        .nodes
        .values()
        .any(|n| n.description.images.iter().any(|i| i == image))
    {
        return Ok(());
    }
    let mut known: Vec<&str> = state
        .nodes
        .values()
        .flat_map(|n| n.description.images.iter().map(String::as_str))
        .collect();
    known.sort();
    known.dedup();
    Err(format!(
        "image {image:?} is on no node (the nodes have: {}); build the test image with scripts/build-test-image.sh, or import yours into every node's runtime",
        if known.is_empty() { "none reported yet".to_string() } else { known.join(", ") }
    ))
}

/// Refuses a published port another service holds, and picks one from 30000-32767 for
/// ingress ports given without one.
fn assign_ports(
    state: &ClusterState,
    this: Option<&str>,
    spec: &mut ServiceSpec,
) -> Result<(), String> {
    let mut taken: BTreeMap<(u16, crate::service::spec::Protocol), String> = BTreeMap::new();
    for service in state
        .services
        .values()
        .filter(|s| Some(s.id.as_str()) != this)
    {
        for port in &service.spec.ports {
            if let Some(published) = port.published {
                taken.insert((published, port.protocol), service.spec.name.clone());
            }
        }
    }
    for port in &spec.ports {
        if let Some(published) = port.published {
            if let Some(owner) = taken.get(&(published, port.protocol)) {
                return Err(format!(
                    "port {published}/{} is already published by service {owner}; choose another published port",
                    match port.protocol {
                        crate::service::spec::Protocol::Tcp => "tcp",
                        crate::service::spec::Protocol::Udp => "udp",
                    }
                ));
            }
        }
    }
    for port in spec.ports.iter_mut().filter(|p| p.published.is_none()) {
        if port.mode == PublishMode::Host {
            return Err("--publish mode=host needs a published port".into());
        }
        let free = AUTO_PORTS
            .clone()
            .find(|p| !taken.contains_key(&(*p, port.protocol)))
            .ok_or(
                "every port in 30000-32767 is published; remove a service or give a published port",
            )?;
        port.published = Some(free);
        taken.insert((free, port.protocol), spec.name.clone());
    }
    Ok(())
}
