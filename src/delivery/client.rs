//! The HTTP side of a delivery: one pooled keep-alive client, redirects not followed,
//! destinations checked on the resolved address at connect time (no private, loopback,
//! link-local, metadata, reserved or IPv4-tunnelling addresses unless in
//! `delivery.allowed_networks` or `delivery.allow_private_networks`), and
//! failures sorted into classes that are stored with each attempt.

use std::error::Error as _;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
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

/// Is this an address webhooks must not reach from a production network? Every
/// special-purpose range of the IANA registries that is not globally reachable, and
/// every IPv6 form that carries an IPv4 address to a translator or tunnel (NAT64, 6to4,
/// Teredo, IPv4-compatible, IPv4-mapped), which could reach a forbidden IPv4 one.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local() // includes 169.254.169.254, the cloud metadata service
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240 // reserved 240.0.0.0/4, and the broadcast address
                || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || s[..6] == [0xfd00, 0x0ec2, 0, 0, 0, 0] // AWS IPv6 metadata
                || s[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible ::a.b.c.d (deprecated)
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] // NAT64 64:ff9b::/96
                || s[..3] == [0x64, 0xff9b, 1] // local-use NAT64 64:ff9b:1::/48
                || s[0] == 0x2002 // 6to4 2002::/16
                || s[..2] == [0x2001, 0] // Teredo 2001::/32
                || s[..2] == [0x2001, 0x0db8] // documentation 2001:db8::/32
                || s[..4] == [0x0100, 0, 0, 0] // discard-only 100::/64
        }
    }
}

/// The SSRF guard: which destinations a webhook may reach.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// `delivery.allowed_networks`: exempt from the rules.
    allowed: Arc<[ipnet::IpNet]>,
}

impl Guard {
    pub fn new(allowed: &[ipnet::IpNet]) -> Self {
        Self {
            allowed: allowed.into(),
        }
    }

    /// May a webhook connect to `ip`? Pure.
    pub fn refuses(&self, ip: IpAddr) -> bool {
        is_forbidden(ip) && !self.allowed.iter().any(|net| net.contains(&ip))
    }
}

/// How names are resolved: the system's resolver, or one a test controls.
pub type Lookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The system's resolver (`getaddrinfo` through tokio).
pub fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    })
}

#[derive(Debug, thiserror::Error)]
#[error("destination {0} is not a public address (private, loopback, link-local, metadata or reserved) and not in delivery.allowed_networks")]
struct ForbiddenAddress(IpAddr);

