use crate::helpers::{FakeAgent, service, spawn_app};

#[tokio::test]
async fn restart_without_a_token_is_401() {
    let app = spawn_app().await;
    let response = app.post_restart("web", None, None, None, false).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
}

#[tokio::test]
async fn an_unknown_token_is_401() {
    let app = spawn_app().await;
    let response = app
        .post_restart("web", Some("baton_not-a-real-token"), None, None, false)
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(app.get("/services", Some("nope")).await.status(), 401);
}

#[tokio::test]
async fn a_viewer_may_read_but_not_restart() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "a", "boot-a", vec![service("web", 1)]).await;
    let response = app
        .post_restart("web", Some(&app.viewer), None, None, false)
        .await;
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("operator"));
    for path in [
        "/services",
        "/services/web",
        "/restarts",
        "/hosts",
        "/services/web/generations",
    ] {
        assert_eq!(
            app.get(path, Some(&app.viewer)).await.status(),
            200,
            "{path}"
        );
    }
}

#[tokio::test]
async fn reads_need_a_token_except_probes() {
    let app = spawn_app().await;
    for path in ["/services", "/restarts", "/hosts", "/restarts/1"] {
        assert_eq!(app.get(path, None).await.status(), 401, "{path}");
    }
    for path in ["/healthz", "/metrics", "/openapi.json"] {
        assert_eq!(app.get(path, None).await.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn an_agent_token_may_not_use_the_api_nor_others_the_link() {
    let app = spawn_app().await;
    assert_eq!(app.get("/services", Some(&app.agent)).await.status(), 403);
    let refused = crate::helpers::open_link(&app, &app.operator).await;
    assert!(
        refused.is_err(),
        "an operator token must not open the agent link"
    );
    let refused = crate::helpers::open_link(&app, "garbage").await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn an_operator_starts_a_restart() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "a", "boot-a", vec![service("web", 1)]).await;
    let response = app
        .post_restart("web", Some(&app.operator), None, None, false)
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(location, format!("/restarts/{}", body["id"]));
    assert_eq!(body["service"], "web");
    assert_eq!(body["state"], "running");
    assert_eq!(body["requested_by"], "ci");
    assert_eq!(body["hosts"][0]["host"], "a");
}

async fn revoke(app: &crate::helpers::TestApp, name: &str) -> u64 {
    baton_server::store::revoke_tokens(
        &app.db().await,
        baton_server::store::TokenSelector::Name(name),
    )
    .await
    .unwrap()
}

/// Polls `probe` until it returns true; the server rechecks tokens every
/// 200 ms in these tests.
async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !probe().await {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_revoked_token_stops_working_and_others_do_not() {
    let app = spawn_app().await;
    assert_eq!(app.get("/services", Some(&app.viewer)).await.status(), 200);
    assert_eq!(revoke(&app, "dashboard").await, 1);
    eventually("the revoked viewer token was still accepted", async || {
        app.get("/services", Some(&app.viewer)).await.status() == 401
    })
    .await;
    // The operator's token has another name and still works.
    assert_eq!(
        app.get("/services", Some(&app.operator)).await.status(),
        200
    );
    // Revoking again finds nothing live.
    assert_eq!(revoke(&app, "dashboard").await, 0);
}

#[tokio::test]
async fn revoking_the_agent_token_closes_the_link() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    assert_eq!(app.get_json("/hosts").await["hosts"][0]["online"], true);
    assert_eq!(revoke(&app, "agents").await, 1);
    eventually(
        "the link of a revoked agent token stayed open",
        async || app.get_json("/hosts").await["hosts"][0]["online"] == false,
    )
    .await;
    // And it cannot come back with it.
    let refused = crate::helpers::open_link(&app, &app.agent).await;
    assert!(refused.is_err(), "a revoked agent token opened a link");
}
