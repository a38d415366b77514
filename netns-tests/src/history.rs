//! Client histories for the Raft fault tests, checked with stateright's linearizability tester.
//!
//! Clients write unique values to a register and read it back while faults happen. Each
//! operation is recorded with the order of its invocation and of its answer; the history is
//! replayed into the tester at the end, which lets each operation be classified by how it
//! ended:
//! - answered: a write acknowledged, or a read with its value;
//! - refused: the cluster said the write was never proposed (or the request never reached a
//!   daemon). It is left out; if it took effect after all, a read shows a value no recorded
//!   write produced, and the check fails.
//! - open: a write that failed or timed out may still commit (its caller gave up, Raft did not).
//!   It stays in flight forever, on a client of its own, so it may take effect anywhere after
//!   its invocation, or never.
//! - a read without an answer constrains nothing and is left out.

use std::sync::Mutex;
use std::time::Instant;

use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};

/// Client ids above this hold one open write each, so the tester's depth-first search (which
/// tries clients in id order) places answered operations first.
const OPEN_WRITE_CLIENTS: u64 = 1 << 32;

/// How an operation ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pending,
    /// A write acknowledged (value 0) or a read that returned the value.
    Answered(u64),
    /// Definitely not applied.
    Refused(String),
    /// May or may not have been applied.
    Open(String),
}

/// One operation as a client saw it.
#[derive(Clone, Debug)]
pub struct Operation {
    pub client: u64,
    /// `Some(value)` for a write of `value`, `None` for a read.
    pub write: Option<u64>,
    /// The manager the client asked.
    pub via: String,
    pub invoked: Instant,
    /// When the answer (or failure) came.
    pub ended: Option<Instant>,
    invoke_seq: u64,
    return_seq: u64,
    pub outcome: Outcome,
}

impl Operation {
    pub fn acked(&self) -> bool {
        self.write.is_some() && matches!(self.outcome, Outcome::Answered(_))
    }
}

#[derive(Default)]
struct Inner {
    operations: Vec<Operation>,
    next_seq: u64,
    next_client: u64,
    next_value: u64,
}

/// A history shared by every client thread of one fault scenario.
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

/// Names one recorded operation.
#[derive(Clone, Copy, Debug)]
pub struct OpId(usize);

impl History {
    pub fn new() -> History {
        History::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("history lock")
    }

    /// A new client (one per thread; a client runs one operation at a time).
    pub fn new_client(&self) -> u64 {
        let mut inner = self.lock();
        inner.next_client += 1;
        assert!(inner.next_client < OPEN_WRITE_CLIENTS);
        inner.next_client
    }

    /// Records the invocation of a write of a fresh value; returns it with the operation.
    pub fn invoke_write(&self, client: u64, via: &str) -> (OpId, u64) {
        let mut inner = self.lock();
        inner.next_value += 1;
        let value = inner.next_value;
        (record(&mut inner, client, Some(value), via), value)
    }

    pub fn invoke_read(&self, client: u64, via: &str) -> OpId {
        record(&mut self.lock(), client, None, via)
    }

    /// Records how `op` ended.
    pub fn end(&self, op: OpId, outcome: Outcome) {
        let mut inner = self.lock();
        inner.next_seq += 1;
        let seq = inner.next_seq;
        let operation = &mut inner.operations[op.0];
        operation.return_seq = seq;
        operation.ended = Some(Instant::now());
        operation.outcome = outcome;
    }

    pub fn operations(&self) -> Vec<Operation> {
        self.lock().operations.clone()
    }

    /// Whether some total order of the operations, consistent with real time and with a
    /// register's semantics, explains every answer; None when the search takes longer than
    /// `limit` (it is depth-first and unmemoized, so an unlinearizable history can take very
    /// long to refute).
    pub fn linearizable_within(&self, limit: std::time::Duration) -> Option<bool> {
        let mut events: Vec<(u64, usize, bool)> = Vec::new();
        let operations = self.operations();
        for (index, op) in operations.iter().enumerate() {
            match (&op.outcome, op.write) {
                (Outcome::Answered(_), _) => {
                    events.push((op.invoke_seq, index, true));
                    events.push((op.return_seq, index, false));
                }
                (Outcome::Open(_) | Outcome::Pending, Some(_)) => {
                    events.push((op.invoke_seq, index, true))
                }
                _ => {}
            }
        }
        events.sort_unstable();
        let mut tester = LinearizabilityTester::new(Register(0u64));
        for (_, index, invoking) in events {
            let op = &operations[index];
            let answered = matches!(op.outcome, Outcome::Answered(_));
            let client = match (answered, op.write) {
                (false, Some(value)) => OPEN_WRITE_CLIENTS + value,
                _ => op.client,
            };
            let recorded = match (invoking, op.write, &op.outcome) {
                (true, Some(value), _) => tester.on_invoke(client, RegisterOp::Write(value)),
                (true, None, _) => tester.on_invoke(client, RegisterOp::Read),
                (false, Some(_), _) => tester.on_return(client, RegisterRet::WriteOk),
                (false, None, Outcome::Answered(value)) => {
                    tester.on_return(client, RegisterRet::ReadOk(*value))
                }
                (false, None, other) => unreachable!("a read ending {other:?} is not replayed"),
            };
            recorded.expect("a client runs one operation at a time");
        }
        // The tester searches depth-first, one stack frame per operation. A search that runs
        // out of time is left behind; the test process ends it.
        let (done, verdict) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn(move || done.send(tester.is_consistent()))
            .expect("spawning the checker");
        verdict.recv_timeout(limit).ok()
    }

