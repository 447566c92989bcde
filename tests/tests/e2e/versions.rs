//! What each generation runs (issue "Versions"): a deploy through a
//! `current` symlink shows the release path, its identity and the version
//! the service declares, in the agent's status, its restart report, the
//! server's restart and generation history and `baton status`; a restart
//! of a build that never becomes ready says which version still serves,
//! and the build left on disk is flagged as what a crash restart would run.

use baton_proto::{RestartOutcome, ServiceName};
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, bin};
use std::path::Path;
use std::process::Command;

/// Points `link` at `target` atomically, as docs/deploy.md does.
pub(super) fn swap_symlink(link: &Path, target: &Path) {
    let fresh = link.with_extension("new");
    let _ = std::fs::remove_file(&fresh);
    std::os::unix::fs::symlink(target, &fresh).unwrap();
    std::fs::rename(&fresh, link).unwrap();
}

/// A release of a small Python service: it takes its socket from
/// `LISTEN_FDS`, declares its version on the notify socket with
/// `READY=1`, and answers every connection with the version. A broken
/// release declares its version and dies before it is ready.
pub(super) fn release(root: &Path, version: &str, broken: bool) {
    let folder = root.join("releases").join(version);
    std::fs::create_dir_all(&folder).unwrap();
    let body = if broken {
        "notify('X_BATON_VERSION=' + VERSION)\ntime.sleep(0.3)\nsys.exit('missing configuration')\n"
    } else {
        "notify('X_BATON_VERSION=' + VERSION + '\\nREADY=1')\n\
         signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n\
         listener = socket.socket(fileno=3)\n\
         while True:\n    \
             conn, _ = listener.accept()\n    \
             conn.sendall((VERSION + '\\n').encode())\n    \
             conn.close()\n"
    };
    std::fs::write(
        folder.join("app.py"),
        format!(
            "import os, signal, socket, sys, time\n\
             VERSION = '{version}'\n\
             def notify(text):\n    \
                 s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n    \
                 s.sendto(text.encode(), os.environ['NOTIFY_SOCKET'])\n\
             {body}"
        ),
    )
    .unwrap();
}

pub(super) fn service_block(current: &Path) -> String {
    format!(
        r#"
[[service]]
name = "app"
command = ["python3", "{app}"]
ready_timeout = "5s"
drain_timeout = "5s"

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        app = current.join("app.py").display()
    )
}

fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap().display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_shows_what_each_generation_runs_and_a_rollback_what_still_serves() {
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let current = root.join("current");
    release(root, "1.4.1", false);
    swap_symlink(&current, &root.join("releases/1.4.1"));
    let config = format!(
        "host = \"host-a\"\n{}{}",
        server.agent_section("host-a"),
        service_block(&current)
    );
    let agent = AgentUnderTest::start(&config);
    server.wait_for_hosts(1).await;

    let first = agent.service("app").generations[0].clone();
    let program = first.program.expect("what generation 1 runs");
    assert_eq!(program.version.as_deref(), Some("1.4.1"), "{program:?}");
    // The script, not the interpreter, is what tells releases apart; its
    // symlink resolved to the release's own path.
    assert_eq!(
        program.script.as_deref(),
        Some(canonical(&root.join("releases/1.4.1/app.py")).as_str())
    );
    assert!(
        program.script_id.as_deref().unwrap().starts_with("sha256:"),
        "{program:?}"
    );
    // The interpreter found on PATH is identified too (a build id, or the
    // hash of a wrapper script such as pyenv's shim).
    assert!(program.executable.contains("python"), "{program:?}");
    assert!(program.executable_id.is_some(), "{program:?}");
    assert_eq!(program.id(), program.script_id.as_deref());

    // Deploy 1.4.2: swap the symlink, restart through the server.
    release(root, "1.4.2", false);
    swap_symlink(&current, &root.join("releases/1.4.2"));
    let restart = server.restart_and_wait("app").await;
    assert_eq!(restart.outcome, Some(RestartOutcome::Succeeded));
    let detail = server
        .client(&server.viewer_token)
        .restart(restart.id)
        .await
        .unwrap();
    let versions = detail.hosts[0].versions.clone().expect("from → to");
    assert_eq!(versions.arrow(), "1.4.1 → 1.4.2", "{versions:?}");
    let serving = agent.service("app");
    assert_eq!(
        serving.generations[0]
            .program
            .as_ref()
            .unwrap()
            .version
            .as_deref(),
        Some("1.4.2")
    );
    let report = serving.last_restart.expect("the agent's report");
    assert_eq!(report.versions.unwrap().arrow(), "1.4.1 → 1.4.2");
    assert!(serving.next_start.is_none(), "{:?}", serving.next_start);

    // Deploy 1.4.3, a build that dies before it is ready: rolled back.
    release(root, "1.4.3", true);
    swap_symlink(&current, &root.join("releases/1.4.3"));
    let restart = server.restart_and_wait("app").await;
    assert_eq!(restart.outcome, Some(RestartOutcome::RolledBack));
    let detail = server
        .client(&server.viewer_token)
        .restart(restart.id)
        .await
        .unwrap();
    let host = &detail.hosts[0];
    assert_eq!(
        host.versions.as_ref().unwrap().arrow(),
        "1.4.2 → 1.4.3",
        "{host:?}"
    );
    let reason = host.outcome_reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("1.4.3 never became ready, 1.4.2 is still serving"),
        "{reason}"
    );

    // 1.4.2 serves on; the broken build stays on disk, and a crash restart
    // would start it.
    let status = agent.service("app");
    assert_eq!(
        status.generations[0]
            .program
            .as_ref()
            .unwrap()
            .version
            .as_deref(),
        Some("1.4.2")
    );
    let next = status
        .next_start
        .expect("a warning about the build on disk");
    assert!(next.rolled_back, "{next:?}");
    assert_eq!(
        next.warning(),
        "the next crash restart would run 1.4.3 (rolled back), not 1.4.2"
    );

    // The server's history has every version, the broken one included.
    let name = ServiceName::parse("app").unwrap();
    let page: baton_proto::api::GenerationPage = server
        .get_json(&format!("/services/{name}/generations"))
        .await;
    let mut versions: Vec<String> = page
        .generations
        .iter()
        .filter_map(|g| g.program.as_ref()?.version.clone())
        .collect();
    versions.sort();
    assert_eq!(versions, ["1.4.1", "1.4.2", "1.4.3"], "{page:#?}");

    // The warning reaches the server with the next status.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let service = server
            .client(&server.viewer_token)
            .service(&name)
            .await
            .unwrap();
        if service.hosts[0].next_start.is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{service:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // `baton status`, on the agent and through the server.
    for front_door in [
        vec!["--agent".to_string(), agent.socket.display().to_string()],
        vec!["--server".to_string(), server.url()],
    ] {
        let out = Command::new(bin("baton"))
            .args(&front_door)
            .arg("status")
            .env_remove("BATON_SERVER")
            .env("BATON_TOKEN", &server.viewer_token)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("VERSION"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("app") && l.contains("1.4.2")),
            "{text}"
        );
        assert!(
            text.contains("the next crash restart would run 1.4.3 (rolled back), not 1.4.2"),
            "{text}"
        );
    }

    // Back to 1.4.2 on disk: nothing to warn about.
    swap_symlink(&current, &root.join("releases/1.4.2"));
    assert!(agent.service("app").next_start.is_none());
}

