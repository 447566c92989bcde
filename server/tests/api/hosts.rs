use baton_proto::RestartOutcome;
use std::time::Duration;
use tokio::process::Command;

use crate::helpers::{FakeAgent, TestApp, service, spawn_app, spawn_app_with};

async fn delete_host(app: &TestApp, name: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app.client.delete(format!("{}/hosts/{name}", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn host_names(app: &TestApp) -> Vec<String> {
    let hosts = app.get_json("/hosts").await;
    hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_operator_forgets_an_offline_host_and_nobody_else_may() {
    let app = spawn_app().await;
    let alpha = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let _beta = FakeAgent::connect(&app, "beta", "boot-1", vec![service("web", 1)]).await;

    assert_eq!(delete_host(&app, "alpha", None).await.status(), 401);
    assert_eq!(
        delete_host(&app, "alpha", Some(&app.viewer)).await.status(),
        403
    );
    assert_eq!(
        delete_host(&app, "alpha", Some(&app.agent)).await.status(),
        403
    );
    // A connected host would only come back: refused.
    let connected = delete_host(&app, "alpha", Some(&app.operator)).await;
    assert_eq!(connected.status(), 409);
    let body: serde_json::Value = connected.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("connected"),
        "{body}"
    );

    alpha.close().await;
    app.wait_offline("alpha").await;
    assert_eq!(
        delete_host(&app, "alpha", Some(&app.operator))
            .await
            .status(),
        204
    );
    assert_eq!(host_names(&app).await, ["beta"]);
    let web = app.get_json("/services/web").await;
    assert_eq!(web["hosts"].as_array().unwrap().len(), 1, "{web}");
    assert_eq!(
        delete_host(&app, "alpha", Some(&app.operator))
            .await
            .status(),
        404
    );
    assert_eq!(
        delete_host(&app, "nobody", Some(&app.operator))
            .await
            .status(),
        404
    );
    assert_eq!(
        delete_host(&app, ".hidden", Some(&app.operator))
            .await
            .status(),
        422
    );

    // Forgotten for good: not back after a server restart.
    let app = app.restart_server().await;
    assert_eq!(host_names(&app).await, ["beta"]);
}

#[tokio::test]
async fn a_host_offline_for_longer_than_the_limit_is_forgotten_on_its_own() {
    let app = spawn_app_with(|settings| {
        settings.housekeeping.forget_offline_hosts_after = Duration::from_millis(300);
        settings.housekeeping.interval = Duration::from_millis(100);
    })
    .await;
    let alpha = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let _beta = FakeAgent::connect(&app, "beta", "boot-1", vec![service("web", 1)]).await;
    alpha.close().await;
    for _ in 0..100 {
        if host_names(&app).await == ["beta"] {
            // beta is connected the whole time: never forgotten.
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(host_names(&app).await, ["beta"]);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("alpha was never forgotten: {:?}", host_names(&app).await);
}

/// Runs `baton-server host forget` without blocking the test's runtime,
/// which also runs the server: a status write it holds open must finish.
async fn host_forget(app: &TestApp, name: &str) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_baton-server"))
        .args(["host", "forget", name, "--database"])
        .arg(&app.database)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[tokio::test]
async fn host_forget_removes_an_offline_host_and_refuses_a_connected_or_unknown_one() {
    let app = spawn_app_with(|settings| {
        settings.housekeeping.interval = Duration::from_millis(100);
    })
    .await;
    let alpha = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let _beta = FakeAgent::connect(&app, "beta", "boot-1", vec![service("web", 1)]).await;

    let (code, text) = host_forget(&app, "alpha").await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("connected"), "{text}");
    let (code, text) = host_forget(&app, "nobody").await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no host is named nobody"), "{text}");

    alpha.close().await;
    app.wait_offline("alpha").await;
    let (code, text) = host_forget(&app, "alpha").await;
    assert_eq!(code, Some(0), "{text}");
    // The running server drops it from its picture at its next round.
    for _ in 0..100 {
        if host_names(&app).await == ["beta"] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server still lists alpha: {:?}", host_names(&app).await);
}

#[tokio::test]
async fn a_rollout_skips_a_host_offline_for_longer_than_the_grace_and_succeeds_on_the_others() {
    let app = spawn_app().await;
    let mut a = FakeAgent::connect(&app, "a", "boot-1", vec![service("web", 1)]).await;
    let b = FakeAgent::connect(&app, "b", "boot-1", vec![service("web", 1)]).await;
    let mut c = FakeAgent::connect(&app, "c", "boot-1", vec![service("web", 1)]).await;
    b.close().await;
    app.wait_offline("b").await;
    // The test server's grace is 2 s.
    tokio::time::sleep(Duration::from_millis(2_200)).await;

    let id = app.start_restart("web").await;
    a.serve_restart("web", 1, RestartOutcome::Succeeded).await;
    c.serve_restart("web", 1, RestartOutcome::Succeeded).await;
    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "succeeded", "{restart:#}");
    let hosts = restart["hosts"].as_array().unwrap();
    assert_eq!(hosts[0]["outcome"], "succeeded");
    assert_eq!(hosts[1]["host"], "b");
    assert_eq!(hosts[1]["state"], "skipped");
    assert_eq!(hosts[1]["outcome_reason"], "offline");
    assert!(hosts[1]["outcome"].is_null(), "{restart:#}");
    assert_eq!(hosts[2]["outcome"], "succeeded");
}

#[tokio::test]
async fn a_rollout_whose_every_host_is_long_offline_fails() {
    let app = spawn_app().await;
    let a = FakeAgent::connect(&app, "a", "boot-1", vec![service("web", 1)]).await;
    a.close().await;
    app.wait_offline("a").await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let id = app.start_restart("web").await;
    let restart = app.wait_restart(id).await;
    assert_eq!(restart["outcome"], "failed", "{restart:#}");
    assert_eq!(restart["outcome_reason"], "every host was offline");
    assert_eq!(restart["hosts"][0]["state"], "skipped");
    assert_eq!(restart["hosts"][0]["outcome_reason"], "offline");
}
