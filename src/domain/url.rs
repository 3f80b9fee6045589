//! `EndpointUrl`: where webhooks are POSTed; http or https with a host.

use std::fmt;
use std::str::FromStr;

use super::InvalidValue;

/// Kept as its normalized text (16 bytes and the text, where a parsed URL takes 88
/// bytes more): every process caches one per endpoint, and parsing it again for a
/// request costs less than the copy a parsed one needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl(Box<str>);

impl EndpointUrl {
    /// The URL to send to; it parsed when this was made, so it parses again.
    pub fn to_url(&self) -> Result<reqwest::Url, InvalidValue> {
        reqwest::Url::parse(&self.0).map_err(|e| InvalidValue(format!("url `{}`: {e}", self.0)))
    }

    /// Is it an `https://` URL? (Parsing lowercases the scheme.)
    pub fn is_https(&self) -> bool {
        self.as_str().starts_with("https://")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EndpointUrl {
    type Error = InvalidValue;

    /// Keeps `s` itself when it is already in normal form (as stored URLs are).
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let url = validate(&s)?;
        Ok(Self(if url.as_str() == s {
            s.into_boxed_str()
        } else {
            url.as_str().into()
        }))
    }
}

impl FromStr for EndpointUrl {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate(s).map(|url| Self(url.as_str().into()))
    }
}

/// Parses `s` as an endpoint URL: http or https, a host, no credentials.
fn validate(s: &str) -> Result<reqwest::Url, InvalidValue> {
    let url = reqwest::Url::parse(s).map_err(|e| InvalidValue(format!("url `{s}`: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(InvalidValue(format!("url `{s}` must be http or https")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(InvalidValue(format!("url `{s}` has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(InvalidValue(format!(
            "url `{s}` must not carry credentials; receivers verify the signature"
        )));
    }
    Ok(url)
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_are_endpoints() {
        assert!("https://erp.example.com/hooks"
            .parse::<EndpointUrl>()
            .is_ok());
        assert!("http://127.0.0.1:9000/x".parse::<EndpointUrl>().is_ok());
        for bad in [
            "ftp://x/y",
            "not a url",
            "https://user:pw@host/",
            "file:///etc/passwd",
        ] {
            assert!(bad.parse::<EndpointUrl>().is_err(), "{bad}");
            assert!(EndpointUrl::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_url_is_kept_in_normal_form_and_parses_again() {
        for given in ["HTTPS://Erp.Example.com", "https://erp.example.com/"] {
            let url: EndpointUrl = given.parse().unwrap();
            assert_eq!(url.as_str(), "https://erp.example.com/");
            assert_eq!(EndpointUrl::try_from(given.to_string()).unwrap(), url);
            assert_eq!(url.to_url().unwrap().as_str(), url.as_str());
        }
    }
}
