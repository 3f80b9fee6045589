//! The managing commands through a running Herald's admin API (`--api URL --token T`),
//! so that an SRE needs an API token, not database and broker credentials. Each
//! command becomes one call (lists: one per page); the API's answer is printed as the
//! local command would print it, and a problem becomes the one-line error.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::progress::Progress;

/// How often a followed job is polled.
const POLL: Duration = Duration::from_millis(500);

/// How far a followed job is, read from its JSON: how many are through, of how many,
/// and a note on how.
pub type Gauge = fn(&Value) -> (u64, u64, String);

/// A dead-letter job: through are the deliveries processed or refused, of those matched.
pub fn dlq_gauge(job: &Value) -> (u64, u64, String) {
    let count = |key: &str| job[key].as_u64().unwrap_or(0);
    let note = format!(
        "{} processed, {} refused",
        count("processed"),
        count("refused")
    );
    (
        count("processed") + count("refused"),
        count("matched"),
        note,
    )
}

/// One API call a command makes.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
    /// A list: page through to `Some(limit)` rows (all when `None`), print the rows
    /// (with the `total` when the list gives one).
    pub list: Option<Option<usize>>,
    /// The answer is a job: follow it at `{follow}/{id}` until it ends, showing its
    /// progress by the gauge, and print it finished.
    pub follow: Option<(&'static str, Gauge)>,
}

impl Call {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            list: None,
            follow: None,
        }
    }

    pub fn follow(mut self, jobs: &'static str, gauge: Gauge) -> Self {
        self.follow = Some((jobs, gauge));
        self
    }

    pub fn query(mut self, name: &'static str, value: Option<impl ToString>) -> Self {
        if let Some(value) = value {
            self.query.push((name, value.to_string()));
        }
        self
    }

    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn list(mut self, limit: Option<usize>) -> Self {
        self.list = Some(limit);
        self
    }
}

/// Makes the call against `api` (e.g. `http://herald-api:8080`) and returns what the
/// command prints.
pub async fn call(api: &str, token: &str, call: Call) -> anyhow::Result<Value> {
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1{}", api.trim_end_matches('/'), call.path);
    let Some(limit) = call.list else {
        let answer = send(&client, &url, token, &call, &call.query).await?;
        return match call.follow {
            Some((jobs, gauge)) => follow(&client, api, token, jobs, gauge, answer).await,
            None => Ok(answer),
        };
    };
    let mut rows = Vec::new();
    let mut total = None;
    let mut cursor: Option<String> = None;
    loop {
        let mut query = call.query.clone();
        let want = limit.map_or(1_000, |l| (l - rows.len()).clamp(1, 1_000));
        query.push(("limit", want.to_string()));
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let mut page = send(&client, &url, token, &call, &query).await?;
        if let Some(data) = page["data"].as_array_mut() {
            rows.append(data);
        }
        total = total.or_else(|| page.get("total").cloned());
        cursor = page["next_cursor"].as_str().map(String::from);
        if cursor.is_none() || limit.is_some_and(|l| rows.len() >= l) {
            return Ok(match total {
                Some(total) => serde_json::json!({ "total": total, "data": rows }),
                None => Value::Array(rows),
            });
        }
    }
}

/// Polls a job until it is no longer `running`, its progress on stderr.
async fn follow(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    jobs: &str,
    gauge: Gauge,
    mut job: Value,
) -> anyhow::Result<Value> {
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let url = format!("{}/api/v1{jobs}/{id}", api.trim_end_matches('/'));
    let label = format!("{} {id}", job["kind"].as_str().unwrap_or("job"));
    let (_, total, _) = gauge(&job);
    let mut progress = Progress::new(label, total);
    let get = Call::new(Method::GET, String::new());
    while job["state"] == "running" {
        tokio::time::sleep(POLL).await;
        job = send(client, &url, token, &get, &[]).await?;
        let (done, total, note) = gauge(&job);
        progress.set_total(total);
        progress.update(done, &note);
    }
    let (done, total, note) = gauge(&job);
    progress.set_total(total);
    progress.finish(done, &note);
    if job["state"] == "failed" {
        anyhow::bail!(
            "job {id} failed: {}",
            job["error"].as_str().unwrap_or("no detail")
        );
    }
    Ok(job)
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    call: &Call,
    query: &[(&'static str, String)],
) -> anyhow::Result<Value> {
    let mut request = client
        .request(call.method.clone(), url)
        .bearer_auth(token)
        .query(query);
    if let Some(body) = &call.body {
        request = request.json(body);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    let value: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if status.is_success() {
        return Ok(value);
    }
    let detail = value["detail"].as_str().unwrap_or("no detail");
    anyhow::bail!("{status}: {detail}")
}
