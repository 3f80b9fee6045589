//! A real HTTP receiver on a loopback port: records every request and answers as the
//! test's script says (status, delay, headers), per path and per request number.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status the receiver answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        herald::testkit::receiver::header(&self.headers, name).to_string()
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
    /// The reply's body; `None`: a short text.
    pub body: Option<Vec<u8>>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: None,
        }
    }

    /// `status` with these bytes as the body.
    pub fn with_body(status: u16, body: &[u8]) -> Self {
        Reply {
            body: Some(body.to_vec()),
            ..Reply::status(status)
        }
    }

    /// 200, after `delay`.
    pub fn ok_after(delay: Duration) -> Self {
        Reply {
            delay,
            ..Reply::status(200)
        }
    }
}

/// (path, 1-based number of this request to that path) → reply.
pub type Script = Arc<dyn Fn(&str, usize) -> Reply + Send + Sync>;

struct Inner {
    log: Mutex<Vec<Received>>,
    counts: Mutex<HashMap<String, usize>>,
    script: Mutex<Script>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

#[derive(Clone)]
pub struct Receiver {
    address: SocketAddr,
    inner: Arc<Inner>,
}

impl Receiver {
    /// Answers 200 to everything.
    pub async fn start() -> Self {
        Self::scripted(|_, _| Reply::status(200)).await
    }

    pub async fn scripted(script: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) -> Self {
        let inner = Arc::new(Inner {
            log: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
            script: Mutex::new(Arc::new(script)),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(receive).with_state(inner.clone());
        // Serves for the rest of the test binary's run, as the test's runtime allows.
        let address = herald::testkit::receiver::serve(app, CancellationToken::new())
            .await
            .expect("a loopback port for the receiver");
        Receiver { address, inner }
    }

    pub fn set_script(&self, script: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) {
        *self.inner.script.lock().unwrap() = Arc::new(script);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.log.lock().unwrap().clone()
    }

    pub fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    pub fn count(&self) -> usize {
        self.inner.log.lock().unwrap().len()
    }

    /// Most requests this receiver was answering at the same moment.
    pub fn peak_in_flight(&self) -> usize {
        self.inner.peak_in_flight.load(Ordering::SeqCst)
    }
}

async fn receive(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    inner.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    let path = uri.path().to_string();
    let nth = {
        let mut counts = inner.counts.lock().unwrap();
        let n = counts.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    let script = inner.script.lock().unwrap().clone();
    let reply = script(&path, nth);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    inner.log.lock().unwrap().push(Received {
        path,
        headers,
        body,
        status: reply.status,
    });
    let status = StatusCode::from_u16(reply.status).unwrap();
    let mut response = match reply.body {
        Some(body) => (status, body).into_response(),
        None => (status, "receiver says hi").into_response(),
    };
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
