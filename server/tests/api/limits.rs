//! A client that trickles its request, or opens connections without end,
//! performed over raw TCP against the real server.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app_with};

async fn limited_app(connections_per_ip: usize, request_timeout: Duration) -> TestApp {
    spawn_app_with(|settings| {
        settings.connections_per_ip = connections_per_ip;
        settings.timeouts.request_timeout = request_timeout;
    })
    .await
}

/// Sends `head`, then one byte of `trickle` every 200 ms, until the server
/// closes the connection; how long that took, or `None` when it never did
/// within `limit`. Whatever the server answered is returned too.
async fn trickle(
    app: &TestApp,
    head: &str,
    trickle: &[u8],
    limit: Duration,
) -> (Option<Duration>, String) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut bytes = trickle.iter().cycle();
    while started.elapsed() < limit {
        let mut buffer = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    Some(started.elapsed()),
                    String::from_utf8_lossy(&answer).into_owned(),
                );
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
            Err(_) => {
                if stream.write_all(&[*bytes.next().unwrap()]).await.is_err() {
                    return (
                        Some(started.elapsed()),
                        String::from_utf8_lossy(&answer).into_owned(),
                    );
                }
            }
        }
    }
    (None, String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn a_request_body_sent_a_byte_at_a_time_is_cut_at_the_timeout() {
    let app = limited_app(128, Duration::from_secs(1)).await;
    let head = "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n";
    let (cut_after, answer) = trickle(&app, head, b"token=", Duration::from_secs(6)).await;
    let cut_after = cut_after.unwrap_or_else(|| panic!("still open after 6 s: {answer}"));
    assert!(
        cut_after < Duration::from_secs(4),
        "cut after {cut_after:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // The same with a bearer token and the API's body reader.
    let head = format!(
        "POST /services/web/restart HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        app.operator
    );
    let (cut_after, answer) = trickle(&app, &head, b" ", Duration::from_secs(6)).await;
    assert!(
        cut_after.is_some_and(|after| after < Duration::from_secs(4)),
        "{cut_after:?} {answer}"
    );
}

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_at_the_timeout() {
    let app = limited_app(128, Duration::from_secs(1)).await;
    let (cut_after, answer) = trickle(
        &app,
        "GET /healthz HTTP/1.1\r\n",
        b"X-Slow: aaaaaaaa\r\n",
        Duration::from_secs(6),
    )
    .await;
    let cut_after = cut_after.unwrap_or_else(|| panic!("still open after 6 s: {answer}"));
    assert!(
        cut_after < Duration::from_secs(4),
        "cut after {cut_after:?}"
    );
}

#[tokio::test]
async fn one_address_may_hold_only_so_many_connections() {
    let app = limited_app(4, Duration::from_secs(3)).await;
    // Four connections that each sent a request head and hold their body.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
        stream
            .write_all(
                b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                  Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nto",
            )
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The fifth is refused and closed, whatever it asks.
    let mut fifth = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), fifth.read_to_string(&mut answer))
        .await
        .expect("the refused connection is closed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");

    // Once the held ones close, the address may connect again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = app.get("/healthz", None).await;
        if response.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn connections_that_never_send_a_request_count_against_the_cap_until_cut() {
    let app = limited_app(2, Duration::from_secs(1)).await;
    let silent = [
        TcpStream::connect(("127.0.0.1", app.port)).await.unwrap(),
        TcpStream::connect(("127.0.0.1", app.port)).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = app.get("/healthz", None).await;
    assert_eq!(refused.status(), 429);
    // Actix cuts the silent ones at the timeout, which frees their places.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.get("/healthz", None).await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "the silent connections kept their places"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(silent);
}
