//! `baton` against a local agent: every step printed, exit codes by outcome.

use baton_tests::{AgentUnderTest, bin, demo_service_args};
use std::process::Command;

fn baton(agent: &AgentUnderTest, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin("baton"))
        .arg("--agent")
        .arg(&agent.socket)
        .args(args)
        .env_remove("BATON_SERVER")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn restart_wait_prints_each_step_and_exits_by_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    let agent = AgentUnderTest::start(&demo_service_args(
        "web",
        &["--mode-file", mode.to_str().unwrap()],
        "ready_timeout = \"2s\"\ndrain_timeout = \"700ms\"",
    ));

    let (code, stdout, stderr) = baton(&agent, &["restart", "web", "--wait"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let steps: Vec<&str> = stdout.lines().collect();
    for expected in [
        "restart 1 of web started",
        "generation 2 spawned",
        "generation 2 ready",
        "generation 1 draining",
        "generation 1 exited",
        "restart succeeded",
    ] {
        assert!(
            steps.iter().any(|l| l.contains(expected)),
            "{expected:?} missing:\n{stdout}"
        );
    }

    std::fs::write(&mode, "crash").unwrap();
    let (code, stdout, _) = baton(&agent, &["restart", "web", "--wait"]);
    assert_eq!(code, Some(2), "rolled back:\n{stdout}");

    // Modes apply when a generation starts: start one that ignores SIGTERM,
    // then replace it.
    std::fs::write(&mode, "ignore-sigterm").unwrap();
    let (code, stdout, _) = baton(&agent, &["restart", "web", "--wait"]);
    assert_eq!(code, Some(0), "{stdout}");
    std::fs::write(&mode, "normal").unwrap();
    let (code, stdout, _) = baton(&agent, &["restart", "web", "--wait"]);
    assert_eq!(code, Some(3), "forced:\n{stdout}");
    assert!(stdout.contains("killed at the drain deadline"), "{stdout}");

    std::fs::write(&mode, "slow:1500").unwrap();
    let (code, _, stderr) = baton(&agent, &["restart", "web", "--wait", "--timeout", "300ms"]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("still running"), "{stderr}");

    let (code, stdout, _) = baton(&agent, &["status"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("web"), "{stdout}");
    let (code, stdout, _) = baton(&agent, &["show", "1"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.starts_with("restart 1 of web: succeeded"),
        "{stdout}"
    );
    let (code, stdout, _) = baton(&agent, &["events"]);
    assert_eq!(code, Some(0));
    assert!(stdout.lines().count() > 10, "{stdout}");
}
