//! Mesh's managers under the same load as etcd: writes committed through Raft, sent to the
//! leader's meshd on its local control socket (meshctl's path), one connection per client.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lab::Lab;
use serde_json::Value;

use super::{
    closed_loop, Load, LOAD_IO_TIMEOUT, MEMBERS, PROBE_TIMEOUT, READY_TIMEOUT, VALUE_SIZE,
};

/// The node whose labels the writes change (a label per client, so the store stays small).
const TARGET_NODE: &str = "m1";

/// The three managers' control sockets.
pub(super) struct MeshCluster {
    sockets: Vec<PathBuf>,
}

impl MeshCluster {
    pub(super) fn new(lab: &Lab) -> Result<Self> {
        let sockets = MEMBERS
            .iter()
            .map(|host| Ok(lab.files(host)?.control_socket()))
            .collect::<Result<_>>()?;
        Ok(MeshCluster { sockets })
    }

    /// The control socket of manager `index`.
    pub(super) fn socket(&self, index: usize) -> &PathBuf {
        &self.sockets[index]
    }

    /// Waits until every manager is Ready and Reachable under one leader; returns its index.
    pub(super) fn wait_healthy(&self) -> Result<usize> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            for socket in &self.sockets {
                match node_list(socket) {
                    Ok(nodes) => {
                        let managers: Vec<&Value> =
                            nodes.iter().filter(|n| n["role"] == "manager").collect();
                        let healthy = managers.len() == MEMBERS.len()
                            && managers.iter().all(|n| {
                                n["status"] == "ready"
                                    && matches!(
                                        n["manager_status"].as_str(),
                                        Some("Leader" | "Reachable")
                                    )
                            });
                        let leader = managers.iter().find(|n| n["manager_status"] == "Leader");
                        if let (true, Some(leader)) = (healthy, leader) {
                            let name = leader["name"].as_str().unwrap_or_default();
                            if let Some(index) = MEMBERS.iter().position(|m| *m == name) {
                                return Ok(index);
                            }
                        }
                        last = format!("managers: {managers:?}");
                    }
                    Err(err) => last = err.to_string(),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the Mesh managers were not all healthy within {} s: {last}",
            READY_TIMEOUT.as_secs()
        )
    }
}

fn call(stream: &mut UnixStream, request: &str) -> Result<Value> {
    stream.write_all(request.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(&*stream).read_line(&mut line)?;
    if line.is_empty() {
        bail!("meshd closed the connection");
    }
    Ok(serde_json::from_str(&line)?)
}

fn connect(socket: &PathBuf, timeout: Duration) -> Result<UnixStream> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn node_list(socket: &PathBuf) -> Result<Vec<Value>> {
    let mut stream = connect(socket, Duration::from_secs(5))?;
    let answer = call(&mut stream, r#"{"op":"cluster","request":"NodeList"}"#)?;
    match answer["answer"]["Nodes"].as_array() {
        Some(nodes) => Ok(nodes.clone()),
        None => bail!("unexpected answer to NodeList: {answer}"),
    }
}

/// The request that sets label `b<client>` on TARGET_NODE to a VALUE_SIZE-byte value.
fn write_request(client: usize, seq: u32) -> String {
    let mut value = format!("{seq:08x}");
    value.extend(std::iter::repeat_n('v', VALUE_SIZE - value.len()));
    format!(
        r#"{{"op":"cluster","request":{{"NodeUpdate":{{"node":"{TARGET_NODE}","availability":null,"label_add":{{"b{client}":"{value}"}},"label_rm":[]}}}}}}"#
    )
}

/// Whether an answer reports a committed change.
fn committed(answer: &Value) -> Result<(), String> {
    if answer["answer"].get("Done").is_some() {
        Ok(())
    } else {
        Err(answer.to_string())
    }
}

/// `clients` closed-loop writers on the leader's control socket.
pub(super) fn write_load(
    socket: &PathBuf,
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Load> {
    let conns = (0..clients)
        .map(|_| connect(socket, LOAD_IO_TIMEOUT))
        .collect::<Result<Vec<_>>>()?;
    closed_loop(conns, warmup, duration, |stream, client, seq| {
        Ok(committed(&call(stream, &write_request(client, seq))?))
    })
}

/// A write through the survivors in turn, each on a new connection; true when committed.
pub(super) fn probe(survivors: &[PathBuf], sent: usize) -> bool {
    let socket = &survivors[sent % survivors.len()];
    connect(socket, PROBE_TIMEOUT)
        .and_then(|mut stream| call(&mut stream, &write_request(0xfff, sent as u32)))
        .is_ok_and(|answer| committed(&answer).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_requests_are_the_local_api_json_with_a_sized_value() {
        let request: Value = serde_json::from_str(&write_request(3, 0x2a)).unwrap();
        assert_eq!(request["op"], "cluster");
        let update = &request["request"]["NodeUpdate"];
        assert_eq!(update["node"], TARGET_NODE);
        let value = update["label_add"]["b3"].as_str().unwrap();
        assert_eq!(value.len(), VALUE_SIZE);
        assert!(value.starts_with("0000002a"));
    }

    #[test]
    fn only_done_answers_count_as_committed() {
        let done: Value = serde_json::from_str(
            r#"{"result":"cluster","answer":{"Done":{"message":"ok","warnings":[]}}}"#,
        )
        .unwrap();
        let error: Value =
            serde_json::from_str(r#"{"result":"cluster","answer":{"Error":"quorum lost"}}"#)
                .unwrap();
        assert!(committed(&done).is_ok());
        assert!(committed(&error).unwrap_err().contains("quorum lost"));
    }
}
