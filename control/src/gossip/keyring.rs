//! The cluster's gossip keys. Every datagram and stream frame is sealed with ChaCha20-Poly1305
//! under the ring's primary key and a random nonce, and opened with whichever key of the ring
//! its header names. Rotation without losing anyone: give every node the new key as a secondary,
//! then make it primary everywhere, then remove the old one. Between those steps every node
//! still opens what every other node seals.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::rand::{SecureRandom, SystemRandom};

use super::envelope::{Channel, Envelope, EnvelopeError, HEADER_LEN, NONCE_LEN, OVERHEAD, VERSION};

/// Bytes in a key.
pub const KEY_LEN: usize = 32;
/// Keys a ring holds at most: the primary, the one being rotated in and the one rotated out,
/// with room for one more.
pub const MAX_KEYS: usize = 4;

/// What is wrong with a keyring change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// More than [`MAX_KEYS`] keys.
    #[error("a gossip keyring holds at most {MAX_KEYS} keys; remove a retired key first")]
    TooManyKeys,
    /// The same id twice with different bytes.
    #[error(
        "gossip key id {0} is already in the ring with other key bytes; give the new key a new id"
    )]
    DuplicateKeyId(u32),
    /// An id that is not in the ring.
    #[error("gossip key id {0} is not in the ring; add it before making it primary")]
    UnknownKeyId(u32),
    /// Removing the key that seals.
    #[error("gossip key id {0} is the primary; make another key primary before removing it")]
    RemovePrimary(u32),
    /// The system's random source failed.
    #[error("the system random number generator failed; check /dev/urandom")]
    Random,
}

/// Why a sealed packet was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not an envelope at all.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] EnvelopeError),
    /// Sealed for the other transport.
    #[error("envelope sealed for another channel")]
    WrongChannel,
    /// Sealed with a key this node does not hold.
    #[error("sealed with gossip key id {0}, which this node's keyring does not hold")]
    UnknownKey(u32),
    /// The tag did not verify: wrong key bytes or tampering.
    #[error("authentication failed (wrong key or tampered packet)")]
    Authentication,
}

impl OpenError {
    /// Whether this is an authentication failure (as opposed to garbage).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, OpenError::UnknownKey(_) | OpenError::Authentication)
    }
}

struct Key {
    id: u32,
    bytes: [u8; KEY_LEN],
    aead: LessSafeKey,
}

impl Clone for Key {
    fn clone(&self) -> Key {
        Key::new(self.id, self.bytes)
    }
}

impl Key {
    fn new(id: u32, bytes: [u8; KEY_LEN]) -> Key {
        let unbound =
            UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("32 bytes is the ChaCha20 key size");
        Key {
            id,
            bytes,
            aead: LessSafeKey::new(unbound),
        }
    }
}

/// Up to [`MAX_KEYS`] 32-byte keys, each with an id; one is the primary. Debug output shows ids,
/// never key bytes.
#[derive(Clone)]
pub struct Keyring {
    primary: u32,
    keys: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary)
            .field("ids", &self.key_ids())
            .finish()
    }
}

impl Keyring {
    /// A ring of one key, which is the primary.
    pub fn new(id: u32, key: [u8; KEY_LEN]) -> Keyring {
        Keyring {
            primary: id,
            keys: vec![Key::new(id, key)],
        }
    }

    /// A ring of `keys` with `primary` sealing.
    pub fn from_keys(keys: &[(u32, [u8; KEY_LEN])], primary: u32) -> Result<Keyring, KeyringError> {
        let mut ring = Keyring {
            primary,
            keys: Vec::new(),
        };
        for (id, key) in keys {
            ring.add(*id, *key)?;
        }
        if ring.find(primary).is_none() {
            return Err(KeyringError::UnknownKeyId(primary));
        }
        Ok(ring)
    }

