//! `meshctl swarm` and `meshctl node`: cluster membership through the local meshd.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use control::api::{ApiRequest, ApiResponse, NodeView};
use control::local_api::{self, Request, Response};
use control::node::runtime::{InitOptions, JoinOptions};
use control::store::{Availability, Role};

use crate::output::{print_list, print_record, Format};

/// Cluster membership.
#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Create a cluster with this node as its first manager.
    Init {
        /// Address other nodes reach this one at [default: meshd's advertise_addr].
        #[arg(long)]
        advertise_addr: Option<IpAddr>,
        /// Where the cluster port listens [default: meshd's listen_addr].
        #[arg(long)]
        listen_addr: Option<SocketAddr>,
        /// UDP port of the VXLAN data path for the whole cluster [default: 4789].
        #[arg(long)]
        data_path_port: Option<u16>,
        /// Pool that overlay subnets are carved from [default: 10.0.0.0/8].
        #[arg(long)]
        default_addr_pool: Option<String>,
        /// Prefix length of each overlay subnet [default: 24].
        #[arg(long)]
        default_addr_pool_mask_length: Option<u8>,
        /// How long node certificates are valid, e.g. 2160h; nodes renew them at half
        /// their lifetime [default: 2160h, 90 days; at least 1m].
        #[arg(long)]
        cert_expiry: Option<String>,
    },
    /// Join a cluster as a worker or manager, as the token says.
    Join {
        /// The join token (`meshctl swarm join-token worker|manager` on a manager).
        #[arg(long)]
        token: String,
        /// A manager's address, host:port.
        remote: String,
        /// Address other nodes reach this one at [default: meshd's advertise_addr].
        #[arg(long)]
        advertise_addr: Option<IpAddr>,
        /// Where the cluster port listens if this node becomes a manager.
        #[arg(long)]
        listen_addr: Option<SocketAddr>,
    },
    /// Leave the cluster (a manager must be demoted first, or use --force).
    Leave {
        /// Leave even as a manager, or without the leader's agreement.
        #[arg(long)]
        force: bool,
    },
    /// Show (or rotate) the token for joining as a worker or a manager.
    JoinToken {
        /// worker or manager.
        #[arg(value_enum)]
        role: RoleArg,
        /// Replace the token: the old one stops working at once.
        #[arg(long)]
        rotate: bool,
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Rotate the key that authenticates and encrypts gossip (managers also rotate it
    /// every 24 hours). Nodes accept the old keys while the new one spreads.
    RotateGossipKey,
    /// Change cluster settings after init.
    Update {
        /// How long node certificates issued from now on are valid, e.g. 2160h; each node
        /// gets the new lifetime at its next renewal [at least 1m].
        #[arg(long)]
        cert_expiry: String,
    },
}

/// Node management (on a manager).
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show one node.
    Inspect {
        /// Node name or ID (a unique prefix of at least 4 digits is enough).
        node: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Change a node's availability or labels.
    Update {
        /// Node name or ID.
        node: String,
        /// active, pause or drain.
        #[arg(long, value_enum)]
        availability: Option<AvailabilityArg>,
        /// Add or change a label, key=value (repeatable).
        #[arg(long = "label-add", value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        /// Remove a label (repeatable).
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
    },
    /// Make workers managers.
    Promote {
        /// Node names or IDs.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers (refused when it would lose quorum).
    Demote {
        /// Node names or IDs.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove a node from the cluster.
    Rm {
        /// Node name or ID.
        node: String,
        /// Remove it even though it is up.
        #[arg(long)]
        force: bool,
    },
}

/// A role on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    /// Runs tasks.
    Worker,
    /// Raft voter.
    Manager,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Worker => Role::Worker,
            RoleArg::Manager => Role::Manager,
        }
    }
}

/// Availability on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AvailabilityArg {
    /// New tasks may be scheduled.
    Active,
    /// No new tasks; running ones stay.
    Pause,
    /// Tasks move elsewhere.
    Drain,
}

impl From<AvailabilityArg> for Availability {
    fn from(a: AvailabilityArg) -> Availability {
        match a {
            AvailabilityArg::Active => Availability::Active,
            AvailabilityArg::Pause => Availability::Pause,
            AvailabilityArg::Drain => Availability::Drain,
        }
    }
}

