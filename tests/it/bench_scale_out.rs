//! The scale-out benchmark scenario on tiny numbers (`herald-bench --scenarios
//! scale-out --mode tiny`): one and two Herald processes of each of the roles ingest
//! and deliver against the three-node cluster of `make cluster`, nothing lost, and
//! `results.json` has both rows with the 1 + 1 baseline. It needs the cluster, which
//! `make test` does not start: ignored there, run by `make cluster-test`; run that
//! way, a cluster that is not there fails it loudly.

use std::process::Command;

#[test]
#[ignore = "needs `make cluster`; run by `make cluster-test`"]
fn scale_out_scenario_runs_one_and_two_of_each_role_on_the_cluster() {
    let dir = std::env::temp_dir().join(format!("herald-bench-scale-{}", std::process::id()));
    let json = dir.join("results.json");
    let database = format!("herald_bench_scale_{}", std::process::id());
    // Bounded: a run that hangs fails here rather than holding the whole suite.
    let output = Command::new("timeout")
        .args(["--kill-after=10", "300", env!("CARGO_BIN_EXE_herald-bench")])
        .args(["--mode", "tiny", "--scenarios", "scale-out", "--database"])
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
    let results: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    let scenarios = results["scenarios"].as_array().expect("scenarios array");
    let names: Vec<&str> = scenarios
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["scale-out-throughput", "scale-out-latency"],
        "{text}"
    );
    for s in scenarios {
        assert_eq!(s["lost"], 0, "{s}");
        assert_eq!(s["duplicates"], 0, "{s}");
        assert_eq!(s["detail"]["baseline_lost"], 0, "{s}");
        assert_eq!(s["detail"]["cluster_nodes"], 3, "{s}");
        assert!(s["baseline_per_s"].is_number(), "{s}");
        assert!(s["latency_ms"]["p99"].is_number(), "{s}");
        assert!(s["detail"]["baseline_latency_ms"]["p99"].is_number(), "{s}");
        assert!(
            s["detail"]["rss_mib_max"]["two_each"]["deliver"].is_number(),
            "{s}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
