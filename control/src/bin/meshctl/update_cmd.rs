//! `meshctl service update` and `service rollback`: change a service's spec from flags (read,
//! change, write back at the version read, so a concurrent change is refused rather than
//! lost), then follow the rolling update until it completes, pauses or rolls back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use control::api::{ApiRequest, ApiResponse};
use control::secrets::{Kind, SecretRef};
use control::service::spec::{
    parse_bytes, parse_cpus, parse_duration_ms, EndpointMode, PortConfig, RestartCondition,
    ServiceMode, ServiceSpec,
};
use control::service::update::{FailureAction, PolicyFlags, UpdateOrder, UpdateState};
use control::service::view::{ServiceView, TaskView};
use control::service::DesiredState;

use crate::cluster_cmd::cluster;

/// The `--update-*` and `--rollback-*` flags, docker's names.
#[derive(Debug, Default, Args)]
pub struct PolicyArgs {
    /// Tasks updated at once (0: all at once).
    #[arg(long, value_name = "N")]
    update_parallelism: Option<u64>,
    /// Wait between batches, e.g. 10s.
    #[arg(long, value_name = "DURATION")]
    update_delay: Option<String>,
    /// stop-first or start-first.
    #[arg(long, value_enum, value_name = "ORDER")]
    update_order: Option<UpdateOrder>,
    /// pause, continue or rollback when new tasks fail.
    #[arg(long, value_enum, value_name = "ACTION")]
    update_failure_action: Option<FailureAction>,
    /// How long each new task is watched for failure, e.g. 5s.
    #[arg(long, value_name = "DURATION")]
    update_monitor: Option<String>,
    /// Share of tasks that may fail (0 to 1) before the failure action.
    #[arg(long, value_name = "RATIO")]
    update_max_failure_ratio: Option<f64>,
    /// Tasks rolled back at once (0: all at once).
    #[arg(long, value_name = "N")]
    rollback_parallelism: Option<u64>,
    /// Wait between rollback batches.
    #[arg(long, value_name = "DURATION")]
    rollback_delay: Option<String>,
    /// stop-first or start-first, for rollbacks.
    #[arg(long, value_enum, value_name = "ORDER")]
    rollback_order: Option<UpdateOrder>,
    /// pause or continue when a rollback's tasks fail.
    #[arg(long, value_enum, value_name = "ACTION")]
    rollback_failure_action: Option<FailureAction>,
    /// How long each rolled-back task is watched.
    #[arg(long, value_name = "DURATION")]
    rollback_monitor: Option<String>,
    /// Share of tasks that may fail during a rollback.
    #[arg(long, value_name = "RATIO")]
    rollback_max_failure_ratio: Option<f64>,
}

impl PolicyArgs {
    /// The update flags, then the rollback flags.
    fn flags(&self) -> (PolicyFlags, PolicyFlags) {
        (
            PolicyFlags {
                parallelism: self.update_parallelism,
                delay: self.update_delay.clone(),
                order: self.update_order,
                failure_action: self.update_failure_action,
                monitor: self.update_monitor.clone(),
                max_failure_ratio: self.update_max_failure_ratio,
            },
            PolicyFlags {
                parallelism: self.rollback_parallelism,
                delay: self.rollback_delay.clone(),
                order: self.rollback_order,
                failure_action: self.rollback_failure_action,
                monitor: self.rollback_monitor.clone(),
                max_failure_ratio: self.rollback_max_failure_ratio,
            },
        )
    }

