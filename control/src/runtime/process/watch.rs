//! Watching a task: tailing its output files into log lines, and noticing its exit.
//!
//! Output goes through files (not pipes) so that a task outlives meshd; one tokio task per
//! running task polls both files every 100 ms from a remembered offset and sends complete
//! lines. Once the task has exited, what is left is read, a final unterminated line is sent,
//! and only then does `exited` resolve, so every line arrives before the exit status.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::oneshot;

use super::launch::parse_exit;
use crate::runtime::cgroup::TaskCgroups;
use crate::runtime::{ExitStatus, LogLine, LogSender, Stream};

/// How often output files are read.
const TAIL_EVERY: Duration = Duration::from_millis(100);
/// How often an adopted task's cgroup is checked.
const CGROUP_EVERY: Duration = Duration::from_millis(200);
/// A line longer than this is sent in pieces, so a task cannot make meshd buffer without end.
const MAX_LINE: usize = 64 * 1024;
/// The most read from one file per poll.
const MAX_READ: u64 = 4 << 20;

/// How the end of a task is noticed.
pub(super) enum ExitSource {
    /// The intermediate is meshd's child: wait for it.
    Child(tokio::process::Child),
    /// Adopted after a restart: poll the v2 cgroup until it is empty.
    Cgroup(TaskCgroups),
}

/// Reads the exit file the intermediate writes.
pub(super) fn read_exit(task_dir: &Path) -> Option<ExitStatus> {
    parse_exit(&std::fs::read_to_string(task_dir.join("exit")).ok()?)
}

/// Starts watching a task; the receiver resolves once it has exited and its output is sent.
pub(super) fn watch(
    task_id: String,
    task_dir: PathBuf,
    logs: LogSender,
    from_end: bool,
    source: ExitSource,
) -> oneshot::Receiver<ExitStatus> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut tails = [
            Tail::new(task_dir.join("stdout"), Stream::Stdout, from_end),
            Tail::new(task_dir.join("stderr"), Stream::Stderr, from_end),
        ];
        let exited = wait_exit(source, &task_dir);
        tokio::pin!(exited);
        let mut tick = tokio::time::interval(TAIL_EVERY);
        let status = loop {
            tokio::select! {
                status = &mut exited => break status,
                _ = tick.tick() => {
                    for tail in &mut tails {
                        tail.poll(&task_id, &logs);
                    }
                }
            }
        };
        for tail in &mut tails {
            // Everything the task wrote is in the file now; read it all.
            while tail.poll(&task_id, &logs) {}
            tail.flush(&task_id, &logs);
        }
        let _ = tx.send(status);
    });
    rx
}

async fn wait_exit(source: ExitSource, task_dir: &Path) -> ExitStatus {
    match source {
        ExitSource::Child(mut child) => {
            let waited = child.wait().await;
            read_exit(task_dir).unwrap_or_else(|| match waited.ok().and_then(|s| s.signal()) {
                // The intermediate was killed too (cgroup.kill): the task died the same way.
                Some(signal) => ExitStatus::Signal(signal),
                None => ExitStatus::Unknown,
            })
        }
        ExitSource::Cgroup(cgroups) => {
            while cgroups.populated() {
                tokio::time::sleep(CGROUP_EVERY).await;
            }
            read_exit(task_dir).unwrap_or(ExitStatus::Unknown)
        }
    }
}

/// One output file being followed.
struct Tail {
    path: PathBuf,
    stream: Stream,
    offset: u64,
    partial: Vec<u8>,
}

impl Tail {
    fn new(path: PathBuf, stream: Stream, from_end: bool) -> Tail {
        let offset = match from_end {
            true => std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            false => 0,
        };
        Tail {
            path,
            stream,
            offset,
            partial: Vec::new(),
        }
    }

    /// Reads what was appended and sends its complete lines; true if it read a full batch
    /// (more may be waiting).
    fn poll(&mut self, task_id: &str, logs: &LogSender) -> bool {
        let Ok(file) = File::open(&self.path) else {
            return false;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Truncated under us: start over.
            self.offset = 0;
        }
        let want = (len - self.offset).min(MAX_READ);
        let mut buf = vec![0u8; usize::try_from(want).unwrap_or(0)];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], self.offset + got as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        self.offset += got as u64;
        for (lines, _) in split_lines(&mut self.partial, &buf[..got], MAX_LINE) {
            self.send(task_id, logs, &lines);
        }
        want == MAX_READ
    }

    /// Sends an unterminated last line.
    fn flush(&mut self, task_id: &str, logs: &LogSender) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.send(task_id, logs, &line);
        }
    }

    fn send(&self, task_id: &str, logs: &LogSender, line: &[u8]) {
        // Nobody listening is fine: the task runs on regardless.
        let _ = logs.send(LogLine {
            task_id: task_id.to_string(),
            stream: self.stream,
            line: String::from_utf8_lossy(line).into_owned(),
        });
    }
}

/// Appends `data` to `partial` and returns the complete lines (without their newline), each
/// with whether it was cut at `max` bytes; what follows the last newline stays in `partial`.
fn split_lines(partial: &mut Vec<u8>, data: &[u8], max: usize) -> Vec<(Vec<u8>, bool)> {
    let mut lines = Vec::new();
    for &byte in data {
        if byte == b'\n' {
            lines.push((std::mem::take(partial), false));
        } else {
            partial.push(byte);
            if partial.len() >= max {
                lines.push((std::mem::take(partial), true));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: Vec<(Vec<u8>, bool)>) -> Vec<(String, bool)> {
        lines
            .into_iter()
            .map(|(l, cut)| (String::from_utf8(l).unwrap(), cut))
            .collect()
    }

    #[test]
    fn lines_are_split_across_reads() {
        let mut partial = Vec::new();
        assert_eq!(
            texts(split_lines(&mut partial, b"one\ntw", 100)),
            [("one".to_string(), false)]
        );
        assert_eq!(partial, b"tw");
        assert_eq!(
            texts(split_lines(&mut partial, b"o\n\nthree", 100)),
            [("two".to_string(), false), (String::new(), false)]
        );
        assert_eq!(partial, b"three");
    }

    #[test]
    fn long_lines_are_cut() {
        let mut partial = Vec::new();
        assert_eq!(
            texts(split_lines(&mut partial, b"abcdefg\n", 3)),
            [
                ("abc".to_string(), true),
                ("def".to_string(), true),
                ("g".to_string(), false)
            ]
        );
        assert!(partial.is_empty());
    }

    #[tokio::test]
    async fn output_files_become_log_lines_and_the_last_partial_line_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stdout"), "old\n").unwrap();
        std::fs::write(dir.path().join("stderr"), "e1\npartial").unwrap();
        // A task that already ended, adopted from the end of its files: nothing is repeated.
        std::fs::write(dir.path().join("exit"), "code 7\n").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tail = Tail::new(dir.path().join("stdout"), Stream::Stdout, true);
        assert!(!tail.poll("t", &tx));
        assert!(rx.try_recv().is_err());
        // From the start: complete lines, then the partial one on flush.
        let mut tail = Tail::new(dir.path().join("stderr"), Stream::Stderr, false);
        tail.poll("t", &tx);
        tail.flush("t", &tx);
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].line, "e1");
        assert_eq!(got[1].line, "partial");
        assert_eq!(got[1].stream, Stream::Stderr);
        assert_eq!(got[1].task_id, "t");
        assert_eq!(read_exit(dir.path()), Some(ExitStatus::Code(7)));
    }
}
