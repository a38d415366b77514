//! meshctl: the one CLI for Mesh. Cluster and service management in docker's conventions, the
//! local lab, and diagnostics.

mod cluster_cmd;
mod diag_cmd;
mod lab_cmd;
mod network_cmd;
mod output;
mod secret_cmd;
mod service_cmd;
mod update_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use control::local_api::{self, Request, Response};

use output::{print_record, Format};

/// The Mesh command-line interface.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, propagate_version = true)]
struct Cli {
    /// meshd's control socket [default: $MESH_SOCKET, else /var/lib/mesh/meshd.sock].
    #[arg(long, global = true, env = "MESH_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the local meshd: node, version, addresses, ports, uptime.
    Info {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Create, join and manage the cluster's membership.
    #[command(subcommand)]
    Swarm(cluster_cmd::SwarmCommand),
    /// Manage nodes (on a manager).
    #[command(subcommand)]
    Node(cluster_cmd::NodeCommand),
    /// Manage overlay networks (on a manager).
    #[command(subcommand)]
    Network(network_cmd::NetworkCommand),
    /// Manage services and their tasks (on a manager).
    #[command(subcommand)]
    Service(service_cmd::ServiceCommand),
    /// Manage secrets: encrypted at rest, mounted into tasks under /run/secrets (on a manager).
    #[command(subcommand)]
    Secret(secret_cmd::SecretCommand),
    /// Manage configs: mounted into tasks at a path of their own (on a manager).
    #[command(subcommand)]
    Config(secret_cmd::SecretCommand),
    /// Find what the network between hosts drops: ports, firewall, MTU, overlay state.
    #[command(subcommand)]
    Diag(diag_cmd::DiagCommand),
    /// Local multi-host labs in network namespaces.
    #[command(subcommand)]
    Lab(lab_cmd::LabCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("meshctl: {}", control::report(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let socket = cli.socket.unwrap_or_else(|| {
        PathBuf::from(control::config::DEFAULT_STATE_DIR).join(control::config::CONTROL_SOCKET_NAME)
    });
    match cli.command {
        Command::Swarm(command) => cluster_cmd::swarm(&socket, command),
        Command::Node(command) => cluster_cmd::node(&socket, command),
        Command::Service(command) => service_cmd::service(&socket, command),
        Command::Network(command) => network_cmd::network(&socket, command),
        Command::Secret(command) => {
            secret_cmd::run(&socket, control::secrets::Kind::Secret, command)
        }
        Command::Config(command) => {
            secret_cmd::run(&socket, control::secrets::Kind::Config, command)
        }
        Command::Diag(command) => diag_cmd::diag(&socket, command),
        Command::Info { format } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let Response::Status(status) =
                runtime.block_on(local_api::call(&socket, &Request::Status))?
            else {
                anyhow::bail!("meshd answered a status request with something else; is meshctl the same version as meshd?");
            };
            let membership = status.membership.clone();
            let cluster = match &membership {
                Some(m) if m.role == control::store::Role::Manager => {
                    match cluster_cmd::cluster_info(&socket) {
                        Ok(view) => view,
                        Err(err) => {
                            eprintln!("warning: {}", control::report(&err));
                            None
                        }
                    }
                }
                _ => None,
            };
            let mut lines = vec![
                ("Node", status.node_name.clone()),
                ("Version", status.version.clone()),
                ("PID", status.pid.to_string()),
                ("Uptime", format!("{}s", status.uptime_secs)),
                ("Listen address", status.listen_addr.clone()),
                (
                    "Advertise address",
                    status
                        .advertise_addr
                        .clone()
                        .unwrap_or_else(|| "(not set)".into()),
                ),
                ("Data path port", format!("{}/udp", status.data_path_port)),
                ("Gossip port", format!("{}/tcp+udp", status.gossip_port)),
                ("State directory", status.state_dir.display().to_string()),
            ];
            match &membership {
                None => lines.push((
                    "Swarm",
                    "inactive (`meshctl swarm init` or `meshctl swarm join`)".into(),
                )),
                Some(m) => {
                    lines.push(("Swarm", "active".into()));
                    lines.push(("Node ID", m.node_id.clone()));
                    lines.push(("Role", format!("{:?}", m.role).to_lowercase()));
                    lines.push(("Cluster ID", m.cluster_id.clone()));
                    let reach = if m.leader_reachable {
                        "yes"
                    } else {
                        "no: heartbeats are not acknowledged"
                    };
                    lines.push(("Leader reachable", reach.into()));
                }
            }
            if let Some(gossip) = &status.gossip {
                lines.push(("Gossip members", gossip.members.len().to_string()));
                lines.push((
                    "Gossip dropped",
                    format!(
                        "{} unauthenticated, {} malformed, {} from unknown senders",
                        gossip.stats.auth_failures,
                        gossip.stats.malformed,
                        gossip.stats.unknown_senders
                    ),
                ));
            }
            if let Some(view) = &cluster {
                lines.push(("Managers", view.managers.to_string()));
                lines.push((
                    "Quorum",
                    format!("{} of {} managers", view.quorum, view.managers),
                ));
                lines.push(("Tolerated failures", view.tolerated_failures.to_string()));
                lines.push(("Reachable managers", view.reachable_managers.to_string()));
                lines.push(("Leader", view.leader.clone()));
                lines.push(("Workers", view.workers.to_string()));
            }
            #[derive(serde::Serialize)]
            struct InfoJson<'a> {
                #[serde(flatten)]
                daemon: &'a control::local_api::DaemonStatus,
                cluster: &'a Option<control::api::ClusterView>,
            }
            print_record(
                format,
                &InfoJson {
                    daemon: &status,
                    cluster: &cluster,
                },
                &lines,
            );
            if format == Format::Table {
                for warning in cluster.iter().flat_map(|c| &c.warnings) {
                    eprintln!("warning: {warning}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab(command) => lab_cmd::run(command),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_is_well_formed_and_has_help() {
        Cli::command().debug_assert();
        for sub in Cli::command().get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
            for nested in sub.get_subcommands() {
                assert!(
                    nested.get_about().is_some(),
                    "{} {} has no help",
                    sub.get_name(),
                    nested.get_name()
                );
            }
        }
    }

    fn refused(args: &[&str]) -> String {
        match Cli::try_parse_from(args) {
            Ok(cli) => panic!("{args:?} parsed as {cli:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn malformed_flags_are_refused_naming_the_fix() {
        assert!(
            refused(&["meshctl", "lab", "up", "--name", "x", "--managers", "-1"])
                .contains("--managers")
        );
        assert!(refused(&["meshctl", "lab", "up", "--managers", "3"]).contains("--name"));
        assert!(refused(&["meshctl", "lab", "partition", "demo", "m1"]).contains("--from"));
        assert!(refused(&["meshctl", "lab", "exec", "demo", "m1"]).contains("CMD"));
        let err = refused(&["meshctl", "lab", "ls", "--format", "yaml"]);
        assert!(err.contains("table") && err.contains("json"), "{err}");
        assert!(
            refused(&["meshctl", "lab", "link", "demo", "m1", "--mtu", "big"]).contains("--mtu")
        );
    }

    /// The spec `meshctl service create ARGS...` builds.
    fn create_spec(args: &[&str]) -> anyhow::Result<control::service::ServiceSpec> {
        let argv = ["meshctl", "service", "create"].iter().chain(args);
        let Command::Service(service_cmd::ServiceCommand::Create(create)) =
            Cli::try_parse_from(argv).unwrap().command
        else {
            panic!("not a service create");
        };
        create.spec()
    }

    #[test]
    fn secret_and_config_flags_parse_into_the_spec() {
        let spec = create_spec(&[
            "--name",
            "db",
            "--secret",
            "pw",
            "--secret",
            "source=tls,target=tls.key,uid=70,gid=70,mode=0440",
            "--config",
            "source=app,target=/etc/app.conf",
            "mesh-test:latest",
        ])
        .unwrap();
        assert_eq!(spec.secrets.len(), 2);
        assert_eq!(spec.secrets[0].target, "pw");
        assert_eq!(spec.secrets[0].mode, 0o400);
        assert_eq!(
            (
                spec.secrets[1].uid,
                spec.secrets[1].gid,
                spec.secrets[1].mode
            ),
            (70, 70, 0o440)
        );
        assert_eq!(spec.configs[0].target, "/etc/app.conf");
        assert_eq!(spec.configs[0].mode, 0o444);
        for (flag, value, needle) in [
            ("--secret", "source=pw,mode=9", "--secret"),
            ("--secret", "source=pw,target=/etc/shadow", "target"),
            ("--config", "source=app,target=app.conf", "--config"),
        ] {
            let err = create_spec(&["--name", "db", flag, value, "img"])
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{value}: {err}");
        }
        // Two files on one path.
        let err = create_spec(&[
            "--name",
            "db",
            "--secret",
            "a",
            "--secret",
            "source=b,target=a",
            "img",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("target"));
        let cli =
            Cli::try_parse_from(["meshctl", "secret", "create", "-l", "a=b", "pw", "-"]).unwrap();
        let Command::Secret(secret_cmd::SecretCommand::Create { name, file, labels }) = cli.command
        else {
            panic!("not a secret create");
        };
        assert_eq!((name.as_str(), file.as_str()), ("pw", "-"));
        assert_eq!(labels, ["a=b"]);
        assert!(refused(&["meshctl", "config", "rm"]).contains("NAMES"));
    }

    #[test]
    fn exec_passes_everything_after_the_separator() {
        let cli = Cli::try_parse_from([
            "meshctl",
            "lab",
            "exec",
            "demo",
            "m1",
            "--",
            "ping",
            "-c",
            "1",
            "198.18.0.2",
        ])
        .unwrap();
        let Command::Lab(lab_cmd::LabCommand::Exec { command, .. }) = cli.command else {
            panic!("not an exec");
        };
        assert_eq!(command, ["ping", "-c", "1", "198.18.0.2"]);
    }
}