/// Cluster operations can wait for elections and for a new manager to catch up.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(90);

fn call(socket: &Path, request: Request) -> anyhow::Result<Response> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(local_api::call_with_timeout(
        socket,
        &request,
        CLUSTER_TIMEOUT,
    ))?)
}

/// Calls the cluster API and unwraps errors and stale answers (warning on stderr).
pub(crate) fn cluster(socket: &Path, request: ApiRequest) -> anyhow::Result<ApiResponse> {
    let Response::Cluster { answer } = call(socket, Request::Cluster { request })? else {
        bail!("meshd answered with something else; is meshctl the same version as meshd?");
    };
    match answer {
        ApiResponse::Error(message) => bail!("{message}"),
        ApiResponse::Stale { warning, answer } => {
            eprintln!("warning: {warning}");
            Ok(*answer)
        }
        answer => Ok(answer),
    }
}

/// Runs `meshctl swarm ...`.
pub fn swarm(socket: &Path, command: SwarmCommand) -> anyhow::Result<ExitCode> {
    match command {
        SwarmCommand::Init {
            advertise_addr,
            listen_addr,
            data_path_port,
            default_addr_pool,
            default_addr_pool_mask_length,
            cert_expiry,
        } => {
            let cert_expiry_secs = cert_expiry.as_deref().map(cert_expiry_secs).transpose()?;
            let options = InitOptions {
                advertise_addr,
                listen_addr,
                data_path_port,
                default_addr_pool,
                default_addr_pool_mask_length,
                cert_expiry_secs,
            };
            let Response::Initialized(done) = call(socket, Request::SwarmInit(options))? else {
                bail!("meshd answered with something else; is meshctl the same version as meshd?");
            };
            println!(
                "Swarm initialized: this node ({}) is now a manager.\n",
                done.node_id
            );
            println!("To add a worker to this cluster, run on it:\n\n    meshctl swarm join --token {} {}\n", done.worker_token, done.addr);
            println!("To add a manager, run `meshctl swarm join-token manager` and follow the instructions.");
        }
        SwarmCommand::Join {
            token,
            remote,
            advertise_addr,
            listen_addr,
        } => {
            let options = JoinOptions {
                token,
                remote,
                advertise_addr,
                listen_addr,
            };
            let Response::Joined(view) = call(socket, Request::SwarmJoin(options))? else {
                bail!("meshd answered with something else; is meshctl the same version as meshd?");
            };
            let role = match view.role {
                Role::Manager => "a manager",
                Role::Worker => "a worker",
            };
            println!(
                "This node joined the cluster as {role} (node {}).",
                view.node_id
            );
        }
        SwarmCommand::Leave { force } => {
            let Response::Left = call(socket, Request::SwarmLeave { force })? else {
                bail!("meshd answered with something else; is meshctl the same version as meshd?");
            };
            println!("This node left the cluster.");
        }
        SwarmCommand::JoinToken {
            role,
            rotate,
            quiet,
        } => {
            let ApiResponse::Token { role, token } = cluster(
                socket,
                ApiRequest::JoinToken {
                    role: role.into(),
                    rotate,
                },
            )?
            else {
                bail!("unexpected answer to a join-token request");
            };
            if quiet {
                println!("{token}");
            } else {
                if rotate {
                    println!(
                        "Rotated: the previous {} token no longer works.",
                        role_name(role)
                    );
                }
                println!("To add a {} to this cluster, run on it:\n\n    meshctl swarm join --token {token} <MANAGER-ADDRESS>:2377", role_name(role));
            }
        }
        SwarmCommand::Update { cert_expiry } => {
            let request = ApiRequest::SwarmUpdate {
                cert_expiry_secs: cert_expiry_secs(&cert_expiry)?,
            };
            let ApiResponse::Done { message, .. } = cluster(socket, request)? else {
                bail!("unexpected answer to a swarm update");
            };
            println!("{message}");
        }
        SwarmCommand::RotateGossipKey => {
            let ApiResponse::Done { message, .. } = cluster(socket, ApiRequest::GossipKeyRotate)?
            else {
                bail!("unexpected answer to a gossip key rotation");
            };
            println!("{message}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--cert-expiry`'s duration (`2160h`, `90m`, ...) in seconds.
fn cert_expiry_secs(text: &str) -> anyhow::Result<u64> {
    control::service::spec::parse_duration_ms(text)
        .map(|ms| ms / 1000)
        .map_err(|e| anyhow::anyhow!("--cert-expiry: {e}"))
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Manager => "manager",
        Role::Worker => "worker",
    }
}

/// Runs `meshctl node ...`.
pub fn node(socket: &Path, command: NodeCommand) -> anyhow::Result<ExitCode> {
    match command {
        NodeCommand::Ls { format } => {
            let ApiResponse::Nodes(nodes) = cluster(socket, ApiRequest::NodeList)? else {
                bail!("unexpected answer to a node list request");
            };
            print_list(
                format,
                &nodes,
                &[
                    "ID",
                    "HOSTNAME",
                    "STATUS",
                    "AVAILABILITY",
                    "MANAGER STATUS",
                    "VERSION",
                ],
                |n| {
                    vec![
                        n.id.clone(),
                        n.name.clone(),
                        format!("{:?}", n.status),
                        format!("{:?}", n.availability),
                        n.manager_status.clone().unwrap_or_default(),
                        n.version.clone(),
                    ]
                },
            );
        }
        NodeCommand::Inspect { node, format } => {
            let ApiResponse::Node(n) = cluster(socket, ApiRequest::NodeInspect { node })? else {
                bail!("unexpected answer to a node inspect request");
            };
            print_node(format, &n);
        }
        NodeCommand::Update {
            node,
            availability,
            label_add,
            label_rm,
        } => {
            let mut labels = BTreeMap::new();
            for pair in &label_add {
                let Some((key, value)) = pair.split_once('=') else {
                    bail!("--label-add {pair:?} is not key=value");
                };
                labels.insert(key.to_string(), value.to_string());
            }
            if availability.is_none() && labels.is_empty() && label_rm.is_empty() {
                bail!("nothing to change: give --availability, --label-add or --label-rm");
            }
            let request = ApiRequest::NodeUpdate {
                node,
                availability: availability.map(Into::into),
                label_add: labels,
                label_rm,
            };
            print_done(cluster(socket, request)?);
        }
        NodeCommand::Promote { nodes } => {
            for node in nodes {
                print_done(cluster(socket, ApiRequest::NodePromote { node })?);
            }
        }
        NodeCommand::Demote { nodes } => {
            for node in nodes {
                print_done(cluster(socket, ApiRequest::NodeDemote { node })?);
            }
        }
        NodeCommand::Rm { node, force } => {
            print_done(cluster(socket, ApiRequest::NodeRemove { node, force })?)
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_done(answer: ApiResponse) {
    if let ApiResponse::Done { message, warnings } = answer {
        println!("{message}");
        for warning in warnings {
            eprintln!("warning: {warning}");
        }
    }
}

fn print_node(format: Format, n: &NodeView) {
    let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    print_record(
        format,
        n,
        &[
            ("ID", n.id.clone()),
            ("Hostname", n.name.clone()),
            ("Address", n.addr.clone()),
            ("Role", format!("{:?}", n.role).to_lowercase()),
            ("Status", format!("{:?}", n.status)),
            ("Availability", format!("{:?}", n.availability)),
            (
                "Manager status",
                n.manager_status.clone().unwrap_or_else(|| "-".into()),
            ),
            (
                "Labels",
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(", ")
                },
            ),
            ("Version", n.version.clone()),
            ("Runtime", n.description.runtime.clone()),
            (
                "Resources",
                format!(
                    "{} CPUs, {} MiB",
                    n.description.nano_cpus as f64 / 1e9,
                    n.description.memory_bytes >> 20
                ),
            ),
            ("Images", n.description.images.join(", ")),
        ],
    );
}

/// The cluster part of `meshctl info`, when this node is a manager.
pub fn cluster_info(socket: &Path) -> anyhow::Result<Option<control::api::ClusterView>> {
    match cluster(socket, ApiRequest::Info) {
        Ok(ApiResponse::Info(view)) => Ok(Some(view)),
        Ok(_) => Ok(None),
        Err(err) => Err(err),
    }
}
