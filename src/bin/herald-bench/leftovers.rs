//! Queues left on the broker by an earlier bench run that was aborted before its
//! clean-up (`hb<8 hex>r<n>.…`). One of them holding a backlog weighs on every later
//! run's broker, so the bench deletes them before it starts — but never those of a
//! bench still running on this machine (`make test`'s smoke run beside a `make bench`):
//! each invocation marks its tag with a file holding its process id while it lives.

use std::path::PathBuf;

fn live_dir() -> PathBuf {
    std::env::temp_dir().join("herald-bench-live")
}

/// Marks `tag_base` as in use by this process until the mark is dropped.
pub struct Live(PathBuf);

impl Live {
    pub fn mark(tag_base: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(live_dir())?;
        let path = live_dir().join(tag_base);
        std::fs::write(&path, std::process::id().to_string())?;
        Ok(Self(path))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether a bench process that marked `tag_base` is still running.
fn in_use(tag_base: &str) -> bool {
    std::fs::read_to_string(live_dir().join(tag_base))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Deletes the leftover bench queues through the management API; returns how many.
pub async fn delete_queues(management_url: &str) -> anyhow::Result<usize> {
    let base = management_url.trim_end_matches('/');
    let client = reqwest::Client::new();
    let queues: Vec<serde_json::Value> = client
        .get(format!("{base}/api/queues?columns=name,vhost"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut deleted = 0;
    for queue in &queues {
        let (Some(name), Some(vhost)) = (queue["name"].as_str(), queue["vhost"].as_str()) else {
            continue;
        };
        if !is_bench_queue(name) || in_use(&name[..10]) {
            continue;
        }
        client
            .delete(format!(
                "{base}/api/queues/{}/{name}",
                vhost.replace('/', "%2F")
            ))
            .send()
            .await?
            .error_for_status()?;
        deleted += 1;
    }
    Ok(deleted)
}

/// `hb` + 8 hex digits + `r` + the run number, then `.` and the queue's role.
fn is_bench_queue(name: &str) -> bool {
    let Some((tag, _)) = name.split_once('.') else {
        return false;
    };
    let Some((hex, run)) = tag.strip_prefix("hb").and_then(|t| t.split_once('r')) else {
        return false;
    };
    hex.len() == 8
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && !run.is_empty()
        && run.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_queues_named_like_a_bench_run_are_leftovers() {
        assert!(is_bench_queue("hb79459726r0.ingest"));
        assert!(is_bench_queue("hb0a1b2c3dr12.defer.250"));
        assert!(!is_bench_queue("herald.ingest"));
        assert!(!is_bench_queue("hb79459726.ingest"));
        assert!(!is_bench_queue("hb7945972r0.ingest"));
        assert!(!is_bench_queue("hb79459726r.ingest"));
        assert!(!is_bench_queue("hb79459726r0"));
        assert!(!is_bench_queue("t483446faffc1.work"));
    }
}
