//! The load generator against tiny servers on 127.0.0.1 port 0, each
//! misbehaving in one way.

use std::net::SocketAddr;
use std::time::Duration;

use baton_loadgen::{LoadConfig, LoadReport, Target};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a test server does with the n-th request (from 0) on a connection.
#[derive(Debug, Clone, Copy)]
enum Answer {
    KeepAlive,
    Close,
    /// Close without a word.
    Hangup,
    /// Never answer.
    Silence,
    After(Duration),
}

/// Reads one request head; false when the client left.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, buffer: &mut Vec<u8>) -> bool {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            buffer.drain(..end + 4);
            return true;
        }
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, answer: fn(u64) -> Answer) {
    let mut buffer = Vec::new();
    let mut served = 0;
    while read_head(&mut stream, &mut buffer).await {
        let close = match answer(served) {
            Answer::KeepAlive => false,
            Answer::Close => true,
            Answer::Hangup => return,
            Answer::Silence => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Answer::After(delay) => {
                tokio::time::sleep(delay).await;
                false
            }
        };
        let connection = if close { "Connection: close\r\n" } else { "" };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Baton-Generation: 1\r\n{connection}\r\nhello\n"
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
        served += 1;
    }
}

async fn tcp_server(answer: fn(u64) -> Answer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, answer));
        }
    });
    address
}

async fn load(target: Target, duration: Duration) -> LoadReport {
    let config = LoadConfig {
        connections: 2,
        request_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        expect_body_prefix: Some("hello".to_owned()),
        ..LoadConfig::new(target)
    };
    baton_loadgen::run(config, tokio::time::sleep(duration)).await
}

#[tokio::test]
async fn a_well_behaved_keep_alive_server_has_no_failures() {
    let address = tcp_server(|_| Answer::KeepAlive).await;
    let report = load(Target::Tcp(address), Duration::from_millis(300)).await;
    assert_eq!(report.failed, 0, "{report}");
    assert!(report.ok > 100, "{report}");
    assert_eq!(report.reconnects, 0, "{report}");
    assert_eq!(report.generations_seen.iter().collect::<Vec<_>>(), ["1"]);
    assert_eq!(report.samples.len() as u64, report.ok);
    assert!(
        report
            .samples
            .windows(2)
            .all(|pair| pair[0].at <= pair[1].at)
    );
    assert!(report.percentile(0.99, None) < Duration::from_millis(500));
}

#[tokio::test]
async fn closing_a_keep_alive_connection_without_answering_is_a_failure() {
    let address = tcp_server(|served| {
        if served < 3 {
            Answer::KeepAlive
        } else {
            Answer::Hangup
        }
    })
    .await;
    let report = load(Target::Tcp(address), Duration::from_millis(200)).await;
    assert!(report.ok > 0, "{report}");
    let closed = report
        .failures
        .get("eof_before_response")
        .copied()
        .unwrap_or(0)
        + report.failures.get("reset").copied().unwrap_or(0);
    assert!(closed > 0, "{report}");
    assert_eq!(closed, report.failed, "{report}");
    assert!(
        report.reconnects > 0,
        "a failure is followed by a new connection: {report}"
    );
}

#[tokio::test]
async fn connection_close_means_reconnect_not_failure() {
    let address = tcp_server(|served| {
        if served % 2 == 1 {
            Answer::Close
        } else {
            Answer::KeepAlive
        }
    })
    .await;
    let report = load(Target::Tcp(address), Duration::from_millis(200)).await;
    assert_eq!(report.failed, 0, "{report}");
    assert!(report.reconnects > 10, "{report}");
    assert!(report.ok >= report.reconnects, "{report}");
}

#[tokio::test]
async fn refused_connections_are_counted() {
    let address = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let report = load(Target::Tcp(address), Duration::from_millis(100)).await;
    assert_eq!(report.ok, 0);
    let refused = report.failures.get("connect_refused").copied().unwrap_or(0);
    assert!(refused >= 2, "{report}");
    assert_eq!(refused, report.failed, "{report}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let address = tcp_server(|_| Answer::Silence).await;
    let report = load(Target::Tcp(address), Duration::from_millis(100)).await;
    assert_eq!(report.ok, 0);
    assert_eq!(report.failures.get("request_timeout"), Some(&2), "{report}");
}

#[tokio::test]
async fn stopping_lets_requests_in_flight_finish() {
    let address = tcp_server(|_| Answer::After(Duration::from_millis(300))).await;
    let report = load(Target::Tcp(address), Duration::from_millis(100)).await;
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(
        report.ok, 2,
        "each connection finishes the request it had sent: {report}"
    );
    assert!(report.elapsed >= Duration::from_millis(300));
}

#[tokio::test]
async fn serves_over_unix_sockets_and_checks_the_body() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("service.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, |_| Answer::KeepAlive));
        }
    });
    let report = load(Target::Unix(path.clone()), Duration::from_millis(100)).await;
    assert_eq!(report.failed, 0, "{report}");
    assert!(report.ok > 0);
    let config = LoadConfig {
        connections: 1,
        expect_body_prefix: Some("goodbye".to_owned()),
        ..LoadConfig::new(Target::Unix(path))
    };
    let report = baton_loadgen::run(config, tokio::time::sleep(Duration::from_millis(50))).await;
    assert_eq!(report.ok, 0);
    assert!(
        report.failures.get("unexpected_body").copied().unwrap_or(0) > 0,
        "{report}"
    );
}

#[test]
fn targets_parse() {
    assert_eq!(
        "127.0.0.1:80".parse(),
        Ok(Target::Tcp("127.0.0.1:80".parse().unwrap()))
    );
    assert_eq!(
        "unix:/run/web.sock".parse(),
        Ok(Target::Unix("/run/web.sock".into()))
    );
    assert_eq!(
        "/run/web.sock".parse(),
        Ok(Target::Unix("/run/web.sock".into()))
    );
    assert!("web:80".parse::<Target>().is_err());
}
