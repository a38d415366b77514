//! `meshctl secret ...` and `meshctl config ...`: create, list, inspect and remove secrets and
//! configs, in docker's conventions. The data goes to the managers once and is never shown
//! again.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use control::api::{ApiRequest, ApiResponse};
use control::secrets::{Blob, Kind, SecretView, MAX_SIZE};

use crate::cluster_cmd::cluster;
use crate::output::{print_list, short_id, Format};
use crate::service_cmd::key_values;

/// `meshctl secret` and `meshctl config` subcommands.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create one from a file, or from standard input with `-` (at most 500 KiB; immutable).
    Create {
        /// Label KEY=VALUE (repeatable).
        #[arg(short, long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Its name.
        name: String,
        /// The file holding the data, or - for standard input.
        file: String,
    },
    /// List them (never their data).
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show ID, name, creation time, labels and the services using them, as JSON (never
    /// their data).
    Inspect {
        /// Names, IDs or ID prefixes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove ones no service uses.
    Rm {
        /// Names, IDs or ID prefixes.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Reads at most `MAX_SIZE` bytes from `file` (`-`: standard input), refusing more.
fn read_data(kind: Kind, name: &str, file: &str) -> anyhow::Result<Vec<u8>> {
    let noun = kind.as_str();
    let mut data = Vec::new();
    let limit = MAX_SIZE as u64 + 1;
    if file == "-" {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut data)
            .context("reading standard input")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("opening {file}"))?
            .take(limit)
            .read_to_end(&mut data)
            .with_context(|| format!("reading {file}"))?;
    }
    if data.len() > MAX_SIZE {
        bail!(
            "{file} holds more than the {MAX_SIZE} bytes (500 KiB) a {noun} may hold; store a smaller file (or a reference to the data, not the data itself)"
        );
    }
    control::secrets::validate_new(kind, name, data.len()).map_err(anyhow::Error::msg)?;
    Ok(data)
}

/// Runs `meshctl secret ...` or `meshctl config ...`.
pub fn run(socket: &Path, kind: Kind, command: SecretCommand) -> anyhow::Result<ExitCode> {
    let noun = kind.as_str();
    match command {
        SecretCommand::Create { labels, name, file } => {
            let labels = key_values("--label", &labels)?;
            let data = Blob(read_data(kind, &name, &file)?);
            let request = ApiRequest::SecretCreate {
                kind,
                name,
                labels,
                data,
            };
            let ApiResponse::Done { message, .. } = cluster(socket, request)? else {
                bail!("unexpected answer to a {noun} create request");
            };
            println!("{message}");
        }
        SecretCommand::Ls { format } => {
            let ApiResponse::Secrets(views) = cluster(socket, ApiRequest::SecretList { kind })?
            else {
                bail!("unexpected answer to a {noun} list request");
            };
            let now = control::manager::orchestrate::now_ms();
            print_list(
                format,
                &views,
                &["ID", "NAME", "SIZE", "CREATED", "SERVICES"],
                |v: &SecretView| {
                    vec![
                        short_id(&v.id).to_string(),
                        v.name.clone(),
                        v.size.to_string(),
                        format!("{}s ago", now.saturating_sub(v.created_ms) / 1000),
                        v.services.join(","),
                    ]
                },
            );
        }
        SecretCommand::Inspect { names } => {
            let mut views = Vec::new();
            for secret in names {
                let ApiResponse::Secret(view) =
                    cluster(socket, ApiRequest::SecretInspect { kind, secret })?
                else {
                    bail!("unexpected answer to a {noun} inspect request");
                };
                views.push(*view);
            }
            println!("{}", serde_json::to_string_pretty(&views)?);
        }
        SecretCommand::Rm { names } => {
            for secret in names {
                let ApiResponse::Done { message, .. } =
                    cluster(socket, ApiRequest::SecretRemove { kind, secret })?
                else {
                    bail!("unexpected answer to a {noun} rm request");
                };
                println!("{message}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_read_whole_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"pw").unwrap();
        assert_eq!(
            read_data(Kind::Secret, "pw", small.to_str().unwrap()).unwrap(),
            b"pw"
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![0u8; MAX_SIZE + 1]).unwrap();
        let err = read_data(Kind::Secret, "big", big.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("500 KiB"), "{err}");
        let err = read_data(Kind::Config, "x", "/nonexistent/file").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/file"), "{err}");
    }
}
