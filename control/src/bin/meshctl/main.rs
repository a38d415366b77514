//! meshctl: the one CLI for Mesh. Cluster and service management in docker's conventions, the
//! local lab, and diagnostics.

mod lab_cmd;
mod output;

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
    match cli.command {
        Command::Info { format } => {
            let socket = cli.socket.unwrap_or_else(|| {
                PathBuf::from(control::config::DEFAULT_STATE_DIR)
                    .join(control::config::CONTROL_SOCKET_NAME)
            });
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let Response::Status(status) =
                runtime.block_on(local_api::call(&socket, &Request::Status))?
            else {
                anyhow::bail!("meshd answered a status request with something else; is meshctl the same version as meshd?");
            };
            print_record(
                format,
                &status,
                &[
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
                ],
            );
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
