use crate::helpers::spawn_app;

#[tokio::test]
async fn the_served_document_is_the_one_generated_from_the_types() {
    let app = spawn_app().await;
    let document = app.get_json("/openapi.json").await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(
        document,
        serde_json::from_slice::<serde_json::Value>(&baton_server::openapi::json()).unwrap()
    );
    // The links utoipa cannot write, added to what it generated.
    let mut generated = serde_json::to_value(baton_server::openapi::document()).unwrap();
    let links = document
        .pointer("/paths/~1services/get/responses/200/links")
        .expect("GET /services links its entries")
        .clone();
    assert_eq!(links["service"]["operationId"], "service");
    generated
        .pointer_mut("/paths/~1services/get/responses/200")
        .unwrap()
        .as_object_mut()
        .unwrap()
        .insert("links".into(), links);
    assert_eq!(document, generated);
    let generation = &document["components"]["schemas"]["GenerationInfo"]["properties"];
    assert!(generation.get("main_pid").is_some(), "{generation}");
}

#[tokio::test]
async fn a_method_a_path_does_not_have_is_405_with_allow_and_a_json_error() {
    let app = spawn_app().await;
    for (method, path, allow) in [
        ("TRACE", "/services", "GET"),
        ("DELETE", "/services/web", "GET"),
        ("GET", "/services/web/restart", "POST"),
        ("PUT", "/restarts/1", "GET"),
        ("POST", "/healthz", "GET"),
    ] {
        let response = app
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", app.address),
            )
            .bearer_auth(&app.operator)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(method),
            "{method} {path}: {body}"
        );
    }
    let response = app
        .client
        .request(
            reqwest::Method::TRACE,
            format!("{}/no/such/route", app.address),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
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
        "baton_database_writable 1",
        "baton_database_write_probe_timestamp_seconds ",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}
