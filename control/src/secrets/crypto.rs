//! Encryption at rest: the cluster's data key and the sealed form of a secret.
//!
//! Sealed layout: `version (1 byte) | nonce (12 bytes) | ciphertext | tag (16 bytes)`, with
//! ChaCha20-Poly1305 and a random nonce per blob (blobs are few and immutable, so random
//! nonces are far from the birthday bound). The version byte leaves room for key rotation.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

/// Length of the data key.
pub const KEY_LEN: usize = 32;
/// The sealed format this code writes.
const VERSION: u8 = 1;
/// Overhead of sealing: version, nonce and tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 16;
/// The key's file in the identity directory.
const KEY_FILE: &str = "data.key";

/// Why sealing, opening or keeping the key failed.
#[derive(Debug, Error)]
pub enum CryptoError {
    /// The system has no randomness to draw a key or nonce from.
    #[error("no randomness available")]
    NoRandomness,
    /// Wrong key, a tampered or moved blob, or not a sealed blob at all.
    #[error("the data does not decrypt with this cluster's data key (wrong key, or the stored blob was altered)")]
    Open,
    /// A sealed format this version does not know.
    #[error("sealed with format version {0}, which this meshd does not know; upgrade it")]
    Version(u8),
    /// The key file is missing, unreadable or malformed.
    #[error("the data key {path}: {reason}")]
    KeyFile { path: String, reason: String },
}

/// The cluster's data key: encrypts secrets and configs at rest. Held by managers only.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; KEY_LEN]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        // Best effort: a copy the compiler made elsewhere may survive.
        for byte in &mut self.0 {
            // SAFETY: `byte` is a valid, aligned &mut u8; a volatile write keeps the zeroing
            // from being optimised away.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| CryptoError::NoRandomness)?;
        Ok(DataKey(key))
    }

    /// A key from its bytes (as the join answer carries them).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(DataKey(bytes.try_into().ok()?))
    }

    /// The key's bytes, for the join answer to a manager.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.0).expect("32-byte key"))
    }

    /// Encrypts `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::NoRandomness)?;
        let mut in_out = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut in_out,
            )
            .map_err(|_| CryptoError::Open)?;
        let mut sealed = Vec::with_capacity(OVERHEAD + plaintext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Decrypts what `seal` made with this key and the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < OVERHEAD {
            return Err(CryptoError::Open);
        }
        if sealed[0] != VERSION {
            return Err(CryptoError::Version(sealed[0]));
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().expect("length checked");
        let mut in_out = sealed[1 + NONCE_LEN..].to_vec();
        let plain_len = self
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut in_out,
            )
            .map_err(|_| CryptoError::Open)?
            .len();
        in_out.truncate(plain_len);
        Ok(in_out)
    }

    /// Where a node keeps the key: `<state_dir>/cluster/data.key`.
    pub fn path(state_dir: &Path) -> PathBuf {
        crate::node::identity::dir(state_dir).join(KEY_FILE)
    }

    /// The key this node holds, if it is a manager that has one.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, CryptoError> {
        let path = Self::path(state_dir);
        let error = |reason: String| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read(&path) {
            Ok(bytes) => DataKey::from_bytes(&bytes)
                .map(Some)
                .ok_or_else(|| error(format!("{} bytes, not {KEY_LEN}", bytes.len()))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(error(err.to_string())),
        }
    }

    /// Writes the key (0600, atomically).
    pub fn save(&self, state_dir: &Path) -> Result<(), CryptoError> {
        let path = Self::path(state_dir);
        let error = |err: std::io::Error| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason: err.to_string(),
        };
        let dir = crate::node::identity::dir(state_dir);
        std::fs::create_dir_all(&dir).map_err(error)?;
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(error)?;
        file.write_all(&self.0).map_err(error)?;
        file.sync_all().map_err(error)?;
        std::fs::rename(&tmp, &path).map_err(error)
    }

    /// Forgets the key (a demoted manager, a node that leaves).
    pub fn remove(state_dir: &Path) -> Result<(), CryptoError> {
        let path = Self::path(state_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(CryptoError::KeyFile {
                path: path.display().to_string(),
                reason: err.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn sealed_data_round_trips_and_hides_the_plaintext() {
        let key = DataKey::generate().unwrap();
        let plain = b"correct horse battery staple";
        let sealed = key.seal(b"id1", plain).unwrap();
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert!(!sealed.windows(plain.len()).any(|w| w == plain));
        assert_eq!(key.open(b"id1", &sealed).unwrap(), plain);
        // A fresh nonce each time: the same plaintext seals differently.
        assert_ne!(key.seal(b"id1", plain).unwrap(), sealed);
        assert_eq!(key.open(b"x", &key.seal(b"x", b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn a_wrong_key_moved_blob_or_tampering_does_not_open() {
        let key = DataKey::generate().unwrap();
        let other = DataKey::generate().unwrap();
        let sealed = key.seal(b"id1", b"secret").unwrap();
        assert!(matches!(
            other.open(b"id1", &sealed),
            Err(CryptoError::Open)
        ));
        assert!(matches!(key.open(b"id2", &sealed), Err(CryptoError::Open)));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(key.open(b"id1", &flipped), Err(CryptoError::Open)));
        assert!(matches!(
            key.open(b"id1", &sealed[..5]),
            Err(CryptoError::Open)
        ));
        let mut future = sealed;
        future[0] = 9;
        assert!(matches!(
            key.open(b"id1", &future),
            Err(CryptoError::Version(9))
        ));
    }

    #[test]
    fn the_key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DataKey::load(dir.path()).unwrap().is_none());
        let key = DataKey::generate().unwrap();
        key.save(dir.path()).unwrap();
        assert_eq!(DataKey::load(dir.path()).unwrap().unwrap(), key);
        let mode = std::fs::metadata(DataKey::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(format!("{key:?}"), "DataKey(<redacted>)");
        DataKey::remove(dir.path()).unwrap();
        assert!(DataKey::load(dir.path()).unwrap().is_none());
        DataKey::remove(dir.path()).unwrap();
        std::fs::write(DataKey::path(dir.path()), b"short").unwrap();
        assert!(DataKey::load(dir.path()).is_err());
    }
}