#[test]
fn a_binary_deployed_through_a_symlink_shows_its_release_path_and_build_id() {
    let deploy = tempfile::tempdir().unwrap();
    let releases = deploy.path().join("releases");
    for release in ["1.4.2", "1.4.3"] {
        std::fs::create_dir_all(releases.join(release)).unwrap();
        std::fs::copy(bin("baton-demo"), releases.join(release).join("web")).unwrap();
    }
    let current = deploy.path().join("current");
    swap_symlink(&current, &releases.join("1.4.2"));
    let agent = AgentUnderTest::start(&baton_testkit::demo_service(
        &current.join("web"),
        "web",
        &[],
        "version_env = \"APP_VERSION\"\nenv = { APP_VERSION = \"1.4.2\" }",
    ));
    let old = agent.service("web").generations[0].program.clone().unwrap();
    assert_eq!(old.executable, canonical(&releases.join("1.4.2/web")));
    assert_eq!(old.version.as_deref(), Some("1.4.2"));
    let build_id = old.executable_id.clone().unwrap();
    assert!(build_id.starts_with("build-id:"), "{old:?}");
    assert!(old.script.is_none(), "{old:?}");

    swap_symlink(&current, &releases.join("1.4.3"));
    let (events, report) = agent.restart("web");
    assert_eq!(report.outcome, Some(RestartOutcome::Succeeded));
    let new = agent.service("web").generations[0].program.clone().unwrap();
    assert_eq!(new.executable, canonical(&releases.join("1.4.3/web")));
    // A copy of the same build: the same build id, another release.
    assert_eq!(new.executable_id.as_deref(), Some(build_id.as_str()));
    let change = report.versions.expect("from → to");
    assert_eq!(change.from.unwrap().executable, old.executable);
    assert_eq!(change.to.unwrap().executable, new.executable);
    // It survives the agent's upgrade in place (SIGUSR2).
    agent.signal(nix::sys::signal::Signal::SIGUSR2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !agent
        .log()
        .contains("every socket and generation carried over")
    {
        assert!(std::time::Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    agent.wait_for(
        "the upgraded agent answering",
        std::time::Duration::from_secs(20),
        |status| status.services.iter().any(|s| s.name == "web"),
    );
    let upgraded = agent.service("web");
    assert_eq!(upgraded.generations[0].program.as_ref(), Some(&new));
    assert!(upgraded.next_start.is_none(), "{:?}", upgraded.next_start);
    // The spawned and ready events carry it too.
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        baton_proto::EventKind::GenerationReady { program: Some(p), .. } if p.executable == new.executable
    )));
}
