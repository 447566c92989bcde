//! The dashboard in a real browser: Debian's headless Chromium driven over
//! WebDriver (chromedriver), against the real baton-server and a real agent
//! running the demo service. An operator signs in, opens the service, presses
//! Restart, confirms, and watches the restart page turn to `succeeded` with
//! the new generation, without the page reloading; a request without the
//! form token is refused; a viewer cannot restart. Screenshots of the
//! overview, service and restart pages, at laptop and phone widths, are
//! saved in `target/artifacts/`.
//!
//! Needs Debian's `chromium` and `chromium-driver`, which ./scripts/test
//! installs; the test fails, saying so, when they are missing.

use baton_tests::AgentUnderTest;
use baton_tests::server::ServerUnderTest;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn chromedriver_path() -> PathBuf {
    let candidates = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];
    let found = candidates.iter().map(PathBuf::from).find(|p| p.exists());
    assert!(
        Path::new(CHROMIUM).exists() && found.is_some(),
        "the browser test needs Debian's Chromium and ChromeDriver: \
         run the tests with ./scripts/test, which installs them"
    );
    found.unwrap()
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct ChromeDriver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The few WebDriver commands the test needs, over plain HTTP.
struct Browser {
    http: reqwest::Client,
    session: String,
    driver: ChromeDriver,
}