    /// `spec` with these policies applied.
    pub(crate) fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        let (update, rollback) = self.flags();
        spec.update_config = update
            .apply(spec.update_config, "update")
            .map_err(anyhow::Error::msg)?;
        spec.rollback_config = rollback
            .apply(spec.rollback_config, "rollback")
            .map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

/// `service update` options, docker's names.
#[derive(Debug, Default, Args)]
pub struct UpdateArgs {
    /// New image.
    #[arg(long)]
    image: Option<String>,
    /// New command and arguments, one shell-quoted string, e.g. "sh -c 'exec httpd -f'".
    #[arg(long, value_name = "COMMAND")]
    args: Option<String>,
    /// Number of tasks.
    #[arg(long, value_name = "N")]
    replicas: Option<u64>,
    /// Add or change an environment variable KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    env_add: Vec<String>,
    /// Remove an environment variable (repeatable).
    #[arg(long, value_name = "KEY")]
    env_rm: Vec<String>,
    /// Add or change a service label KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    label_add: Vec<String>,
    /// Remove a service label (repeatable).
    #[arg(long, value_name = "KEY")]
    label_rm: Vec<String>,
    /// Add a placement constraint (repeatable).
    #[arg(long, value_name = "EXPR")]
    constraint_add: Vec<String>,
    /// Remove a placement constraint, as written (repeatable).
    #[arg(long, value_name = "EXPR")]
    constraint_rm: Vec<String>,
    /// Add a placement preference spread=node.labels.KEY (repeatable).
    #[arg(long, value_name = "PREF")]
    placement_pref_add: Vec<String>,
    /// Remove a placement preference (repeatable).
    #[arg(long, value_name = "PREF")]
    placement_pref_rm: Vec<String>,
    /// CPUs reserved per task (0: none).
    #[arg(long, value_name = "CPUS")]
    reserve_cpu: Option<String>,
    /// Memory reserved per task (0: none).
    #[arg(long, value_name = "BYTES")]
    reserve_memory: Option<String>,
    /// CPU ceiling per task (0: none).
    #[arg(long, value_name = "CPUS")]
    limit_cpu: Option<String>,
    /// Memory ceiling per task (0: none).
    #[arg(long, value_name = "BYTES")]
    limit_memory: Option<String>,
    /// When to restart an exited task.
    #[arg(long, value_enum)]
    restart_condition: Option<RestartCondition>,
    /// Wait before a restart.
    #[arg(long, value_name = "DURATION")]
    restart_delay: Option<String>,
    /// Restarts per slot before giving up.
    #[arg(long, value_name = "N")]
    restart_max_attempts: Option<u64>,
    /// Attach a network (repeatable).
    #[arg(long, value_name = "NET")]
    network_add: Vec<String>,
    /// Detach a network (repeatable).
    #[arg(long, value_name = "NET")]
    network_rm: Vec<String>,
    /// Publish a port, as `service create --publish` (repeatable).
    #[arg(long, value_name = "SPEC")]
    publish_add: Vec<String>,
    /// Stop publishing a port: PUBLISHED[/udp] (repeatable).
    #[arg(long, value_name = "PORT")]
    publish_rm: Vec<String>,
    /// vip or dnsrr.
    #[arg(long, value_enum)]
    endpoint_mode: Option<EndpointMode>,
    /// Health check flags: a probe replaces the check, options alone change it.
    #[command(flatten)]
    health: control::service::health::HealthFlags,
    /// Mount a secret, as `service create --secret` (repeatable).
    #[arg(long, value_name = "SPEC")]
    secret_add: Vec<String>,
    /// Unmount a secret, by name (repeatable).
    #[arg(long, value_name = "NAME")]
    secret_rm: Vec<String>,
    /// Mount a config, as `service create --config` (repeatable).
    #[arg(long, value_name = "SPEC")]
    config_add: Vec<String>,
    /// Unmount a config, by name (repeatable).
    #[arg(long, value_name = "NAME")]
    config_rm: Vec<String>,
    /// Replace the tasks even if nothing else changes.
    #[arg(long)]
    force: bool,
    /// Go back to the previous spec (as `service rollback`).
    #[arg(long)]
    rollback: bool,
    /// Update and rollback policies.
    #[command(flatten)]
    policy: PolicyArgs,
    /// Return at once instead of following the update.
    #[arg(short, long)]
    pub(crate) detach: bool,
    /// Service (name, ID or ID prefix).
    service: String,
}

/// Fails when the same key is both added and removed.
fn refuse_both(
    add_flag: &str,
    added: &[String],
    rm_flag: &str,
    removed: &[String],
) -> anyhow::Result<()> {
    let keys: BTreeSet<&str> = added
        .iter()
        .map(|a| a.split_once('=').map_or(a.as_str(), |(k, _)| k))
        .collect();
    if let Some(both) = removed.iter().find(|r| keys.contains(r.as_str())) {
        bail!("{add_flag} and {rm_flag} both name {both:?}; give one of them");
    }
    Ok(())
}

impl UpdateArgs {
    /// `current` with these flags applied, or the first bad or conflicting flag and its fix.
    pub(crate) fn apply(&self, current: &ServiceSpec) -> anyhow::Result<ServiceSpec> {
        refuse_both("--env-add", &self.env_add, "--env-rm", &self.env_rm)?;
        refuse_both("--label-add", &self.label_add, "--label-rm", &self.label_rm)?;
        refuse_both(
            "--network-add",
            &self.network_add,
            "--network-rm",
            &self.network_rm,
        )?;
        refuse_both(
            "--constraint-add",
            &self.constraint_add,
            "--constraint-rm",
            &self.constraint_rm,
        )?;
        let mut spec = current.clone();
        if let Some(image) = &self.image {
            spec.image = image.clone();
        }
        if let Some(args) = &self.args {
            spec.command =
                shlex::split(args).ok_or_else(|| anyhow!("--args {args:?}: unbalanced quotes"))?;
        }
        if let Some(replicas) = self.replicas {
            match spec.mode {
                ServiceMode::Replicated { .. } => spec.mode = ServiceMode::Replicated { replicas },
                ServiceMode::Global => bail!(
                    "--replicas does not apply to {}, a global service (one task per node)",
                    spec.name
                ),
            }
        }
        for key in &self.env_rm {
            spec.env
                .retain(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) != key);
        }
        for kv in &self.env_add {
            let key = kv
                .split_once('=')
                .map(|(k, _)| k)
                .ok_or_else(|| anyhow!("--env-add {kv:?} is not KEY=VALUE"))?;
            spec.env
                .retain(|old| old.split_once('=').map_or(old.as_str(), |(k, _)| k) != key);
            spec.env.push(kv.clone());
        }
        for key in &self.label_rm {
            spec.labels.remove(key);
        }
        for kv in &self.label_add {
            let (key, value) = kv
                .split_once('=')
                .ok_or_else(|| anyhow!("--label-add {kv:?} is not KEY=VALUE"))?;
            spec.labels.insert(key.to_string(), value.to_string());
        }
        remove_listed(
            "--constraint-rm",
            &mut spec.constraints,
            &self.constraint_rm,
        )?;
        for constraint in &self.constraint_add {
            if !spec.constraints.contains(constraint) {
                spec.constraints.push(constraint.clone());
            }
        }
        for pref in &self.placement_pref_rm {
            let key = pref.strip_prefix("spread=node.labels.").unwrap_or(pref);
            if !spec.spread_over.iter().any(|k| k == key) {
                bail!("--placement-pref-rm {pref:?}: the service has no such preference");
            }
            spec.spread_over.retain(|k| k != key);
        }
        for pref in &self.placement_pref_add {
            let key = pref
                .strip_prefix("spread=node.labels.")
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    anyhow!("--placement-pref-add {pref:?} is not spread=node.labels.KEY")
                })?;
            if !spec.spread_over.iter().any(|k| k == key) {
                spec.spread_over.push(key.to_string());
            }
        }
        let cpus = |flag: &str, v: &str| parse_cpus(v).map_err(|e| anyhow!("{flag}: {e}"));
        let bytes = |flag: &str, v: &str| parse_bytes(v).map_err(|e| anyhow!("{flag}: {e}"));
        if let Some(v) = &self.reserve_cpu {
            spec.reservation.nano_cpus = cpus("--reserve-cpu", v)?;
        }
        if let Some(v) = &self.reserve_memory {
            spec.reservation.memory_bytes = bytes("--reserve-memory", v)?;
        }
        if let Some(v) = &self.limit_cpu {
            spec.limits.nano_cpus = cpus("--limit-cpu", v)?;
        }
        if let Some(v) = &self.limit_memory {
            spec.limits.memory_bytes = bytes("--limit-memory", v)?;
        }
        if let Some(condition) = self.restart_condition {
            spec.restart.condition = condition;
        }
        if let Some(delay) = &self.restart_delay {
            spec.restart.delay_ms =
                parse_duration_ms(delay).map_err(|e| anyhow!("--restart-delay: {e}"))?;
        }
        if let Some(max) = self.restart_max_attempts {
            spec.restart.max_attempts = Some(max);
        }
        remove_listed("--network-rm", &mut spec.networks, &self.network_rm)?;
        for network in &self.network_add {
            if !spec.networks.contains(network) {
                spec.networks.push(network.clone());
            }
        }
        let added: Vec<PortConfig> = self
            .publish_add
            .iter()
            .map(|p| PortConfig::parse(p).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?;
        for text in &self.publish_rm {
            let (port, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
            let port: u16 = port
                .parse()
                .map_err(|_| anyhow!("--publish-rm {text:?} is not PUBLISHED[/tcp|/udp]"))?;
            if added.iter().any(|a| a.published == Some(port)) {
                bail!("--publish-add and --publish-rm both name port {port}; give one of them");
            }
            let before = spec.ports.len();
            spec.ports.retain(|p| {
                !(p.published == Some(port)
                    && format!("{:?}", p.protocol).eq_ignore_ascii_case(protocol))
            });
            if spec.ports.len() == before {
                bail!("--publish-rm {text:?}: the service publishes no such port");
            }
        }
        spec.ports.extend(added);
        if let Some(mode) = self.endpoint_mode {
            spec.endpoint_mode = mode;
        }
        spec.healthcheck = self
            .health
            .updated(current.healthcheck.as_ref())
            .map_err(anyhow::Error::msg)?;
        files(
            Kind::Secret,
            &mut spec.secrets,
            &self.secret_rm,
            &self.secret_add,
        )?;
        files(
            Kind::Config,
            &mut spec.configs,
            &self.config_rm,
            &self.config_add,
        )?;
        self.policy.apply(&mut spec)?;
        if self.force {
            spec.force_update += 1;
        }
        spec.validate().map_err(anyhow::Error::msg)?;
        Ok(spec)
    }
}

