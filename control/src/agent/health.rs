//! Health checks of the node's running tasks: one loop per task whose service has a check,
//! probing it, folding the results through [`HealthTracker`], and acting on the outcome:
//! starting and unhealthy tasks are published as not serving (so DNS and the load balancers
//! leave them out), healthy ones as serving, and an unhealthy task is stopped and reported
//! Failed with the last probe's reason, for its restart policy to replace it.
//!
//! The first probe runs one interval after the start, but no later than
//! [`FIRST_PROBE_AFTER`]: a task with a check takes no traffic before it passes once, so
//! waiting Docker's 30 s default would keep a new task idle for that long.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::{Agent, STOP_GRACE};
use crate::service::health::{HealthCheck, HealthTest, HealthTracker, TaskHealth};
use crate::service::TaskState;

/// The longest wait before a task's first probe.
pub const FIRST_PROBE_AFTER: Duration = Duration::from_secs(1);
/// The most of an HTTP answer read to find its status line.
const MAX_STATUS_LINE: usize = 1024;

impl Agent {
    /// Probes a running task until it ends or turns unhealthy.
    pub(super) async fn check_health(self: Arc<Self>, id: String, check: HealthCheck) {
        self.set_health(&id, TaskHealth::Starting);
        let started = tokio::time::Instant::now();
        let mut tracker = HealthTracker::default();
        let mut wait = check.interval().min(FIRST_PROBE_AFTER);
        loop {
            tokio::time::sleep(wait).await;
            wait = check.interval();
            if !self.is_serving_candidate(&id) {
                return;
            }
            let result = self.probe(&id, &check).await;
            if !self.is_serving_candidate(&id) {
                return;
            }
            let since_start = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let next = tracker.observe(&check, result.is_ok(), since_start);
            if let Err(why) = &result {
                let failures = next.failures;
                tracing::debug!(task = %id, failures, reason = %why, "health probe failed");
            }
            if next.health != tracker.health {
                tracing::info!(task = %id, health = next.health.as_str(), "task health changed");
                self.set_health(&id, next.health);
            }
            tracker = next;
            if tracker.health == TaskHealth::Unhealthy {
                let reason = result.err().unwrap_or_default();
                self.stop_unhealthy(&id, reason).await;
                return;
            }
        }
    }

    /// Marks a task whose service has a check as starting, before it is published as running.
    pub(super) fn expect_health(&self, id: &str) {
        if let Some(task) = self.tasks.lock().expect("agent lock").get_mut(id) {
            task.health = Some(TaskHealth::Starting);
        }
    }

    /// Whether the task runs and is not being stopped.
    fn is_serving_candidate(&self, id: &str) -> bool {
        self.tasks
            .lock()
            .expect("agent lock")
            .get(id)
            .is_some_and(|t| t.state == TaskState::Running && !t.stopping && t.unhealthy.is_none())
    }

    /// Records a task's health, republishes its endpoints and reports it at once.
    fn set_health(&self, id: &str, health: TaskHealth) {
        if let Some(task) = self.tasks.lock().expect("agent lock").get_mut(id) {
            task.health = Some(health);
        }
        self.wake.notify_one();
        self.endpoints_changed.notify_one();
    }

    /// Stops an unhealthy task; its watcher reports it Failed with `reason`.
    async fn stop_unhealthy(&self, id: &str, reason: String) {
        tracing::warn!(task = %id, %reason, "task is unhealthy; stopping it");
        if let Some(task) = self.tasks.lock().expect("agent lock").get_mut(id) {
            task.unhealthy = Some(reason);
        }
        if let Err(err) = self.runtime.stop(id, STOP_GRACE).await {
            tracing::warn!(task = %id, error = %err, "stopping an unhealthy task");
        }
    }

