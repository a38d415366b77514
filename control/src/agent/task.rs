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
        };
        match self.runtime.start(&run, lines).await {
            Ok(started) => {
                self.set_state(&id, TaskState::Running, None, None);
                if self.is_stopping(&id) {
                    // Stopped while it was starting: the stop found nothing to stop then.
                    tokio::spawn(Arc::clone(&self).stop(id.clone()));
                }
                self.watch(id, started).await;
            }
            Err(err) => {
                tracing::warn!(task = %id, error = %err, "starting a task");
                self.set_state(&id, TaskState::Rejected, Some(err.to_string()), None);
            }
        }
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
        let (state, error) = if self.is_stopping(&id) {
            (TaskState::Shutdown, None)
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
    }
}
