//! Secrets and configs on the leader: create (encrypted here, before Raft sees them), list,
//! inspect, remove, resolve a service's references, and decrypt them into the assignments of
//! the node that runs a task using them.

use std::collections::BTreeMap;

use super::orchestrate::{now_ms, random_id};
use super::Manager;
use crate::api::ApiResponse;
use crate::rpc::messages::Assignments;
use crate::secrets::crypto::DataKey;
use crate::secrets::{Blob, Kind, SecretData, SecretRecord, SecretView};
use crate::service::{DesiredState, ServiceSpec, TaskState};
use crate::store::{ClusterState, Command};

impl Manager {
    pub(super) async fn create_secret(
        &self,
        kind: Kind,
        name: String,
        labels: BTreeMap<String, String>,
        data: Blob,
    ) -> ApiResponse {
        let noun = kind.as_str();
        if let Err(why) = crate::secrets::validate_new(kind, &name, data.0.len()) {
            return ApiResponse::Error(why);
        }
        if let Some(key) = labels.keys().find(|k| !crate::api::valid_label_key(k)) {
            return ApiResponse::Error(format!(
                "--label key {key:?} is not valid; use letters, digits, '.', '-' and '_', starting with a letter"
            ));
        }
        let Some(key) = &self.data_key else {
            return ApiResponse::Error(format!(
                "this manager holds no data key, so it cannot encrypt the {noun}; the cluster was created before secrets existed or the key file {} is gone: restore it from another manager",
                DataKey::path(&self.state_dir).display()
            ));
        };
        let id = random_id();
        let sealed = match key.seal(&crate::secrets::aad(&id, kind, &name), &data.0) {
            Ok(sealed) => sealed,
            Err(err) => return ApiResponse::Error(format!("encrypting the {noun}: {err}")),
        };
        let record = SecretRecord {
            id: id.clone(),
            kind,
            name,
            labels,
            created_ms: now_ms(),
            size: data.0.len() as u64,
            sealed: Blob(sealed),
        };
        match self.apply(Command::CreateSecret(record)).await {
            Ok(()) => super::api::done(id),
            Err(answer) => answer,
        }
    }

    pub(super) async fn remove_secret(&self, kind: Kind, key: &str) -> ApiResponse {
        let found = self.read(|state| find_secret(state, kind, key).cloned());
        let record = match found {
            Ok(record) => record,
            Err(why) => return ApiResponse::Error(why),
        };
        match self.apply(Command::RemoveSecret { id: record.id }).await {
            Ok(()) => super::api::done(record.name),
            Err(answer) => answer,
        }
    }

    /// Puts the plaintext of their secrets and configs into the assignments of tasks this
    /// node is about to start; a blob that does not decrypt is left out (the agent then
    /// rejects the task, naming it).
    pub(super) fn attach_secrets(&self, state: &ClusterState, assignments: &mut Assignments) {
        for assignment in &mut assignments.tasks {
            let task = &assignment.task;
            let starting = task.desired == DesiredState::Running && task.state < TaskState::Running;
            let Some(spec) = assignment.spec.as_ref().filter(|_| starting) else {
                continue;
            };
            assignment.secrets = decrypt_for(state, spec, self.data_key.as_ref());
        }
    }
}

/// The plaintext of every secret and config `spec` references that decrypts with `key`.
pub fn decrypt_for(
    state: &ClusterState,
    spec: &ServiceSpec,
    key: Option<&DataKey>,
) -> Vec<SecretData> {
    let mut out = Vec::new();
    for kind in [Kind::Secret, Kind::Config] {
        for reference in spec.references(kind) {
            let Some(record) = state.secrets.get(&reference.id) else {
                continue;
            };
            let Some(key) = key else {
                tracing::warn!(kind = kind.as_str(), name = %record.name, "no data key on this leader: cannot deliver");
                continue;
            };
            match key.open(&record.aad(), &record.sealed.0) {
                Ok(data) => out.push(SecretData {
                    kind,
                    id: record.id.clone(),
                    data: Blob(data),
                }),
                Err(err) => {
                    tracing::warn!(name = %record.name, error = %err, "decrypting a secret for delivery")
                }
            }
        }
    }
    out
}

/// Fills in the record IDs of a new spec's references; an unknown name is refused.
pub(super) fn resolve_refs(state: &ClusterState, spec: &mut ServiceSpec) -> Result<(), String> {
    for kind in [Kind::Secret, Kind::Config] {
        let references = match kind {
            Kind::Secret => &mut spec.secrets,
            Kind::Config => &mut spec.configs,
        };
        for reference in references {
            let noun = kind.as_str();
            let record = state.secret_named(kind, &reference.name).ok_or_else(|| {
                format!(
                    "--{noun} {}: no such {noun}; create it first with `meshctl {noun} create {} FILE` (`meshctl {noun} ls` lists them)",
                    reference.name, reference.name
                )
            })?;
            reference.id = record.id.clone();
        }
    }
    Ok(())
}

/// Finds a secret or config by exact name, full ID or unique ID prefix.
pub(super) fn find_secret<'a>(
    state: &'a ClusterState,
    kind: Kind,
    key: &str,
) -> Result<&'a SecretRecord, String> {
    if let Some(record) = state.secret_named(kind, key) {
        return Ok(record);
    }
    let noun = kind.as_str();
    let matches: Vec<&SecretRecord> = state
        .secrets
        .values()
        .filter(|s| s.kind == kind && !key.is_empty() && s.id.starts_with(key))
        .collect();
    match matches.len() {
        1 => Ok(matches[0]),
        0 => Err(format!("no {noun} {key:?}; `meshctl {noun} ls` lists them")),
        n => Err(format!(
            "{key} matches {n} {noun}s; give more of the ID, or the name"
        )),
    }
}

