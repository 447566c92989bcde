//! What a hostile page, link or script can try against the dashboard,
//! performed against the real server.

use baton_proto::ServiceStatus;
use baton_proto::link::AgentFrame;
use reqwest::header;
use std::time::{Duration, Instant};

use crate::browser::{Browser, csrf_token, session_cookie};
use crate::helpers::{FakeAgent, service, spawn_app};
use crate::restart::next_event;

const VECTORS: [&str; 8] = [
    "/\t/evil.example/",
    "//evil.example/",
    "/\\evil.example/",
    "/\\/evil.example/",
    "https://evil.example/",
    "/services\r\nSet-Cookie: stolen=1",
    "/\n/evil.example/",
    "evil.example",
];

fn location(response: &reqwest::Response) -> &str {
    response.headers()[header::LOCATION].to_str().unwrap()
}

fn encoded(next: &str) -> String {
    crate::browser::form_encode(&[("next", next)])
}

#[tokio::test]
async fn the_login_page_sends_nobody_to_another_origin() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    for next in VECTORS {
        let response = browser
            .post_form("/login", &[("token", &app.viewer), ("next", next)])
            .await;
        assert_eq!(response.status(), 303, "{next:?}");
        assert_eq!(location(&response), "/", "{next:?}");
    }
    // Signed in, the form forwards at once; the same rule holds.
    browser.sign_in(&app.viewer).await;
    for next in VECTORS {
        let response = browser.get(&format!("/login?{}", encoded(next))).await;
        assert_eq!(response.status(), 303, "{next:?}");
        assert_eq!(location(&response), "/", "{next:?}");
    }
    // A path of this server is kept, query and all.
    let response = browser
        .get(&format!("/login?{}", encoded("/restarts?service=web")))
        .await;
    assert_eq!(location(&response), "/restarts?service=web");
}

#[tokio::test]
async fn a_form_from_another_origin_neither_signs_in_nor_restarts() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let ours = format!("http://127.0.0.1:{}", app.port);
    let mut browser = Browser::new(&app);
    let login = [("token", app.operator.as_str())];
    for forged in [
        [("origin", "https://evil.example")].as_slice(),
        &[("origin", "null")],
        &[("origin", &format!("http://127.0.0.1:{}", app.port + 1))],
        &[("referer", "https://evil.example/login")],
    ] {
        let response = browser.post_form_with("/login", &login, forged).await;
        assert_eq!(response.status(), 403, "{forged:?}");
        assert!(session_cookie(&response).is_none(), "{forged:?}");
    }
    let response = browser
        .post_form_with("/login", &login, &[("origin", &ours)])
        .await;
    assert_eq!(response.status(), 303);
    browser.cookie = session_cookie(&response);

    let form = browser.page("/services/web/restart/confirm").await;
    let csrf = csrf_token(&form);
    let restart = [("csrf", csrf.as_str())];
    let confirm = "/services/web/restart/confirm";
    let forged = browser
        .post_form_with(confirm, &restart, &[("origin", "https://evil.example")])
        .await;
    assert_eq!(forged.status(), 403);
    let forged = browser
        .post_form_with(confirm, &restart, &[("referer", "https://evil.example/")])
        .await;
    assert_eq!(forged.status(), 403);
    assert!(
        agent
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "a forged form restarted the service"
    );
    let same_origin = browser
        .post_form_with(
            confirm,
            &restart,
            &[("origin", &ours), ("referer", &format!("{ours}{confirm}"))],
        )
        .await;
    assert_eq!(same_origin.status(), 303);
    assert_eq!(location(&same_origin), "/restarts/1");
}

#[tokio::test]
async fn over_plain_http_the_cookie_is_not_secure_and_there_is_no_hsts() {
    let app = spawn_app().await;
    let response = Browser::new(&app)
        .post_form("/login", &[("token", &app.viewer)])
        .await;
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(
        !response
            .headers()
            .contains_key(header::STRICT_TRANSPORT_SECURITY)
    );
}

