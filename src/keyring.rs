//! Secrets at rest (contract §7): signing secrets, previous secrets and static header
//! values are stored as `enc:v1:<key-id>:<base64 of nonce ‖ ciphertext ‖ tag>`, sealed
//! with AES-256-GCM under the first key of `secrets.keys`; every configured key opens.
//! A random 96-bit nonce per value; the associated data names the endpoint and the
//! field, so a value copied into another row or field does not open.
//!
//! A value without the `enc:` prefix is a plaintext row from before encryption: it is
//! read as it is, and `herald secrets reencrypt` seals it. Opening happens when the
//! subscription cache loads an endpoint, never per delivery.

use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;

const PREFIX: &str = "enc:v1:";
const NONCE: usize = 12;
const KEY_BYTES: usize = 32;
const MAX_ID: usize = 32;

/// Why a stored value does not open; never shows the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed under key `{0}`, which `secrets.keys` does not hold")]
    UnknownKey(String),
    #[error(
        "key `{0}` of `secrets.keys` does not open it (a wrong key, or the value was altered)"
    )]
    WrongKey(String),
    #[error("not a well-formed enc:v1 value")]
    Malformed,
}

/// The configured keys: the first seals, all open. Empty: values are stored in plain
/// text (only when `secrets.allow_plaintext`).
pub struct Keyring {
    keys: Vec<(Box<str>, Aes256Gcm)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field(
                "ids",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Keyring {
    /// Parses `id:base64-of-32-bytes[,id:…]`. Errors name the entry by its position or
    /// id, never the key material.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys: Vec<(Box<str>, Aes256Gcm)> = Vec::new();
        for (n, entry) in text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let Some((id, material)) = entry.split_once(':') else {
                return Err(format!(
                    "entry {} is not `key-id:base64-of-32-bytes`",
                    n + 1
                ));
            };
            if !valid_id(id) {
                return Err(format!(
                    "entry {}: a key id is 1 to {MAX_ID} letters, digits, '-', '_' or '.'",
                    n + 1
                ));
            }
            let bytes = STANDARD
                .decode(material.trim())
                .map_err(|_| format!("key `{id}` is not base64"))?;
            if bytes.len() != KEY_BYTES {
                return Err(format!(
                    "key `{id}` holds {} bytes; a key is {KEY_BYTES} random bytes",
                    bytes.len()
                ));
            }
            if keys.iter().any(|(known, _)| **known == *id) {
                return Err(format!("key id `{id}` is given twice"));
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes).expect("32-byte key");
            keys.push((id.into(), cipher));
        }
        Ok(Self { keys })
    }

    /// No keys: values are stored as they are.
    pub fn plaintext() -> Self {
        Self { keys: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id of the key that seals.
    pub fn sealing_id(&self) -> Option<&str> {
        self.keys.first().map(|(id, _)| &**id)
    }

    /// `plaintext` sealed under the first key for the place `aad` names; as it is when
    /// there is no key.
    pub fn seal(&self, plaintext: &str, aad: &str) -> String {
        let Some((id, cipher)) = self.keys.first() else {
            return plaintext.to_string();
        };
        let mut nonce = [0u8; NONCE];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM seals any value of this size");
        let mut joined = Vec::with_capacity(NONCE + sealed.len());
        joined.extend_from_slice(&nonce);
        joined.extend_from_slice(&sealed);
        format!("{PREFIX}{id}:{}", STANDARD.encode(joined))
    }

    /// The key id a stored value is sealed under; `None` for plain text.
    pub fn key_id_of(stored: &str) -> Option<&str> {
        stored
            .strip_prefix(PREFIX)?
            .split_once(':')
            .map(|(id, _)| id)
    }

    /// Is `stored` as [`Keyring::seal`] would store it now (under the first key, or
    /// plain text when there is no key)?
    pub fn is_current(&self, stored: &str) -> bool {
        Self::key_id_of(stored) == self.sealing_id()
    }

    /// The plain text of a stored value; plain text passes through.
    pub fn open(&self, stored: &str, aad: &str) -> Result<String, OpenError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (id, encoded) = rest.split_once(':').ok_or(OpenError::Malformed)?;
        let cipher = self
            .keys
            .iter()
            .find(|(known, _)| **known == *id)
            .map(|(_, cipher)| cipher)
            .ok_or_else(|| OpenError::UnknownKey(id.to_string()))?;
        let joined = STANDARD.decode(encoded).map_err(|_| OpenError::Malformed)?;
        if joined.len() < NONCE + 16 {
            return Err(OpenError::Malformed);
        }
        let (nonce, sealed) = joined.split_at(NONCE);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| OpenError::WrongKey(id.to_string()))?;
        String::from_utf8(plain).map_err(|_| OpenError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let both = Keyring::parse(&format!("k2:{}, k1:{}", key(2), key(1))).unwrap();
        let sealed = old.seal("whsec_abc", "e/1/secret");
        assert!(sealed.starts_with("enc:v1:k1:") && !sealed.contains("whsec_abc"));
        assert_ne!(
            sealed,
            old.seal("whsec_abc", "e/1/secret"),
            "a fresh nonce each time"
        );
        assert_eq!(both.open(&sealed, "e/1/secret").unwrap(), "whsec_abc");
        assert!(!both.is_current(&sealed) && old.is_current(&sealed));
        let resealed = both.seal("whsec_abc", "e/1/secret");
        assert_eq!(Keyring::key_id_of(&resealed), Some("k2"));
        assert_eq!(
            old.open(&resealed, "e/1/secret"),
            Err(OpenError::UnknownKey("k2".into()))
        );
    }

    #[test]
    fn a_wrong_key_another_place_or_an_altered_value_does_not_open() {
        let right = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let wrong = Keyring::parse(&format!("k1:{}", key(9))).unwrap();
        let sealed = right.seal("value", "e/1/secret");
        assert_eq!(
            wrong.open(&sealed, "e/1/secret"),
            Err(OpenError::WrongKey("k1".into()))
        );
        assert_eq!(
            right.open(&sealed, "e/2/secret"),
            Err(OpenError::WrongKey("k1".into()))
        );
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert!(right.open(&altered, "e/1/secret").is_err());
        assert_eq!(right.open("enc:v1:k1", "x"), Err(OpenError::Malformed));
    }

    #[test]
    fn plain_text_passes_through_and_no_key_stores_plain_text() {
        let keys = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        assert_eq!(keys.open("whsec_old", "x").unwrap(), "whsec_old");
        assert!(!keys.is_current("whsec_old"));
        let none = Keyring::plaintext();
        assert_eq!(none.seal("v", "x"), "v");
        assert!(none.is_current("v"));
    }

    #[test]
    fn bad_key_lists_say_what_is_wrong_without_the_key() {
        let secret_material = key(7);
        for (text, says) in [
            ("k1".to_string(), "entry 1"),
            (format!("bad id:{secret_material}"), "key id"),
            ("k1:not base64!".to_string(), "not base64"),
            (format!("k1:{}", STANDARD.encode([1u8; 16])), "16 bytes"),
            (format!("k1:{secret_material},k1:{}", key(8)), "twice"),
        ] {
            let err = Keyring::parse(&text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
            assert!(!err.contains(&secret_material), "{err}");
        }
        assert!(Keyring::parse("").unwrap().is_empty());
    }
}
