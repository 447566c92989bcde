//! docker-compose.yml cannot run here (no Docker engine), but it must parse,
//! with and without its `replicas` profile, the agent configs it mounts must
//! be valid, and HAProxy must accept the load balancer's config.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `docker-compose [--profile P] config`: the file as Compose reads it.
fn compose_config(profile: Option<&str>) -> String {
    let compose = workspace().join("docker-compose.yml");
    let mut command = Command::new("docker-compose");
    command.arg("-f").arg(&compose);
    if let Some(profile) = profile {
        command.args(["--profile", profile]);
    }
    let out = command.arg("config").output().expect(
        "docker-compose is not on PATH: run the tests with ./scripts/test, which installs it",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One service's block of `docker-compose config`'s output, which puts
/// each service at two spaces under `services:` and its keys at four.
fn service(config: &str, name: &str) -> String {
    let header = format!("  {name}:");
    let mut lines = config
        .lines()
        .skip_while(|line| *line != "services:")
        .skip_while(|line| *line != header);
    assert!(lines.next().is_some(), "no service {name} in:\n{config}");
    lines
        .take_while(|line| line.starts_with("    "))
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn the_compose_file_parses() {
    compose_config(None);
}

#[test]
fn the_default_profile_is_one_server_on_sqlite() {
    let config = compose_config(None);
    let server = service(&config, "server");
    assert!(
        server.contains("- --database\n    - /data/baton.db\n"),
        "{server}"
    );
    for name in ["init", "server", "agent-1", "agent-2"] {
        assert!(
            !service(&config, name).contains("profiles:"),
            "{name} must start without a profile"
        );
    }
}

#[test]
fn the_replicas_profile_runs_postgresql_two_servers_and_a_load_balancer() {
    let config = compose_config(Some("replicas"));
    let in_profile = "profiles:\n    - replicas\n";

    let postgres = service(&config, "postgres");
    assert!(postgres.contains("image: postgres:"), "{postgres}");
    assert!(postgres.contains("pg_isready"), "{postgres}");
    assert!(
        postgres.contains("- pgdata:/var/lib/postgresql/data"),
        "{postgres}"
    );
    assert!(postgres.contains(in_profile), "{postgres}");
    assert!(config.contains("\nvolumes:\n") && config.contains("\n  pgdata: {}\n"));

    for name in ["server-1", "server-2"] {
        let server = service(&config, name);
        assert!(
            server.contains("- --database\n    - postgres://"),
            "{server}"
        );
        assert!(server.contains(in_profile), "{server}");
        assert!(server.contains("condition: service_healthy"), "{server}");
    }

    let lb = service(&config, "lb");
    assert!(lb.contains("image: haproxy:"), "{lb}");
    assert!(
        lb.contains("deploy/replicas/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"),
        "{lb}"
    );
    assert!(lb.contains(in_profile), "{lb}");

    for n in [1, 2] {
        let agent = service(&config, &format!("replica-agent-{n}"));
        assert!(
            agent.contains(&format!(
                "deploy/replicas/agent-{n}.toml:/etc/baton/agent.toml"
            )),
            "{agent}"
        );
        assert!(agent.contains(in_profile), "{agent}");
    }
}

/// Every agent config the compose file mounts, with the token file each
/// names (created inside the containers).
fn compose_agent_configs() -> Vec<(PathBuf, String)> {
    let mut configs = Vec::new();
    for n in [1, 2] {
        configs.push((
            workspace().join(format!("deploy/agent-{n}.toml")),
            format!("/data/agent-{n}.token"),
        ));
        configs.push((
            workspace().join(format!("deploy/replicas/agent-{n}.toml")),
            format!("/data/replica-agent-{n}.token"),
        ));
    }
    configs
}

#[test]
fn the_agent_configs_of_the_compose_file_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "token\n").unwrap();
    for (index, (source, token_file)) in compose_agent_configs().into_iter().enumerate() {
        let text = std::fs::read_to_string(&source).unwrap();
        // One token per host: the compose file creates each.
        assert!(text.contains(&token_file), "{}", source.display());
        // The token file exists only inside the containers.
        let config = dir.path().join(format!("agent-{index}.toml"));
        std::fs::write(&config, text.replace(&token_file, token.to_str().unwrap())).unwrap();
        let out = baton_tests::agent_check(&config);
        assert!(
            out.status.success(),
            "{}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The replicas' agents try both servers.
    for n in [1, 2] {
        let text =
            std::fs::read_to_string(workspace().join(format!("deploy/replicas/agent-{n}.toml")))
                .unwrap();
        assert!(
            text.contains("urls = [\"http://server-1:8080\", \"http://server-2:8080\"]"),
            "{text}"
        );
    }
}

#[test]
fn haproxy_accepts_the_load_balancers_config() {
    let file = workspace().join("deploy/replicas/haproxy.cfg");
    let haproxy = ["/usr/sbin/haproxy", "haproxy"]
        .into_iter()
        .find(|path| {
            Command::new(path)
                .arg("-v")
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .expect("haproxy is not installed: run the tests with ./scripts/test, which installs it");
    let out = Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    // Its servers' names resolve only inside Compose's network: a warning
    // here, never an error.
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    // HTTP mode passes WebSocket upgrades through; an upgraded link lives
    // by `timeout tunnel`, not the short HTTP timeouts.
    assert!(text.contains("mode http") && text.contains("timeout tunnel"));
    for server in ["server-1:8080", "server-2:8080"] {
        assert!(text.contains(server), "{server}");
    }
}
