//! Join tokens: `MESHTKN-1-<digest>-<secret>`.
//!
//! The digest is the SHA-256 of the cluster CA certificate (DER), in lowercase hex: a joining
//! node compares it with the certificate the manager presents before it trusts anything. The
//! secret says which role the token grants; managers keep one secret per role and rotate them.
//! Parsing is pure and strict: every malformed token gets an error saying what is wrong.

use thiserror::Error;

/// Every token starts with this.
pub const PREFIX: &str = "MESHTKN";
/// The token format this code writes and reads.
pub const VERSION: u32 = 1;
/// Length of the secret: 26 characters of base32 (128 random bits).
pub const SECRET_LEN: usize = 26;
/// The secret's alphabet (RFC 4648 base32, lowercase).
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the CA certificate's DER.
    pub ca_digest: [u8; 32],
    /// The role secret.
    pub secret: String,
}

// Tokens are credentials: never print the secret, even in debug output.
impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &hex(&self.ca_digest))
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a token was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not of the form MESHTKN-1-<digest>-<secret>.
    #[error("not a Mesh join token (expected MESHTKN-1-<64 hex digits>-<26 characters>); copy it again from `meshctl swarm join-token worker|manager` on a manager")]
    Malformed,
    /// A version this node does not understand.
    #[error("join token version {0} is not supported by this meshd (it reads version {VERSION}); use the same Mesh version on every node")]
    Version(String),
    /// The digest part is not 64 hex digits.
    #[error(
        "the CA digest in the join token is not 64 hex digits; the token was truncated or mistyped"
    )]
    Digest,
    /// The secret part is not 26 base32 characters.
    #[error("the secret in the join token is not 26 characters of a-z and 2-7; the token was truncated or mistyped")]
    Secret,
}

impl JoinToken {
    /// A token for `ca_digest` with a fresh secret drawn from `random` (16 bytes of entropy).
    pub fn new(ca_digest: [u8; 32], random: [u8; 16]) -> Self {
        JoinToken {
            ca_digest,
            secret: encode_secret(random),
        }
    }

    /// Parses a token as an operator pasted it (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let mut parts = text.trim().split('-');
        let (Some(prefix), Some(version), Some(digest), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        if version != VERSION.to_string() {
            return Err(TokenError::Version(version.chars().take(8).collect()));
        }
        let ca_digest = parse_digest(digest).ok_or(TokenError::Digest)?;
        if secret.len() != SECRET_LEN || !secret.bytes().all(|b| ALPHABET.contains(&b)) {
            return Err(TokenError::Secret);
        }
        Ok(JoinToken {
            ca_digest,
            secret: secret.to_string(),
        })
    }

    /// Whether this token's secret is `expected`, compared in constant time so response timing
    /// reveals nothing about how much of a guess was right.
    pub fn secret_matches(&self, expected: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), expected.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}-{VERSION}-{}-{}",
            hex(&self.ca_digest),
            self.secret
        )
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

/// 128 bits as 26 base32 characters (the last carries 3 bits).
fn encode_secret(random: [u8; 16]) -> String {
    let value = u128::from_be_bytes(random);
    (0..SECRET_LEN)
        .map(|i| {
            let shift = 128i32 - 5 * (i as i32 + 1);
            let index = if shift >= 0 {
                (value >> shift) & 31
            } else {
                (value << -shift) & 31
            };
            char::from(ALPHABET[index as usize])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: [u8; 32] = [0xab; 32];

    #[test]
    fn a_token_round_trips_through_its_text() {
        let token = JoinToken::new(DIGEST, [7; 16]);
        let text = token.to_string();
        assert!(
            text.starts_with(&format!("MESHTKN-1-{}-", "ab".repeat(32))),
            "{text}"
        );
        assert_eq!(text.len(), "MESHTKN-1-".len() + 64 + 1 + SECRET_LEN);
        assert_eq!(JoinToken::parse(&format!("  {text}\n")).unwrap(), token);
    }

    #[test]
    fn secrets_differ_with_their_randomness_and_use_every_bit() {
        assert_ne!(
            JoinToken::new(DIGEST, [0; 16]).secret,
            JoinToken::new(DIGEST, [1; 16]).secret
        );
        let mut last_bit = [0u8; 16];
        last_bit[15] = 1;
        assert_ne!(
            JoinToken::new(DIGEST, last_bit).secret,
            JoinToken::new(DIGEST, [0; 16]).secret
        );
        assert_eq!(
            JoinToken::new(DIGEST, [0; 16]).secret,
            "a".repeat(SECRET_LEN)
        );
    }

    #[test]
    fn every_malformation_is_named() {
        let good = JoinToken::new(DIGEST, [9; 16]).to_string();
        let digest = "ab".repeat(32);
        let secret = &good[good.len() - SECRET_LEN..];
        let cases = [
            ("", TokenError::Malformed),
            ("SWMTKN-1-abc-def", TokenError::Malformed),
            (&*format!("{good}-extra"), TokenError::Malformed),
            (
                &*format!("MESHTKN-2-{digest}-{secret}"),
                TokenError::Version("2".into()),
            ),
            (
                &*format!("MESHTKN-1-{}-{secret}", &digest[1..]),
                TokenError::Digest,
            ),
            (
                &*format!("MESHTKN-1-{}zz-{secret}", &digest[2..]),
                TokenError::Digest,
            ),
            (
                &*format!("MESHTKN-1-{digest}-{}", &secret[1..]),
                TokenError::Secret,
            ),
            (
                &*format!("MESHTKN-1-{digest}-{}", secret.to_uppercase()),
                TokenError::Secret,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(JoinToken::parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn secrets_compare_exactly_and_never_print() {
        let token = JoinToken::new(DIGEST, [3; 16]);
        assert!(token.secret_matches(&token.secret.clone()));
        assert!(!token.secret_matches(&"a".repeat(SECRET_LEN)));
        assert!(!token.secret_matches(""));
        assert!(!format!("{token:?}").contains(&token.secret));
    }
}
