//! `SigningSecret`: an endpoint's HMAC key, `whsec_` + base64 of 24–64 random bytes.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;

use super::InvalidValue;

const PREFIX: &str = "whsec_";
const MIN_BYTES: usize = 24;
const MAX_BYTES: usize = 64;
const GENERATED_BYTES: usize = 32;

/// The decoded key; its `whsec_…` text is made again when needed (the encoding is
/// canonical, so it is the text it was parsed from). Endpoints cached by every process
/// hold one or two each: the key alone keeps them small. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    key: Box<[u8]>,
}

impl SigningSecret {
    /// A fresh secret of 32 random bytes from the OS generator.
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self { key: key.into() }
    }

    /// The HMAC key (the base64-decoded part).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The `whsec_…` form, for storing and for showing once to the endpoint's owner.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// Calls `f` with the `whsec_…` text made on the stack, not allocated: the key of
    /// the legacy signature of a `both` endpoint, made at every attempt.
    pub fn with_text<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        // 6 + base64 of 64 bytes (88).
        let mut text = [0u8; PREFIX.len() + MAX_BYTES.div_ceil(3) * 4];
        text[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
        let written = STANDARD
            .encode_slice(&self.key, &mut text[PREFIX.len()..])
            .expect("the buffer holds the largest key");
        f(&text[..PREFIX.len() + written])
    }
}

impl FromStr for SigningSecret {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let encoded = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| InvalidValue(format!("a signing secret starts with `{PREFIX}`")))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| InvalidValue("a signing secret is whsec_ + base64".into()))?;
        if !(MIN_BYTES..=MAX_BYTES).contains(&key.len()) {
            return Err(InvalidValue(format!(
                "a signing secret holds {MIN_BYTES} to {MAX_BYTES} bytes, this one {}",
                key.len()
            )));
        }
        Ok(Self { key: key.into() })
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_round_trip_and_are_distinct() {
        let a = SigningSecret::generate();
        let b = SigningSecret::generate();
        assert_ne!(a, b);
        let parsed: SigningSecret = a.expose().parse().unwrap();
        a.with_text(|text| assert_eq!(text, a.expose().as_bytes()));
        assert_eq!(parsed.key(), a.key());
        assert_eq!(parsed.key().len(), 32);
    }

    #[test]
    fn a_parsed_secret_shows_the_text_it_was_parsed_from() {
        for text in [
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwAA==",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwAAA=",
        ] {
            let secret: SigningSecret = text.parse().unwrap();
            assert_eq!(secret.expose(), text);
            secret.with_text(|made| assert_eq!(made, text.as_bytes()));
        }
        // Non-canonical base64 (trailing bits set) is refused, not silently re-encoded.
        assert!("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwAB=="
            .parse::<SigningSecret>()
            .is_err());
    }

    #[test]
    fn the_largest_secret_fits_the_text_buffer() {
        let largest: SigningSecret = format!("whsec_{}", STANDARD.encode([7u8; MAX_BYTES]))
            .parse()
            .unwrap();
        largest.with_text(|text| assert_eq!(text, largest.expose().as_bytes()));
    }

    #[test]
    fn refuses_secrets_without_prefix_or_of_the_wrong_size() {
        assert!("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse::<SigningSecret>()
            .is_err());
        assert!("whsec_c2hvcnQ=".parse::<SigningSecret>().is_err());
        assert!("whsec_!!!".parse::<SigningSecret>().is_err());
        assert!("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse::<SigningSecret>()
            .is_ok());
    }

    #[test]
    fn debug_redacts_the_key() {
        let s = SigningSecret::generate();
        assert!(!format!("{s:?}").contains(&s.expose()[6..]));
    }
}
