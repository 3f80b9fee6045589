//! The benchmark tool on tiny numbers, so that `make bench` cannot rot: one Herald run
//! and one baseline run of the steady, fan-out and latency scenarios, a small redrive
//! and a small replay, against the real services; nothing lost, and `results.json` has
//! every field the report promises.

use std::process::Command;

/// Runs `herald-bench --mode tiny --scenarios <scenarios>` on a database and results
/// file of its own, bounded in time (a run that hangs fails rather than holding the
/// suite); asserts it succeeded and returns `results.json`, and its text for messages.
pub fn run_tiny(scenarios: &str, tag: &str) -> (serde_json::Value, String) {
    let dir = std::env::temp_dir().join(format!("herald-bench-{tag}-{}", std::process::id()));
    let json = dir.join("results.json");
    let database = format!("herald_bench_{tag}_{}", std::process::id());
    let output = Command::new("timeout")
        .args(["--kill-after=10", "300", env!("CARGO_BIN_EXE_herald-bench")])
        .args(["--mode", "tiny", "--scenarios", scenarios, "--database"])
        .arg(&database)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("herald-bench starts");
    assert!(
        output.status.success(),
        "herald-bench failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("results.json written");
    let results = serde_json::from_str(&text).expect("results.json is JSON");
    let _ = std::fs::remove_dir_all(&dir);
    (results, text)
}

#[test]
fn bench_tool_runs_tiny_scenarios_and_writes_results() {
    let (results, text) = run_tiny("steady,fanout,latency,redrive,replay", "smoke");
    let scenarios = results["scenarios"].as_array().expect("scenarios array");
    assert_eq!(scenarios.len(), 5, "{text}");
    for s in scenarios {
        for field in [
            "name",
            "deliveries",
            "seconds",
            "deliveries_per_s",
            "baseline_per_s",
            "ratio",
            "latency_ms",
            "rss_mib_max",
            "duplicates",
            "lost",
        ] {
            assert!(s.get(field).is_some(), "{field} missing in {s}");
        }
        for p in ["p50", "p90", "p99", "max"] {
            assert!(s["latency_ms"][p].is_number(), "latency_ms.{p} in {s}");
        }
        assert_eq!(s["lost"], 0, "{s}");
        assert!(s["deliveries"].as_u64().unwrap_or(0) > 0, "{s}");
        if s["name"] == "redrive" || s["name"] == "replay" {
            // Compared with live traffic alone, not with the relay.
            assert_eq!(s["detail"]["job"]["state"], "done", "{s}");
            assert!(
                s["detail"]["live_latency_before_ms"]["p99"].is_number(),
                "{s}"
            );
        } else {
            assert!(s["baseline_per_s"].is_number(), "{s}");
        }
        if s["name"] == "latency" {
            // The relay at the same offered rate in the same invocation.
            assert!(s["detail"]["relay_latency_ms"]["p99"].is_number(), "{s}");
            assert!(s["detail"]["p99_ratio"].is_number(), "{s}");
            assert_eq!(s["detail"]["baseline_lost"], 0, "{s}");
        }
    }
}

/// The `features` scenario on tiny numbers: every variant (plain, each endpoint option,
/// all of them) delivers everything with valid signatures — sealed secrets included —
/// and reports its rate and its ratio to the plain run.
#[test]
fn bench_features_scenario_runs_every_variant_and_reports_each_ratio() {
    let (results, text) = run_tiny("features", "features");
    let row = &results["scenarios"][0];
    assert_eq!(row["name"], "features", "{text}");
    assert_eq!(row["lost"], 0, "{row}");
    let variants: Vec<&str> = row["detail"]["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .map(|v| v["variant"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        variants,
        ["plain", "tenant", "filter", "headers", "sealed", "all"]
    );
    for v in row["detail"]["variants"].as_array().unwrap() {
        assert!(v["median_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
        assert!(
            v["pair_ratio_to_plain"].as_f64().unwrap_or(0.0) > 0.0,
            "{v}"
        );
    }
}

/// The growth scenario on a tiny history (4,000 deliveries seeded into a database of
/// its own, dropped after): both sides run, nothing lost, and every list query of the
/// admin API answered with figures.
#[test]
fn bench_tool_runs_the_growth_scenario_on_a_tiny_history() {
    /// herald-bench names the history after its own database and keeps it; this drops
    /// it however the run ends.
    struct DropHistory(String);
    impl Drop for DropHistory {
        fn drop(&mut self) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let base = herald::testkit::database_base_url();
            if let Err(error) = runtime.block_on(herald::testkit::database::drop(&base, &self.0)) {
                eprintln!("dropping {}: {error}", self.0);
            }
        }
    }
    let tag = "growth";
    let _history = DropHistory(format!(
        "herald_bench_{tag}_{}_growth_4000",
        std::process::id()
    ));
    let (results, text) = run_tiny("growth", tag);
    let growth = &results["scenarios"][0];
    assert_eq!(growth["name"], "growth", "{text}");
    assert_eq!(growth["lost"], 0, "{growth}");
    assert!(growth["ratio"].is_number(), "{growth}");
    assert_eq!(growth["detail"]["seeded"]["deliveries"], 4000, "{growth}");
    let lists = growth["detail"]["lists"].as_array().expect("lists");
    assert!(lists.len() >= 20, "{growth}");
    for list in lists {
        assert!(list["samples"].as_u64().unwrap_or(0) > 0, "{list}");
        assert!(list["latency_ms"]["p99"].is_number(), "{list}");
    }
}