/// Resolves names and drops addresses webhooks must not reach. reqwest resolves for
/// every new connection, so a name that resolved to an allowed address and later
/// resolves to a forbidden one (DNS rebinding) is refused on that later connect; a
/// pooled connection stays with the address it was checked for.
struct GuardedResolver {
    guard: Guard,
    lookup: Lookup,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (guard, lookup) = (self.guard.clone(), self.lookup.clone());
        Box::pin(async move {
            let addrs = lookup(name.as_str().to_string()).await?;
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .filter(|ip| !guard.refuses(**ip))
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            if allowed.is_empty() {
                if let Some(first) = addrs.first() {
                    return Err(Box::new(ForbiddenAddress(*first)) as _);
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
    /// `None`: `delivery.allow_private_networks`, nothing is refused.
    guard: Option<Guard>,
    max_body: usize,
}

impl WebhookClient {
    pub fn new(settings: &DeliverySettings) -> reqwest::Result<Self> {
        Self::with_lookup(settings, system_lookup())
    }

    /// As [`Self::new`], resolving names with `lookup` (tests control what a name
    /// resolves to, for the DNS rebinding test).
    pub fn with_lookup(settings: &DeliverySettings, lookup: Lookup) -> reqwest::Result<Self> {
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
        let guard =
            (!settings.allow_private_networks).then(|| Guard::new(&settings.allowed_networks));
        if let Some(guard) = &guard {
            builder = builder.dns_resolver(Arc::new(GuardedResolver {
                guard: guard.clone(),
                lookup,
            }));
        }
        Ok(Self {
            http: builder.build()?,
            guard,
            max_body: settings.max_response_body_bytes,
        })
    }

    /// POSTs one signed webhook and reads at most `max_response_body_bytes` of the answer.
    pub async fn post(&self, url: &EndpointUrl, headers: HeaderMap, body: bytes::Bytes) -> Attempt {
        self.post_within(url, headers, body, None).await
    }

    /// As [`Self::post`], within `timeout` (an endpoint's own) instead of
    /// `delivery.timeout` when given: the same pooled client, the deadline set on the
    /// one request.
    pub async fn post_within(
        &self,
        url: &EndpointUrl,
        headers: HeaderMap,
        body: bytes::Bytes,
        timeout: Option<Duration>,
    ) -> Attempt {
        let started = Instant::now();
        let response = self.send(url, headers, body, timeout).await;
        Attempt {
            response,
            duration: started.elapsed(),
        }
    }

    async fn send(
        &self,
        url: &EndpointUrl,
        headers: HeaderMap,
        body: bytes::Bytes,
        timeout: Option<Duration>,
    ) -> Response {
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
        if let Some(guard) = &self.guard {
            let literal = url
                .host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                .and_then(|h| h.parse::<IpAddr>().ok());
            if let Some(ip) = literal.filter(|ip| guard.refuses(*ip)) {
                return Response::Failed {
                    class: FailureClass::RefusedAddress,
                    message: ForbiddenAddress(ip).to_string(),
                };
            }
        }
        let mut request = self
            .http
            .post(url)
            .headers(headers)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let result = request.send().await;
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

    #[test]
    fn addresses_that_tunnel_or_translate_to_ipv4_and_reserved_ranges_are_forbidden() {
        let forbidden = [
            ("NAT64 of loopback", "64:ff9b::7f00:1"),
            ("NAT64 of a public address", "64:ff9b::808:808"),
            ("local-use NAT64", "64:ff9b:1::a00:1"),
            ("6to4", "2002:7f00:1::1"),
            ("Teredo", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
            ("IPv4-compatible", "::127.0.0.1"),
            ("IPv4-compatible public", "::8.8.8.8"),
            ("IPv4-mapped private", "::ffff:10.0.0.1"),
            ("reserved 240/4", "240.0.0.1"),
            ("reserved 255.255.255.254", "255.255.255.254"),
            ("broadcast", "255.255.255.255"),
            ("IETF protocol assignments", "192.0.0.8"),
            ("6to4 relay anycast", "192.88.99.1"),
            ("documentation v6", "2001:db8::1"),
            ("discard-only", "100::1"),
            ("site-local", "fec0::1"),
            ("benchmarking", "198.18.0.1"),
        ];
        for (what, ip) in forbidden {
            assert!(is_forbidden(ip.parse().unwrap()), "{what}: {ip}");
        }
        let allowed = [
            ("public v4", "1.1.1.1"),
            ("public v6", "2a00:1450:4001::1"),
            ("2001:4860 (not Teredo)", "2001:4860:4860::8888"),
            ("192.0.2.0/24 neighbour", "192.0.3.1"),
            ("the last unicast /8", "223.255.255.1"),
        ];
        for (what, ip) in allowed {
            assert!(!is_forbidden(ip.parse().unwrap()), "{what}: {ip}");
        }
    }

    #[test]
    fn allowed_networks_exempt_exactly_their_addresses() {
        let guard = Guard::new(&[
            "10.20.0.0/16".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
            "fd12:3456::/48".parse().unwrap(),
        ]);
        let cases = [
            ("inside 10.20/16", "10.20.3.4", false),
            ("next to it", "10.21.0.1", true),
            ("the one loopback address", "127.0.0.1", false),
            ("another loopback address", "127.0.0.2", true),
            ("inside the ULA /48", "fd12:3456:0:1::1", false),
            ("another ULA", "fd12:3457::1", true),
            ("public stays allowed", "8.8.8.8", false),
            ("metadata stays refused", "169.254.169.254", true),
        ];
        for (what, ip, refused) in cases {
            assert_eq!(guard.refuses(ip.parse().unwrap()), refused, "{what}");
        }
        assert!(Guard::default().refuses("10.20.3.4".parse().unwrap()));
    }
}
