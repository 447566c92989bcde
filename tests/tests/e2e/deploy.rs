//! docker-compose.yml cannot run here (no Docker engine), but it must parse,
//! and the agent configs it mounts must be valid.

use std::path::Path;
use std::process::Command;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn the_compose_file_parses() {
    let compose = workspace().join("docker-compose.yml");
    let out = Command::new("docker-compose")
        .args(["-f"])
        .arg(&compose)
        .args(["config", "--quiet"])
        .output()
        .expect(
            "docker-compose is not on PATH: run the tests with ./scripts/test, which installs it",
        );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_agent_configs_of_the_compose_file_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "token\n").unwrap();
    for n in [1, 2] {
        let source = workspace().join(format!("deploy/agent-{n}.toml"));
        let text = std::fs::read_to_string(&source).unwrap();
        // One token per host: the compose file creates /data/agent-N.token.
        let token_file = format!("/data/agent-{n}.token");
        assert!(text.contains(&token_file));
        // The token file exists only inside the containers.
        let config = dir.path().join(format!("agent-{n}.toml"));
        std::fs::write(&config, text.replace(&token_file, token.to_str().unwrap())).unwrap();
        let out = baton_tests::agent_check(&config);
        assert!(
            out.status.success(),
            "{}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
