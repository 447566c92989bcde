use reqwest::header;

use crate::browser::{BROWSER_ACCEPT, Browser, session_cookie};
use crate::helpers::{FakeAgent, service, spawn_app};

#[tokio::test]
async fn browsers_get_pages_and_api_clients_json_on_the_same_paths() {
    let app = spawn_app().await;
    let _agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![service("web", 1)]).await;
    let mut browser = Browser::new(&app);

    // A browser without a session is sent to sign in, and back afterwards.
    let response = browser.get("/services/web").await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()[header::LOCATION],
        "/login?next=%2Fservices%2Fweb"
    );

    // API clients are untouched: JSON with a bearer token, 401 JSON without.
    let response = app.get("/services/web", Some(&app.viewer)).await;
    assert_eq!(response.headers()[header::VARY], "Accept");
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["hosts"][0]["host"], "alpha");
    let refused = app.get("/services", None).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()[header::CONTENT_TYPE], "application/json");
    let explicit = app
        .client
        .get(format!("{}/restarts", app.address))
        .header(header::ACCEPT, "application/json, text/html;q=0.5")
        .bearer_auth(&app.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(explicit.status(), 200);
    assert!(explicit.json::<serde_json::Value>().await.unwrap()["restarts"].is_array());

    browser.sign_in(&app.viewer).await;
    let overview = browser.page("/").await;
    assert!(overview.contains("href=\"/services/web\""), "{overview}");
    assert!(overview.contains("alpha"));
    // State and outcome read as words, not only colours.
    assert!(overview.contains("ready"));
    assert_eq!(browser.page("/services").await, overview);
    let page = browser.page("/services/web").await;
    assert!(page.contains("<svg class=\"timeline\"") || page.contains("No generation"));
    // A bearer token does not make a browser page: HTML needs a session.
    let with_token_only = app
        .client
        .get(format!("{}/services/web", app.address))
        .header(header::ACCEPT, BROWSER_ACCEPT)
        .bearer_auth(&app.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token_only.url().path(), "/login");
    let same_path_json = app.get("/services/web", Some(&app.viewer)).await;
    assert_eq!(
        same_path_json.headers()[header::CONTENT_TYPE],
        "application/json"
    );
}

#[tokio::test]
async fn signing_in_sets_a_strict_http_only_cookie_that_is_not_the_token() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    let form = browser.page("/login").await;
    assert!(form.contains("name=\"token\""));

    let wrong = browser
        .post_form("/login", &[("token", "baton_nope")])
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(session_cookie(&wrong).is_none());
    assert!(wrong.text().await.unwrap().contains("not known"));
    let agent = browser.post_form("/login", &[("token", &app.agent)]).await;
    assert_eq!(agent.status(), 401);
    assert!(agent.text().await.unwrap().contains("agent token"));

    let response = browser
        .post_form(
            "/login",
            &[("token", &app.operator), ("next", "/restarts?service=web")],
        )
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()[header::LOCATION],
        "/restarts?service=web"
    );
    let set_cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(
        !set_cookie.contains(&app.operator),
        "the token leaked into the cookie"
    );
    let token_hex = app.operator.trim_start_matches("baton_");
    assert!(!set_cookie.contains(token_hex));
    browser.cookie = session_cookie(&response);
    let page = browser.page("/").await;
    assert!(page.contains("ci") && page.contains("operator"));

    // Elsewhere is never a place to go after signing in.
    let open_redirect = Browser::new(&app)
        .post_form(
            "/login",
            &[("token", &app.viewer), ("next", "//evil.example/")],
        )
        .await;
    assert_eq!(open_redirect.headers()[header::LOCATION], "/");

    let old_cookie = browser.cookie.clone();
    let csrf = crate::browser::csrf_token(&page);
    let logout = browser.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(logout.status(), 303);
    assert_eq!(logout.headers()[header::LOCATION], "/login");
    let cleared = logout.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.starts_with("baton_session=;"), "{cleared}");
    // The server forgot the session: replaying the old cookie does not work.
    browser.cookie = old_cookie;
    assert_eq!(browser.get("/").await.status(), 303);
}

