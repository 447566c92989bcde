//! HTTPS end to end: a server with a certificate from a private CA, an agent
//! that dials it over wss://, and the command line, each trusting that CA.

use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, bin};
use std::time::{Duration, Instant};

fn cli(
    url: &str,
    ca: Option<&std::path::Path>,
    token: &str,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut command = std::process::Command::new(bin("baton"));
    command
        .args(["--server", url, "--token", token])
        .args(args)
        .env_remove("BATON_AGENT_SOCKET")
        .env_remove("BATON_CA_CERT");
    if let Some(ca) = ca {
        command.arg("--ca-cert").arg(ca);
    }
    let out = command.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_agent_and_the_cli_restart_through_an_https_server_they_were_told_to_trust() {
    let server = ServerUnderTest::start_tls();
    let url = server.url();
    assert!(url.starts_with("https://"), "{url}");
    let ca = server.ca_file().unwrap().to_owned();
    let config = server.host_config("host-a", "127.0.0.2", "demo", &[], "");
    assert!(config.contains("ca_file"), "{config}");
    let _agent = AgentUnderTest::start(&config);

    // The server speaks only TLS, so an online host proves the wss:// link.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, stdout, stderr) = cli(&url, Some(&ca), &server.viewer_token, &["status"]);
        assert_eq!(code, Some(0), "{stderr}");
        if stdout
            .lines()
            .any(|l| l.contains("host-a") && l.contains("yes"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "host-a never came online:\n{stdout}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (code, stdout, stderr) = cli(
        &url,
        Some(&ca),
        &server.operator_token,
        &["restart", "demo", "--wait"],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("host-a: succeeded"), "{stdout}");

    // Without the CA the certificate is refused, and the error says so.
    let (code, _, stderr) = cli(&url, None, &server.viewer_token, &["status"]);
    assert_eq!(code, Some(6), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    // Plain HTTP to the TLS port gets nowhere either.
    let plain = url.replacen("https://", "http://", 1);
    let (code, _, stderr) = cli(&plain, None, &server.viewer_token, &["status"]);
    assert_eq!(code, Some(6), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tls_the_session_cookie_is_secure_and_browsers_are_told_to_stay_on_https() {
    let server = ServerUnderTest::start_tls();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(baton_tls::client_config(server.ca_file()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .post(format!("{}/login", server.url()))
        .header("accept", "text/html")
        .header("origin", server.url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", server.viewer_token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("baton_session="), "{cookie}");
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    // The API says so too: the header is the connection's, not the page's.
    let health = client
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert!(health.headers().contains_key("strict-transport-security"));

    // The same server over plain HTTP says neither.
    let plain = ServerUnderTest::start();
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/login", plain.url()))
        .header("accept", "text/html")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", plain.viewer_token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(!response.headers().contains_key("strict-transport-security"));
}
