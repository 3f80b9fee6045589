//! The HTTP side of a delivery: one pooled keep-alive client, redirects not followed,
//! destinations checked on the resolved address at connect time (no private, loopback,
//! link-local or metadata addresses unless `delivery.allow_private_networks`), and
//! failures sorted into classes that are stored with each attempt.

use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use crate::config::DeliverySettings;
use crate::domain::EndpointUrl;

pub const USER_AGENT: &str = concat!("Herald/", env!("CARGO_PKG_VERSION"));

/// Why an attempt got no HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    Timeout,
    Connect,
    Dns,
    Tls,
    RefusedAddress,
    Other,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Timeout => "timeout",
            FailureClass::Connect => "connect",
            FailureClass::Dns => "dns",
            FailureClass::Tls => "tls",
            FailureClass::RefusedAddress => "refused_address",
            FailureClass::Other => "other",
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub enum Response {
    Answered {
        status: u16,
        retry_after: Option<String>,
        body: String,
    },
    Failed {
        class: FailureClass,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub response: Response,
    pub duration: Duration,
}

/// Is this an address webhooks must not reach from a production network?
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local() // includes 169.254.169.254, the cloud metadata service
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || v6.segments()[..6] == [0xfd00, 0x0ec2, 0, 0, 0, 0] // AWS IPv6 metadata
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("destination {0} is a private, loopback or link-local address (delivery.allow_private_networks is false)")]
struct ForbiddenAddress(IpAddr);

/// Resolves names and drops addresses webhooks must not reach.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| !is_forbidden(a.ip()))
                .collect();
            if allowed.is_empty() {
                if let Some(first) = addrs.first() {
                    return Err(Box::new(ForbiddenAddress(first.ip())) as _);
                }
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The one HTTP client of a process.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    allow_private: bool,
    max_body: usize,
}

impl WebhookClient {
    pub fn new(settings: &DeliverySettings) -> reqwest::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(usize::from(settings.concurrency))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        // reqwest would otherwise take HTTP(S)_PROXY from the environment, and the
        // resolver would then only ever check the proxy's address.
        builder = match settings.egress_proxy.expose() {
            "" => builder.no_proxy(),
            proxy => builder.proxy(reqwest::Proxy::all(proxy)?),
        };
        if !settings.allow_private_networks {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        Ok(Self {
            http: builder.build()?,
            allow_private: settings.allow_private_networks,
            max_body: settings.max_response_body_bytes,
        })
    }

    /// POSTs one signed webhook and reads at most `max_response_body_bytes` of the answer.
    pub async fn post(&self, url: &EndpointUrl, headers: HeaderMap, body: bytes::Bytes) -> Attempt {
        let started = Instant::now();
        let response = self.send(url, headers, body).await;
        Attempt {
            response,
            duration: started.elapsed(),
        }
    }

    async fn send(&self, url: &EndpointUrl, headers: HeaderMap, body: bytes::Bytes) -> Response {
        let url = match url.to_url() {
            Ok(url) => url,
            Err(invalid) => {
                return Response::Failed {
                    class: FailureClass::Other,
                    message: invalid.to_string(),
                }
            }
        };
        // An IP literal is never resolved, so the resolver cannot check it: do it here.
        if !self.allow_private {
            let literal = url
                .host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                .and_then(|h| h.parse::<IpAddr>().ok());
            if let Some(ip) = literal.filter(|ip| is_forbidden(*ip)) {
                return Response::Failed {
                    class: FailureClass::RefusedAddress,
                    message: ForbiddenAddress(ip).to_string(),
                };
            }
        }
        let result = self
            .http
            .post(url)
            .headers(headers)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await;
        let mut response = match result {
            Ok(r) => r,
            Err(error) => {
                return Response::Failed {
                    class: classify(&error),
                    message: error_chain(&error),
                }
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let mut kept = Vec::new();
        // Read the body only up to the limit; a receiver streaming megabytes is cut off.
        while kept.len() < self.max_body {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.max_body - kept.len();
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        Response::Answered {
            status,
            retry_after,
            body: storable_text(&kept),
        }
    }
}

/// A receiver's reply as text PostgreSQL stores: invalid UTF-8 and zero bytes (binary
/// replies are common; a `text` column refuses `0x00`) become U+FFFD.
pub fn storable_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.into_owned()
    }
}

fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn classify(error: &reqwest::Error) -> FailureClass {
    let mut source = error.source();
    while let Some(s) = source {
        if s.is::<ForbiddenAddress>() {
            return FailureClass::RefusedAddress;
        }
        source = s.source();
    }
    if error.is_timeout() {
        return FailureClass::Timeout;
    }
    let chain = error_chain(error).to_ascii_lowercase();
    if chain.contains("dns")
        || chain.contains("failed to lookup")
        || chain.contains("name or service")
    {
        FailureClass::Dns
    } else if chain.contains("certificate") || chain.contains("tls") || chain.contains("handshake")
    {
        FailureClass::Tls
    } else if error.is_connect() {
        FailureClass::Connect
    } else {
        FailureClass::Other
    }
}

/// A header value known to be valid (ids and numbers Herald made itself).
pub fn header(name: &'static str, value: &str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip}");
        }
    }
}