    /// Runs one probe: Ok, or why it failed.
    async fn probe(&self, id: &str, check: &HealthCheck) -> Result<(), String> {
        let timeout = check.timeout();
        match &check.test {
            HealthTest::Command(cmd) => {
                let argv = ["/bin/sh".to_string(), "-c".to_string(), cmd.clone()];
                let out = self
                    .runtime
                    .exec(id, &argv, timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                command_verdict(out.exit, &out.output, timeout)
            }
            HealthTest::Tcp { port } => {
                let port = *port;
                self.in_task_netns(id, timeout, move || connect(port, timeout).map(drop))
                    .await
            }
            HealthTest::Http { port, path } => {
                let (port, path) = (*port, path.clone());
                self.in_task_netns(id, timeout, move || http_get(port, &path, timeout))
                    .await
            }
        }
    }

    /// Runs `f` on a thread inside the task's network namespace, for at most `timeout`.
    async fn in_task_netns(
        &self,
        id: &str,
        timeout: Duration,
        f: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> Result<(), String> {
        let path = self.netns_dir.join(id);
        let run = tokio::task::spawn_blocking(move || {
            let netns = dataplane::overlay::netns::Netns::open_pinned(&path)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!("the task's network namespace {} is gone", path.display())
                })?;
            netns
                .run(|| Ok(f()))
                .map_err(|e| format!("entering the task's network namespace: {e}"))?
        });
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(result)) => result,
            Ok(Err(err)) => Err(format!("the probe thread failed: {err}")),
            Err(_) => Err(format!("timed out after {}", show_duration(timeout))),
        }
    }
}

/// The verdict on a health command: exit code 0 passes; otherwise the reason, with the end of
/// its output.
pub(super) fn command_verdict(
    exit: Option<crate::runtime::ExitStatus>,
    output: &str,
    timeout: Duration,
) -> Result<(), String> {
    let last = output.lines().last().unwrap_or("").trim();
    let said = |what: String| {
        if last.is_empty() {
            what
        } else {
            format!("{what}: {last}")
        }
    };
    match exit {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(said(format!("command {status}"))),
        None => Err(said(format!(
            "command timed out after {}",
            show_duration(timeout)
        ))),
    }
}

fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn connect(port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    Ok(stream)
}

fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut stream = connect(port, timeout)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: mesh-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < MAX_STATUS_LINE {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("GET {url}: {e}")),
        }
    }
    let status =
        http_status(&answer).ok_or_else(|| format!("GET {url}: the answer is not HTTP"))?;
    match status {
        200..=399 => Ok(()),
        _ => Err(format!("GET {url}: status {status}")),
    }
}

/// The status code of an HTTP answer's first line (`HTTP/1.1 200 OK`).
pub(super) fn http_status(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    let code: u16 = words.next()?.parse().ok()?;
    (100..=599).contains(&code).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ExitStatus;

    #[test]
    fn http_status_lines_parse() {
        assert_eq!(http_status(b"HTTP/1.1 200 OK\r\nServer: x\r\n"), Some(200));
        assert_eq!(http_status(b"HTTP/1.0 302 Found\r\n"), Some(302));
        assert_eq!(http_status(b"HTTP/1.0 503"), Some(503));
        assert_eq!(http_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(http_status(b"HTTP/1.1 abc\r\n"), None);
        assert_eq!(http_status(b"HTTP/1.1 999 x\r\n"), None);
        assert_eq!(http_status(b""), None);
    }

    #[test]
    fn command_verdicts_name_the_exit_and_the_last_line() {
        let t = Duration::from_secs(2);
        assert_eq!(
            command_verdict(Some(ExitStatus::Code(0)), "fine", t),
            Ok(())
        );
        assert_eq!(
            command_verdict(Some(ExitStatus::Code(1)), "a\nno such file\n", t),
            Err("command exit code 1: no such file".into())
        );
        assert_eq!(
            command_verdict(Some(ExitStatus::Signal(9)), "", t),
            Err("command killed by signal 9".into())
        );
        assert_eq!(
            command_verdict(None, "", Duration::from_millis(1500)),
            Err("command timed out after 1500ms".into())
        );
    }

    #[test]
    fn a_tcp_probe_sees_a_listener_and_an_http_probe_its_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.1 500 Oops\r\n\r\n",
            ] {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf);
                conn.write_all(answer.as_bytes()).unwrap();
            }
        });
        let t = Duration::from_secs(5);
        assert_eq!(http_get(port, "/ok", t), Ok(()));
        let err = http_get(port, "/bad", t).unwrap_err();
        assert!(err.contains("status 500") && err.contains("/bad"), "{err}");
        server.join().unwrap();
        let err = connect(port, t).unwrap_err();
        assert!(err.contains("connecting to 127.0.0.1"), "{err}");
    }
}
