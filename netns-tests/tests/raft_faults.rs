//! Raft under faults: clients write and read continuously through every manager while the
//! leader is killed, a minority or the majority is partitioned, or every manager restarts.
//! Each scenario checks its client history with stateright's linearizability tester, that
//! every acknowledged write is present afterwards, that no term had two leaders, and (for the
//! partitions) that the side without quorum acknowledged nothing.
//!
//! The register is a label on the worker `w1`: a write sets `reg=<n>` and, in the same
//! command, adds the label `w<n>`, so the final state shows every write that committed even
//! though later writes overwrote the register.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lab::LabSpec;
use netns_tests::history::{History, Outcome};
use netns_tests::{report, until_ok, TestLab};
use serde_json::{json, Value};

const MANAGERS: [&str; 3] = ["m1", "m2", "m3"];
/// The node whose labels hold the register.
const TARGET: &str = "w1";
/// Pause between one client's operations: a few hundred operations per scenario keep the
/// linearizability search (depth-first, unmemoized) fast.
const PACE: Duration = Duration::from_millis(25);
/// Longer than any answer meshd gives (a forwarded write waits up to 15 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the linearizability search may take; a few seconds is usual.
const CHECK_LIMIT: Duration = Duration::from_secs(120);

/// Why a call got no answer from the leader.
#[derive(Debug)]
enum CallError {
    /// The request never reached a daemon (it is down).
    NotSent(String),
    /// An error, a stale read, or no answer.
    Failed(String),
}

impl From<String> for CallError {
    fn from(why: String) -> Self {
        CallError::Failed(why)
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotSent(why) => write!(f, "not sent: {why}"),
            CallError::Failed(why) => f.write_str(why),
        }
    }
}

/// One cluster API call through a host's local control socket: Ok(answer) when the leader
/// answered.
fn call(socket: &Path, request: Value) -> Result<Value, CallError> {
    let stream = UnixStream::connect(socket).map_err(|e| CallError::NotSent(e.to_string()))?;
    stream
        .set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = json!({ "op": "cluster", "request": request }).to_string();
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| format!("no answer: {e}"))?;
    let reply: Value = serde_json::from_str(&reply).map_err(|e| format!("{e}: {reply:?}"))?;
    if reply["result"] != "cluster" {
        return Err(format!("refused: {reply}").into());
    }
    let answer = &reply["answer"];
    if let Some(error) = answer.get("Error") {
        return Err(format!("error: {error}").into());
    }
    if answer.get("Stale").is_some() {
        return Err(CallError::Failed(
            "stale: no leader confirmed the read".into(),
        ));
    }
    Ok(answer.clone())
}

fn write(socket: &Path, value: u64) -> Result<(), CallError> {
    let labels = BTreeMap::from([
        ("reg".to_string(), value.to_string()),
        (format!("w{value}"), "1".into()),
    ]);
    let answer = call(
        socket,
        json!({ "NodeUpdate": { "node": TARGET, "availability": null, "label_add": labels, "label_rm": [] } }),
    )?;
    match answer.get("Done") {
        Some(_) => Ok(()),
        None => Err(format!("unexpected answer: {answer}").into()),
    }
}

/// The target's labels, read linearizably.
fn labels(socket: &Path) -> Result<BTreeMap<String, String>, CallError> {
    let answer = call(socket, json!({ "NodeInspect": { "node": TARGET } }))?;
    serde_json::from_value(answer["Node"]["labels"].clone())
        .map_err(|e| CallError::Failed(format!("labels of {answer}: {e}")))
}

fn register(labels: &BTreeMap<String, String>) -> u64 {
    labels
        .get("reg")
        .map_or(0, |v| v.parse().expect("reg holds a number"))
}

/// Client threads, one per manager, alternating writes and reads until stopped.
struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Clients {
    fn start(lab: &TestLab, history: &Arc<History>) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = MANAGERS
            .iter()
            .map(|host| {
                let socket = socket(lab, host);
                let (host, history, stop) =
                    (host.to_string(), Arc::clone(history), Arc::clone(&stop));
                std::thread::spawn(move || client(&host, &socket, &history, &stop))
            })
            .collect();
        Clients { stop, threads }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("client thread");
        }
    }
}

fn client(host: &str, socket: &Path, history: &History, stop: &AtomicBool) {
    let id = history.new_client();
    let mut writing = true;
    while !stop.load(Ordering::Relaxed) {
        if writing {
            let (op, value) = history.invoke_write(id, host);
            history.end(op, write_outcome(write(socket, value)));
        } else {
            let op = history.invoke_read(id, host);
            let outcome = match labels(socket) {
                Ok(labels) => Outcome::Answered(register(&labels)),
                Err(err) => Outcome::Refused(err.to_string()),
            };
            history.end(op, outcome);
        }
        writing = !writing;
        std::thread::sleep(PACE);
    }
}

