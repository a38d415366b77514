//! One task's life on its node: namespace, start, watch, stop, remove.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Agent, STOP_GRACE};
use crate::runtime::{netns, ExitStatus, LogLine, Started, TaskSpec};
use crate::service::{ServiceSpec, TaskRecord, TaskState};

impl Agent {
    fn netns_path(&self, id: &str) -> std::path::PathBuf {
        self.netns_dir.join(id)
    }

    /// Prepares, starts and watches a new task.
    pub(super) async fn start(
        self: Arc<Self>,
        task: TaskRecord,
        spec: ServiceSpec,
        secrets: Vec<crate::secrets::SecretData>,
        lines: mpsc::UnboundedSender<LogLine>,
    ) {
        let id = task.id.clone();
        let path = self.netns_path(&id);
        let prepared = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || netns::create(&path)).await
        };
        if let Err(why) = prepared
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            let error = format!("preparing the task's network namespace: {why}");
            self.set_state(&id, TaskState::Rejected, Some(error), None);
            return;
        }
        if self.is_stopping(&id) {
            self.set_state(&id, TaskState::Shutdown, None, None);
            return;
        }
        // Its interfaces on the overlay, and its DNS server, exist before its process does.
        self.apply_overlay().await;
        let resolv_conf = match self.serve_dns(&task, &path).await {
            Ok(file) => file,
            Err(why) => {
                self.set_state(&id, TaskState::Rejected, Some(why), None);
                return;
            }
        };
        let files = match self.prepare_files(&id, &spec, secrets).await {
            Ok(files) => files,
            Err(why) => {
                self.set_state(&id, TaskState::Rejected, Some(why), None);
                return;
            }
        };
        self.set_state(&id, TaskState::Starting, None, None);
        let run = TaskSpec {
            task_id: id.clone(),
            slot: task.slot,
            service_name: spec.name.clone(),
            node_id: crate::api::format_node_id(self.node_id),
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            limits: spec.limits,
            netns: path,
            resolv_conf,
            files,
        };
        match self.runtime.start(&run, lines).await {
            Ok(started) => {
                if spec.healthcheck.is_some() {
                    // Published as starting, never as serving, until a probe passes.
                    self.expect_health(&id);
                }
                self.set_state(&id, TaskState::Running, None, None);
                if self.is_stopping(&id) {
                    // Stopped while it was starting: the stop found nothing to stop then.
                    tokio::spawn(Arc::clone(&self).stop(id.clone()));
                }
                if let Some(check) = spec.healthcheck.clone() {
                    tokio::spawn(Arc::clone(&self).check_health(id.clone(), check));
                }
                self.watch(id, started).await;
            }
            Err(err) => {
                tracing::warn!(task = %id, error = %err, "starting a task");
                self.set_state(&id, TaskState::Rejected, Some(err.to_string()), None);
            }
        }
    }

    /// Writes the task's secrets and configs into its tmpfs: the binds the runtime makes.
    async fn prepare_files(
        &self,
        id: &str,
        spec: &ServiceSpec,
        delivered: Vec<crate::secrets::SecretData>,
    ) -> Result<Vec<crate::runtime::FileMount>, String> {
        use crate::secrets::{files, Kind};
        let wanted: Vec<(Kind, crate::secrets::SecretRef)> = spec
            .secrets
            .iter()
            .map(|r| (Kind::Secret, r.clone()))
            .chain(spec.configs.iter().map(|r| (Kind::Config, r.clone())))
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        if self.runtime.name() == "process" && spec.image == crate::runtime::process::HOST_IMAGE {
            return Err(format!(
                "secrets and configs need an image: a task of the `{}` image sees the host's filesystem, other tasks' secrets included; give the service an image",
                crate::runtime::process::HOST_IMAGE
            ));
        }
        for (kind, reference) in &wanted {
            if !delivered
                .iter()
                .any(|d| d.kind == *kind && d.id == reference.id)
            {
                return Err(format!(
                    "{} {} was not delivered with the task: the leader could not decrypt it; check that every manager holds the cluster's data key",
                    kind.as_str(),
                    reference.name
                ));
            }
        }
        let state_dir = self.state_dir.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            let task_files: Vec<files::TaskFile> = wanted
                .iter()
                .map(|(kind, reference)| files::TaskFile {
                    kind: *kind,
                    reference,
                    data: delivered
                        .iter()
                        .find(|d| d.kind == *kind && d.id == reference.id)
                        .map_or(&[][..], |d| &d.data.0[..]),
                })
                .collect();
            files::prepare(&state_dir, &id, &task_files)
        })
        .await
        .map_err(|e| format!("writing the task's secrets: {e}"))?
    }

    /// The task's DNS server, for a task on overlay networks: the resolv.conf it must see.
    async fn serve_dns(
        &self,
        task: &TaskRecord,
        netns: &std::path::Path,
    ) -> Result<Option<std::path::PathBuf>, String> {
        if task.attachments.is_empty() {
            return Ok(None);
        }
        let networks = task
            .attachments
            .iter()
            .map(|a| a.network_id.clone())
            .collect();
        let assignments = self
            .last
            .lock()
            .expect("agent lock")
            .clone()
            .unwrap_or_default();
        self.discovery
            .serve_task(&task.id, netns, networks, &assignments)
            .await
            .map(Some)
    }

    /// Watches a task an earlier agent started.
    pub(super) async fn adopt(
        self: Arc<Self>,
        task: TaskRecord,
        lines: mpsc::UnboundedSender<LogLine>,
    ) {
        let id = task.id.clone();
        match self.runtime.adopt(&id, lines).await {
            Ok(started) => {
                tracing::info!(task = %id, "adopted a running task");
                if let Some(check) = self.healthcheck_of(&id) {
                    tokio::spawn(Arc::clone(&self).check_health(id.clone(), check));
                }
                // Its resolv.conf still names 127.0.0.11; the server there went with meshd.
                if let Err(why) = self.serve_dns(&task, &self.netns_path(&id)).await {
                    tracing::warn!(task = %id, error = %why, "restarting an adopted task's DNS server");
                }
                self.watch(id, started).await;
            }
            Err(err) => {
                let error = format!("adopting the task after a restart: {err}");
                self.set_state(&id, TaskState::Failed, Some(error), None);
            }
        }
    }

    async fn watch(&self, id: String, started: Started) {
        let exit = started.exited.await.unwrap_or(ExitStatus::Unknown);
        let unhealthy = self
            .tasks
            .lock()
            .expect("agent lock")
            .get(&id)
            .and_then(|t| t.unhealthy.clone());
        let (state, error) = if self.is_stopping(&id) {
            (TaskState::Shutdown, None)
        } else if let Some(reason) = unhealthy {
            (
                TaskState::Failed,
                Some(format!("health check failed: {reason}")),
            )
        } else if exit.success() {
            (TaskState::Complete, None)
        } else {
            (TaskState::Failed, Some(format!("task exited: {exit}")))
        };
        tracing::info!(task = %id, %exit, state = state.as_str(), "task ended");
        self.set_state(&id, state, error, Some(exit));
    }

    /// Stops a task; its watcher reports Shutdown once it has exited (a task still being
    /// prepared or started is stopped by `start` when it sees the flag).
    pub(super) async fn stop(self: Arc<Self>, id: String) {
        if self.serves_traffic(&id) {
            // `mark_stopping` published it as draining; give its flows time to finish.
            tokio::time::sleep(super::DRAIN_PERIOD).await;
        }
        if let Err(err) = self.runtime.stop(&id, STOP_GRACE).await {
            tracing::warn!(task = %id, error = %err, "stopping a task");
        }
    }

    /// The health check of a task's service, as the last assignments have it.
    fn healthcheck_of(&self, id: &str) -> Option<crate::service::health::HealthCheck> {
        self.last
            .lock()
            .expect("agent lock")
            .as_ref()?
            .tasks
            .iter()
            .find(|a| a.task.id == id)?
            .spec
            .as_ref()?
            .healthcheck
            .clone()
    }

    /// Whether the task runs and is on a network, so load balancers may send it flows.
    fn serves_traffic(&self, id: &str) -> bool {
        let running = self
            .tasks
            .lock()
            .expect("agent lock")
            .get(id)
            .is_some_and(|t| t.state == TaskState::Running);
        let attached = self
            .last
            .lock()
            .expect("agent lock")
            .as_ref()
            .is_some_and(|a| {
                a.tasks
                    .iter()
                    .any(|t| t.task.id == id && !t.task.attachments.is_empty())
            });
        running && attached
    }

    /// Stops a task an earlier agent left behind that is no longer wanted; no watcher runs
    /// for it, so this reports it down.
    pub(super) async fn stop_leftover(self: Arc<Self>, id: String) {
        if let Err(err) = self.runtime.stop(&id, STOP_GRACE).await {
            tracing::warn!(task = %id, error = %err, "stopping a task left from before a restart");
        }
        self.set_state(&id, TaskState::Shutdown, None, None);
    }

    /// Frees what a finished task held.
    pub(super) async fn remove(self: Arc<Self>, id: String) {
        self.discovery.stop_task(&id);
        if let Err(err) = self.runtime.remove(&id).await {
            tracing::warn!(task = %id, error = %err, "removing a task");
        }
        let path = self.netns_path(&id);
        let removed = tokio::task::spawn_blocking(move || netns::remove(&path)).await;
        if let Ok(Err(err)) = removed {
            tracing::warn!(task = %id, error = %err, "removing a task's network namespace");
        }
        let state_dir = self.state_dir.clone();
        let task = id.clone();
        let removed =
            tokio::task::spawn_blocking(move || crate::secrets::files::remove(&state_dir, &task))
                .await;
        if let Ok(Err(err)) = removed {
            tracing::warn!(task = %id, error = %err, "removing a task's secrets");
        }
    }
}