impl Browser {
    async fn start() -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("baton-chromium-")
            .tempdir()
            .unwrap();
        let port = baton_tests::server::free_port();
        let child = Command::new(chromedriver_path())
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = ChromeDriver {
            child,
            port,
            _profile: profile,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("http://127.0.0.1:{port}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Without the networking flags Chromium keeps trying to reach
        // Google's services, which a closed CI network refuses.
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    format!("--user-data-dir={}", driver._profile.path().display()),
                ]
            }
        }}});
        let response: Value = http
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {response}"))
            .to_string();
        Browser {
            http,
            session,
            driver,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!(
            "http://127.0.0.1:{}/session/{}{path}",
            self.driver.port, self.session
        );
        let mut request = self.http.request(method.clone(), url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request.send().await.unwrap().json().await.unwrap();
        let value = response["value"].clone();
        assert!(
            value.get("error").is_none(),
            "WebDriver {method} {path}: {value}"
        );
        value
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.command(reqwest::Method::GET, path, None).await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    async fn path(&self) -> String {
        let url = self.get("/url").await.as_str().unwrap().to_string();
        let after_host = url.splitn(4, '/').nth(3).unwrap_or("");
        format!("/{after_host}")
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Read in one script call: the live parts are replaced several times a
    /// second, so an element found first and read later may be gone by then.
    async fn text(&self, css: &str) -> String {
        self.post(
            "/execute/sync",
            json!({
                "script": "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                "args": [css],
            }),
        )
        .await
        .as_str()
        .unwrap_or_else(|| panic!("no element {css}"))
        .to_string()
    }

    async fn enabled(&self, css: &str) -> bool {
        let element = self.find(css).await;
        self.get(&format!("/element/{element}/enabled"))
            .await
            .as_bool()
            .unwrap()
    }

    async fn run(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    async fn wait_for_path(&self, wanted: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let path = self.path().await;
            if wanted(&path) {
                return path;
            }
            assert!(Instant::now() < deadline, "never reached {what}; at {path}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for_text(&self, css: &str, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.text(css).await;
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {needle:?}; it shows:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The whole page at this width, as a PNG in `target/artifacts/`.
    async fn screenshot(&self, name: &str, width: u32) {
        self.post("/window/rect", json!({"width": width, "height": 900}))
            .await;
        let height = self
            .run("return document.documentElement.scrollHeight")
            .await
            .as_u64()
            .unwrap_or(900);
        self.post(
            "/window/rect",
            json!({"width": width, "height": (height + 140).min(4000)}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let png = self.get("/screenshot").await;
        let bytes = base64_decode(png.as_str().unwrap());
        let path = artifacts_dir().join(format!("dashboard-{name}-{width}.png"));
        std::fs::write(&path, bytes).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    async fn screenshots(&self, name: &str) {
        self.screenshot(name, 390).await;
        self.screenshot(name, 1280).await;
    }

    async fn cookie(&self, name: &str) -> String {
        self.get(&format!("/cookie/{name}")).await["value"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn sign_in(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/login")).await;
        self.type_into("#token", token).await;
        self.click("form[action='/login'] button[type=submit]")
            .await;
        self.wait_for_path(|p| p == "/", "the overview after signing in")
            .await;
    }

    async fn quit(self) {
        let _ = self
            .http
            .delete(format!(
                "http://127.0.0.1:{}/session/{}",
                self.driver.port, self.session
            ))
            .send()
            .await;
    }
}

/// Screenshots come base64-encoded; a decoder is twenty lines, a crate is
/// one more dependency for every build.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter_map(value) {
        buffer = (buffer << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

fn agent_config(server: &ServerUnderTest) -> String {
    // The new generation takes 2 s to get ready, so the restart page is
    // surely open while the restart runs and must update itself.
    server.host_config(
        "alpha",
        "127.0.0.1",
        "web",
        &["--start-delay", "2s", "--hold-memory", "32"],
        r#"ready_timeout = "10s""#,
    )
}

async fn wait_for_service(server: &ServerUnderTest) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = reqwest::Client::new()
            .get(format!("{}/services/web", server.url()))
            .bearer_auth(&server.viewer_token)
            .send()
            .await
            .unwrap();
        if response.status().is_success() {
            let service: Value = response.json().await.unwrap();
            if service["hosts"][0]["state"] == "ready" && service["hosts"][0]["online"] == true {
                return;
            }
        }
        assert!(Instant::now() < deadline, "web never reached the server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restarts_from_the_browser_and_watches_it_succeed_live() {
    chromedriver_path();
    let server = ServerUnderTest::start();
    let _agent = AgentUnderTest::start(&agent_config(&server));
    wait_for_service(&server).await;
    let base = server.url();
    let browser = Browser::start().await;

    browser.sign_in(&base, &server.operator_token).await;
    browser
        .wait_for_text("table.services", "web", Duration::from_secs(5))
        .await;
    browser.screenshots("overview").await;

    browser.click("a[href='/services/web']").await;
    browser
        .wait_for_path(|p| p == "/services/web", "the service page")
        .await;
    assert!(browser.enabled("#restart-button").await);
    browser.screenshots("service").await;

    // With JavaScript the confirmation opens in a dialog on the same page.
    browser.click("#restart-button").await;
    assert_eq!(
        browser
            .run("return document.getElementById('restart-dialog').open")
            .await,
        true
    );
    browser.type_into("#reason-dialog", "browser test").await;
    browser.click("#confirm-restart-dialog").await;
    let restart_path = browser
        .wait_for_path(|p| p.starts_with("/restarts/"), "the restart page")
        .await;

    // Marks this page load: a reload would lose it.
    browser.run("window.batonPageLoad = 'first'").await;
    let first = browser.text("#restart-live").await;
    assert!(
        first.contains("running"),
        "the restart was not running at first:\n{first}"
    );
    let finished = browser
        .wait_for_text(
            "#restart-live .outcome-line",
            "succeeded",
            Duration::from_secs(30),
        )
        .await;
    assert!(!finished.contains("running"), "{finished}");
    let steps = browser.text("#restart-live").await;
    assert!(steps.contains("generation 2 ready"), "{steps}");
    assert_eq!(
        browser.run("return window.batonPageLoad").await,
        "first",
        "the page reloaded instead of updating itself"
    );
    assert_eq!(browser.path().await, restart_path);
    browser.screenshots("restart").await;

    // The service page now shows generation 2 serving.
    browser.goto(&format!("{base}/services/web")).await;
    browser
        .wait_for_text("#service-live table.hosts", "2", Duration::from_secs(5))
        .await;
    let serving = browser.text("#service-live .generation-cell").await;
    assert_eq!(serving.trim(), "2");
    // With its memory (the demo holds 32 MiB) and CPU time, as the agent
    // last read them.
    let memory = browser
        .wait_for_text("#service-live td.memory", "MiB", Duration::from_secs(15))
        .await;
    let mib: f64 = memory
        .trim()
        .trim_end_matches("MiB")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("memory shown as {memory:?}"));
    assert!(mib >= 32.0, "memory shown as {memory:?}");
    let cpu = browser.text("#service-live td.cpu").await;
    assert!(cpu.trim().ends_with('s'), "CPU time shown as {cpu:?}");
    browser.screenshots("service-after-restart").await;

    // The session cookie alone, without the page's form token, restarts nothing.
    let cookie = browser.cookie("baton_session").await;
    let forged = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/services/web/restart/confirm"))
        .header("cookie", format!("baton_session={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("reason=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let restarts: Value = server.get_json("/restarts").await;
    assert_eq!(restarts["restarts"].as_array().unwrap().len(), 1);
    assert_eq!(restarts["restarts"][0]["reason"], "browser test");

    // A viewer sees the button disabled, with the reason, and is refused.
    browser.click(".who button[type=submit]").await;
    browser
        .wait_for_path(
            |p| p.starts_with("/login"),
            "the login page after signing out",
        )
        .await;
    browser.sign_in(&base, &server.viewer_token).await;
    browser.goto(&format!("{base}/services/web")).await;
    assert!(!browser.enabled("#restart-button").await);
    let why = browser.text("#restart-why").await;
    assert!(why.contains("Viewers cannot restart"), "{why}");
    browser
        .goto(&format!("{base}/services/web/restart/confirm"))
        .await;
    let refusal = browser.text("main").await;
    assert!(refusal.contains("operator token"), "{refusal}");
    browser.screenshots("viewer-refused").await;

    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_updates_itself_and_an_error_page_keeps_the_navigation() {
    chromedriver_path();
    let server = ServerUnderTest::start();
    let _agent = AgentUnderTest::start(&server.host_config(
        "alpha",
        "127.0.0.1",
        "web",
        &[],
        r#"ready_timeout = "10s""#,
    ));
    wait_for_service(&server).await;
    let base = server.url();
    let browser = Browser::start().await;
    browser.sign_in(&base, &server.viewer_token).await;
    browser
        .wait_for_text(
            "#overview-live table.services",
            "web",
            Duration::from_secs(5),
        )
        .await;
    let before = browser.text("#overview-live").await;
    assert!(before.contains("No restart yet"), "{before}");
    // Marks this page load: a reload would lose it.
    browser.run("window.batonPageLoad = 'first'").await;

    // Someone else restarts web, through the API.
    let started = reqwest::Client::new()
        .post(format!("{base}/services/web/restart"))
        .bearer_auth(&server.operator_token)
        .json(&json!({"reason": "seen live"}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202, "{}", started.text().await.unwrap());
    let after = browser
        .wait_for_text("#overview-live", "succeeded", Duration::from_secs(30))
        .await;
    assert!(
        after.contains("#1") && after.contains("seen live"),
        "{after}"
    );
    assert_eq!(
        browser.run("return window.batonPageLoad").await,
        "first",
        "the overview reloaded instead of updating itself"
    );

    // A page that is not there keeps the top bar: the way back, and who
    // is signed in.
    browser.goto(&format!("{base}/no/such/page")).await;
    let top = browser.text("header.topbar").await;
    assert!(
        top.contains("Overview") && top.contains("Restarts"),
        "{top}"
    );
    assert!(top.contains("Sign out"), "{top}");
    browser
        .click("nav[aria-label=Main] a[href='/restarts']")
        .await;
    browser
        .wait_for_path(|p| p == "/restarts", "the restarts page from a 404")
        .await;
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_old_generation_and_a_crash_loop_are_shown_for_what_they_are() {
    chromedriver_path();
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "normal").unwrap();
    let agent = AgentUnderTest::start(&server.host_config(
        "alpha",
        "127.0.0.1",
        "web",
        &["--mode-file", mode.to_str().unwrap()],
        "ready_timeout = \"10s\"\ndrain_timeout = \"700ms\"",
    ));
    wait_for_service(&server).await;
    let base = server.url();

    // Generation 2 ignores SIGTERM; replacing it is `forced`.
    std::fs::write(&mode, "ignore-sigterm").unwrap();
    server.restart_and_wait("web").await;
    std::fs::write(&mode, "normal").unwrap();
    let forced = server.restart_and_wait("web").await;
    assert_eq!(
        forced.outcome,
        Some(baton_proto::RestartOutcome::Forced),
        "{forced:#?}"
    );

    let browser = Browser::start().await;
    browser.sign_in(&base, &server.viewer_token).await;
    browser
        .goto(&format!("{base}/restarts/{}", forced.id))
        .await;
    let last = browser.text("#restart-live .phases li:last-child").await;
    assert!(last.to_lowercase().contains("old killed"), "{last}");
    assert!(
        !last.contains('✓'),
        "a SIGKILLed generation has no check: {last}"
    );
    assert_eq!(
        browser
            .run("return document.querySelector('#restart-live .phases li:last-child').className")
            .await,
        "killed"
    );

    // Every new generation crashes: the service page says how the last
    // one ended and when the next starts.
    std::fs::write(&mode, "crash").unwrap();
    let serving = agent.service("web").generations[0].pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serving as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    browser.goto(&format!("{base}/services/web")).await;
    // First the kill, then the generations that crash by themselves. (The
    // history already says "exited with status" of generation 1.)
    let crash = browser
        .wait_for_text("#service-live", "crash-looping", Duration::from_secs(20))
        .await;
    assert!(crash.contains("killed by SIGKILL"), "{crash}");
    let note = browser.text("#service-live .last-crash").await;
    assert!(note.contains("next start"), "{note}");
    browser.screenshots("crash-loop").await;
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_page_lists_each_instance_and_shows_one_started_again() {
    chromedriver_path();
    let server = ServerUnderTest::start();
    let agent = AgentUnderTest::start(&server.host_config(
        "alpha",
        "127.0.0.1",
        "web",
        &[],
        "instances = 4\nmax_surge = 2",
    ));
    wait_for_service(&server).await;
    let status = agent.wait_for("every instance ready", Duration::from_secs(20), |s| {
        s.services[0].generations.len() == 1
            && s.services[0].generations[0].instances.len() == 4
            && s.services[0].generations[0]
                .instances
                .iter()
                .all(|i| i.state == baton_proto::InstanceState::Ready)
    });
    let pids: Vec<u32> = status.services[0].generations[0]
        .instances
        .iter()
        .map(|i| i.pid.unwrap())
        .collect();
    let base = server.url();
    let browser = Browser::start().await;
    browser.sign_in(&base, &server.viewer_token).await;
    browser.goto(&format!("{base}/services/web")).await;
    browser
        .wait_for_text("#service-live", "4/4 ready", Duration::from_secs(10))
        .await;
    let rows = browser
        .run("return [...document.querySelectorAll('table.instances tr.instance')].map(r => r.innerText)")
        .await;
    let rows: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    for (row, pid) in rows.iter().zip(&pids) {
        assert!(
            row.contains(&pid.to_string()) && row.contains("ready"),
            "{row}"
        );
    }

    // One instance killed: the page shows it started again, live.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[1] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let second = browser
            .run("return document.querySelectorAll('table.instances tr.instance')[1]?.innerText ?? ''")
            .await;
        let second = second.as_str().unwrap_or_default().to_string();
        let restarted = second.contains("ready")
            && !second.contains(&pids[1].to_string())
            && second.trim_end().ends_with('1');
        if restarted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instance 1 never shown started again: {second}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .wait_for_text("#service-live", "4/4 ready", Duration::from_secs(10))
        .await;
    browser.screenshots("instances").await;
    browser.quit().await;
}

/// The service page's generation history has a version column, the serving
/// version and the warning about a rolled-back build on disk; the restart
/// page says "generation N: 1.4.1 → 1.4.2", and for a rollback which
/// version never became ready and which still serves. The history's
/// screenshot is README's `docs/images/versions.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_each_generations_version_and_what_a_rollback_left_serving() {
    use super::versions::{release, service_block, swap_symlink};
    chromedriver_path();
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let current = root.join("current");
    release(root, "1.4.1", false);
    swap_symlink(&current, &root.join("releases/1.4.1"));
    let _agent = AgentUnderTest::start(&format!(
        "host = \"alpha\"\n{}{}",
        server.agent_section("alpha"),
        service_block(&current)
    ));
    server.wait_for_hosts(1).await;
    release(root, "1.4.2", false);
    swap_symlink(&current, &root.join("releases/1.4.2"));
    let deployed = server.restart_and_wait("app").await;
    release(root, "1.4.3", true);
    swap_symlink(&current, &root.join("releases/1.4.3"));
    let rolled_back = server.restart_and_wait("app").await;

    let base = server.url();
    let browser = Browser::start().await;
    browser.sign_in(&base, &server.viewer_token).await;

    browser
        .goto(&format!("{base}/restarts/{}", deployed.id))
        .await;
    let versions = browser
        .wait_for_text("#versions-alpha", "→", Duration::from_secs(5))
        .await;
    assert_eq!(versions.trim(), "generation 2: 1.4.1 → 1.4.2");

    browser
        .goto(&format!("{base}/restarts/{}", rolled_back.id))
        .await;
    let versions = browser.text("#versions-alpha").await;
    assert_eq!(versions.trim(), "generation 3: 1.4.2 → 1.4.3");
    let rollback = browser.text("#rollback-alpha").await;
    assert!(
        rollback.contains("The new version 1.4.3 never became ready; 1.4.2 is still serving."),
        "{rollback}"
    );
    browser.screenshots("restart-rolled-back").await;

    browser.goto(&format!("{base}/services/app")).await;
    let warning = browser
        .wait_for_text(
            "#service-live .next-start",
            "the next crash restart would run 1.4.3 (rolled back), not 1.4.2",
            Duration::from_secs(20),
        )
        .await;
    assert!(warning.contains("Warning"), "{warning}");
    let serving = browser.text("#service-live table.hosts td.version").await;
    assert_eq!(serving.trim(), "1.4.2");
    let header = browser.text("#service-live table.generations thead").await;
    assert!(header.to_lowercase().contains("version"), "{header}");
    let history: Vec<String> = browser
        .run(
            "return [...document.querySelectorAll('#service-live table.generations td.version')]\
             .map(td => td.textContent.trim())",
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(history, ["1.4.3", "1.4.2", "1.4.1"], "newest first");
    // The timeline labels the serving bar with its version.
    let labels = browser
        .run("return document.querySelector('#service-live .timeline-wrap').textContent")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(labels.contains("1.4.2"), "{labels}");
    browser.screenshots("versions").await;
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_restart_shows_what_its_new_generation_wrote() {
    chromedriver_path();
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "normal").unwrap();
    let _agent = AgentUnderTest::start(&server.host_config(
        "alpha",
        "127.0.0.1",
        "web",
        &["--mode-file", mode.to_str().unwrap()],
        "ready_timeout = \"10s\"",
    ));
    wait_for_service(&server).await;
    let base = server.url();
    std::fs::write(&mode, "crash").unwrap();
    let rolled_back = server.restart_and_wait("web").await;
    assert_eq!(
        rolled_back.outcome,
        Some(baton_proto::RestartOutcome::RolledBack),
        "{rolled_back:#?}"
    );

    let browser = Browser::start().await;
    browser.sign_in(&base, &server.viewer_token).await;
    browser
        .goto(&format!("{base}/restarts/{}", rolled_back.id))
        .await;
    let shown = browser.text("#output-alpha").await;
    assert!(shown.contains("Last output of generation 2"), "{shown}");
    assert!(shown.contains("crashing at start"), "{shown}");
    browser.screenshot("restart-output", 1280).await;
    browser.quit().await;
}

/// The service page shows each host's live output tail; the 1280-wide
/// screenshot is README's `docs/images/log-tail.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_page_shows_a_line_the_service_prints_as_it_prints_it() {
    chromedriver_path();
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("print");
    let _agent = AgentUnderTest::start(&format!(
        "host = \"alpha\"\n{}[[service]]\nname = \"web\"\nready = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", '''\
echo listening on :8080; echo warning: cache cold >&2; echo 'GET /healthz 200 <script>alert(1)</script>'; \
while true; do if [ -e {trigger} ]; then rm -f {trigger}; echo GET /orders 200 printed while watched; fi; sleep 0.05; done''']\n",
        server.agent_section("alpha"),
        trigger = trigger.display(),
    ));
    server.wait_for_hosts(1).await;
    let base = server.url();
    let browser = Browser::start().await;
    browser.sign_in(&base, &server.viewer_token).await;
    browser.goto(&format!("{base}/services/web")).await;
    let shown = browser
        .wait_for_text("pre.log-tail", "cache cold", Duration::from_secs(10))
        .await;
    // The service's words are text, not markup.
    assert!(shown.contains("<script>alert(1)</script>"), "{shown}");
    std::fs::write(&trigger, b"").unwrap();
    browser
        .wait_for_text(
            "pre.log-tail",
            "printed while watched",
            Duration::from_secs(10),
        )
        .await;
    browser.screenshot("log-tail", 1280).await;
    browser.quit().await;
}
