//! What a scenario is sized as and what it reports: shared by the scenarios and the
//! report.

use serde::Serialize;

use crate::run::Latency;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    Full,
    Quick,
    Tiny,
}

impl Size {
    pub fn pick<T>(self, full: T, quick: T, tiny: T) -> T {
        match self {
            Size::Full => full,
            Size::Quick => quick,
            Size::Tiny => tiny,
        }
    }
}

/// One row of the report (and of `results.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub deliveries: u64,
    pub seconds: f64,
    pub deliveries_per_s: f64,
    pub baseline_per_s: Option<f64>,
    pub ratio: Option<f64>,
    pub latency_ms: Latency,
    pub rss_mib_max: Option<f64>,
    pub duplicates: u64,
    pub lost: u64,
    /// Herald's deliveries/s over its runs: [min, max].
    pub spread_per_s: Option<[f64; 2]>,
    pub baseline_spread_per_s: Option<[f64; 2]>,
    pub runs: usize,
    pub notes: String,
    pub detail: serde_json::Value,
}
