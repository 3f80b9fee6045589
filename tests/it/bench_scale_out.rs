//! The scale-out benchmark scenario on tiny numbers (`herald-bench --scenarios
//! scale-out --mode tiny`): one and two Herald processes of each of the roles ingest
//! and deliver against the three-node cluster of `make cluster`, nothing lost, and
//! `results.json` has both rows with the 1 + 1 baseline. It needs the cluster, which
//! `make test` does not start: ignored there, run by `make cluster-test`; run that
//! way, a cluster that is not there fails it loudly.

use crate::bench_smoke::run_tiny;

#[test]
#[ignore = "needs `make cluster`; run by `make cluster-test`"]
fn scale_out_scenario_runs_one_and_two_of_each_role_on_the_cluster() {
    let (results, text) = run_tiny("scale-out", "scale");
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
}