#[tokio::test]
async fn assets_are_embedded_and_cached_by_content_hash() {
    let app = spawn_app().await;
    let browser = Browser::new(&app);
    let login = browser.page("/login").await;
    let start = login.find("/static/baton.css?v=").unwrap();
    let url = &login[start..start + login[start..].find('"').unwrap()];
    let css = browser.get(url).await;
    assert_eq!(css.status(), 200);
    assert_eq!(
        css.headers()[header::CONTENT_TYPE],
        "text/css; charset=utf-8"
    );
    assert!(
        css.headers()[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let etag = css.headers()[header::ETAG].to_str().unwrap().to_string();
    assert!(css.text().await.unwrap().contains("--accent"));
    let again = app
        .client
        .get(format!("{}{url}", app.address))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(browser.get("/static/baton.js").await.status(), 200);
    assert_eq!(browser.get("/static/secrets.txt").await.status(), 404);
    // No page refers to anything outside this server.
    assert!(!login.contains("https://") && !login.contains("http://"));
}

#[tokio::test]
async fn pages_for_unknown_things_are_404_pages() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;
    let response = browser.get("/services/nothing-here").await;
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains("<html"));
    assert_eq!(browser.get("/restarts/999").await.status(), 404);
    assert_eq!(browser.get("/restarts/abc").await.status(), 404);
    let nowhere = browser.get("/no/such/page").await;
    assert_eq!(nowhere.status(), 404);
    assert!(nowhere.text().await.unwrap().contains("<html"));
    // Someone signed in keeps the top bar on an error page: the way back,
    // and who they are.
    for path in ["/no/such/page", "/restarts/999", "/services/nothing-here"] {
        let page = browser.get(path).await.text().await.unwrap();
        assert!(
            page.contains(r#"<nav aria-label="Main">"#),
            "{path}: {page}"
        );
        assert!(page.contains(r#"href="/restarts""#), "{path}: {page}");
        assert!(page.contains("Sign out"), "{path}: {page}");
    }
    // Nobody signed in: no one to show.
    let page = Browser::new(&app)
        .get("/no/such/page")
        .await
        .text()
        .await
        .unwrap();
    assert!(!page.contains("Sign out"), "{page}");
    // The live stream needs a session too.
    let anonymous = Browser::new(&app).get("/restarts/1/live").await;
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn revoking_the_token_ends_the_dashboard_sessions_opened_with_it() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;
    assert_eq!(browser.get("/").await.status(), 200);
    baton_server::store::revoke_tokens(
        &app.db().await,
        baton_server::store::TokenSelector::Name("dashboard"),
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let response = browser.get("/").await;
        if response.status() == 303 {
            let location = response.headers()[header::LOCATION].to_str().unwrap();
            assert!(location.starts_with("/login"), "{location}");
            break;
        }
        assert_eq!(response.status(), 200);
        assert!(
            std::time::Instant::now() < deadline,
            "the session outlived its token"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Signing in again with it is refused.
    let response = browser.post_form("/login", &[("token", &app.viewer)]).await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_service_whose_address_a_stranger_holds_says_so_in_the_api_and_on_the_pages() {
    let app = spawn_app().await;
    let mut blocked = service("web", 1);
    blocked.state = baton_proto::ServiceState::Stopped;
    blocked.generations.clear();
    blocked.blocked = Some("tcp://127.0.0.1:8000 is held by pid 4242 (old-web)".into());
    let _agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![blocked]).await;

    let json: serde_json::Value = app
        .get("/services/web", Some(&app.viewer))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        json["hosts"][0]["blocked"],
        "tcp://127.0.0.1:8000 is held by pid 4242 (old-web)"
    );

    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;
    for path in ["/", "/services/web"] {
        let page = browser.page(path).await;
        assert!(
            page.contains("held by pid 4242 (old-web)"),
            "{path} does not say why web cannot start:\n{page}"
        );
    }
}

#[tokio::test]
async fn a_crash_looping_service_shows_its_last_exit_and_next_start() {
    let app = spawn_app().await;
    let mut crashing = service("web", 4);
    crashing.state = baton_proto::ServiceState::CrashLooping;
    crashing.generations.clear();
    crashing.consecutive_crashes = 3;
    let mut agent = FakeAgent::connect(&app, "alpha", "boot-1", vec![crashing]).await;
    let exited = agent.event(
        "web",
        None,
        baton_proto::EventKind::GenerationExited {
            generation: 4,
            pid: 1004,
            status: "killed by SIGSEGV".into(),
            unexpected: true,
            program: None,
        },
    );
    let scheduled = agent.event(
        "web",
        None,
        baton_proto::EventKind::CrashRestartScheduled {
            generation: 4,
            backoff_ms: 60_000,
            consecutive_crashes: 3,
        },
    );
    agent.send_events(vec![exited, scheduled]).await;

    let mut browser = Browser::new(&app);
    browser.sign_in(&app.viewer).await;
    for path in ["/services/web", "/"] {
        let page = browser.page(path).await;
        let Some(note) = page
            .split("class=\"alert alert-bad small last-crash\">")
            .nth(1)
        else {
            panic!("{path} says nothing of the crash: {page}");
        };
        let note = &note[..note.find("</div>").unwrap()];
        assert!(
            note.contains("generation 4 killed by SIGSEGV"),
            "{path}: {note}"
        );
        assert!(note.contains("next start at"), "{path}: {note}");
        assert!(note.contains("(in 5"), "{path}: {note}");
    }
}