/// Removes each of `names` from `list`; naming one it does not hold is an error.
fn remove_listed(flag: &str, list: &mut Vec<String>, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        if !list.contains(name) {
            bail!("{flag} {name:?}: the service has no such entry ({list:?})");
        }
        list.retain(|n| n != name);
    }
    Ok(())
}

/// `--secret-rm`/`--secret-add` (or the config ones): removals by name first, then additions.
fn files(
    kind: Kind,
    refs: &mut Vec<SecretRef>,
    rm: &[String],
    add: &[String],
) -> anyhow::Result<()> {
    for name in rm {
        if !refs.iter().any(|r| &r.name == name) {
            bail!(
                "--{}-rm {name:?}: the service mounts no such {}",
                kind.as_str(),
                kind.as_str()
            );
        }
        refs.retain(|r| &r.name != name);
    }
    for text in add {
        let reference = SecretRef::parse(kind, text).map_err(anyhow::Error::msg)?;
        if refs.iter().any(|r| r.name == reference.name) {
            bail!(
                "--{}-add {:?}: the service mounts it already; remove it with --{}-rm in the same command to change it",
                kind.as_str(),
                reference.name,
                kind.as_str()
            );
        }
        refs.push(reference);
    }
    Ok(())
}

fn inspect(socket: &Path, service: &str) -> anyhow::Result<ServiceView> {
    let ApiResponse::Service(view) = cluster(
        socket,
        ApiRequest::ServiceInspect {
            service: service.to_string(),
        },
    )?
    else {
        bail!("unexpected answer to a service inspect request");
    };
    Ok(*view)
}

