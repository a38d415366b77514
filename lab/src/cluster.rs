//! Forming a cluster in a fresh lab, as an operator would: `meshctl swarm init` on the first
//! manager, then `meshctl swarm join` with the right token on every other host.

use crate::binaries::{self, MESHCTL};
use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::spec::Role;

/// The cluster port managers listen on in a lab.
const CLUSTER_PORT: u16 = 2377;

impl Lab {
    /// Runs init on the first manager and joins every other daemon host.
    pub(crate) fn form_cluster(&self) -> Result<()> {
        let meshctl = binaries::find(MESHCTL)?.to_string_lossy().into_owned();
        let with_daemon: Vec<_> = self
            .hosts()
            .iter()
            .filter(|h| h.role.runs_daemon())
            .cloned()
            .collect();
        let Some(first) = with_daemon.iter().find(|h| h.role == Role::Manager) else {
            return Ok(());
        };
        let address = first.address.to_string();
        self.meshctl(
            &first.name,
            &[&meshctl, "swarm", "init", "--advertise-addr", &address],
        )?;
        let token = |role: &str| -> Result<String> {
            Ok(self
                .meshctl(&first.name, &[&meshctl, "swarm", "join-token", "-q", role])?
                .trim()
                .to_string())
        };
        let (manager_token, worker_token) = (token("manager")?, token("worker")?);
        let remote = format!("{address}:{CLUSTER_PORT}");
        for host in with_daemon.iter().filter(|h| h.name != first.name) {
            let token = if host.role == Role::Manager {
                &manager_token
            } else {
                &worker_token
            };
            self.meshctl(
                &host.name,
                &[&meshctl, "swarm", "join", "--token", token, &remote],
            )?;
        }
        Ok(())
    }

    fn meshctl(&self, host: &str, argv: &[&str]) -> Result<String> {
        let output = self.output(host, argv)?;
        if !output.status.success() {
            return Err(LabError::Command {
                command: format!("{} (on {host})", argv[1..].join(" ")),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