/// A write refused before Raft saw it (meshd down, or quorum known lost with the request never
/// delivered to a leader) took no effect; any other failure leaves its outcome open (it may
/// commit after the caller gave up, and meshd's error says so).
fn write_outcome(result: Result<(), CallError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Answered(0),
        Err(CallError::NotSent(why)) => Outcome::Refused(why),
        Err(CallError::Failed(why))
            if why.contains("quorum lost")
                && !why.contains("not committed")
                && !why.contains("may have been applied") =>
        {
            Outcome::Refused(why)
        }
        Err(CallError::Failed(why)) => Outcome::Open(why),
    }
}

fn socket(lab: &TestLab, host: &str) -> PathBuf {
    lab.lab().files(host).unwrap().control_socket()
}

fn lab(tag: &str) -> TestLab {
    TestLab::up(tag, |spec: &mut LabSpec| {
        spec.managers = MANAGERS.len();
        spec.workers = 1;
    })
}

fn leader(lab: &TestLab) -> String {
    let (name, _) = until_ok(Duration::from_secs(20), || {
        let answer = call(&socket(lab, "m1"), json!("NodeList")).map_err(|e| e.to_string())?;
        answer["Nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["manager_status"] == "Leader")
            .and_then(|n| n["name"].as_str().map(str::to_string))
            .ok_or_else(|| format!("no leader in {answer}"))
    })
    .expect("a leader");
    name
}

fn others(but: &[&str]) -> Vec<String> {
    MANAGERS
        .iter()
        .chain([&TARGET])
        .filter(|h| !but.contains(h))
        .map(|h| h.to_string())
        .collect()
}

/// The checks every scenario ends with, once the fault is over: each manager answers a
/// linearizable read that holds every acknowledged write, the history is linearizable, and no
/// term had two leaders. Records and asserts each.
fn verify(lab: &TestLab, scenario: &str, history: &History) {
    let mut missing = BTreeMap::new();
    for host in MANAGERS {
        let socket = socket(lab, host);
        let id = history.new_client();
        let (found, _) = until_ok(Duration::from_secs(30), || {
            let op = history.invoke_read(id, host);
            let answer = labels(&socket);
            let outcome = match &answer {
                Ok(labels) => Outcome::Answered(register(labels)),
                Err(err) => Outcome::Refused(err.to_string()),
            };
            history.end(op, outcome);
            answer.map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| {
            lab.keep_logs();
            panic!("{scenario}: {host} gives no linearizable read after the fault: {e}")
        });
        let lost: Vec<u64> = history
            .operations()
            .iter()
            .filter(|op| op.acked())
            .filter_map(|op| op.write)
            .filter(|value| !found.contains_key(&format!("w{value}")))
            .collect();
        if !lost.is_empty() {
            missing.insert(host, lost);
        }
    }
    let counts = Counts::of(&history.operations());
    let acked = counts.acked;
    if !report::verdict(
        "raft",
        &format!("{scenario}: acknowledged writes survive"),
        missing.is_empty(),
        &format!(
            "{acked} acknowledged writes, {} missing, read back through all {} managers",
            missing.values().map(Vec::len).sum::<usize>(),
            MANAGERS.len()
        ),
    ) {
        lab.keep_logs();
        let path = format!("/tmp/{}-history.txt", lab.name());
        let _ = std::fs::write(&path, history.dump());
        panic!("{scenario}: acknowledged writes lost: {missing:?}; history kept in {path}");
    }
    let linearizable = history.linearizable_within(CHECK_LIMIT);
    if linearizable != Some(true) {
        lab.keep_logs();
        let path = format!("/tmp/{}-history.txt", lab.name());
        let _ = std::fs::write(&path, history.dump());
        eprintln!("{scenario}: history kept in {path}");
    }
    let (linearizable, verdict) = match linearizable {
        Some(true) => (true, "stateright finds a linearization"),
        Some(false) => (false, "NOT linearizable"),
        None => (false, "undecided: the search ran out of time"),
    };
    assert!(
        report::verdict(
            "raft",
            &format!("{scenario}: history linearizable"),
            linearizable,
            &format!("{counts}; {verdict}"),
        ),
        "{scenario}: the client history is not linearizable"
    );
    let terms = leaders_by_term(lab);
    let doubled: Vec<_> = terms.iter().filter(|(_, hosts)| hosts.len() > 1).collect();
    assert!(
        report::verdict(
            "raft",
            &format!("{scenario}: one leader per term"),
            doubled.is_empty() && !terms.is_empty(),
            &format!(
                "terms {}: {}",
                terms
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                if doubled.is_empty() {
                    "one leader each".to_string()
                } else {
                    format!("two leaders in {doubled:?}")
                }
            ),
        ),
        "{scenario}: leaders by term {terms:?}"
    );
}

/// What the clients saw, for the report.
struct Counts {
    acked: usize,
    refused: usize,
    open: usize,
    reads: usize,
    reads_failed: usize,
}

impl Counts {
    fn of(operations: &[netns_tests::history::Operation]) -> Counts {
        let mut counts = Counts {
            acked: 0,
            refused: 0,
            open: 0,
            reads: 0,
            reads_failed: 0,
        };
        for op in operations {
            match (op.write.is_some(), &op.outcome) {
                (true, Outcome::Answered(_)) => counts.acked += 1,
                (true, Outcome::Refused(_)) => counts.refused += 1,
                (true, _) => counts.open += 1,
                (false, Outcome::Answered(_)) => counts.reads += 1,
                (false, _) => counts.reads_failed += 1,
            }
        }
        counts
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writes: {} acknowledged, {} refused, {} open (no answer); reads: {} answered, {} refused",
            self.acked, self.refused, self.open, self.reads, self.reads_failed
        )
    }
}

/// Which managers logged that they lead, per term, over the whole run (restarts included).
fn leaders_by_term(lab: &TestLab) -> BTreeMap<u64, BTreeSet<String>> {
    let mut terms: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for host in MANAGERS {
        let log = std::fs::read_to_string(lab.lab().files(host).unwrap().log()).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("this manager leads")) {
            let term = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("term="))
                .and_then(|t| t.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
                .unwrap_or_else(|| panic!("no term in {line:?}"));
            terms.entry(term).or_default().insert(host.to_string());
        }
    }
    terms
}