/// Runs `meshctl service update`.
pub fn update(socket: &Path, args: &UpdateArgs) -> anyhow::Result<ExitCode> {
    let view = inspect(socket, &args.service)?;
    let spec = args.apply(&view.spec)?;
    if args.rollback {
        if spec != view.spec {
            bail!("--rollback goes back to the previous spec; give it without other changes");
        }
        return roll_back(socket, &view, args.detach);
    }
    let resume = view
        .update_status
        .as_ref()
        .is_some_and(|s| s.state.is_paused());
    if spec == view.spec && !resume {
        println!("{}: nothing to change", view.name);
        return Ok(ExitCode::SUCCESS);
    }
    let request = ApiRequest::ServiceUpdate {
        service: view.id.clone(),
        spec: Box::new(spec),
        version: view.version,
        resume,
    };
    let ApiResponse::Done { message, .. } = cluster(socket, request)? else {
        bail!("unexpected answer to a service update request");
    };
    println!("{message}");
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    follow(socket, &view.id, view.version)
}

/// Runs `meshctl service rollback`.
pub fn rollback(socket: &Path, service: &str, detach: bool) -> anyhow::Result<ExitCode> {
    roll_back(socket, &inspect(socket, service)?, detach)
}

/// Rolls back the service `view` shows, and follows unless `detach`.
fn roll_back(socket: &Path, view: &ServiceView, detach: bool) -> anyhow::Result<ExitCode> {
    let ApiResponse::Done { message, .. } = cluster(
        socket,
        ApiRequest::ServiceRollback {
            service: view.id.clone(),
        },
    )?
    else {
        bail!("unexpected answer to a service rollback request");
    };
    println!("{message}");
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    follow(socket, &view.id, view.version)
}