    /// 32 random bytes from the system's generator, for a new cluster key.
    pub fn random_key() -> Result<[u8; KEY_LEN], KeyringError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| KeyringError::Random)?;
        Ok(key)
    }

    /// Adds a key that opens packets (it does not seal until made primary). Adding a key that is
    /// already there with the same bytes changes nothing.
    pub fn add(&mut self, id: u32, key: [u8; KEY_LEN]) -> Result<(), KeyringError> {
        if let Some(existing) = self.find(id) {
            return if existing.bytes == key {
                Ok(())
            } else {
                Err(KeyringError::DuplicateKeyId(id))
            };
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(KeyringError::TooManyKeys);
        }
        self.keys.push(Key::new(id, key));
        Ok(())
    }

    /// Makes key `id` the one that seals.
    pub fn set_primary(&mut self, id: u32) -> Result<(), KeyringError> {
        if self.find(id).is_none() {
            return Err(KeyringError::UnknownKeyId(id));
        }
        self.primary = id;
        Ok(())
    }

    /// Removes a retired key; the primary cannot be removed.
    pub fn remove(&mut self, id: u32) -> Result<(), KeyringError> {
        if id == self.primary {
            return Err(KeyringError::RemovePrimary(id));
        }
        if self.find(id).is_none() {
            return Err(KeyringError::UnknownKeyId(id));
        }
        self.keys.retain(|k| k.id != id);
        Ok(())
    }

    /// The id of the key that seals.
    pub fn primary_id(&self) -> u32 {
        self.primary
    }

    /// Every key id, in the order added.
    pub fn key_ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    fn find(&self, id: u32) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Seals `plaintext` for `channel` under the primary key with a random nonce.
    pub fn seal(&self, channel: Channel, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // A failing system RNG leaves no safe nonce: sealing with a fixed one would reuse it.
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random number generator failed");
        self.seal_with_nonce(channel, plaintext, nonce)
    }

    /// Seals with a given nonce: golden-byte tests only need this to be deterministic.
    pub(crate) fn seal_with_nonce(
        &self,
        channel: Channel,
        plaintext: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Vec<u8> {
        let key = self
            .find(self.primary)
            .expect("the primary is always in the ring");
        let mut buffer = vec![0u8; OVERHEAD + plaintext.len()];
        let mut envelope = Envelope::new_unchecked(&mut buffer[..]);
        envelope.set_version(VERSION);
        envelope.set_channel(channel);
        envelope.set_key_id(key.id);
        envelope.set_nonce(nonce);
        let (header, body) = buffer.split_at_mut(HEADER_LEN);
        let (text, tag_out) = body.split_at_mut(plaintext.len());
        text.copy_from_slice(plaintext);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&header[..]),
                text,
            )
            .expect("ChaCha20-Poly1305 seals any length below 256 GiB");
        tag_out.copy_from_slice(tag.as_ref());
        buffer
    }

    /// Opens an envelope sealed for `channel` with any key of the ring; returns the plaintext.
    pub fn open(&self, channel: Channel, data: &[u8]) -> Result<Vec<u8>, OpenError> {
        let envelope = Envelope::new_checked(data)?;
        if envelope.channel() != Some(channel) {
            return Err(OpenError::WrongChannel);
        }
        let key_id = envelope.key_id();
        let key = self.find(key_id).ok_or(OpenError::UnknownKey(key_id))?;
        let nonce = Nonce::assume_unique_for_key(envelope.nonce());
        let mut sealed = envelope.sealed().to_vec();
        let plain_len = key
            .aead
            .open_in_place(nonce, Aad::from(envelope.header()), &mut sealed)
            .map_err(|_| OpenError::Authentication)?
            .len();
        sealed.truncate(plain_len);
        Ok(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];

    #[test]
    fn seals_and_opens_with_the_same_ring() {
        let ring = Keyring::new(1, K1);
        let sealed = ring.seal(Channel::Datagram, b"hello");
        assert_eq!(sealed.len(), OVERHEAD + 5);
        assert_eq!(ring.open(Channel::Datagram, &sealed).unwrap(), b"hello");
        // Random nonces: the same plaintext never seals to the same bytes.
        assert_ne!(sealed, ring.seal(Channel::Datagram, b"hello"));
    }

    #[test]
    fn golden_bytes_with_a_fixed_nonce() {
        let ring = Keyring::new(7, K1);
        let sealed = ring.seal_with_nonce(Channel::Stream, b"", [9; 12]);
        let mut expected = vec![1, 1, 0, 0, 0, 7];
        expected.extend([9; 12]);
        assert_eq!(&sealed[..HEADER_LEN], &expected[..]);
        assert_eq!(sealed.len(), OVERHEAD);
        // The tag of an empty message is deterministic for a fixed key, nonce and header.
        let again = ring.seal_with_nonce(Channel::Stream, b"", [9; 12]);
        assert_eq!(sealed, again);
        assert_eq!(ring.open(Channel::Stream, &sealed).unwrap(), b"");
    }

    #[test]
    fn another_key_fails_authentication() {
        let sealed = Keyring::new(1, K1).seal(Channel::Datagram, b"x");
        assert_eq!(
            Keyring::new(1, K2).open(Channel::Datagram, &sealed),
            Err(OpenError::Authentication)
        );
        assert_eq!(
            Keyring::new(2, K2).open(Channel::Datagram, &sealed),
            Err(OpenError::UnknownKey(1))
        );
    }

    #[test]
    fn tampering_fails_authentication_anywhere_in_the_packet() {
        let ring = Keyring::new(1, K1);
        let sealed = ring.seal(Channel::Datagram, b"some payload");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(ring.open(Channel::Datagram, &bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn channels_do_not_mix() {
        let ring = Keyring::new(1, K1);
        let sealed = ring.seal(Channel::Datagram, b"x");
        assert_eq!(
            ring.open(Channel::Stream, &sealed),
            Err(OpenError::WrongChannel)
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let ring = Keyring::new(1, K1);
        for len in 0..64 {
            let junk = vec![0x01; len];
            assert!(ring.open(Channel::Datagram, &junk).is_err());
        }
    }

    #[test]
    fn rotation_steps_keep_every_pair_talking() {
        let old = Keyring::new(1, K1);
        let mut both = old.clone();
        both.add(2, K2).unwrap();
        let mut switched = both.clone();
        switched.set_primary(2).unwrap();
        let mut new = switched.clone();
        new.remove(1).unwrap();
        // Neighbouring steps understand each other in both directions.
        for (a, b) in [(&old, &both), (&both, &switched), (&switched, &new)] {
            let x = a.seal(Channel::Datagram, b"ab");
            let y = b.seal(Channel::Datagram, b"ba");
            assert_eq!(b.open(Channel::Datagram, &x).unwrap(), b"ab");
            assert_eq!(a.open(Channel::Datagram, &y).unwrap(), b"ba");
        }
        assert_eq!(new.key_ids(), vec![2]);
    }

    #[test]
    fn keyring_changes_are_checked() {
        let mut ring = Keyring::new(1, K1);
        assert_eq!(ring.add(1, K2), Err(KeyringError::DuplicateKeyId(1)));
        assert_eq!(ring.add(1, K1), Ok(()));
        assert_eq!(ring.set_primary(5), Err(KeyringError::UnknownKeyId(5)));
        assert_eq!(ring.remove(1), Err(KeyringError::RemovePrimary(1)));
        assert_eq!(ring.remove(3), Err(KeyringError::UnknownKeyId(3)));
        for id in 2..=4 {
            ring.add(id, [id as u8; 32]).unwrap();
        }
        assert_eq!(ring.add(5, K2), Err(KeyringError::TooManyKeys));
        assert!(Keyring::from_keys(&[(1, K1)], 2).is_err());
        assert_eq!(
            Keyring::from_keys(&[(1, K1), (2, K2)], 2)
                .unwrap()
                .primary_id(),
            2
        );
        assert!(!format!("{ring:?}").contains("[1, 1"));
    }
}
