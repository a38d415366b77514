//! What an operator asks for: a service's spec, as `service create` builds it, and the rules
//! that keep a bad spec out of the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::runtime::Limits;
use crate::scheduler::constraint::Constraint;

/// How many tasks a service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// A fixed number of tasks, in slots 1..=replicas.
    Replicated {
        /// Tasks wanted.
        replicas: u64,
    },
    /// One task on every eligible node.
    Global,
}

/// When an exited task is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Always.
    Any,
    /// Only after a non-zero exit (or when the task could not start).
    OnFailure,
    /// Never.
    None,
}

/// The restart policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// When to restart.
    pub condition: RestartCondition,
    /// Wait between an exit and the replacement.
    pub delay_ms: u64,
    /// Restarts per slot before giving up; None is unlimited.
    pub max_attempts: Option<u64>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 5000,
            max_attempts: None,
        }
    }
}

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Where a published port answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node, through the routing mesh.
    Ingress,
    /// Only on nodes running a task.
    Host,
}

/// One `--publish`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    /// Port on the nodes; None lets the cluster choose one.
    pub published: Option<u16>,
    /// Port inside the task.
    pub target: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Ingress or host.
    pub mode: PublishMode,
}

impl PortConfig {
    /// Parses `published=P,target=T,protocol=tcp|udp,mode=ingress|host` or the short
    /// `P:T[/udp]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("--publish {text:?}: {why}; write it like published=8080,target=80,protocol=tcp,mode=ingress or 8080:80")
        };
        let port = |v: &str, what: &str| -> Result<u16, String> {
            v.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("{what} {v:?} is not a port (1-65535)")))
        };
        let mut config = PortConfig {
            published: None,
            target: 0,
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress,
        };
        if !text.contains('=') {
            let (ports, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
            let (published, target) = ports.split_once(':').ok_or_else(|| bad("no target port"))?;
            config.published = Some(port(published, "published")?);
            config.target = port(target, "target")?;
            config.protocol = match protocol {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => return Err(bad(&format!("protocol {other:?} is not tcp or udp"))),
            };
            return Ok(config);
        }
        for part in text.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(&format!("{part:?} is not key=value")))?;
            match key.trim() {
                "published" => config.published = Some(port(value, "published")?),
                "target" => config.target = port(value, "target")?,
                "protocol" => {
                    config.protocol = match value {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        other => return Err(bad(&format!("protocol {other:?} is not tcp or udp"))),
                    }
                }
                "mode" => {
                    config.mode = match value {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        other => {
                            return Err(bad(&format!("mode {other:?} is not ingress or host")))
                        }
                    }
                }
                other => return Err(bad(&format!("unknown key {other:?}"))),
            }
        }
        if config.target == 0 {
            return Err(bad("target is missing"));
        }
        Ok(config)
    }
}

/// How other tasks reach the service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP, load-balanced.
    #[default]
    Vip,
    /// DNS round robin over the task IPs.
    Dnsrr,
}

/// A service as the operator describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique name.
    pub name: String,
    /// Image, `name:tag`.
    pub image: String,
    /// Command and arguments (empty: the image's).
    pub command: Vec<String>,
    /// Replicated or global.
    pub mode: ServiceMode,
    /// Hard placement constraints, as written.
    pub constraints: Vec<String>,
    /// Label keys to spread over (`--placement-pref spread=node.labels.KEY`).
    pub spread_over: Vec<String>,
    /// Reserved per task (the scheduler checks node capacity).
    pub reservation: Limits,
    /// Ceilings per task (cgroups).
    pub limits: Limits,
    /// `KEY=VALUE` each.
    pub env: Vec<String>,
    /// Service labels.
    pub labels: BTreeMap<String, String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Networks to attach.
    pub networks: Vec<String>,
    /// Published ports.
    pub ports: Vec<PortConfig>,
    /// VIP or DNS round robin.
    pub endpoint_mode: EndpointMode,
    /// The probe its agents run in every running task; None: running is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<super::health::HealthCheck>,
    /// Secrets mounted under /run/secrets (`--secret`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::secrets::SecretRef>,
    /// Configs mounted at their target paths (`--config`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<crate::secrets::SecretRef>,
    /// How tasks are replaced when what they run changes (`--update-*`).
    #[serde(default)]
    pub update_config: super::update::UpdateConfig,
    /// How they are put back when an update is rolled back (`--rollback-*`).
    #[serde(default)]
    pub rollback_config: super::update::UpdateConfig,
    /// Bumped by `service update --force`: the tasks are replaced though nothing else changed.
    #[serde(default)]
    pub force_update: u64,
}