/// The progress lines of one look at the service: one per slot, then the overall count.
pub(crate) fn progress(view: &ServiceView, tasks: &[TaskView]) -> (Vec<String>, usize, usize) {
    let mut slots: BTreeMap<String, Vec<&TaskView>> = BTreeMap::new();
    for task in tasks.iter().filter(|t| t.desired == DesiredState::Running) {
        let key = if task.slot > 0 {
            format!("{:>3}", task.slot)
        } else {
            task.node.clone()
        };
        slots.entry(key).or_default().push(task);
    }
    let total = view.desired.max(slots.len());
    let mut done = 0;
    let mut lines = Vec::new();
    for (slot, tasks) in &slots {
        let current = tasks.iter().find(|t| t.spec_version == view.spec_version);
        let text = match current {
            Some(t)
                if t.state == control::service::TaskState::Running
                    && t.health
                        .is_none_or(|h| h == control::service::health::TaskHealth::Healthy) =>
            {
                done += 1;
                format!("{} [new]", t.state_text())
            }
            Some(t) => format!("{} [new]", t.state_text()),
            None => tasks
                .first()
                .map(|t| format!("{} [old]", t.state_text()))
                .unwrap_or_default(),
        };
        lines.push(format!("{slot}/{total}: {text}"));
    }
    lines.push(format!("overall progress: {done} out of {total} tasks"));
    (lines, done, total)
}

