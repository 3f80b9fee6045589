//! What every loopback HTTP receiver needs, the tests' scripted ones and the bench's
//! counting one: a server on a free loopback port, and request headers as text.

use std::net::SocketAddr;

use axum::http::HeaderMap;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// Serves `app` on a free loopback port (HTTP/1.1, keep-alive) until `stop`; returns
/// the address. A server that fails after it started says so on stderr.
pub async fn serve(app: Router, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            eprintln!("receiver on {address} stopped: {error}");
        }
    });
    Ok(address)
}

/// A request header as text; `""` when it is absent or not visible ASCII.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}
