//! `EndpointUrl`: where webhooks are POSTed; http or https with a host.

use std::fmt;
use std::str::FromStr;

use super::InvalidValue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl(reqwest::Url);

impl EndpointUrl {
    pub fn as_url(&self) -> &reqwest::Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl FromStr for EndpointUrl {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
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
        Ok(Self(url))
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
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
        }
    }
}
