//! A 3-member etcd cluster in the lab: start, restart a member, find the leader, wait until
//! every member agrees and has caught up.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lab::Lab;

use super::http::HttpConn;
use super::*;

/// The etcd members and their processes; kills and reaps whatever still runs when dropped.
pub(super) struct Cluster {
    pub(super) members: Vec<Member>,
    pub(super) client_ns: String,
}

pub(super) struct Member {
    pub(super) name: &'static str,
    pub(super) address: Ipv4Addr,
    pub(super) data_dir: PathBuf,
    pub(super) log: PathBuf,
    pub(super) process: Option<Child>,
}

impl Cluster {
    pub(super) fn new(lab: &Lab) -> Result<Cluster> {
        let members = MEMBERS
            .iter()
            .map(|&name| {
                let dir = lab.files(name)?.dir;
                Ok(Member {
                    name,
                    address: lab.address(name)?,
                    data_dir: dir.join("etcd"),
                    log: dir.join("etcd.log"),
                    process: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Cluster {
            members,
            client_ns: lab.netns(CLIENT)?,
        })
    }

    pub(super) fn client_addr(&self, index: usize) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.members[index].address, CLIENT_PORT))
    }

    /// Starts member `index` in its host; `state` is etcd's --initial-cluster-state.
    pub(super) fn start_member(&mut self, lab: &Lab, index: usize, state: &str) -> Result<()> {
        let cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{PEER_PORT}", m.name, m.address))
            .collect::<Vec<_>>()
            .join(",");
        let member = &mut self.members[index];
        let dir = member.log.parent().expect("the log lives in the host dir");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log)
            .with_context(|| format!("opening {}", member.log.display()))?;
        let peer_url = format!("http://{}:{PEER_PORT}", member.address);
        let client_url = format!("http://{}:{CLIENT_PORT}", member.address);
        let data_dir = member.data_dir.to_string_lossy().into_owned();
        let argv = [
            "etcd",
            "--name",
            member.name,
            "--data-dir",
            &data_dir,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--initial-cluster",
            &cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            CLUSTER_TOKEN,
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ];
        let stdout = log
            .try_clone()
            .with_context(|| format!("duplicating {}", member.log.display()))?;
        let child = lab
            .spawn(member.name, &argv, Stdio::from(stdout), Stdio::from(log))
            .with_context(|| {
                format!(
                    "starting etcd on {} (log {})",
                    member.name,
                    member.log.display()
                )
            })?;
        member.process = Some(child);
        Ok(())
    }

    /// Kills member `index` if it still runs, and reaps it.
    pub(super) fn reap(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every member answers, all agree on one leader, every member has applied
    /// what the leader has logged, and a PUT through the leader commits. Returns the leader.
    pub(super) fn wait_healthy(&mut self) -> Result<usize> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_problem;
        loop {
            for member in &mut self.members {
                if let Some(child) = &mut member.process {
                    if let Ok(Some(status)) = child.try_wait() {
                        bail!(
                            "etcd on {} exited ({status}); see {}",
                            member.name,
                            member.log.display()
                        );
                    }
                }
            }
            last_problem = match self.check_healthy() {
                Ok(leader) => return Ok(leader),
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                let logs = self
                    .members
                    .iter()
                    .map(|m| m.log.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(last_problem.context(format!(
                    "etcd cluster not healthy after {} s (logs: {logs})",
                    READY_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(super) fn check_healthy(&self) -> Result<usize> {
        let statuses = (0..self.members.len())
            .map(|i| {
                self.status(i)
                    .with_context(|| format!("status of {}", self.members[i].name))
            })
            .collect::<Result<Vec<_>>>()?;
        let leader = leader_index(&statuses)
            .with_context(|| format!("members do not agree on a leader: {statuses:?}"))?;
        let logged = statuses[leader].raft_index;
        if let Some(behind) = statuses.iter().position(|s| s.applied_index < logged) {
            bail!(
                "{} has applied {} of the leader's {logged} entries",
                self.members[behind].name,
                statuses[behind].applied_index
            );
        }
        let mut conn = HttpConn::open(
            &self.client_ns,
            self.client_addr(leader),
            CONNECT_TIMEOUT,
            PROBE_TIMEOUT,
        )?;
        let answer = conn.post(PUT_PATH, &put_body(b"health00", b"ok"))?;
        if answer.status != 200 {
            bail!(
                "a PUT through leader {} answered {}: {}",
                self.members[leader].name,
                answer.status,
                answer.text()
            );
        }
        Ok(leader)
    }

    pub(super) fn status(&self, index: usize) -> Result<Status> {
        let mut conn = HttpConn::open(
            &self.client_ns,
            self.client_addr(index),
            CONNECT_TIMEOUT,
            PROBE_TIMEOUT,
        )?;
        let answer = conn.post(STATUS_PATH, "{}")?;
        if answer.status != 200 {
            bail!(
                "{STATUS_PATH} answered {}: {}",
                answer.status,
                answer.text()
            );
        }
        parse_status(&answer.text())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.reap(index);
        }
    }
}

/// What /v3/maintenance/status says about a member.
#[derive(Debug, PartialEq)]
pub(super) struct Status {
    pub(super) member_id: String,
    pub(super) leader: String,
    pub(super) raft_index: u64,
    pub(super) applied_index: u64,
}

/// Reads a status answer. The gateway prints 64-bit integers as JSON strings; numbers are
/// accepted too. etcd before 3.4 has no raftAppliedIndex: raftIndex stands in.
pub(super) fn parse_status(json: &str) -> Result<Status> {
    let value: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("status is not JSON: {json}"))?;
    let field = |pointer: &str| -> Result<String> {
        match value.pointer(pointer) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            _ => bail!("status has no {pointer}: {json}"),
        }
    };
    let number = |pointer: &str| -> Result<u64> {
        let text = field(pointer)?;
        text.parse()
            .with_context(|| format!("status {pointer} {text:?}"))
    };
    let raft_index = number("/raftIndex")?;
    Ok(Status {
        member_id: field("/header/member_id")?,
        leader: field("/leader").unwrap_or_else(|_| "0".into()),
        raft_index,
        applied_index: number("/raftAppliedIndex").unwrap_or(raft_index),
    })
}

/// The index of the leader when every member names the same, non-zero leader and it is one of
/// them.
pub(super) fn leader_index(statuses: &[Status]) -> Option<usize> {
    let leader = &statuses.first()?.leader;
    if leader == "0" || statuses.iter().any(|s| &s.leader != leader) {
        return None;
    }
    statuses.iter().position(|s| &s.member_id == leader)
}

/// The value of line `field` of `etcd --version` output ("etcd Version:" gives "3.4.23").
pub(super) fn version_field(text: &str, field: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(field))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// "3.4" from "3.4.23".
pub(super) fn major_minor(version: &str) -> String {
    version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn status_gives_member_leader_and_indexes() {
        // As etcd 3.4.23's gateway prints it.
        let json = r#"{"header":{"cluster_id":"6523040364590587733","member_id":"11335910734683931227","revision":"4","raft_term":"2"},"version":"3.4.23","dbSize":"20480","leader":"11335910734683931227","raftIndex":"12","raftTerm":"2","raftAppliedIndex":"11","dbSizeInUse":"20480"}"#;
        assert_eq!(
            parse_status(json).unwrap(),
            Status {
                member_id: "11335910734683931227".into(),
                leader: "11335910734683931227".into(),
                raft_index: 12,
                applied_index: 11,
            }
        );
        let numbers = r#"{"header":{"member_id":7},"leader":9,"raftIndex":3}"#;
        let status = parse_status(numbers).unwrap();
        assert_eq!(
            (
                status.member_id.as_str(),
                status.leader.as_str(),
                status.applied_index
            ),
            ("7", "9", 3)
        );
        assert!(parse_status(r#"{"leader":"1"}"#)
            .unwrap_err()
            .to_string()
            .contains("raftIndex"));
        assert!(parse_status("<html>").is_err());
    }

    fn status(member: &str, leader: &str) -> Status {
        Status {
            member_id: member.into(),
            leader: leader.into(),
            raft_index: 1,
            applied_index: 1,
        }
    }

    #[test]
    fn leader_is_the_member_everyone_names() {
        assert_eq!(
            leader_index(&[status("1", "2"), status("2", "2"), status("3", "2")]),
            Some(1)
        );
        assert_eq!(
            leader_index(&[status("1", "2"), status("2", "3"), status("3", "3")]),
            None
        );
        assert_eq!(leader_index(&[status("1", "0"), status("2", "0")]), None);
        assert_eq!(leader_index(&[status("1", "9"), status("2", "9")]), None);
        assert_eq!(leader_index(&[]), None);
    }

    #[test]
    fn version_from_etcd_version_output() {
        let text = "etcd Version: 3.4.23\nGit SHA: Not provided (use ./build instead of go build)\nGo Version: go1.19.8\nGo OS/Arch: linux/amd64\n";
        assert_eq!(
            version_field(text, "etcd Version:").as_deref(),
            Some("3.4.23")
        );
        assert_eq!(
            version_field(text, "Go Version:").as_deref(),
            Some("go1.19.8")
        );
        assert_eq!(major_minor("3.4.23"), "3.4");
        assert_eq!(version_field("Go Version: go1.19.8", "etcd Version:"), None);
        assert_eq!(version_field("etcd Version:  \n", "etcd Version:"), None);
    }
}
