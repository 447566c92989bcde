//! Faults between agent and server: a proxy in between that freezes (keeps
//! the TCP connection open but passes nothing on) must not leave either side
//! believing in a dead link; a link down while a restart ends and more
//! events come than the agent keeps must not lose the restart's outcome.

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
    /// While set, new connections are closed at once.
    down: Arc<AtomicBool>,
    /// Both ends of every connection, to cut them.
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl FreezingProxy {
    fn start(upstream: SocketAddr) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let down: Arc<AtomicBool> = Arc::default();
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let flags = frozen.clone();
        let (is_down, open) = (down.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if is_down.load(Ordering::Relaxed) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut ends = open.lock().unwrap();
                ends.push(client.try_clone().unwrap());
                ends.push(server.try_clone().unwrap());
                drop(ends);
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
        FreezingProxy {
            addr,
            frozen,
            down,
            streams,
        }
    }

    /// Closes every connection and refuses new ones until [`Self::restore`].
    fn cut(&self) {
        self.down.store(true, Ordering::Relaxed);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::Relaxed);
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

/// A server, and an agent of host `host-a` with one service `web` linked
/// to it through a [`FreezingProxy`].
async fn linked_through_a_proxy() -> (ServerUnderTest, FreezingProxy, AgentUnderTest) {
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
    (server, proxy, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_behind_a_frozen_proxy_notices_within_seconds_and_links_again() {
    let (server, proxy, agent) = linked_through_a_proxy().await;

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
    eprintln!("frozen link noticed by the agent after {noticed:?}");
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
    eprintln!("linked again {:?} after the freeze", frozen_at.elapsed());
    let restart = server.restart_and_wait("web").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_ends_while_the_link_is_down_and_its_events_are_evicted_keeps_its_outcome() {
    let server = ServerUnderTest::start();
    let proxy = FreezingProxy::start(server.addr);
    let config = server
        .host_config("host-a", "127.0.0.1", "web", &["--start-delay", "2s"], "")
        .replace(&server.url(), &format!("http://{}", proxy.addr))
        .replace(
            "host = \"host-a\"\n",
            "host = \"host-a\"\nevent_history = 100\n",
        )
        + &baton_tests::demo_service("other", "");
    let agent = AgentUnderTest::start(&config);
    let deadline = Instant::now() + Duration::from_secs(20);
    while online_with_run(&server, "host-a").await.is_none() {
        assert!(Instant::now() < deadline, "host-a never linked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let operator = server.client(&server.operator_token);
    let web = baton_proto::ServiceName::parse("web").unwrap();
    let id = operator
        .start_restart(&web, &Default::default())
        .await
        .expect("the restart is accepted")
        .id;
    // Cut once the agent has taken the command: the restart then ends
    // while the server cannot hear of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let restart: serde_json::Value = server.get_json(&format!("/restarts/{id}")).await;
        if restart["hosts"][0]["agent_restart_id"].is_u64() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never took the command: {restart}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    let status = agent.wait_for("web's restart ends", Duration::from_secs(20), |status| {
        status.services.iter().any(|s| {
            s.name == "web" && s.last_restart.as_ref().is_some_and(|r| r.outcome.is_some())
        })
    });
    let report = status
        .services
        .iter()
        .find(|s| s.name == "web")
        .and_then(|s| s.last_restart.clone())
        .unwrap();
    let finished_seq = report.steps.last().unwrap().seq;
    // More events than the agent keeps come after the restart's last one.
    let mut last_seq = finished_seq;
    while last_seq < finished_seq + 120 {
        let (events, _) = agent.restart("other");
        last_seq = events.last().map_or(last_seq, |e| e.seq);
    }
    let kept = agent.client().events();
    assert!(
        kept.iter().all(|e| e.seq > finished_seq),
        "the restart's events should be gone from the agent's history"
    );
    proxy.restore();

    let deadline = Instant::now() + Duration::from_secs(45);
    let restart = loop {
        let restart: serde_json::Value = server.get_json(&format!("/restarts/{id}")).await;
        if restart["state"] == "finished" {
            break restart;
        }
        assert!(
            Instant::now() < deadline,
            "the restart never ended after the link came back: {restart}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(restart["outcome"], "succeeded", "{restart}");
    let host = &restart["hosts"][0];
    assert_eq!(host["outcome_from_report"], true, "{restart}");
    assert_eq!(
        host["steps"].as_array().unwrap().len(),
        report.steps.len(),
        "{restart}"
    );
    let metrics = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("baton_event_sequence_anomalies_total{kind=\"gap\"} 0"),
        "the gap is recorded as a gap:\n{metrics}"
    );
}

/// The link freezes just as the restart command goes out: the command is
/// lost with it. Once the agent is back on a new link and its events are
/// all in, none of them the restart, the server sends the command again,
/// and the service restarts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_command_lost_with_a_frozen_link_goes_again_and_restarts_once() {
    let (server, proxy, agent) = linked_through_a_proxy().await;
    assert_eq!(agent.newest_generation(), 1);

    proxy.freeze_current();
    let restart = server.restart_and_wait("web").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::Succeeded),
        "{restart:?}\n{}",
        server.log()
    );
    assert!(
        server.log().contains("sending it again"),
        "{}",
        server.log()
    );
    assert_eq!(agent.newest_generation(), 2, "one restart, not two");
    assert_eq!(
        agent.log().matches("linked to the server").count(),
        2,
        "{}",
        agent.log()
    );
}

/// A server that lost the answer to a restart command sends the command
/// again under the same id. The real agent, linked to a server played by
/// this test, answers a command id it heard with its first answer and
/// restarts the service once; a new id is a new restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_answers_a_command_heard_again_as_before_and_restarts_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = format!(
        "host = \"host-a\"\n[server]\nurl = \"http://{}\"\ntoken = \"any\"\n{}",
        listener.local_addr().unwrap(),
        baton_tests::demo_service("web", "")
    );
    let agent = AgentUnderTest::start(&config);
    let mut server = PlayedServer::accept(listener).await;
    let answer = async |server: &mut PlayedServer, id: &str| {
        server.command(id, "web");
        server.answer_to(id).await
    };

    let first = answer(&mut server, "c-1").await;
    let restart = first.clone().expect("the restart starts");
    // Heard again while the restart runs, and again once it ended.
    assert_eq!(answer(&mut server, "c-1").await, first);
    let ended = |id: u64| {
        move |status: &baton_proto::AgentStatus| {
            status.services[0]
                .last_restart
                .as_ref()
                .is_some_and(|r| r.id == id && r.outcome.is_some())
        }
    };
    agent.wait_for("the restart ends", Duration::from_secs(30), ended(restart));
    assert_eq!(answer(&mut server, "c-1").await, first);
    assert_eq!(agent.newest_generation(), 2, "one restart for one command");

    let second = answer(&mut server, "c-2").await.expect("a new restart");
    assert_ne!(second, restart);
    agent.wait_for(
        "the second restart ends",
        Duration::from_secs(30),
        ended(second),
    );
    assert_eq!(agent.newest_generation(), 3);
}

/// The server's side of one agent link, played by a test: it welcomes the
/// agent past all its events, keeps the link alive, sends the commands it
/// is given and hands back the agent's answers.
struct PlayedServer {
    commands: tokio::sync::mpsc::UnboundedSender<baton_proto::link::ServerFrame>,
    answers: tokio::sync::mpsc::UnboundedReceiver<(
        String,
        Result<baton_proto::RestartId, baton_proto::ErrorBody>,
    )>,
}

impl PlayedServer {
    async fn accept(listener: tokio::net::TcpListener) -> PlayedServer {
        use baton_proto::link::{AgentFrame, ServerFrame};
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;

        let (tcp, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .expect("the agent dials the server")
            .unwrap();
        let mut link = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let (commands, mut to_send) = tokio::sync::mpsc::unbounded_channel::<ServerFrame>();
        let (heard, answers) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut last_seq = None;
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                let frame = tokio::select! {
                    // Commands wait for the welcome: before it the agent
                    // reads nothing else.
                    Some(frame) = to_send.recv(), if last_seq.is_some() => frame,
                    // The agent takes a silent server for a dead one.
                    _ = ticker.tick() => match last_seq {
                        Some(seq) => ServerFrame::Ack { seq },
                        None => continue,
                    },
                    message = link.next() => {
                        let Some(Ok(message)) = message else { return };
                        let Message::Text(text) = message else { continue };
                        match serde_json::from_str::<AgentFrame>(&text).unwrap() {
                            AgentFrame::Hello { last_seq: seq, .. } => {
                                last_seq = Some(seq);
                                ServerFrame::Welcome { resume_after: seq }
                            }
                            AgentFrame::RestartStarted { command_id, result } => {
                                let _ = heard.send((command_id, result));
                                continue;
                            }
                            _ => continue,
                        }
                    }
                };
                let text = serde_json::to_string(&frame).unwrap();
                if link.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        });
        PlayedServer { commands, answers }
    }

    fn command(&self, command_id: &str, service: &str) {
        self.commands
            .send(baton_proto::link::ServerFrame::Restart {
                command_id: command_id.to_owned(),
                service: service.to_owned(),
                reason: None,
            })
            .unwrap();
    }

    async fn answer_to(
        &mut self,
        command_id: &str,
    ) -> Result<baton_proto::RestartId, baton_proto::ErrorBody> {
        loop {
            let (id, result) = tokio::time::timeout(Duration::from_secs(10), self.answers.recv())
                .await
                .expect("an answer from the agent")
                .expect("the link is open");
            if id == command_id {
                return result;
            }
        }
    }
}

/// An agent that stops closes its link the WebSocket way: the server hears
/// its close, not a connection cut in the middle of a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_closes_its_link_cleanly() {
    let server = ServerUnderTest::start();
    let agent = AgentUnderTest::start(&server.host_config("host-a", "127.0.0.1", "web", &[], ""));
    let deadline = Instant::now() + Duration::from_secs(20);
    while online_with_run(&server, "host-a").await.is_none() {
        assert!(Instant::now() < deadline, "host-a never linked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(agent.stop().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("agent link closed") {
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log();
    assert!(!log.contains("protocol error"), "{log}");
    assert!(log.contains(r#"reason="closed""#), "{log}");
}
