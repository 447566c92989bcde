use crate::helpers::{FakeAgent, service, spawn_app};

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "a", "boot-a", vec![service("web", 1)]).await;
    for body in ["{", "[1,2]", r#"{"reason": 5}"#, r#"{"resaon": "typo"}"#] {
        let response = app
            .post_restart("web", Some(&app.operator), Some(body), None, false)
            .await;
        assert_eq!(response.status(), 400, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().contains("JSON"), "{error}");
    }
}

#[tokio::test]
async fn a_rollout_value_out_of_bounds_is_400_naming_its_field() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "a", "boot-a", vec![service("web", 1)]).await;
    for (body, field) in [
        (r#"{"max_parallel": 0}"#, "max_parallel"),
        (r#"{"max_parallel": "0%"}"#, "max_parallel"),
        (r#"{"max_parallel": "150%"}"#, "max_parallel"),
        (r#"{"canary": -1}"#, "canary"),
        (r#"{"canary": 1, "pause": "25h"}"#, "pause"),
        (r#"{"canary": 1, "pause": "soon"}"#, "pause"),
        (r#"{"failure_budget": 0.5}"#, "failure_budget"),
    ] {
        let response = app
            .post_restart("web", Some(&app.operator), Some(body), None, false)
            .await;
        assert_eq!(response.status(), 400, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(message.contains(&format!("{field}: ")), "{body}: {message}");
    }
    // Nothing was started: a valid policy starts the first restart.
    let response = app
        .post_restart(
            "web",
            Some(&app.operator),
            Some(r#"{"max_parallel": "10%", "canary": 1, "pause": "1s", "failure_budget": 2}"#),
            None,
            false,
        )
        .await;
    assert_eq!(response.status(), 202);
    let restart: serde_json::Value = response.json().await.unwrap();
    assert_eq!(restart["id"], 1);
    assert_eq!(restart["max_parallel"], 1);
    assert_eq!(
        restart["rollout"],
        serde_json::json!({"max_parallel": "10%", "canary": 1, "pause": "1s", "failure_budget": 2})
    );
}

#[tokio::test]
async fn a_too_large_body_is_413() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "a", "boot-a", vec![service("web", 1)]).await;
    let body = format!(r#"{{"reason": "{}"}}"#, "x".repeat(20_000));
    let response = app
        .post_restart("web", Some(&app.operator), Some(&body), None, false)
        .await;
    assert_eq!(response.status(), 413);
    let error: serde_json::Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("larger"));
}

#[tokio::test]
async fn an_unknown_service_is_404() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "a", "boot-a", vec![service("web", 1)]).await;
    let response = app
        .post_restart("nope", Some(&app.operator), None, None, false)
        .await;
    assert_eq!(response.status(), 404);
    let error: serde_json::Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("nope"));
    assert_eq!(
        app.get("/services/nope", Some(&app.viewer)).await.status(),
        404
    );
    assert_eq!(
        app.get("/restarts/999", Some(&app.viewer)).await.status(),
        404
    );
    assert_eq!(
        app.get("/no/such/route", Some(&app.viewer)).await.status(),
        404
    );
}

#[tokio::test]
async fn invalid_names_and_values_are_422() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "a", "boot-a", vec![service("web", 1)]).await;
    for name in [".hidden", "a%20b", &"x".repeat(65)] {
        let response = app
            .post_restart(name, Some(&app.operator), None, None, false)
            .await;
        assert_eq!(response.status(), 422, "{name}");
    }
    for body in [
        r#"{"pause": "5s"}"#,
        r#"{"hosts": []}"#,
        r#"{"hosts": ["b"]}"#,
        r#"{"hosts": ["../etc"]}"#,
    ] {
        let response = app
            .post_restart("web", Some(&app.operator), Some(body), None, false)
            .await;
        assert_eq!(response.status(), 422, "{body}");
    }
    let response = app.get("/restarts?outcome=great", Some(&app.viewer)).await;
    assert_eq!(response.status(), 422);
    let response = app.get("/restarts?limit=abc", Some(&app.viewer)).await;
    assert_eq!(response.status(), 400);
}