/// `ls`: by name.
pub(super) fn list_secrets(state: &ClusterState, kind: Kind) -> ApiResponse {
    let mut views: Vec<SecretView> = state
        .secrets
        .values()
        .filter(|s| s.kind == kind)
        .map(|s| SecretView::of(s, state))
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    ApiResponse::Secrets(views)
}

/// `inspect`: metadata and users, never data.
pub(super) fn inspect_secret(state: &ClusterState, kind: Kind, key: &str) -> ApiResponse {
    match find_secret(state, kind, key) {
        Ok(record) => ApiResponse::Secret(Box::new(SecretView::of(record, state))),
        Err(why) => ApiResponse::Error(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SecretRef;
    use crate::service::spec::tests::spec;
    use crate::service::ServiceRecord;
    use crate::store::CommandResult;

    fn record(key: &DataKey, id: &str, kind: Kind, name: &str, data: &[u8]) -> SecretRecord {
        SecretRecord {
            id: id.into(),
            kind,
            name: name.into(),
            labels: BTreeMap::new(),
            created_ms: 1,
            size: data.len() as u64,
            sealed: Blob(
                key.seal(&crate::secrets::aad(id, kind, name), data)
                    .unwrap(),
            ),
        }
    }

    fn reference(name: &str) -> SecretRef {
        SecretRef::parse(Kind::Secret, name).unwrap()
    }

    #[test]
    fn the_store_holds_ciphertext_refuses_duplicates_and_secrets_in_use() {
        let key = DataKey::generate().unwrap();
        let mut state = ClusterState::default();
        let pw = record(&key, "s1", Kind::Secret, "pw", b"hunter2-hunter2");
        assert_eq!(
            state.apply(Command::CreateSecret(pw.clone())),
            CommandResult::Ok
        );
        // The snapshot (the serialized state) holds no plaintext.
        let snapshot = serde_json::to_string(&state).unwrap();
        assert!(!snapshot.contains("hunter2"), "{snapshot}");
        // The same name as a config is another record.
        let config = record(&key, "c1", Kind::Config, "pw", b"x=1");
        assert_eq!(
            state.apply(Command::CreateSecret(config)),
            CommandResult::Ok
        );
        let before = state.clone();
        let twice = record(&key, "s2", Kind::Secret, "pw", b"other");
        let CommandResult::Refused(why) = state.apply(Command::CreateSecret(twice)) else {
            panic!("a duplicate name was accepted");
        };
        assert!(
            why.contains("already exists") && why.contains("another name"),
            "{why}"
        );
        assert_eq!(state, before);

        // A service with an unknown secret is refused; with a known one it is created, and
        // the secret cannot go while the service uses it.
        let mut web = spec("web");
        web.secrets = vec![reference("nope")];
        assert!(resolve_refs(&state, &mut web)
            .unwrap_err()
            .contains("meshctl secret create nope"));
        let record_with = |spec: ServiceSpec| ServiceRecord::new("w1".into(), spec, 0);
        assert!(matches!(
            state.apply(Command::CreateService(Box::new(record_with(web.clone())))),
            CommandResult::Refused(_)
        ));
        web.secrets = vec![reference("pw")];
        resolve_refs(&state, &mut web).unwrap();
        assert_eq!(web.secrets[0].id, "s1");
        assert_eq!(
            state.apply(Command::CreateService(Box::new(record_with(web.clone())))),
            CommandResult::Ok
        );
        let CommandResult::Refused(why) = state.apply(Command::RemoveSecret { id: "s1".into() })
        else {
            panic!("a secret in use was removed");
        };
        assert!(why.contains("in use by service web"), "{why}");
        let view = SecretView::of(&state.secrets["s1"], &state);
        assert_eq!(view.services, ["web"]);
        assert!(!serde_json::to_string(&view).unwrap().contains("hunter2"));
        state.apply(Command::RemoveService { id: "w1".into() });
        assert_eq!(
            state.apply(Command::RemoveSecret { id: "s1".into() }),
            CommandResult::Ok
        );
    }

    #[test]
    fn oversized_or_unsealed_records_are_refused() {
        let key = DataKey::generate().unwrap();
        let mut state = ClusterState::default();
        let big = record(
            &key,
            "s1",
            Kind::Secret,
            "big",
            &vec![7; crate::secrets::MAX_SIZE + 1],
        );
        assert!(matches!(
            state.apply(Command::CreateSecret(big)),
            CommandResult::Refused(_)
        ));
        let mut plain = record(&key, "s2", Kind::Secret, "plain", b"abc");
        plain.sealed = Blob(b"abc".to_vec());
        assert!(matches!(
            state.apply(Command::CreateSecret(plain)),
            CommandResult::Refused(_)
        ));
        assert!(state.secrets.is_empty());
    }

    #[test]
    fn only_the_referenced_secrets_decrypt_for_a_task_and_only_with_the_key() {
        let key = DataKey::generate().unwrap();
        let mut state = ClusterState::default();
        for (id, name) in [("s1", "a"), ("s2", "b")] {
            state.apply(Command::CreateSecret(record(
                &key,
                id,
                Kind::Secret,
                name,
                name.as_bytes(),
            )));
        }
        let mut web = spec("web");
        web.secrets = vec![reference("b")];
        resolve_refs(&state, &mut web).unwrap();
        let delivered = decrypt_for(&state, &web, Some(&key));
        assert_eq!(delivered.len(), 1);
        assert_eq!(
            (delivered[0].id.as_str(), &delivered[0].data.0[..]),
            ("s2", &b"b"[..])
        );
        assert!(decrypt_for(&state, &web, None).is_empty());
        let wrong = DataKey::generate().unwrap();
        assert!(decrypt_for(&state, &web, Some(&wrong)).is_empty());
    }
}
