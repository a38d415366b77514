//! A node's cluster identity on disk: `<state_dir>/cluster/` holds node.json (ID, role,
//! cluster, known managers), ca.pem, node.pem and node.key (mode 0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cluster::tls::NodeCredentials;
use crate::store::{NodeId, Role};

/// What node.json records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// This node's ID.
    pub node_id: NodeId,
    /// The cluster it belongs to.
    pub cluster_id: String,
    /// Manager or worker.
    pub role: Role,
    /// This node's cluster address (host:port).
    pub addr: String,
    /// The managers it knows of, to reach the leader after a restart.
    pub managers: Vec<(NodeId, String)>,
}

/// A node's identity: membership and credentials.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Who it is in the cluster.
    pub membership: Membership,
    /// Its TLS credentials.
    pub credentials: NodeCredentials,
}

/// The directory holding the identity.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster")
}

impl Identity {
    /// Loads the identity, if this node has joined or initialized a cluster.
    pub fn load(state_dir: &Path) -> std::io::Result<Option<Identity>> {
        let dir = dir(state_dir);
        let membership = match fs::read(dir.join("node.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        Ok(Some(Identity {
            membership,
            credentials: NodeCredentials::new(
                fs::read_to_string(dir.join("ca.pem"))?,
                fs::read_to_string(dir.join("node.pem"))?,
                fs::read_to_string(dir.join("node.key"))?,
            ),
        }))
    }

    /// Writes the identity; node.json last, so a crash midway leaves no half identity.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let dir = dir(state_dir);
        fs::create_dir_all(&dir)?;
        write_file(
            &dir.join("ca.pem"),
            self.credentials.ca_pem.as_bytes(),
            0o644,
        )?;
        write_file(
            &dir.join("node.pem"),
            self.credentials.cert_pem.as_bytes(),
            0o644,
        )?;
        write_file(
            &dir.join("node.key"),
            self.credentials.key_pem.as_bytes(),
            0o600,
        )?;
        let json = serde_json::to_vec_pretty(&self.membership).map_err(std::io::Error::other)?;
        write_file(&dir.join("node.json"), &json, 0o644)
    }

    /// Updates the list of known managers.
    pub fn save_managers(state_dir: &Path, managers: Vec<(NodeId, String)>) -> std::io::Result<()> {
        if let Some(mut identity) = Identity::load(state_dir)? {
            if identity.membership.managers != managers {
                identity.membership.managers = managers;
                let json = serde_json::to_vec_pretty(&identity.membership)
                    .map_err(std::io::Error::other)?;
                write_file(&dir(state_dir).join("node.json"), &json, 0o644)?;
            }
        }
        Ok(())
    }
}

/// Writes a file atomically with `mode` (write a temporary file, fsync, rename).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn identity_round_trips_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        let identity = Identity {
            membership: Membership {
                node_id: 7,
                cluster_id: "c".into(),
                role: Role::Worker,
                addr: "198.18.0.4:2377".into(),
                managers: vec![(1, "198.18.0.1:2377".into())],
            },
            credentials: NodeCredentials::new("ca".into(), "cert".into(), "key".into()),
        };
        identity.save(dir.path()).unwrap();
        let loaded = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.membership, identity.membership);
        assert_eq!(loaded.credentials.key_pem, "key");
        let mode = fs::metadata(super::dir(dir.path()).join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        Identity::save_managers(dir.path(), vec![(2, "198.18.0.2:2377".into())]).unwrap();
        assert_eq!(
            Identity::load(dir.path())
                .unwrap()
                .unwrap()
                .membership
                .managers[0]
                .0,
            2
        );
    }
}
