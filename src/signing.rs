//! Webhook signatures, as pure functions over the bytes sent (contract §6):
//!
//! - Standard Webhooks: `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>` keyed by
//!   the base64-decoded secret; several space-separated while a secret rotates.
//! - Legacy (the ERP's previous webhook service): `sha256=<lowercase hex
//!   HMAC-SHA256(body)>` keyed by the secret's text as stored.
//!
//! [`signature_headers`] gives the headers an endpoint's scheme calls for. Per attempt
//! it allocates only the header texts it returns; the legacy signature and the
//! `whsec_` text it may be keyed by are made on the stack.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{Signing, SigningSecret};

/// Headers of the Standard Webhooks scheme.
pub const WEBHOOK_ID: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// Headers of the legacy scheme.
pub const X_SIGNATURE: &str = "x-signature";
pub const X_EVENT: &str = "x-event";

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Decimal digits of a timestamp, on the stack.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn of(n: i64) -> Self {
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        let mut rest = n.unsigned_abs();
        loop {
            start -= 1;
            buf[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if n < 0 {
            start -= 1;
            buf[start] = b'-';
        }
        Self { buf, start }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[self.start..]).expect("ASCII digits")
    }
}

fn sign_into(out: &mut String, secret: &SigningSecret, msg_id: &str, timestamp: &str, body: &[u8]) {
    let mut mac = mac(secret.key());
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    out.push_str("v1,");
    STANDARD.encode_string(mac.finalize().into_bytes(), out);
}

/// One `v1,…` signature of a message.
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(47);
    sign_into(
        &mut out,
        secret,
        msg_id,
        Digits::of(timestamp).as_str(),
        body,
    );
    out
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a SigningSecret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let timestamp = Digits::of(timestamp);
    let mut out = String::with_capacity(96);
    for (n, secret) in secrets.into_iter().enumerate() {
        if n > 0 {
            out.push(' ');
        }
        sign_into(&mut out, secret, msg_id, timestamp.as_str(), body);
    }
    out
}

/// `sha256=` and 64 lowercase hex digits, on the stack.
pub struct LegacySignature([u8; 71]);

