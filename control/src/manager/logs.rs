//! Task output on the leader: agents ship their tasks' lines with every report and the leader
//! keeps the most recent ones per task in memory for `service logs`. Nothing here is
//! replicated: a new leader has the lines shipped after it took over.

use std::collections::{HashMap, VecDeque};

use crate::rpc::messages::LogRecord;

/// Lines kept per task.
pub const LINES_PER_TASK: usize = 2000;

/// The recent output of every task.
#[derive(Default)]
pub struct LogBuffer {
    tasks: HashMap<String, VecDeque<LogRecord>>,
}

impl LogBuffer {
    /// Adds lines; a line already held (same task and number) is ignored, so an agent may
    /// resend after a lost answer.
    pub fn push(&mut self, records: Vec<LogRecord>) {
        for record in records {
            let lines = self.tasks.entry(record.task_id.clone()).or_default();
            if lines.back().is_some_and(|last| last.seq >= record.seq) {
                continue;
            }
            if lines.len() == LINES_PER_TASK {
                lines.pop_front();
            }
            lines.push_back(record);
        }
    }

    /// Lines of `task` numbered above `after`.
    pub fn read(&self, task: &str, after: u64) -> impl Iterator<Item = &LogRecord> {
        self.tasks
            .get(task)
            .into_iter()
            .flatten()
            .filter(move |r| r.seq > after)
    }

    /// Drops the lines of tasks the store no longer has.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.tasks.retain(|task, _| keep(task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Stream;

    fn line(task: &str, seq: u64) -> LogRecord {
        LogRecord {
            task_id: task.into(),
            seq,
            stream: Stream::Stdout,
            line: format!("line {seq}"),
            at_ms: seq,
        }
    }

    #[test]
    fn resent_lines_are_kept_once_and_old_ones_roll_off() {
        let mut buffer = LogBuffer::default();
        buffer.push(vec![line("a", 1), line("a", 2)]);
        buffer.push(vec![line("a", 2), line("a", 3), line("b", 1)]);
        let seqs: Vec<u64> = buffer.read("a", 0).map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(buffer.read("a", 2).count(), 1);
        buffer.push(
            (4..=LINES_PER_TASK as u64 + 10)
                .map(|s| line("a", s))
                .collect(),
        );
        assert_eq!(buffer.read("a", 0).count(), LINES_PER_TASK);
        assert_eq!(buffer.read("a", 0).next().unwrap().seq, 11);
        buffer.retain(|t| t == "b");
        assert_eq!(buffer.read("a", 0).count(), 0);
        assert_eq!(buffer.read("b", 0).count(), 1);
    }
}
