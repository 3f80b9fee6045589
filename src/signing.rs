//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`
//! keyed by the base64-decoded secret; several space-separated while a secret rotates.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::SigningSecret;

/// One `v1,…` signature of a message.
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.key()).expect("HMAC accepts keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a SigningSecret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|secret| sign(secret, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

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
