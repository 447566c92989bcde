use crate::helpers::spawn_app;

#[tokio::test]
async fn openapi_lists_every_route() {
    let app = spawn_app().await;
    let document = app.get_json("/openapi.json").await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/services", "get"),
        ("/services/{name}", "get"),
        ("/services/{name}/generations", "get"),
        ("/services/{name}/restart", "post"),
        ("/restarts", "get"),
        ("/restarts/{id}", "get"),
        ("/hosts", "get"),
        ("/agent/v1/connect", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from /openapi.json"
        );
    }
    assert_eq!(
        paths.len(),
        11,
        "a route the test does not know: {:?}",
        paths.keys()
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let app = spawn_app().await;
    let response = app.get("/metrics", None).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for series in [
        "baton_restarts_total{outcome=\"succeeded\"} 0",
        "baton_restart_duration_seconds_bucket{le=\"+Inf\"} 0",
        "baton_agents_online 0",
        "baton_generations_draining 0",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}