    /// `linearizable_within` without a limit.
    pub fn linearizable(&self) -> bool {
        self.linearizable_within(std::time::Duration::MAX)
            .expect("no time limit")
    }

    /// The operations as text, one per line in invocation order, for a failure's evidence.
    pub fn dump(&self) -> String {
        let mut operations = self.operations();
        operations.sort_by_key(|op| op.invoke_seq);
        operations
            .iter()
            .map(|op| {
                format!(
                    "client {} via {} {} [{}..{}] {:?}\n",
                    op.client,
                    op.via,
                    op.write
                        .map_or("read".to_string(), |v| format!("write {v}")),
                    op.invoke_seq,
                    op.return_seq,
                    op.outcome
                )
            })
            .collect()
    }
}

fn record(inner: &mut Inner, client: u64, write: Option<u64>, via: &str) -> OpId {
    inner.next_seq += 1;
    inner.operations.push(Operation {
        client,
        write,
        via: via.to_string(),
        invoked: Instant::now(),
        ended: None,
        invoke_seq: inner.next_seq,
        return_seq: 0,
        outcome: Outcome::Pending,
    });
    OpId(inner.operations.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(history: &History, client: u64, outcome: Outcome) -> u64 {
        let (op, value) = history.invoke_write(client, "m1");
        history.end(op, outcome);
        value
    }

    fn read(history: &History, client: u64, value: u64) {
        let op = history.invoke_read(client, "m1");
        history.end(op, Outcome::Answered(value));
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_caught() {
        let history = History::new();
        let (a, b) = (history.new_client(), history.new_client());
        write(&history, a, Outcome::Answered(0));
        read(&history, b, 0);
        assert!(!history.linearizable());
    }

    #[test]
    fn an_open_write_may_or_may_not_have_happened() {
        for seen in [false, true] {
            let history = History::new();
            let (a, b) = (history.new_client(), history.new_client());
            let value = write(&history, a, Outcome::Open("timed out".into()));
            read(&history, b, if seen { value } else { 0 });
            assert!(history.linearizable(), "seen: {seen}");
        }
    }

    #[test]
    fn a_refused_write_that_took_effect_is_caught() {
        let history = History::new();
        let (a, b) = (history.new_client(), history.new_client());
        let value = write(&history, a, Outcome::Refused("quorum lost".into()));
        read(&history, b, value);
        assert!(!history.linearizable());
    }

    #[test]
    fn concurrent_operations_may_order_either_way() {
        let history = History::new();
        let (a, b) = (history.new_client(), history.new_client());
        let first = write(&history, a, Outcome::Answered(0));
        let (second_op, _) = history.invoke_write(a, "m1");
        read(&history, b, first);
        history.end(second_op, Outcome::Answered(0));
        assert!(history.linearizable());
    }

    /// Nearly a thousand overlapping operations, some writes left open (half of them applied),
    /// check without the depth-first search blowing up: the size of a fault scenario's history.
    #[test]
    fn a_long_concurrent_history_with_open_writes_checks() {
        let history = History::new();
        let clients: Vec<u64> = (0..3).map(|_| history.new_client()).collect();
        let mut register = 0;
        let mut seed = 7u64;
        let mut random = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for round in 0..300 {
            // Every client invokes, the operations take effect in a random order, and the
            // answers come back in another.
            let mut pending = Vec::new();
            for &client in &clients {
                if random() % 2 == 0 {
                    let (op, value) = history.invoke_write(client, "m1");
                    pending.push((op, Some(value)));
                } else {
                    pending.push((history.invoke_read(client, "m1"), None));
                }
            }
            let mut outcomes = Vec::new();
            while !pending.is_empty() {
                let (op, write) = pending.remove(random() as usize % pending.len());
                let outcome = match write {
                    Some(value) if round % 29 == 0 => {
                        if random() % 2 == 0 {
                            register = value;
                        }
                        Outcome::Open("timed out".into())
                    }
                    Some(value) => {
                        register = value;
                        Outcome::Answered(0)
                    }
                    None => Outcome::Answered(register),
                };
                outcomes.push((op, outcome));
            }
            while !outcomes.is_empty() {
                let (op, outcome) = outcomes.remove(random() as usize % outcomes.len());
                history.end(op, outcome);
            }
        }
        assert!(history.linearizable());
    }
}