impl LegacySignature {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

/// The legacy `X-Signature` value: HMAC-SHA256 of the raw body keyed by `key` (the
/// secret's text, byte for byte).
pub fn legacy_signature(key: &[u8], body: &[u8]) -> LegacySignature {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut mac = mac(key);
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = [0u8; 71];
    out[..7].copy_from_slice(b"sha256=");
    for (n, byte) in digest.iter().enumerate() {
        out[7 + 2 * n] = HEX[usize::from(byte >> 4)];
        out[8 + 2 * n] = HEX[usize::from(byte & 0xf)];
    }
    LegacySignature(out)
}

/// The signature headers of one attempt under `signing`, handed to `put` as
/// (lowercase name, value): `webhook-*` for `standard`, `x-signature` and `x-event` for
/// `legacy`, all five for `both`.
pub fn signature_headers(
    signing: &Signing,
    msg_id: &str,
    event_type: &str,
    timestamp: i64,
    body: &[u8],
    mut put: impl FnMut(&'static str, &str),
) {
    let standard = |secrets: &[SigningSecret], put: &mut dyn FnMut(&'static str, &str)| {
        let ts = Digits::of(timestamp);
        put(WEBHOOK_ID, msg_id);
        put(WEBHOOK_TIMESTAMP, ts.as_str());
        put(
            WEBHOOK_SIGNATURE,
            &signature_header(secrets, msg_id, timestamp, body),
        );
    };
    match signing {
        Signing::Standard(secrets) => standard(secrets, &mut put),
        Signing::Legacy(secret) => {
            put(
                X_SIGNATURE,
                legacy_signature(secret.expose().as_bytes(), body).as_str(),
            );
            put(X_EVENT, event_type);
        }
        Signing::Both(secrets) => {
            standard(secrets, &mut put);
            let legacy = secrets[0].with_text(|text| legacy_signature(text, body));
            put(X_SIGNATURE, legacy.as_str());
            put(X_EVENT, event_type);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SignatureScheme;

    #[test]
    fn reproduces_the_standard_webhooks_published_vector() {
        let secret: SigningSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        assert_eq!(
            sign(
                &secret,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn timestamps_are_written_in_decimal() {
        for n in [0, 7, 10, 1614265330, -42, i64::MAX, i64::MIN] {
            assert_eq!(Digits::of(n).as_str(), n.to_string());
        }
    }

    /// Vectors from RFC 4231 (test case 2) and from
    /// `printf %s BODY | openssl dgst -sha256 -hmac KEY`.
    #[test]
    fn legacy_signatures_match_known_hmac_sha256_vectors() {
        for (key, body, hex) in [
            (
                "Jefe",
                "what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                "s3cr3t-of-the-old-service",
                r#"{"id":"evt_1","type":"sales.order.created","data":{"n":1}}"#,
                "1f0f19d62b9fe7c942e47cf891b581215305a516f5d78745f8cb34054bab7956",
            ),
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                r#"{"test": 2432232314}"#,
                "80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c",
            ),
            (
                "with spaces and ~!",
                "",
                "45db7c83bf1cc34e068fbdaa6c4fae5ca426af82709b59c990fbafa99f605854",
            ),
        ] {
            assert_eq!(
                legacy_signature(key.as_bytes(), body.as_bytes()).as_str(),
                format!("sha256={hex}"),
                "{key} / {body}"
            );
        }
    }

    fn headers_of(signing: &Signing, body: &[u8]) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        signature_headers(
            signing,
            "evt_1",
            "sales.order.created",
            1614265330,
            body,
            |n, v| out.push((n, v.to_string())),
        );
        out
    }

    #[test]
    fn each_scheme_sends_its_own_headers() {
        let body = br#"{"test": 2432232314}"#;
        let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let names = |signing: &Signing| -> Vec<&'static str> {
            headers_of(signing, body)
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        let standard = Signing::new(SignatureScheme::Standard, whsec, None).unwrap();
        let legacy =
            Signing::new(SignatureScheme::Legacy, "s3cr3t-of-the-old-service", None).unwrap();
        let both = Signing::new(SignatureScheme::Both, whsec, None).unwrap();
        assert_eq!(
            names(&standard),
            [WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE]
        );
        assert_eq!(names(&legacy), [X_SIGNATURE, X_EVENT]);
        assert_eq!(
            names(&both),
            [
                WEBHOOK_ID,
                WEBHOOK_TIMESTAMP,
                WEBHOOK_SIGNATURE,
                X_SIGNATURE,
                X_EVENT
            ]
        );
        let both = headers_of(&both, body);
        assert_eq!(both[1].1, "1614265330");
        assert_eq!(
            both[3].1,
            legacy_signature(whsec.as_bytes(), body).as_str(),
            "under `both` the legacy HMAC is keyed by the full whsec_ text"
        );
        assert_eq!(both[4].1, "sales.order.created");
        assert_eq!(
            headers_of(&legacy, body)[0].1,
            legacy_signature(b"s3cr3t-of-the-old-service", body).as_str()
        );
    }

    #[test]
    fn the_reference_library_verifies_our_signature() {
        let secret = SigningSecret::generate();
        let body = br#"{"id":"evt_1","type":"sales.order.created","data":{"n":1}}"#;
        let now = chrono::Utc::now().timestamp();
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "evt_1".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        let rotated = SigningSecret::generate();
        headers.insert(
            "webhook-signature",
            signature_header([&rotated, &secret], "evt_1", now, body)
                .parse()
                .unwrap(),
        );
        standardwebhooks::Webhook::new(&secret.expose())
            .unwrap()
            .verify(body, &headers)
            .expect("standardwebhooks verifies a signature made with the current secret");
        let stranger = SigningSecret::generate();
        assert!(standardwebhooks::Webhook::new(&stranger.expose())
            .unwrap()
            .verify(body, &headers)
            .is_err());
    }
}
