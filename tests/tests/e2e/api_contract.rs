//! The REST API's contract, checked from outside: schemathesis generates
//! requests from `/openapi.json` (valid ones, invalid ones, methods a path
//! does not have) against a real server with a real agent, and checks every
//! answer against the document: no 5xx, only documented statuses, headers and
//! bodies, invalid input refused, valid input accepted.

use baton_tests::AgentUnderTest;
use baton_tests::server::ServerUnderTest;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Fixed, so a finding is reproduced by running the test again.
const SEED: &str = "20261203";
/// Per operation and phase; enough to reach every constraint, small enough
/// to keep the test within a minute or two.
const MAX_EXAMPLES: &str = "50";

async fn wait_for_host(server: &ServerUnderTest) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hosts: serde_json::Value = server.get_json("/hosts").await;
        if hosts["hosts"][0]["online"] == true {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the host never came online: {hosts}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Warnings fail the run too, and what the schema cannot say.
fn config_file() -> &'static str {
    r#"
# Every warning fails the run but `validation_mismatch` ("most generated
# requests got 4xx"): a restart's answer depends on the fleet's state (which
# hosts run the service, whether a restart is running, how many hosts a
# canary may take), so most generated restarts are rightly refused, and
# schemathesis reads that warning's setting only here, for every operation.
warnings = { fail-on = ["missing_auth", "missing_test_data", "missing_deserializer", "unused_openapi_auth", "method_not_allowed"] }

# Which hosts run a service is the fleet's state, which no schema can
# declare: a restart the schema calls valid may still get the documented 422
# (say, for a host that does not run the service).
[[operations]]
include-path = "/services/{name}/restart"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]

# The agent link is for agent tokens: with the operator token every answer is
# the documented 403, which schemathesis would report as failed authentication.
[[operations]]
include-path = "/agent/v1/connect"
warnings = false

# A follow stream of a service's output ends only when its client leaves,
# which schemathesis never does once it finds the host and service; the
# endpoint is covered by the `server_logs` tests.
[[operations]]
include-path = "/hosts/{host}/services/{name}/logs"
enabled = false
"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_the_api() {
    let server = ServerUnderTest::start();
    let _agent = AgentUnderTest::start(&server.host_config("host-a", "127.0.0.1", "web", &[], ""));
    wait_for_host(&server).await;
    // One restart, so the restart and generation lists have something in them.
    server.restart_and_wait("web").await;

    // Its own folder, so nothing it writes lands in the checkout.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, config_file()).unwrap();
    let started = Instant::now();
    let run = tokio::process::Command::new("schemathesis")
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/openapi.json", server.url()))
        .args(["--checks", "all"])
        .args(["--seed", SEED])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--generation-database", "none"])
        .args(["--workers", "1"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", server.operator_token))
        .args(["--no-color"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("schemathesis ran for over 5 minutes")
        .unwrap_or_else(|e| {
            panic!(
                "cannot run schemathesis ({e}): it must be on PATH; \
                 install tests/requirements.txt (the README's test command does)"
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    println!("schemathesis took {:?}", started.elapsed());
    assert!(
        output.status.success(),
        "schemathesis found something ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // A run that tested nothing would pass too.
    let generated: u32 = stdout
        .lines()
        .find_map(|line| line.trim().split_once(" generated, "))
        .and_then(|(count, _)| count.parse().ok())
        .unwrap_or_else(|| panic!("no count of generated cases in:\n{stdout}"));
    assert!(generated >= 100, "only {generated} cases:\n{stdout}");
}
