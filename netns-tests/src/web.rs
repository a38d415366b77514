//! HTTP from a lab's client: one request, and a constant connection-per-request load whose
//! every failure is kept with the time it was sent (to read against meshd's logs, and to tell
//! which phase of a fault it belongs to).

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A web task's command (`sh -c`): busybox httpd answering `/` with `$VERSION slot <slot>`.
/// The shell stays PID 1 with a TERM trap, so a stop is quick (PID 1 ignores the signals it
/// has no handler for, and would wait out the stop grace period).
pub const QUICK_STOP_WEB: &str = r#"mkdir -p /www
echo "$VERSION slot $MESH_TASK_SLOT" > /www/index.html
trap 'exit 0' TERM
httpd -f -p 80 -h /www &
wait"#;

/// How long a request may take to connect, and then to answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The body of `GET path` from `addr`, when the answer is a 200.
pub fn get(addr: SocketAddrV4, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: mesh\r\n\r\n")
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| {
        let local = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        format!("read from {addr} (from {local}): {e}")
    })?;
    // CGI answers end their headers with a bare blank line.
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .or_else(|| answer.split_once("\n\n"))
        .ok_or_else(|| format!("{addr}: no HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}: {head}"));
    }
    Ok(body.trim().to_string())
}

/// Constant load from a lab host: connection per request, round robin over `targets`, until
/// finished.
pub struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    done: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Load {
    /// Starts the load from the named network namespace (a lab host's).
    pub fn start(netns: &str, targets: Vec<SocketAddrV4>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let served = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&served);
        let netns = netns.to_string();
        let done = std::thread::spawn(move || {
            crate::in_netns(&netns, move || {
                let (mut served, mut failed) = (0u64, Vec::new());
                for target in targets.iter().cycle() {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let (sent, started) = (clock(), std::time::Instant::now());
                    match get(*target, "/") {
                        Ok(_) => {
                            served += 1;
                            count.store(served, Ordering::Relaxed);
                        }
                        Err(e) => failed.push(format!(
                            "{sent} (+{} ms) {e}",
                            started.elapsed().as_millis()
                        )),
                    }
                }
                (served, failed)
            })
            .expect("enter the client's namespace")
        });
        Load { stop, served, done }
    }

    /// Requests served so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops the load: requests served, and each failure as `<sent> (+<ms until it failed>)
    /// <error>`, the time of day as [`clock`] writes it.
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.done.join().expect("load thread")
    }
}

/// UTC time of day with milliseconds, as meshd's log lines show it.
pub fn clock() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}
