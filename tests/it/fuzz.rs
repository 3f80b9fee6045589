//! A property-based fuzz run of the live admin API (issue 14): schemathesis, from PyPI
//! in the virtualenv `deploy/local/fuzz-tools.sh` makes (`make test` runs it first),
//! against the application on a random port with the real broker and database, as the
//! admin and as a tenant. It generates requests from `docs/openapi.json` as served —
//! valid ones and broken ones — and fails on any 5xx and on any answer the document
//! does not describe (status, content type, body schema).

use std::path::Path;
use std::process::Command;

use reqwest::Method;
use serde_json::json;

use crate::common::receiver::Receiver;
use crate::common::TestEnv;
use crate::tenants::{Api, ADMIN};

fn schemathesis() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("deploy/local/fuzz-tools.sh"))
        .output()
        .expect("deploy/local/fuzz-tools.sh runs");
    assert!(
        out.status.success(),
        "installing schemathesis failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_get_no_server_error_and_only_documented_answers() {
    let schemathesis = schemathesis();
    let env = TestEnv::new().await;
    let receiver = Receiver::start().await;
    let app = env.start_ready().await;
    let api = Api::new(&app);
    let base = format!("http://{}", app.address());
    for who in ["admin", "tenant"] {
        // Something to find, made before each run: the admin's run deletes the
        // endpoints and revokes the tokens it finds.
        api.ok(
            Method::POST,
            "/endpoints",
            ADMIN,
            Some(json!({"url": receiver.url("/fuzz"), "event_types": ["sales.#"], "tenant_id": "acme"})),
        )
        .await;
        let token = match who {
            "admin" => ADMIN.to_string(),
            _ => api
                .ok(
                    Method::POST,
                    "/tokens",
                    ADMIN,
                    Some(json!({"tenant_id": "acme"})),
                )
                .await["token"]
                .as_str()
                .unwrap()
                .to_string(),
        };
        let mine = api.ok(Method::GET, "/endpoints", &token, None).await;
        assert!(
            !mine["data"].as_array().unwrap().is_empty(),
            "{who}: the token works"
        );
        let mut run = tokio::process::Command::new(&schemathesis);
        // Its caches (.schemathesis, .hypothesis) go under target/, not into the tree.
        run.current_dir(env!("CARGO_TARGET_TMPDIR")).args(["run", &format!("{base}/api/v1/openapi.json")])
            .args(["--url", &base])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            .args(["--phases", "examples,coverage,fuzzing"])
            // One worker: hypothesis parsing lambdas in two threads trips a CPython 3.11
            // bug ("AST constructor recursion depth mismatch").
            .args(["--max-examples", "8", "--seed", "7", "--workers", "1"])
            .args(["--request-timeout", "20", "--max-time", "45"])
            .args(["--no-color"])
            .kill_on_drop(true);
        let out = run.output().await.expect("schemathesis runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("schemathesis as {who}:\n{stdout}");
        assert!(
            out.status.success(),
            "schemathesis as {who} found failures:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    app.stop().await;
    env.cleanup().await;
}
