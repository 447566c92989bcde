//! A service's `env` cannot set what the agent sets for the protocol, nor
//! hold a name the environment cannot: `--check` refuses it with the file
//! and line, exit 64.

#[test]
fn check_refuses_env_keys_the_agent_sets_or_that_are_not_names() {
    let dir = tempfile::tempdir().unwrap();
    for (key, problem) in [
        ("NOTIFY_SOCKET", "reserved"),
        ("LISTEN_FDS", "reserved"),
        ("BATON_GENERATION", "reserved"),
        ("\"A=B\"", "not a variable name"),
        ("\"\"", "needs a name"),
    ] {
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "control_socket = \"{}\"\n\n[[service]]\nname = \"web\"\ncommand = [\"/bin/true\"]\n\n[service.env]\n{key} = \"x\"\n",
                dir.path().join("agent.sock").display()
            ),
        )
        .unwrap();
        let out = baton_tests::agent_check(&config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{key}: {stderr}");
        assert!(
            stderr.contains(&format!("{}:8", config.display())),
            "{key}: {stderr}"
        );
        assert!(stderr.contains(problem), "{key}: {stderr}");
    }
}