#[tokio::test]
async fn the_eleventh_session_of_a_token_ends_its_oldest() {
    let app = spawn_app().await;
    let mut browsers = Vec::new();
    for _ in 0..11 {
        let mut browser = Browser::new(&app);
        browser.sign_in(&app.viewer).await;
        browsers.push(browser);
    }
    let oldest = browsers[0].get("/").await;
    assert_eq!(oldest.status(), 303, "the oldest session is still open");
    assert!(location(&oldest).starts_with("/login"));
    for browser in &browsers[1..] {
        assert_eq!(browser.get("/").await.status(), 200);
    }
    // Another token's sessions are its own.
    let mut operator = Browser::new(&app);
    operator.sign_in(&app.operator).await;
    assert_eq!(browsers[1].get("/").await.status(), 200);
    assert_eq!(operator.get("/").await.status(), 200);
}

#[tokio::test]
async fn a_session_holds_only_so_many_live_streams() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        let stream = browser.get("/services/web/live").await;
        assert_eq!(stream.status(), 200);
        streams.push(stream);
    }
    let refused = browser.get("/services/web/live").await;
    assert_eq!(refused.status(), 429);
    // Another session of the same token has streams of its own.
    let mut other = Browser::new(&app);
    other.sign_in(&app.viewer).await;
    assert_eq!(other.get("/services/web/live").await.status(), 200);
    // A stream that ends gives its place back.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    while browser.get("/services/web/live").await.status() != 200 {
        assert!(Instant::now() < deadline, "the place was never given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn with_connections(connections: u32) -> Vec<ServiceStatus> {
    let mut web = service("web", 1);
    web.generations[0].connections = Some(connections);
    vec![web]
}

async fn live_renders(app: &crate::helpers::TestApp) -> u64 {
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("baton_dashboard_live_renders_total "))
        .expect("the live render counter")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_live_page_sends_nothing_while_nothing_changes_and_a_change_at_once() {
    let app = spawn_app().await;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", with_connections(3)).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;
    let mut stream = browser.get("/services/web/live").await;
    let mut buffer = String::new();
    let first = next_event(&mut stream, &mut buffer, "update").await;
    assert!(first.contains("alpha"), "{first}");

    // The same status again changes nothing: nothing is rendered or sent.
    let renders_before = live_renders(&app).await;
    agent
        .send(&AgentFrame::Status {
            services: with_connections(3),
        })
        .await;
    let quiet = tokio::time::timeout(Duration::from_secs(2), stream.chunk()).await;
    assert!(quiet.is_err(), "sent while nothing changed: {quiet:?}");
    assert_eq!(
        live_renders(&app).await,
        renders_before,
        "rendered while nothing changed"
    );

    // A change is on the page at once, not at the next tick.
    let sent = Instant::now();
    agent
        .send(&AgentFrame::Status {
            services: with_connections(41),
        })
        .await;
    let update = next_event(&mut stream, &mut buffer, "update").await;
    assert!(update.contains(">41<"), "{update}");
    assert!(
        sent.elapsed() < Duration::from_millis(500),
        "{:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn revoking_a_token_ends_the_live_streams_of_its_sessions() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;
    let mut stream = browser.get("/services/web/live").await;
    let mut buffer = String::new();
    next_event(&mut stream, &mut buffer, "update").await;

    baton_server::store::revoke_tokens(
        &app.db().await,
        baton_server::store::TokenSelector::Name("dashboard"),
    )
    .await
    .unwrap();
    let revoked = Instant::now();
    // The test server rechecks tokens every 200 ms.
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(
        matches!(ended, Ok(Ok(None))),
        "the stream outlived its token: {ended:?}"
    );
    assert!(
        revoked.elapsed() < Duration::from_millis(1000),
        "{:?}",
        revoked.elapsed()
    );
    // And the browser cannot open another.
    assert_eq!(browser.get("/services/web/live").await.status(), 401);
}
