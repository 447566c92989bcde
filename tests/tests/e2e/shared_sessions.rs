//! Two real `baton-server` processes on one database (a SQLite file, and a
//! PostgreSQL database: every test runs on both) serve one signed-in
//! person: the session made on one is good on the other (its pages, a form
//! with its CSRF token), signing out on one ends it on both, and it outlives
//! a server's restart. An `Idempotency-Key` used on one server names the
//! same restart on the other.

use baton_proto::RestartOutcome;
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, demo_service, on_both_engines};
use reqwest::StatusCode;
use reqwest::header;
use std::time::{Duration, Instant};

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get_page(server: &ServerUnderTest, path: &str, cookie: &str) -> reqwest::Response {
    browser()
        .get(format!("{}{path}", server.url()))
        .header(header::ACCEPT, "text/html")
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap()
}

async fn post_form(
    server: &ServerUnderTest,
    path: &str,
    cookie: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    browser()
        .post(format!("{}{path}", server.url()))
        .header(header::ACCEPT, "text/html")
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form_body(form))
        .send()
        .await
        .unwrap()
}

fn form_body(fields: &[(&str, &str)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    fields
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

fn csrf_token(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a form with a CSRF token") + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

fn location(response: &reqwest::Response) -> String {
    response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned()
}

/// An agent for `host` running `web`, linked to `server` only.
fn agent_of(server: &ServerUnderTest, host: &str) -> AgentUnderTest {
    let agent = AgentUnderTest::start(&format!(
        "host = \"{host}\"\n{}{}",
        server.agent_section(host),
        demo_service("web", "")
    ));
    agent.wait_for("a link to the server", Duration::from_secs(20), |status| {
        status.server_link.as_ref().is_some_and(|link| link.linked)
    });
    agent
}

on_both_engines!(
    a_person_signed_in_on_one_server_uses_the_dashboard_on_another,
    revoking_a_token_ends_its_sessions_on_every_server,
    an_idempotency_key_names_the_same_restart_on_every_server,
);

async fn a_person_signed_in_on_one_server_uses_the_dashboard_on_another(
    mut first: ServerUnderTest,
) {
    let second = first.replica();
    let _agent = agent_of(&second, "alpha");
    second.wait_for_hosts(1).await;

    let cookie = first.dashboard_session(&first.operator_token).await;
    let overview = get_page(&first, "/", &cookie).await;
    assert_eq!(overview.status(), StatusCode::OK);
    let csrf = csrf_token(&overview.text().await.unwrap());

    // The other server knows the session: its pages, and a form sent with
    // the token the first server's page carried.
    let service = get_page(&second, "/services/web", &cookie).await;
    assert_eq!(service.status(), StatusCode::OK);
    let service = service.text().await.unwrap();
    assert!(service.contains("test-operator"), "{service}");
    assert_eq!(csrf_token(&service), csrf, "one CSRF token per session");
    let forged = post_form(
        &second,
        "/services/web/restart/confirm",
        &cookie,
        &[("csrf", "0123"), ("reason", "forged")],
    )
    .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let confirmed = post_form(
        &second,
        "/services/web/restart/confirm",
        &cookie,
        &[("csrf", &csrf), ("reason", "from the other server")],
    )
    .await;
    assert_eq!(confirmed.status(), StatusCode::SEE_OTHER);
    let restart_page = location(&confirmed);
    let id: u64 = restart_page
        .strip_prefix("/restarts/")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{restart_page}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let restart: baton_proto::api::Restart = second.get_json(&format!("/restarts/{id}")).await;
        if let Some(outcome) = restart.outcome {
            assert_eq!(outcome, RestartOutcome::Succeeded);
            assert_eq!(restart.requested_by.as_deref(), Some("test-operator"));
            assert_eq!(restart.reason.as_deref(), Some("from the other server"));
            break;
        }
        assert!(Instant::now() < deadline, "the restart never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The session outlives the server it was made on.
    first.kill();
    first.launch();
    assert_eq!(
        get_page(&first, "/", &cookie).await.status(),
        StatusCode::OK
    );

    // Signing out on one server ends the session on both.
    let signed_out = post_form(&second, "/logout", &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);
    for server in [&first, &second] {
        let page = get_page(server, "/", &cookie).await;
        assert_eq!(page.status(), StatusCode::SEE_OTHER, "{}", server.url());
        assert!(location(&page).starts_with("/login"));
    }
}

async fn revoking_a_token_ends_its_sessions_on_every_server(first: ServerUnderTest) {
    let second = first.replica();
    let cookie = first.dashboard_session(&first.viewer_token).await;
    assert_eq!(
        get_page(&second, "/", &cookie).await.status(),
        StatusCode::OK
    );

    let revoked = std::process::Command::new(baton_tests::bin("baton-server"))
        .args(["token", "revoke", "--database"])
        .arg(first.database())
        .args(["--name", "test-viewer"])
        .output()
        .unwrap();
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    for server in [&first, &second] {
        let page = get_page(server, "/", &cookie).await;
        assert_eq!(page.status(), StatusCode::SEE_OTHER, "{}", server.url());
    }
}

async fn restart_with_key(server: &ServerUnderTest, key: &str) -> reqwest::Response {
    browser()
        .post(format!("{}/services/web/restart", server.url()))
        .bearer_auth(&server.operator_token)
        .header("idempotency-key", key)
        .send()
        .await
        .unwrap()
}

async fn an_idempotency_key_names_the_same_restart_on_every_server(first: ServerUnderTest) {
    let second = first.replica();
    let _agent = agent_of(&first, "alpha");
    first.wait_for_hosts(1).await;

    let started = restart_with_key(&first, "deploy-4711").await;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let restart = location(&started);
    // The retry on the second server names the first server's restart.
    let retried = restart_with_key(&second, "deploy-4711").await;
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    assert_eq!(location(&retried), restart);
    // Another key is another restart: it meets the running one (409), or
    // starts its own once that one ended, or finds no host (404) while the
    // second server has not yet read which server holds alpha's link.
    let other_key = restart_with_key(&second, "deploy-4712").await;
    match other_key.status() {
        StatusCode::CONFLICT | StatusCode::NOT_FOUND => {}
        StatusCode::ACCEPTED => assert_ne!(location(&other_key), restart),
        status => panic!("another key got {status}"),
    }
}
