//! `meshctl service ...`: create, list, inspect, scale and remove services, their tasks and
//! their output, in docker's conventions.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use control::api::{ApiRequest, ApiResponse};
use control::runtime::{Limits, Stream};
use control::secrets::{Kind, SecretRef};
use control::service::spec::{
    parse_bytes, parse_cpus, parse_duration_ms, EndpointMode, PortConfig, RestartCondition,
    RestartPolicy, ServiceMode, ServiceSpec,
};
use control::service::view::ServiceView;

use crate::cluster_cmd::cluster;
use crate::output::{print_list, short_id, Format};

/// `meshctl service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service.
    Create(Box<CreateArgs>),
    /// List services.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List the tasks of services: ID, slot, node, desired and current state, error.
    Ps {
        /// Services (name, ID or ID prefix).
        #[arg(required = true)]
        services: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show a service's spec and state as JSON.
    Inspect {
        /// Services (name, ID or ID prefix).
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Change a service: its tasks are replaced by its update policy, and the progress shown.
    Update(Box<crate::update_cmd::UpdateArgs>),
    /// Go back to a service's previous spec.
    Rollback {
        /// Service (name, ID or ID prefix).
        service: String,
        /// Return at once instead of following the rollback.
        #[arg(short, long)]
        detach: bool,
    },
    /// Set the replica count of replicated services: SERVICE=REPLICAS ...
    Scale {
        /// SERVICE=REPLICAS pairs.
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        targets: Vec<String>,
    },
    /// Remove services; their tasks stop.
    Rm {
        /// Services (name, ID or ID prefix).
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Print the output of a service's tasks, each line tagged with its task.
    Logs {
        /// Service (name, ID or ID prefix).
        service: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
}

/// `service create` options, docker's names.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name.
    #[arg(long)]
    name: String,
    /// Number of tasks (replicated mode).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    replicas: Option<i64>,
    /// replicated or global.
    #[arg(long, value_name = "MODE", default_value = "replicated")]
    mode: String,
    /// Placement constraint, e.g. node.labels.zone==east (repeatable).
    #[arg(long = "constraint", value_name = "EXPR")]
    constraints: Vec<String>,
    /// Placement preference, spread=node.labels.KEY (repeatable).
    #[arg(long = "placement-pref", value_name = "PREF")]
    placement_prefs: Vec<String>,
    /// CPUs reserved per task, e.g. 0.5.
    #[arg(long, value_name = "CPUS")]
    reserve_cpu: Option<String>,
    /// Memory reserved per task, e.g. 64M.
    #[arg(long, value_name = "BYTES")]
    reserve_memory: Option<String>,
    /// CPU ceiling per task.
    #[arg(long, value_name = "CPUS")]
    limit_cpu: Option<String>,
    /// Memory ceiling per task.
    #[arg(long, value_name = "BYTES")]
    limit_memory: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Service label KEY=VALUE (repeatable).
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// When to restart an exited task.
    #[arg(long, value_enum, default_value = "any")]
    restart_condition: RestartCondition,
    /// Wait before a restart, e.g. 5s.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    restart_delay: String,
    /// Restarts per slot before giving up.
    #[arg(long, value_name = "N")]
    restart_max_attempts: Option<u64>,
    /// Network to attach (repeatable).
    #[arg(long = "network", value_name = "NET")]
    networks: Vec<String>,
    /// Published port: published=P,target=T,protocol=tcp|udp,mode=ingress|host (repeatable).
    #[arg(short, long = "publish", value_name = "SPEC")]
    publish: Vec<String>,
    /// vip or dnsrr.
    #[arg(long, value_enum, default_value_t)]
    endpoint_mode: EndpointMode,
    /// Health check flags.
    #[command(flatten)]
    health: control::service::health::HealthFlags,
    /// Secret to mount under /run/secrets: NAME or source=NAME,target=T,uid=U,gid=G,mode=0400
    /// (repeatable).
    #[arg(long = "secret", value_name = "SPEC")]
    secrets: Vec<String>,
    /// Config to mount at a path: NAME or source=NAME,target=/etc/x.conf,mode=0444
    /// (repeatable).
    #[arg(long = "config", value_name = "SPEC")]
    configs: Vec<String>,
    /// Update and rollback policies.
    #[command(flatten)]
    policy: crate::update_cmd::PolicyArgs,
    /// Image, e.g. mesh-test:latest.
    image: String,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

impl CreateArgs {
    /// The spec these flags describe, or the first bad flag and its fix.
    pub(crate) fn spec(self) -> anyhow::Result<ServiceSpec> {
        let mode = match (self.mode.as_str(), self.replicas) {
            ("replicated", None) => ServiceMode::Replicated { replicas: 1 },
            ("replicated", Some(n)) if n >= 0 => ServiceMode::Replicated { replicas: n as u64 },
            ("replicated", Some(n)) => bail!("--replicas {n} is negative; give 0 or more"),
            ("global", None) => ServiceMode::Global,
            ("global", Some(_)) => {
                bail!("--replicas does not apply to --mode global, which runs one task per node")
            }
            (other, _) => bail!("--mode {other:?} is not replicated or global"),
        };
        let spread_over = self
            .placement_prefs
            .iter()
            .map(|p| {
                p.strip_prefix("spread=node.labels.")
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        anyhow::anyhow!("--placement-pref {p:?} is not spread=node.labels.KEY")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cpus = |flag: &str, v: &Option<String>| -> anyhow::Result<u64> {
            v.as_deref().map_or(Ok(0), |v| {
                parse_cpus(v).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
            })
        };
        let bytes = |flag: &str, v: &Option<String>| -> anyhow::Result<u64> {
            v.as_deref().map_or(Ok(0), |v| {
                parse_bytes(v).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
            })
        };
        let labels = key_values("--label", &self.labels)?;
        let ports = self
            .publish
            .iter()
            .map(|p| PortConfig::parse(p).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let references = |kind: Kind, flags: &[String]| {
            flags
                .iter()
                .map(|f| SecretRef::parse(kind, f).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let secrets = references(Kind::Secret, &self.secrets)?;
        let configs = references(Kind::Config, &self.configs)?;
        let spec = ServiceSpec {
            name: self.name,
            image: self.image,
            command: self.command,
            mode,
            constraints: self.constraints,
            spread_over,
            reservation: Limits {
                nano_cpus: cpus("--reserve-cpu", &self.reserve_cpu)?,
                memory_bytes: bytes("--reserve-memory", &self.reserve_memory)?,
            },
            limits: Limits {
                nano_cpus: cpus("--limit-cpu", &self.limit_cpu)?,
                memory_bytes: bytes("--limit-memory", &self.limit_memory)?,
            },
            env: self.env,
            labels,
            restart: RestartPolicy {
                condition: self.restart_condition,
                delay_ms: parse_duration_ms(&self.restart_delay)
                    .map_err(|e| anyhow::anyhow!("--restart-delay: {e}"))?,
                max_attempts: self.restart_max_attempts,
            },
            networks: self.networks,
            ports,
            endpoint_mode: self.endpoint_mode,
            healthcheck: self.health.healthcheck().map_err(anyhow::Error::msg)?,
            secrets,
            configs,
            update_config: Default::default(),
            rollback_config: Default::default(),
            force_update: 0,
        };
        let mut spec = spec;
        self.policy.apply(&mut spec)?;
        spec.validate().map_err(anyhow::Error::msg)?;
        Ok(spec)
    }
}

/// Runs `meshctl service ...`.
pub fn service(socket: &Path, command: ServiceCommand) -> anyhow::Result<ExitCode> {
    match command {
        ServiceCommand::Create(args) => {
            let spec = args.spec()?;
            let ApiResponse::Done { message, .. } =
                cluster(socket, ApiRequest::ServiceCreate(Box::new(spec)))?
            else {
                bail!("unexpected answer to a service create request");
            };
            println!("{message}");
        }
        ServiceCommand::Ls { format } => {
            let ApiResponse::Services(services) = cluster(socket, ApiRequest::ServiceList)? else {
                bail!("unexpected answer to a service list request");
            };
            print_list(
                format,
                &services,
                &["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
                |s| {
                    vec![
                        short_id(&s.id).to_string(),
                        s.name.clone(),
                        s.mode.clone(),
                        format!("{}/{}", s.running, s.desired),
                        s.image.clone(),
                        ports(s),
                    ]
                },
            );
        }
        ServiceCommand::Ps { services, format } => {
            let ApiResponse::Tasks(tasks) = cluster(socket, ApiRequest::TaskList { services })?
            else {
                bail!("unexpected answer to a task list request");
            };
            let now = control::manager::orchestrate::now_ms();
            print_list(
                format,
                &tasks,
                &[
                    "ID",
                    "NAME",
                    "IMAGE",
                    "NODE",
                    "DESIRED STATE",
                    "CURRENT STATE",
                    "ERROR",
                ],
                |t| {
                    vec![
                        short_id(&t.id).to_string(),
                        t.name.clone(),
                        t.image.clone(),
                        t.node.clone(),
                        format!("{:?}", t.desired),
                        format!("{} {} ago", t.state_text(), ago(now, t.state_ms)),
                        t.error.clone().unwrap_or_default(),
                    ]
                },
            );
        }
        ServiceCommand::Inspect { services } => {
            let mut views: Vec<ServiceView> = Vec::new();
            for service in services {
                let ApiResponse::Service(view) =
                    cluster(socket, ApiRequest::ServiceInspect { service })?
                else {
                    bail!("unexpected answer to a service inspect request");
                };
                views.push(*view);
            }
            println!("{}", serde_json::to_string_pretty(&views)?);
        }
        ServiceCommand::Scale { targets } => {
            let mut parsed = Vec::new();
            for target in &targets {
                let (service, replicas) = target
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("{target:?} is not SERVICE=REPLICAS"))?;
                let replicas: u64 = replicas.parse().map_err(|_| {
                    anyhow::anyhow!("{target:?}: replicas must be a number, 0 or more")
                })?;
                parsed.push((service.to_string(), replicas));
            }
            for (service, replicas) in parsed {
                let ApiResponse::Done { message, .. } =
                    cluster(socket, ApiRequest::ServiceScale { service, replicas })?
                else {
                    bail!("unexpected answer to a service scale request");
                };
                println!("{message}");
            }
        }
        ServiceCommand::Rm { services } => {
            for service in services {
                let ApiResponse::Done { message, .. } =
                    cluster(socket, ApiRequest::ServiceRemove { service })?
                else {
                    bail!("unexpected answer to a service rm request");
                };
                println!("{message}");
            }
        }
        ServiceCommand::Logs { service, follow } => logs(socket, service, follow)?,
        ServiceCommand::Update(args) => return crate::update_cmd::update(socket, &args),
        ServiceCommand::Rollback { service, detach } => {
            return crate::update_cmd::rollback(socket, &service, detach)
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn logs(socket: &Path, service: String, follow: bool) -> anyhow::Result<()> {
    let mut after: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let request = ApiRequest::ServiceLogs {
            service: service.clone(),
            after: after.clone(),
        };
        let ApiResponse::Logs(entries) = cluster(socket, request)? else {
            bail!("unexpected answer to a service logs request");
        };
        for entry in entries {
            let short = short_id(&entry.task_id);
            let tag = format!("{}.{short}@{}", entry.task_name, entry.node);
            match entry.stream {
                Stream::Stdout => println!("{tag} | {}", entry.line),
                Stream::Stderr => eprintln!("{tag} | {}", entry.line),
            }
            after.insert(entry.task_id, entry.seq);
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Parses repeated `KEY=VALUE` flags into a map, naming the flag of a malformed one.
pub(crate) fn key_values(flag: &str, pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("{flag} {kv:?} is not KEY=VALUE"))
        })
        .collect()
}

fn ports(service: &ServiceView) -> String {
    service
        .ports
        .iter()
        .map(|p| {
            format!(
                "*:{}->{}/{}",
                p.published.map_or_else(|| "?".into(), |p| p.to_string()),
                p.target,
                match p.protocol {
                    control::service::spec::Protocol::Tcp => "tcp",
                    control::service::spec::Protocol::Udp => "udp",
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}