impl ServiceSpec {
    /// Checks every rule a spec must meet on its own; the message names the flag and the fix.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(format!(
                "image {:?} is not an image name; give one like mesh-test:latest",
                self.image
            ));
        }
        for constraint in &self.constraints {
            Constraint::parse(constraint).map_err(|e| format!("--constraint: {e}"))?;
        }
        for key in &self.spread_over {
            if !crate::api::valid_label_key(key) {
                return Err(format!("--placement-pref: label key {key:?} is not valid; write spread=node.labels.KEY"));
            }
        }
        for kv in &self.env {
            match kv.split_once('=') {
                Some((key, _)) if !key.is_empty() && !key.contains(char::is_whitespace) => {}
                _ => return Err(format!("--env {kv:?} is not KEY=VALUE")),
            }
        }
        for key in self.labels.keys() {
            if !crate::api::valid_label_key(key) {
                return Err(format!("--label key {key:?} is not valid; use letters, digits, '.', '-' and '_', starting with a letter"));
            }
        }
        for (what, limits) in [("--reserve", self.reservation), ("--limit", self.limits)] {
            if limits.memory_bytes != 0 && limits.memory_bytes < 4 << 20 {
                return Err(format!(
                    "{what}-memory {} bytes is below the 4 MiB a task needs",
                    limits.memory_bytes
                ));
            }
        }
        if self.limits.nano_cpus != 0 && self.limits.nano_cpus < 10_000_000 {
            return Err("--limit-cpu below 0.01 cannot be enforced; give at least 0.01".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for port in &self.ports {
            if let Some(published) = port.published {
                if !seen.insert((published, port.protocol)) {
                    return Err(format!(
                        "--publish: port {published}/{:?} is given twice",
                        port.protocol
                    ));
                }
            }
        }
        for network in &self.networks {
            validate_name(network)
                .map_err(|_| format!("--network {network:?} is not a network name"))?;
        }
        if let Some(check) = &self.healthcheck {
            check.validate()?;
        }
        self.validate_files()?;
        self.update_config.validate("update")?;
        self.rollback_config.validate("rollback")?;
        if self.rollback_config.failure_action == super::update::FailureAction::Rollback {
            return Err(
                "--rollback-failure-action rollback: a rollback cannot roll back; use pause or continue"
                    .into(),
            );
        }
        if let ServiceMode::Replicated { replicas } = self.mode {
            if replicas > 10_000 {
                return Err(format!(
                    "--replicas {replicas} is more than the 10000 a service may have"
                ));
            }
        }
        Ok(())
    }

    /// Whether tasks of `self` and of `other` run the same thing, so an update from one to the
    /// other replaces no task. Replicas, name, labels, ports, endpoint mode and the update
    /// policies are the service's, not its tasks': changing them replaces nothing.
    pub fn same_tasks(&self, other: &ServiceSpec) -> bool {
        let task_part = |spec: &ServiceSpec| {
            let mut spec = spec.clone();
            spec.mode = ServiceMode::Global;
            spec.labels.clear();
            spec.ports.clear();
            spec.endpoint_mode = EndpointMode::Vip;
            spec.update_config = super::update::UpdateConfig::default();
            spec.rollback_config = super::update::UpdateConfig::default();
            spec
        };
        task_part(self) == task_part(other)
    }

    /// The secret (or config) references of this spec.
    pub fn references(
        &self,
        kind: crate::secrets::Kind,
    ) -> impl Iterator<Item = &crate::secrets::SecretRef> {
        match kind {
            crate::secrets::Kind::Secret => self.secrets.iter(),
            crate::secrets::Kind::Config => self.configs.iter(),
        }
    }

    /// Every `--secret` and `--config` is well formed, and no two land on one path.
    fn validate_files(&self) -> Result<(), String> {
        use crate::secrets::Kind;
        let mut paths = std::collections::BTreeSet::new();
        for kind in [Kind::Secret, Kind::Config] {
            for reference in self.references(kind) {
                reference.validate(kind)?;
                let path = reference.path_in_task(kind);
                if !paths.insert(path.clone()) {
                    return Err(format!(
                        "--{} {}: {path} is the target of another --secret or --config; give each its own target=",
                        kind.as_str(),
                        reference.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The parsed constraints (validated specs only).
    pub fn parsed_constraints(&self) -> Vec<Constraint> {
        self.constraints
            .iter()
            .filter_map(|c| Constraint::parse(c).ok())
            .collect()
    }
}

/// Service and network names: 1-63 letters, digits, '-', '_' or '.', starting with a letter
/// or digit (they become DNS names).
pub fn validate_name(name: &str) -> Result<(), String> {
    if crate::config::is_valid_name(name) {
        Ok(())
    } else {
        Err(format!("name {name:?} is not valid; use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"))
    }
}

/// Parses a size like `64M`, `1G`, `512k` or plain bytes (binary units, as docker does).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write it like 64M or 1G"))?;
    let scale: u64 = match unit
        .to_ascii_lowercase()
        .trim_end_matches('b')
        .trim_end_matches('i')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("{text:?} has an unknown unit; use k, M or G")),
    };
    if !number.is_finite() || number < 0.0 {
        return Err(format!("{text:?} is not a size"));
    }
    Ok((number * scale as f64) as u64)
}

/// Parses CPUs like `0.5` or `2` into billionths of a CPU.
pub fn parse_cpus(text: &str) -> Result<u64, String> {
    let cpus: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a CPU count; write it like 0.5 or 2"))?;
    if !cpus.is_finite() || !(0.0..=4096.0).contains(&cpus) {
        return Err(format!("{text:?} is not a CPU count between 0 and 4096"));
    }
    Ok((cpus * 1e9).round() as u64)
}

/// An optional duration flag: `default` when absent, else parsed, the error naming `flag`.
pub fn duration_flag(flag: &str, value: Option<&str>, default: u64) -> Result<u64, String> {
    value.map_or(Ok(default), |v| {
        parse_duration_ms(v).map_err(|e| format!("{flag}: {e}"))
    })
}

/// Parses a duration like `500ms`, `5s`, `1m` or plain seconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration; write it like 500ms, 5s or 1m");
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 1.0,
        "" | "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return Err(bad()),
    };
    if !number.is_finite() || number < 0.0 {
        return Err(bad());
    }
    Ok((number * scale).round() as u64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            image: "mesh-test:latest".into(),
            command: vec![],
            mode: ServiceMode::Replicated { replicas: 1 },
            constraints: vec![],
            spread_over: vec![],
            reservation: Limits::default(),
            limits: Limits::default(),
            env: vec![],
            labels: BTreeMap::new(),
            restart: RestartPolicy::default(),
            networks: vec![],
            ports: vec![],
            endpoint_mode: EndpointMode::Vip,
            healthcheck: None,
            secrets: vec![],
            configs: vec![],
            update_config: Default::default(),
            rollback_config: Default::default(),
            force_update: 0,
        }
    }

    #[test]
    fn publish_flags_parse_in_both_forms() {
        assert_eq!(
            PortConfig::parse("published=8080,target=80,protocol=udp,mode=host").unwrap(),
            PortConfig {
                published: Some(8080),
                target: 80,
                protocol: Protocol::Udp,
                mode: PublishMode::Host
            }
        );
        assert_eq!(PortConfig::parse("8080:80").unwrap().published, Some(8080));
        assert_eq!(
            PortConfig::parse("53:53/udp").unwrap().protocol,
            Protocol::Udp
        );
        assert_eq!(PortConfig::parse("target=80").unwrap().published, None);
        for bad in [
            "80",
            "published=0,target=80",
            "target=80,mode=x",
            "x=1,target=2",
            "published=8080",
        ] {
            let err = PortConfig::parse(bad).unwrap_err();
            assert!(err.contains("--publish"), "{bad}: {err}");
        }
    }

    #[test]
    fn specs_are_validated_with_the_flag_named() {
        spec("web").validate().unwrap();
        let cases: Vec<(ServiceSpec, &str)> = vec![
            (spec("-web"), "name"),
            (
                ServiceSpec {
                    image: "".into(),
                    ..spec("a")
                },
                "image",
            ),
            (
                ServiceSpec {
                    constraints: vec!["node.zone=east".into()],
                    ..spec("a")
                },
                "--constraint",
            ),
            (
                ServiceSpec {
                    env: vec!["NOVALUE".into()],
                    ..spec("a")
                },
                "--env",
            ),
            (
                ServiceSpec {
                    spread_over: vec!["9x".into()],
                    ..spec("a")
                },
                "--placement-pref",
            ),
            (
                ServiceSpec {
                    limits: Limits {
                        nano_cpus: 0,
                        memory_bytes: 1000,
                    },
                    ..spec("a")
                },
                "--limit-memory",
            ),
            (
                ServiceSpec {
                    ports: vec![
                        PortConfig::parse("80:80").unwrap(),
                        PortConfig::parse("80:81").unwrap(),
                    ],
                    ..spec("a")
                },
                "twice",
            ),
        ];
        for (spec, needle) in cases {
            let err = spec.validate().unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn sizes_cpus_and_durations_parse() {
        assert_eq!(parse_bytes("64M").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("12X").is_err());
        assert!(parse_bytes("-1M").is_err());
        assert_eq!(parse_cpus("0.5").unwrap(), 500_000_000);
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("lots").is_err());
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("2s").unwrap(), 2000);
        assert_eq!(parse_duration_ms("3").unwrap(), 3000);
        assert_eq!(parse_duration_ms("1m").unwrap(), 60_000);
        assert!(parse_duration_ms("5 parsecs").is_err());
    }
}
