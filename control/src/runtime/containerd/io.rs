//! A task's output: two FIFOs per task under `<state_dir>/containerd-io/<task_id>/`, which the
//! shim writes the process's stdout and stderr into, read here line by line.
//!
//! The read end is opened in blocking mode on a blocking thread before the task is created, so
//! the open returns once the shim opens its write end (a non-blocking reader would see end of
//! file while no writer is there yet). From then on, end of file means the shim closed its end:
//! the process and everything holding its output are gone.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::runtime::{LogLine, LogSender, Stream};

/// How long readers keep going after the task exited, for output still in flight.
const DRAIN: Duration = Duration::from_secs(2);
/// A line longer than this is delivered in pieces of this size.
const MAX_LINE: usize = 64 * 1024;

/// The FIFO pair of one task.
#[derive(Clone, Debug)]
pub struct Fifos {
    /// `<io_dir>/<task_id>`.
    pub dir: PathBuf,
}

impl Fifos {
    /// The FIFOs of `task_id` under `io_dir`.
    pub fn new(io_dir: &Path, task_id: &str) -> Self {
        Fifos {
            dir: io_dir.join(task_id),
        }
    }

    /// Where the shim writes stdout.
    pub fn stdout(&self) -> PathBuf {
        self.dir.join("stdout")
    }

    /// Where the shim writes stderr.
    pub fn stderr(&self) -> PathBuf {
        self.dir.join("stderr")
    }

    /// Creates the directory (0700) and both FIFOs; existing ones are kept.
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(
            &self.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        for path in [self.stdout(), self.stderr()] {
            let c_path = CString::new(path.as_os_str().as_bytes())
                .map_err(|_| io::Error::other("FIFO path contains a NUL byte"))?;
            // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
            if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::AlreadyExists {
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Whether both FIFOs are there (a task adopted after a restart may have none).
    pub fn exist(&self) -> bool {
        self.stdout().exists() && self.stderr().exists()
    }

    /// Deletes the directory; a missing one is not an error.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// Wakes a reader still blocked opening a FIFO nobody writes to (the task never started,
    /// or ended before the reader came): a writer that opens and closes at once gives it end
    /// of file.
    fn unblock(&self) {
        for path in [self.stdout(), self.stderr()] {
            // ENXIO (no reader) or a missing FIFO just means nobody is blocked.
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
        }
    }
}

/// The two readers of one task's output.
pub struct Readers {
    fifos: Fifos,
    exited: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Starts reading both FIFOs, sending each line to `logs`. Call before the task is
    /// created: the readers' opens are what the shim's opens wait for.
    pub fn spawn(fifos: &Fifos, task_id: &str, logs: LogSender) -> Self {
        let (exited, watch) = watch::channel(false);
        let handles = [
            (fifos.stdout(), Stream::Stdout),
            (fifos.stderr(), Stream::Stderr),
        ]
        .into_iter()
        .map(|(path, stream)| {
            let pump = Pump {
                task_id: task_id.to_string(),
                stream,
                logs: logs.clone(),
            };
            tokio::spawn(pump.run(path, watch.clone()))
        })
        .collect();
        Readers {
            fifos: fifos.clone(),
            exited,
            handles,
        }
    }

    /// After the task exited: lets the readers drain what is in flight, then ends them.
    pub async fn finish(self) {
        let _ = self.exited.send(true);
        self.fifos.unblock();
        for handle in self.handles {
            let abort = handle.abort_handle();
            if tokio::time::timeout(DRAIN + Duration::from_secs(1), handle)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Ends the readers at once (the task could not be started).
    pub fn abort(self) {
        self.fifos.unblock();
        for handle in self.handles {
            handle.abort();
        }
    }
}

/// Reads one stream and sends its lines.
struct Pump {
    task_id: String,
    stream: Stream,
    logs: LogSender,
}

impl Pump {
    async fn run(self, path: PathBuf, mut exited: watch::Receiver<bool>) {
        let opened = tokio::task::spawn_blocking(move || File::open(path)).await;
        let Ok(Ok(file)) = opened else { return };
        let Ok(mut receiver) = pipe::Receiver::from_file(file) else {
            return;
        };
        let mut pending = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let drain = tokio::time::sleep(Duration::MAX);
        tokio::pin!(drain);
        let mut draining = false;
        loop {
            tokio::select! {
                read = receiver.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        pending.extend_from_slice(&chunk[..n]);
                        self.send_complete_lines(&mut pending);
                    }
                },
                changed = exited.wait_for(|e| *e), if !draining => {
                    if changed.is_err() {
                        break;
                    }
                    draining = true;
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                }
                () = &mut drain, if draining => break,
            }
        }
        if !pending.is_empty() {
            self.send(&pending);
        }
    }

    /// Sends every complete line in `pending` (and over-long partial ones), keeping the rest.
    fn send_complete_lines(&self, pending: &mut Vec<u8>) {
        let mut start = 0;
        for (line, rest) in split_lines(&pending[..], MAX_LINE) {
            self.send(line);
            start = rest;
        }
        pending.drain(..start);
    }

    fn send(&self, line: &[u8]) {
        // A receiver that went away (the agent stopped listening) is not our concern: keep
        // reading so the task never blocks on a full pipe.
        let _ = self.logs.send(LogLine {
            task_id: self.task_id.clone(),
            stream: self.stream,
            line: String::from_utf8_lossy(line).into_owned(),
        });
    }
}

/// The complete lines in `buf` (without their newline), each with the offset just past it;
/// a run of `max` bytes without a newline counts as a line.
fn split_lines(buf: &[u8], max: usize) -> Vec<(&[u8], usize)> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < buf.len() {
        let window = &buf[start..buf.len().min(start + max)];
        match window.iter().position(|&b| b == b'\n') {
            Some(end) => {
                lines.push((&window[..end], start + end + 1));
                start += end + 1;
            }
            None if window.len() == max => {
                lines.push((window, start + max));
                start += max;
            }
            None => break,
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_newlines_and_keep_the_partial_tail() {
        let lines = split_lines(b"one\ntwo\nthr", 100);
        assert_eq!(lines, [(&b"one"[..], 4), (&b"two"[..], 8)]);
        assert!(split_lines(b"partial", 100).is_empty());
        assert_eq!(split_lines(b"\n", 100), [(&b""[..], 1)]);
    }

    #[test]
    fn over_long_lines_come_in_pieces() {
        let lines = split_lines(b"abcdefg\nxy", 3);
        assert_eq!(lines, [(&b"abc"[..], 3), (&b"def"[..], 6), (&b"g"[..], 8)]);
    }

    #[tokio::test]
    async fn a_fifo_delivers_lines_to_the_log_sender() {
        let dir = tempfile::tempdir().unwrap();
        let fifos = Fifos::new(dir.path(), "t1");
        fifos.create().unwrap();
        assert!(fifos.exist());
        let (logs, mut received) = tokio::sync::mpsc::unbounded_channel();
        let readers = Readers::spawn(&fifos, "t1", logs);
        let out = fifos.stdout();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut writer = OpenOptions::new().write(true).open(out).unwrap();
            writer.write_all(b"hello\nworld\nno newline").unwrap();
        })
        .await
        .unwrap();
        readers.finish().await;
        let mut lines = Vec::new();
        while let Ok(line) = received.try_recv() {
            assert_eq!(line.task_id, "t1");
            assert_eq!(line.stream, Stream::Stdout);
            lines.push(line.line);
        }
        assert_eq!(lines, ["hello", "world", "no newline"]);
        fifos.remove().unwrap();
        assert!(!fifos.dir.exists());
        fifos.remove().unwrap();
    }
}
