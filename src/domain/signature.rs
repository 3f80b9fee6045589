//! How an endpoint's webhooks are signed (contract §6), and the secrets each scheme
//! signs with, in one type that cannot pair a scheme with a secret it cannot use.

use std::fmt;
use std::str::FromStr;

use super::{InvalidValue, SigningSecret};

/// The signature scheme an endpoint asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SignatureScheme {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    #[default]
    Standard,
    /// The ERP's previous webhook service: `X-Signature: sha256=<hex>`, `X-Event`.
    Legacy,
    /// Both sets of headers, for the migration window.
    Both,
}

impl SignatureScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureScheme::Standard => "standard",
            SignatureScheme::Legacy => "legacy",
            SignatureScheme::Both => "both",
        }
    }
}

impl FromStr for SignatureScheme {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard" => Ok(SignatureScheme::Standard),
            "legacy" => Ok(SignatureScheme::Legacy),
            "both" => Ok(SignatureScheme::Both),
            _ => Err(InvalidValue(
                "the signature scheme is `standard`, `legacy` or `both`".into(),
            )),
        }
    }
}

impl fmt::Display for SignatureScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const LEGACY_MIN: usize = 8;
const LEGACY_MAX: usize = 256;

/// A legacy endpoint's secret: any 8–256 printable ASCII characters (space included),
/// kept exactly as the old receiver knows it, since its UTF-8 bytes are the HMAC key.
/// `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct LegacySecret(Box<str>);

impl LegacySecret {
    /// The secret's text, which is also the HMAC key.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for LegacySecret {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !(LEGACY_MIN..=LEGACY_MAX).contains(&s.len())
            || !s.bytes().all(|b| (0x20..=0x7e).contains(&b))
        {
            return Err(InvalidValue(format!(
                "a legacy secret is {LEGACY_MIN} to {LEGACY_MAX} printable ASCII characters"
            )));
        }
        Ok(Self(s.into()))
    }
}

impl fmt::Debug for LegacySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LegacySecret([redacted])")
    }
}

/// An endpoint's scheme with the secrets it signs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    /// Current secret first, then a rotated-out one still in its grace period.
    Standard(Box<[SigningSecret]>),
    /// The current secret only: the old receivers check one signature.
    Legacy(LegacySecret),
    /// Standard signatures with every secret; the legacy one keyed by the current
    /// secret's full `whsec_…` text.
    Both(Box<[SigningSecret]>),
}

impl Signing {
    /// `scheme` with a freshly generated `whsec_` secret (valid for every scheme).
    pub fn generate(scheme: SignatureScheme) -> Self {
        let secret = SigningSecret::generate();
        match scheme {
            SignatureScheme::Standard => Signing::Standard(Box::new([secret])),
            SignatureScheme::Both => Signing::Both(Box::new([secret])),
            SignatureScheme::Legacy => Signing::Legacy(
                secret
                    .expose()
                    .parse()
                    .expect("a whsec_ secret is a valid legacy secret"),
            ),
        }
    }

    /// `scheme` signing with the secret `text` (the current one) and, for the standard
    /// signatures, `previous` while it lasts. The text must suit the scheme: `whsec_…`
    /// unless `legacy`. A previous secret that is not `whsec_` (left by a legacy
    /// endpoint) is not used.
    pub fn new(
        scheme: SignatureScheme,
        text: &str,
        previous: Option<&str>,
    ) -> Result<Self, InvalidValue> {
        let secrets = |text: &str| -> Result<Box<[SigningSecret]>, InvalidValue> {
            let current: SigningSecret = text.parse().map_err(|InvalidValue(why)| {
                InvalidValue(format!(
                    "{why}; a secret of another form needs signature `legacy`"
                ))
            })?;
            Ok(
                match previous.and_then(|p| p.parse::<SigningSecret>().ok()) {
                    Some(previous) => Box::new([current, previous]),
                    None => Box::new([current]),
                },
            )
        };
        Ok(match scheme {
            SignatureScheme::Standard => Signing::Standard(secrets(text)?),
            SignatureScheme::Both => Signing::Both(secrets(text)?),
            SignatureScheme::Legacy => Signing::Legacy(text.parse()?),
        })
    }

    pub fn scheme(&self) -> SignatureScheme {
        match self {
            Signing::Standard(_) => SignatureScheme::Standard,
            Signing::Legacy(_) => SignatureScheme::Legacy,
            Signing::Both(_) => SignatureScheme::Both,
        }
    }

    /// The current secret's text: what is stored, and shown once to the owner.
    pub fn current_text(&self) -> String {
        match self {
            Signing::Standard(secrets) | Signing::Both(secrets) => secrets[0].expose(),
            Signing::Legacy(secret) => secret.expose().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_parse_and_print() {
        for scheme in [
            SignatureScheme::Standard,
            SignatureScheme::Legacy,
            SignatureScheme::Both,
        ] {
            assert_eq!(scheme.as_str().parse::<SignatureScheme>().unwrap(), scheme);
        }
        assert!("Standard".parse::<SignatureScheme>().is_err());
        assert!("v1a".parse::<SignatureScheme>().is_err());
    }

    #[test]
    fn legacy_secrets_are_8_to_256_printable_ascii_characters() {
        for (text, ok) in [
            ("short", false),
            ("12345678", true),
            ("with space and !#$%&'()*+,-./:;<=>?@[]^_`{|}~", true),
            ("tab\tinside", false),
            ("newline\ninside", false),
            ("ünicode-secret", false),
            ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", true),
        ] {
            assert_eq!(text.parse::<LegacySecret>().is_ok(), ok, "{text:?}");
        }
        assert!("x".repeat(256).parse::<LegacySecret>().is_ok());
        assert!("x".repeat(257).parse::<LegacySecret>().is_err());
    }

    #[test]
    fn only_legacy_takes_a_secret_that_is_not_whsec() {
        let old = "s3cr3t-of-the-old-service";
        let legacy = Signing::new(SignatureScheme::Legacy, old, None).unwrap();
        assert_eq!(legacy.current_text(), old);
        for scheme in [SignatureScheme::Standard, SignatureScheme::Both] {
            let err = Signing::new(scheme, old, None).unwrap_err().0;
            assert!(err.contains("whsec_") && err.contains("legacy"), "{err}");
        }
        let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let both = Signing::new(SignatureScheme::Both, whsec, Some(old)).unwrap();
        let Signing::Both(secrets) = &both else {
            panic!()
        };
        assert_eq!(secrets.len(), 1, "a legacy previous secret signs nothing");
        assert_eq!(both.current_text(), whsec);
    }

    #[test]
    fn generated_signings_suit_their_scheme() {
        for scheme in [
            SignatureScheme::Standard,
            SignatureScheme::Legacy,
            SignatureScheme::Both,
        ] {
            let signing = Signing::generate(scheme);
            assert_eq!(signing.scheme(), scheme);
            assert!(signing.current_text().starts_with("whsec_"));
        }
    }

    #[test]
    fn debug_redacts_legacy_secrets() {
        let secret: LegacySecret = "hunter2-hunter2".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
        let signing = Signing::Legacy(secret);
        assert!(!format!("{signing:?}").contains("hunter2"));
    }
}
