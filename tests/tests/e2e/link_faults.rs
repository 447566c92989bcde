//! Faults between agent and server: a proxy in between that freezes (keeps
//! the TCP connection open but passes nothing on) must not leave either side
//! believing in a dead link.

use baton_proto::RestartOutcome;
use baton_tests::AgentUnderTest;
use baton_tests::server::ServerUnderTest;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP proxy whose current connections can be frozen: their bytes stay
/// unread in the kernel's buffers and nothing is closed, as with a proxy or
/// NAT that lost its state. New connections pass.
struct FreezingProxy {
    addr: SocketAddr,
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl FreezingProxy {
    fn start(upstream: SocketAddr) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let flags = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                flags.lock().unwrap().push(flag.clone());
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    flag.clone(),
                );
                pump(server, client, flag);
            }
        });
        FreezingProxy { addr, frozen }
    }

    fn freeze_current(&self) {
        for flag in self.frozen.lock().unwrap().iter() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, frozen: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            if frozen.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            from.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            match from.read(&mut buffer) {
                Ok(0) => return,
                Ok(n) => {
                    if frozen.load(Ordering::Relaxed) {
                        // Read just before the freeze: dropped, as a dead
                        // middlebox would.
                        continue;
                    }
                    if to.write_all(&buffer[..n]).is_err() {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    });
}

async fn online_with_run(server: &ServerUnderTest, host: &str) -> Option<String> {
    let list: serde_json::Value = server.get_json("/hosts").await;
    list["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == host && h["online"] == true)
        .map(|h| h.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_behind_a_frozen_proxy_notices_within_seconds_and_links_again() {
    let server = ServerUnderTest::start();
    let proxy = FreezingProxy::start(server.addr);
    let config = server
        .host_config("host-a", "127.0.0.1", "web", &[], "")
        .replace(&server.url(), &format!("http://{}", proxy.addr));
    let agent = AgentUnderTest::start(&config);
    let deadline = Instant::now() + Duration::from_secs(20);
    while online_with_run(&server, "host-a").await.is_none() {
        assert!(Instant::now() < deadline, "host-a never linked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.freeze_current();
    let frozen_at = Instant::now();
    let deadline = frozen_at + Duration::from_secs(10);
    while !agent.log().contains("the server sent nothing") {
        assert!(
            Instant::now() < deadline,
            "the agent did not notice the frozen link within 10s:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let noticed = frozen_at.elapsed();
    assert!(
        noticed >= Duration::from_secs(4),
        "noticed after {noticed:?}"
    );

    // Linked again through a new connection, and restarts reach it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.log().matches("linked to the server").nth(1).is_none() {
        assert!(
            Instant::now() < deadline,
            "never linked again:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restart = server.restart_and_wait("web").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:?}"
    );
}
