//! Herald as a separate process: `herald migrate`, then `herald serve --role all` (or
//! one role) configured through `HERALD__…` variables; readiness from `/readyz`;
//! resident memory sampled from `/proc/<pid>/status` every second; SIGTERM to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herald::testkit::World;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// How to run Herald for one run.
#[derive(Debug, Clone)]
pub struct HeraldConfig {
    pub binary: PathBuf,
    pub world: World,
    pub concurrency: u16,
    /// Herald's stderr (its warnings and errors) goes here.
    pub log: PathBuf,
    /// More `HERALD__…` settings (the growth scenario's admin token).
    pub extra_env: Vec<(&'static str, String)>,
}

impl HeraldConfig {
    fn env(&self, api: SocketAddr) -> Vec<(&'static str, String)> {
        let mut env = self.world.process_env(&api.to_string());
        env.push((
            "HERALD__DELIVERY__CONCURRENCY",
            self.concurrency.to_string(),
        ));
        env.extend(self.extra_env.iter().cloned());
        env
    }

    pub fn command(&self, api: SocketAddr, args: &[&str]) -> anyhow::Result<Command> {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .envs(self.env(api))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        Ok(command)
    }
}

/// A free loopback port for Herald's API.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// `herald migrate` with the run's settings.
pub async fn migrate(config: &HeraldConfig) -> anyhow::Result<()> {
    let status = config
        .command(free_port()?, &["migrate"])?
        .status()
        .await
        .with_context(|| format!("running {}", config.binary.display()))?;
    if !status.success() {
        bail!("herald migrate failed: {status}");
    }
    Ok(())
}

/// A one-shot command (`herald dlq redrive …`) with the run's settings, to its end:
/// its stdout, and its peak resident memory (sampled every 100 ms), MiB.
pub async fn run_once(config: &HeraldConfig, args: &[&str]) -> anyhow::Result<(String, f64)> {
    let mut command = config.command(free_port()?, args)?;
    command.stdout(Stdio::piped());
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", config.binary.display()))?;
    let pid = child.id().context("the command exited at once")?;
    let peak = Arc::new(Mutex::new(0u64));
    let sampler = CancellationToken::new();
    {
        let (peak, stop) = (peak.clone(), sampler.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => match rss_kib(pid) {
                        Some(kib) => {
                            let mut peak = peak.lock().expect("rss lock");
                            *peak = (*peak).max(kib);
                        }
                        None => break,
                    },
                }
            }
        });
    }
    let output = child.wait_with_output().await?;
    sampler.cancel();
    if !output.status.success() {
        bail!("herald {args:?} failed: {}", output.status);
    }
    let peak = *peak.lock().expect("rss lock") as f64 / 1024.0;
    Ok((String::from_utf8_lossy(&output.stdout).into_owned(), peak))
}

/// A running `herald serve`.
pub struct Herald {
    child: Child,
    api: SocketAddr,
    pub started: Instant,
    rss_kib: Arc<Mutex<Vec<u64>>>,
    sampler: CancellationToken,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Herald {
    pub async fn spawn(config: &HeraldConfig) -> anyhow::Result<Self> {
        Self::spawn_role(config, "all").await
    }

    /// `herald serve --role <role>` (`all`, `ingest`, `deliver`, `api`).
    pub async fn spawn_role(config: &HeraldConfig, role: &str) -> anyhow::Result<Self> {
        let api = free_port()?;
        let started = Instant::now();
        let child = config
            .command(api, &["serve", "--role", role])?
            .spawn()
            .with_context(|| format!("starting {}", config.binary.display()))?;
        let pid = child.id().context("herald exited at once")?;
        let rss = Arc::new(Mutex::new(Vec::new()));
        let sampler = CancellationToken::new();
        {
            let rss = rss.clone();
            let stop = sampler.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => match rss_kib(pid) {
                            Some(kib) => rss.lock().expect("rss lock").push(kib),
                            None => break,
                        },
                    }
                }
            });
        }
        Ok(Self {
            child,
            api,
            started,
            rss_kib: rss,
            sampler,
        })
    }

    /// Where its API listens.
    pub fn api(&self) -> SocketAddr {
        self.api
    }

    /// Waits until `/readyz` answers 200; returns the time since spawn.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let client = reqwest::Client::new();
        let url = format!("http://{}/readyz", self.api);
        while self.started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                bail!("herald exited before it was ready: {status}");
            }
            if let Ok(response) = client.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(self.started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("herald not ready within {timeout:?}")
    }

    pub fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// RSS samples so far, MiB.
    pub fn rss_mib(&self) -> Vec<f64> {
        self.rss_kib
            .lock()
            .expect("rss lock")
            .iter()
            .map(|k| *k as f64 / 1024.0)
            .collect()
    }

    /// SIGTERM, then SIGKILL if it has not stopped within 10 s; returns RSS samples.
    pub async fn stop(mut self) -> anyhow::Result<Vec<f64>> {
        self.sampler.cancel();
        if let Some(kib) = self.child.id().and_then(rss_kib) {
            self.rss_kib.lock().expect("rss lock").push(kib);
        }
        let samples = self.rss_mib();
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_err()
            {
                self.child.kill().await?;
            }
        }
        Ok(samples)
    }
}