/// Writes through `hosts` invoked in [since, until): (acknowledged before `until`, tried).
/// A write still waiting when the partition heals may commit afterwards, legitimately.
fn acks_through(
    history: &History,
    hosts: &[&str],
    since: Instant,
    until: Instant,
) -> (usize, usize) {
    let tried: Vec<_> = history
        .operations()
        .into_iter()
        .filter(|op| op.write.is_some() && hosts.contains(&op.via.as_str()))
        .filter(|op| op.invoked >= since && op.invoked < until)
        .collect();
    let acked = tried
        .iter()
        .filter(|op| op.acked() && op.ended.is_some_and(|t| t < until))
        .count();
    (acked, tried.len())
}

/// Writes invoked through the side without quorum while it was cut off: none may be
/// acknowledged before the cut heals (each was sent after the cut, so no manager with quorum
/// could have received it).
fn assert_minority_refused(
    scenario: &str,
    history: &History,
    minority: &[&str],
    since: Instant,
    until: Instant,
) {
    let (acked, tried) = acks_through(history, minority, since, until);
    assert!(
        report::verdict(
            "raft",
            &format!("{scenario}: minority refuses writes"),
            acked == 0 && tried > 0,
            &format!(
                "{acked} of {tried} writes through {} acknowledged while cut off",
                minority.join(", ")
            ),
        ),
        "{scenario}: {acked} of {tried} writes through the minority were acknowledged"
    );
}

#[test]
fn the_leader_is_sigkilled() {
    let mut lab = lab("rf-kill");
    let old = leader(&lab);
    let history = Arc::new(History::new());
    let clients = Clients::start(&lab, &history);
    std::thread::sleep(Duration::from_secs(3));
    lab.lab_mut().kill(&old).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    lab.lab_mut().start(&old).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    clients.finish();
    verify(&lab, "leader SIGKILLed", &history);
}

/// Cuts `cut` off from every other host for 8 s while the clients run, then heals; returns
/// the history and the window the cut lasted.
fn partitioned(lab: &mut TestLab, cut: &str) -> (Arc<History>, Instant, Instant) {
    let history = Arc::new(History::new());
    let clients = Clients::start(lab, &history);
    std::thread::sleep(Duration::from_secs(3));
    lab.lab_mut()
        .partition(&[cut.to_string()], &others(&[cut]))
        .unwrap();
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    let until = Instant::now();
    lab.lab_mut().heal().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    clients.finish();
    (history, since, until)
}

#[test]
fn a_minority_is_partitioned() {
    let mut lab = lab("rf-minority");
    let leader = leader(&lab);
    let cut = *MANAGERS.iter().find(|m| **m != leader).unwrap();
    let (history, since, until) = partitioned(&mut lab, cut);
    assert_minority_refused("minority partitioned", &history, &[cut], since, until);
    // The majority kept its leader and went on committing.
    let majority: Vec<&str> = MANAGERS.into_iter().filter(|m| *m != cut).collect();
    let (acked, tried) = acks_through(&history, &majority, since, until);
    assert!(
        acked > 0,
        "the majority committed none of {tried} writes while the minority was cut off"
    );
    verify(&lab, "minority partitioned", &history);
}

#[test]
fn the_majority_is_partitioned_from_the_leader() {
    let mut lab = lab("rf-majority");
    let old = leader(&lab);
    let (history, since, until) = partitioned(&mut lab, &old);
    let scenario = "majority partitioned from the leader";
    assert_minority_refused(scenario, &history, &[&old], since, until);
    verify(&lab, scenario, &history);
}

#[test]
fn every_manager_restarts() {
    let mut lab = lab("rf-restart");
    leader(&lab);
    let history = Arc::new(History::new());
    let clients = Clients::start(&lab, &history);
    std::thread::sleep(Duration::from_secs(3));
    for host in MANAGERS {
        lab.lab_mut().kill(host).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    for host in MANAGERS {
        lab.lab_mut().start(host).unwrap();
    }
    std::thread::sleep(Duration::from_secs(6));
    clients.finish();
    verify(&lab, "all managers restarted", &history);
}
