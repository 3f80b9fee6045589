//! Property tests (proptest, stable toolchain; cargo-fuzz would need nightly, which
//! these machines cannot install): the pure cores checked against an independent
//! statement of what they must do, on generated input. Each runs a bounded number of
//! cases (`CASES`) in `make test`; a case proptest finds is kept as a regression test
//! of its own. None of Herald's so far: the one failure found was the test's own (the
//! reference library verifies only UTF-8 bodies; Herald signs the JSON it made).

use std::time::{Duration, SystemTime};

use base64::Engine;
use herald::config::{parse_duration, Settings};
use herald::delivery::retry::{parse_retry_after, RetryPolicy};
use herald::domain::{SigningSecret, TopicPattern, TopicTrie};
use herald::envelope::{self, Inbound};
use proptest::prelude::*;
use rand::SeedableRng;

const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Patterns over a small alphabet, so that matches are frequent.
fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof!["a", "b", "c", Just("*".into()), Just("#".into())],
        1..6,
    )
    .prop_map(|words| words.join("."))
}

fn key() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof!["a", "b", "c", "d"], 1..7).prop_map(|w| w.join("."))
}

proptest! {
    #![proptest_config(config())]

    /// The trie, the reference matcher and the PostgreSQL regex agree on every key.
    #[test]
    fn the_trie_the_matcher_and_the_regex_agree(patterns in prop::collection::vec(pattern(), 1..12), keys in prop::collection::vec(key(), 1..8)) {
        let parsed: Vec<TopicPattern> = patterns.iter().map(|p| p.parse().unwrap()).collect();
        let mut trie = TopicTrie::new();
        for (i, p) in parsed.iter().enumerate() {
            trie.insert(p, i);
        }
        for key in &keys {
            let naive: Vec<usize> = (0..parsed.len()).filter(|i| parsed[*i].matches(key)).collect();
            prop_assert_eq!(trie.matches(key), naive.clone(), "key {}", key);
            for (i, p) in parsed.iter().enumerate() {
                let regex = regex::Regex::new(&p.to_dotted_regex()).unwrap();
                prop_assert_eq!(regex.is_match(&format!(".{key}")), naive.contains(&i), "{} ~ {}", p.as_str(), key);
            }
        }
    }

    /// Every signature verifies with the reference Standard Webhooks library.
    #[test]
    fn signatures_verify_with_the_reference_library(
        secret in prop::collection::vec(any::<u8>(), 24..=64),
        id in "[A-Za-z0-9_.:-]{1,64}",
        skew in -240i64..240,
        // Herald signs the JSON body it made: text (the library reads only UTF-8).
        body in "\\PC{0,600}",
    ) {
        let body = body.into_bytes();
        // The library refuses timestamps more than 5 minutes off.
        let timestamp = chrono::Utc::now().timestamp() + skew;
        let text = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&secret));
        let signing: SigningSecret = text.parse().unwrap();
        let signature = herald::signing::sign(&signing, &id, timestamp, &body);
        let webhook = standardwebhooks::Webhook::new(&text).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        prop_assert!(webhook.verify(&body, &headers).is_ok());
        // One bit of the body changed: refused.
        if !body.is_empty() {
            let mut tampered = body.clone();
            tampered[0] ^= 1;
            prop_assert!(webhook.verify(&tampered, &headers).is_err());
        }
    }

    /// The retry schedule: a delay for each step and none after, within the step's
    /// jitter band, and `Retry-After` only ever lengthens the wait.
    #[test]
    fn each_retry_waits_its_step_within_the_jitter_band(
        steps in prop::collection::vec(1u64..3_600_000, 1..7),
        jitter in 0.0f64..=1.0,
        retries_done in 0u32..9,
        retry_after_ms in prop::option::of(0u64..10_000_000),
        seed in any::<u64>(),
    ) {
        let schedule: Vec<Duration> = steps.iter().map(|ms| Duration::from_millis(*ms)).collect();
        let policy = RetryPolicy::new(schedule.clone(), jitter);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let retry_after = retry_after_ms.map(Duration::from_millis);
        let delay = policy.next_delay(retries_done, retry_after, &mut rng);
        match schedule.get(retries_done as usize) {
            None => prop_assert!(delay.is_none()),
            Some(scheduled) => {
                let delay = delay.unwrap();
                let longest = *schedule.iter().max().unwrap();
                let tier = match retry_after {
                    Some(wanted) if wanted > *scheduled => schedule.iter().copied().find(|d| *d >= wanted).unwrap_or(longest),
                    _ => *scheduled,
                };
                prop_assert!(delay >= tier, "{delay:?} < {tier:?}");
                let band = tier.mul_f64(1.0 + jitter) + Duration::from_millis(1);
                prop_assert!(delay <= band, "{delay:?} > {band:?}");
            }
        }
    }

    /// `Retry-After` as seconds or as an HTTP date; anything else is absent, never a panic.
    #[test]
    fn retry_after_reads_seconds_and_dates_and_nothing_else(seconds in 0u64..100_000_000, ahead in 0u64..1_000_000, junk in "\\PC{0,40}") {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        prop_assert_eq!(parse_retry_after(&seconds.to_string(), now), Some(Duration::from_secs(seconds)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(ahead));
        prop_assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(ahead)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(ahead));
        prop_assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        let _ = parse_retry_after(&junk, now);
    }

    /// Any bytes, content type and headers: accepted or refused with a reason, never a
    /// panic; an accepted plain-JSON object keeps its data byte for byte.
    #[test]
    fn any_message_is_accepted_or_refused_never_a_panic(
        body in prop::collection::vec(any::<u8>(), 0..512),
        content_type in prop::option::of(prop_oneof![Just("application/json".to_string()), Just("application/cloudevents+json".to_string()), "\\PC{0,20}"]),
        message_id in prop::option::of("\\PC{0,40}"),
        routing_key in "\\PC{0,40}",
        tenant in prop::option::of("\\PC{0,20}"),
    ) {
        let headers = tenant.iter().map(|t| ("x-tenant-id", t.clone())).collect();
        let msg = Inbound {
            body: &body,
            content_type: content_type.as_deref(),
            message_id: message_id.as_deref(),
            type_property: None,
            routing_key: &routing_key,
            timestamp: None,
            headers,
            header_bytes: 0,
        };
        let _ = envelope::parse(&msg, 256 * 1024, chrono::Utc::now());
    }

    #[test]
    fn a_plain_json_object_keeps_its_data_byte_for_byte(
        fields in prop::collection::btree_map("[a-z]{1,8}", prop_oneof![any::<i64>().prop_map(|n| n.to_string()), "[ -~&&[^\"\\\\]]{0,20}".prop_map(|s| format!("\"{s}\""))], 0..6),
        spacing in prop_oneof![Just(""), Just(" "), Just("\n  ")],
    ) {
        let members: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{spacing}{v}")).collect();
        let body = format!("{{{spacing}{}{spacing}}}", members.join(&format!(",{spacing}")));
        let msg = Inbound {
            body: body.as_bytes(),
            content_type: Some("application/json"),
            message_id: Some("prop-1"),
            type_property: None,
            routing_key: "sales.order.created",
            timestamp: None,
            headers: vec![],
            header_bytes: 0,
        };
        let event = envelope::parse(&msg, 256 * 1024, chrono::Utc::now()).unwrap();
        prop_assert_eq!(event.data.get(), body.as_str());
        prop_assert_eq!(event.id.as_str(), "prop-1");
    }

    /// Durations in every unit parse to what they say; a string setting is kept as
    /// given, however much it looks like a number or a boolean.
    #[test]
    fn durations_parse_and_strings_are_kept_verbatim(n in 1u64..1_000_000, token in "[0-9a-zA-Z._-]{1,40}") {
        prop_assert_eq!(parse_duration(&format!("{n}ms")), Ok(Duration::from_millis(n)));
        prop_assert_eq!(parse_duration(&format!("{n}s")), Ok(Duration::from_secs(n)));
        prop_assert_eq!(parse_duration(&format!("{n}m")), Ok(Duration::from_secs(n * 60)));
        let mut env = config::Map::new();
        env.insert("HERALD__API__ADMIN_TOKEN".to_string(), token.clone());
        let settings = Settings::load_with(None, Some(env)).unwrap();
        prop_assert_eq!(settings.api.admin_token.expose(), token.as_str());
    }
}