/// Prints progress until the update (or rollback) started after `version` completes,
/// pauses or rolls back; a pause or an automatic rollback is an error.
fn follow(socket: &Path, id: &str, version: u64) -> anyhow::Result<ExitCode> {
    let mut shown: Vec<String> = Vec::new();
    loop {
        let view = inspect(socket, id)?;
        let ApiResponse::Tasks(tasks) = cluster(
            socket,
            ApiRequest::TaskList {
                services: vec![id.to_string()],
            },
        )
        .context("listing the service's tasks")?
        else {
            bail!("unexpected answer to a task list request");
        };
        let (lines, _, _) = progress(&view, &tasks);
        if lines != shown {
            for line in &lines {
                println!("{line}");
            }
            shown = lines;
        }
        let status = view
            .update_status
            .as_ref()
            .filter(|_| view.version > version);
        match status.map(|s| (s.state, s.message.clone())) {
            // Nothing the tasks run changed: there is nothing to follow.
            None if view.version > version => {
                println!("verify: service converged");
                return Ok(ExitCode::SUCCESS);
            }
            Some((UpdateState::Completed, _)) => {
                println!("verify: service converged");
                return Ok(ExitCode::SUCCESS);
            }
            Some((UpdateState::RollbackCompleted, message)) => {
                println!("rollback: {message}");
                println!("verify: service converged");
                // A rollback asked for is a success; one forced by a failure is not.
                return Ok(if message.contains("manually requested") {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            Some((UpdateState::Paused | UpdateState::RollbackPaused, message)) => {
                eprintln!("{message}");
                eprintln!("fix the spec and run `meshctl service update {}` to resume, or `meshctl service rollback {}`", view.name, view.name);
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        update: UpdateArgs,
    }

    fn args(argv: &[&str]) -> UpdateArgs {
        let mut all = vec!["update"];
        all.extend_from_slice(argv);
        all.push("web");
        Cli::try_parse_from(all).unwrap().update
    }

    fn spec() -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": "web", "image": "mesh-test:latest", "command": ["httpd"],
            "mode": {"replicated": {"replicas": 2}}, "constraints": [], "spread_over": [],
            "reservation": {"nano_cpus": 0, "memory_bytes": 0},
            "limits": {"nano_cpus": 0, "memory_bytes": 0},
            "env": ["A=1", "B=2"], "labels": {},
            "restart": {"condition": "any", "delay_ms": 5000, "max_attempts": null},
            "networks": ["front"], "ports": [], "endpoint_mode": "vip",
            "secrets": [{"name": "old", "target": "old", "uid": 0, "gid": 0, "mode": 256}]
        }))
        .unwrap()
    }

    #[test]
    fn flags_change_what_they_name_and_nothing_else() {
        let before = spec();
        let after = args(&[
            "--env-add",
            "A=3",
            "--env-rm",
            "B",
            "--args",
            "sh -c 'exec httpd -f'",
            "--replicas",
            "5",
            "--update-order",
            "start-first",
            "--update-parallelism",
            "2",
        ])
        .apply(&before)
        .unwrap();
        assert_eq!(after.env, ["A=3"]);
        assert_eq!(after.command, ["sh", "-c", "exec httpd -f"]);
        assert_eq!(after.mode, ServiceMode::Replicated { replicas: 5 });
        assert_eq!(after.update_config.order, UpdateOrder::StartFirst);
        assert_eq!(after.update_config.parallelism, 2);
        assert_eq!(after.networks, before.networks);
        assert_eq!(after.image, before.image);
        // --force changes nothing but the force counter, which replaces the tasks.
        let forced = args(&["--force"]).apply(&before).unwrap();
        assert_eq!(forced.force_update, 1);
        assert!(!forced.same_tasks(&before));
        assert_eq!(args(&["--detach"]).apply(&before).unwrap(), before);
    }

    #[test]
    fn conflicting_or_wrong_flags_are_refused_with_the_fix() {
        let before = spec();
        let err = args(&["--env-add", "A=2", "--env-rm", "A"])
            .apply(&before)
            .unwrap_err();
        assert!(err.to_string().contains("--env-add and --env-rm"), "{err}");
        let err = args(&["--network-rm", "back"]).apply(&before).unwrap_err();
        assert!(err.to_string().contains("no such entry"), "{err}");
        let err = args(&["--secret-add", "old"]).apply(&before).unwrap_err();
        assert!(err.to_string().contains("--secret-rm"), "{err}");
        let err = args(&["--update-max-failure-ratio", "2"])
            .apply(&before)
            .unwrap_err();
        assert!(err.to_string().contains("between 0 and 1"), "{err}");
        let err = args(&["--publish-add", "8080:80", "--publish-rm", "8080"])
            .apply(&before)
            .unwrap_err();
        assert!(err.to_string().contains("both name port 8080"), "{err}");
        // Rotation: the old secret out, the new one in, in one command.
        let rotated = args(&[
            "--secret-rm",
            "old",
            "--secret-add",
            "source=new,target=old",
        ])
        .apply(&before)
        .unwrap();
        assert_eq!(rotated.secrets.len(), 1);
        assert_eq!(rotated.secrets[0].name, "new");
    }

    #[test]
    fn progress_counts_slots_on_the_new_spec() {
        let mut view: ServiceView = serde_json::from_value(serde_json::json!({
            "id": "s", "name": "web", "mode": "replicated", "running": 2, "desired": 2,
            "image": "mesh-test:latest", "ports": [], "version": 3, "created_ms": 0,
            "updated_ms": 0, "spec": spec(), "spec_version": 3
        }))
        .unwrap();
        let task = |slot: u64, spec_version: u64, state: &str| -> TaskView {
            serde_json::from_value(serde_json::json!({
                "id": format!("t{slot}{spec_version}"), "name": format!("web.{slot}"),
                "service": "web", "slot": slot, "image": "mesh-test:latest", "node": "w1",
                "desired": "running", "state": state, "state_ms": 0, "created_ms": 0,
                "attempt": 0, "error": null, "exit": null, "spec_version": spec_version
            }))
            .unwrap()
        };
        let tasks = [
            task(1, 3, "running"),
            task(2, 1, "running"),
            task(2, 3, "starting"),
        ];
        let (lines, done, total) = progress(&view, &tasks);
        assert_eq!((done, total), (1, 2));
        assert_eq!(lines.last().unwrap(), "overall progress: 1 out of 2 tasks");
        assert!(lines[0].starts_with("  1/2: Running"), "{lines:?}");
        view.spec_version = 1;
        assert_eq!(progress(&view, &tasks).1, 1);
    }
}
