//! The authenticated envelope every gossip datagram and stream frame travels in, as a typed view
//! over a byte buffer.
//!
//! ```text
//!  0         1         2                 6                        18
//! +---------+---------+-----------------+------------------------+----------------------+---------+
//! | version | channel | key id (u32 BE) | nonce (12 random bytes)| ciphertext ...       | tag(16) |
//! +---------+---------+-----------------+------------------------+----------------------+---------+
//! ```
//!
//! The first 18 bytes are the header and are authenticated (as AEAD associated data) but not
//! encrypted: the key id tells the receiver which key of its ring opens the packet, and the
//! channel keeps a datagram from being replayed as a stream frame or the reverse.

use std::ops::Range;

/// Offsets of the envelope's fields.
mod field {
    use std::ops::{Range, RangeFrom};

    pub const VERSION: usize = 0;
    pub const CHANNEL: usize = 1;
    pub const KEY_ID: Range<usize> = 2..6;
    pub const NONCE: Range<usize> = 6..18;
    pub const SEALED: RangeFrom<usize> = 18..;
}

/// The only envelope version this code speaks.
pub const VERSION: u8 = 1;
/// Bytes of header before the ciphertext.
pub const HEADER_LEN: usize = field::SEALED.start;
/// Bytes of the AEAD tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// Bytes the envelope adds to a plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Bytes of the nonce.
pub const NONCE_LEN: usize = 12;

/// Which transport an envelope was sealed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Channel {
    /// A UDP datagram.
    Datagram = 0,
    /// A frame on a TCP anti-entropy stream.
    Stream = 1,
}

impl Channel {
    fn from_u8(value: u8) -> Option<Channel> {
        match value {
            0 => Some(Channel::Datagram),
            1 => Some(Channel::Stream),
            _ => None,
        }
    }
}

/// Why bytes are not an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than a header and a tag.
    #[error("envelope of {0} bytes is shorter than the {OVERHEAD}-byte minimum")]
    Truncated(usize),
    /// A version this code does not speak.
    #[error("envelope version {0} is not {VERSION}; is every node running the same Mesh release?")]
    Version(u8),
    /// A channel number that does not exist.
    #[error("envelope channel {0} is unknown")]
    Channel(u8),
}

/// A typed view over an envelope's bytes. Once [`Envelope::check_len`] succeeds, no accessor
/// panics.
#[derive(Debug, Clone)]
pub struct Envelope<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Envelope<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Envelope<T> {
        Envelope { buffer }
    }

    /// Wraps untrusted bytes: checks the length, version and channel.
    pub fn new_checked(buffer: T) -> Result<Envelope<T>, EnvelopeError> {
        let envelope = Envelope::new_unchecked(buffer);
        envelope.check_len()?;
        if envelope.version() != VERSION {
            return Err(EnvelopeError::Version(envelope.version()));
        }
        if envelope.channel().is_none() {
            return Err(EnvelopeError::Channel(
                envelope.buffer.as_ref()[field::CHANNEL],
            ));
        }
        Ok(envelope)
    }

    /// Checks that the buffer holds at least a header and a tag.
    pub fn check_len(&self) -> Result<(), EnvelopeError> {
        let len = self.buffer.as_ref().len();
        if len < OVERHEAD {
            Err(EnvelopeError::Truncated(len))
        } else {
            Ok(())
        }
    }

    /// The format version.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// The channel, or None for an unknown number.
    pub fn channel(&self) -> Option<Channel> {
        Channel::from_u8(self.buffer.as_ref()[field::CHANNEL])
    }

    /// The id of the key that sealed this envelope.
    pub fn key_id(&self) -> u32 {
        u32::from_be_bytes(array(&self.buffer.as_ref()[field::KEY_ID]))
    }

    /// The nonce.
    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        array(&self.buffer.as_ref()[field::NONCE])
    }

    /// The header bytes: authenticated, not encrypted.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    /// Ciphertext followed by the tag.
    pub fn sealed(&self) -> &[u8] {
        &self.buffer.as_ref()[field::SEALED]
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Envelope<T> {
    /// Sets the format version.
    pub fn set_version(&mut self, value: u8) {
        self.buffer.as_mut()[field::VERSION] = value;
    }

    /// Sets the channel.
    pub fn set_channel(&mut self, value: Channel) {
        self.buffer.as_mut()[field::CHANNEL] = value as u8;
    }

    /// Sets the key id.
    pub fn set_key_id(&mut self, value: u32) {
        self.buffer.as_mut()[field::KEY_ID].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the nonce.
    pub fn set_nonce(&mut self, value: [u8; NONCE_LEN]) {
        self.buffer.as_mut()[field::NONCE].copy_from_slice(&value);
    }

    /// Ciphertext and tag, writable.
    pub fn sealed_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::SEALED]
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Where the header sits, for callers that split a buffer.
pub const HEADER: Range<usize> = 0..HEADER_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    /// An envelope of key 7, nonce 0x01..0x0c, "ciphertext" ab cd and a zero tag.
    const GOLDEN: [u8; 36] = [
        0x01, 0x00, 0x00, 0x00, 0x00, 0x07, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09,
        0x0a, 0x0b, 0x0c, 0xab, 0xcd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn deconstructs_golden_bytes() {
        let envelope = Envelope::new_checked(&GOLDEN[..]).unwrap();
        assert_eq!(envelope.version(), 1);
        assert_eq!(envelope.channel(), Some(Channel::Datagram));
        assert_eq!(envelope.key_id(), 7);
        assert_eq!(envelope.nonce(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(envelope.header(), &GOLDEN[HEADER]);
        assert_eq!(&envelope.sealed()[..2], &[0xab, 0xcd]);
        assert_eq!(envelope.sealed().len(), 2 + TAG_LEN);
    }

    #[test]
    fn constructs_golden_bytes_over_a_dirty_buffer() {
        let mut buffer = [0xa5u8; 36];
        let mut envelope = Envelope::new_unchecked(&mut buffer[..]);
        envelope.set_version(VERSION);
        envelope.set_channel(Channel::Datagram);
        envelope.set_key_id(7);
        envelope.set_nonce([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let sealed = envelope.sealed_mut();
        sealed.fill(0);
        sealed[..2].copy_from_slice(&[0xab, 0xcd]);
        assert_eq!(buffer, GOLDEN);
    }

    #[test]
    fn refuses_short_buffers() {
        assert_eq!(
            Envelope::new_checked(&GOLDEN[..OVERHEAD - 1]).unwrap_err(),
            EnvelopeError::Truncated(OVERHEAD - 1)
        );
        assert_eq!(
            Envelope::new_checked(&[][..]).unwrap_err(),
            EnvelopeError::Truncated(0)
        );
        assert!(Envelope::new_checked(&GOLDEN[..OVERHEAD]).is_ok());
    }

    #[test]
    fn refuses_other_versions() {
        let mut bytes = GOLDEN;
        bytes[0] = 2;
        assert_eq!(
            Envelope::new_checked(&bytes[..]).unwrap_err(),
            EnvelopeError::Version(2)
        );
    }

    #[test]
    fn refuses_unknown_channels() {
        let mut bytes = GOLDEN;
        bytes[1] = 9;
        assert_eq!(
            Envelope::new_checked(&bytes[..]).unwrap_err(),
            EnvelopeError::Channel(9)
        );
    }
}
