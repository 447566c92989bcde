//! Connection handoff as the agent brokers it (`docs/handoff.md`): a line
//! echo service in Python (standard library only) speaks both sides of the
//! protocol, and its clients never notice a restart.

use baton_proto::{ConnectionTally, Event, EventKind, RestartOutcome, RestartReport};
use baton_tests::AgentUnderTest;
use baton_tests::handoff::LINE_ECHO as SERVICE;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An agent running the service, and the folder it writes to.
struct Echo {
    agent: Arc<AgentUnderTest>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Echo {
    fn start(flags: &str) -> Echo {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("echo.py");
        std::fs::write(&script, SERVICE).unwrap();
        set_flags(dir.path(), flags);
        let agent = Arc::new(AgentUnderTest::start(&format!(
            r#"
[[service]]
name = "echo"
command = ["python3", "{script}", "{dir}"]
ready_timeout = "20s"
drain_timeout = "10s"

[[service.socket]]
name = "echo"
listen = "tcp://127.0.0.1:0"
"#,
            script = script.display(),
            dir = dir.path().display()
        )));
        let addr = agent.tcp_addr("echo", "echo");
        Echo { agent, dir, addr }
    }

    fn restart(&self) -> (Vec<Event>, RestartReport) {
        self.agent.restart("echo")
    }

    /// What generation `number` wrote about itself when it started.
    fn described(&self, number: u64) -> serde_json::Value {
        let path = self.dir.path().join(format!("generation-{number}.json"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }
}

fn set_flags(dir: &Path, flags: &str) {
    std::fs::write(dir.join("flags"), flags).unwrap();
}

/// One client connection, line by line.
struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    fn connect(addr: SocketAddr) -> LineClient {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        LineClient {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches('\n').to_string())
    }

    fn ask(&mut self, line: &str) -> std::io::Result<String> {
        self.send(format!("{line}\n").as_bytes())?;
        self.line()
    }

    fn generation(&mut self) -> u64 {
        self.ask("generation").unwrap().parse().unwrap()
    }
}

/// What a client that sent a line every 20 ms saw.
#[derive(Debug)]
struct Seen {
    lines: u64,
    generations: Vec<u64>,
    failure: Option<String>,
}

/// A client that sends a numbered line every 20 ms, and every fifth time
/// asks for the generation, until `stop`; every answer must be the line it
/// sent, in order, on the one connection.
fn steady_client(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>) -> JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut client = LineClient::connect(addr);
        let mut seen = Seen {
            lines: 0,
            generations: Vec::new(),
            failure: None,
        };
        let mut sequence = 0u64;
        while !stop.load(Ordering::Relaxed) {
            sequence += 1;
            let asked = if sequence.is_multiple_of(5) {
                "generation".to_string()
            } else {
                format!("client {id} line {sequence}")
            };
            match client.ask(&asked) {
                Ok(answer) if asked == "generation" => match answer.parse::<u64>() {
                    Ok(generation) if seen.generations.last() != Some(&generation) => {
                        seen.generations.push(generation)
                    }
                    Ok(_) => {}
                    Err(_) => {
                        seen.failure = Some(format!("generation answered {answer:?}"));
                        return seen;
                    }
                },
                Ok(answer) if answer == asked => seen.lines += 1,
                Ok(answer) => {
                    seen.failure = Some(format!("sent {asked:?}, got {answer:?}"));
                    return seen;
                }
                Err(e) => {
                    seen.failure = Some(format!("line {sequence}: {e}"));
                    return seen;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    })
}

fn kinds(report: &RestartReport) -> Vec<&EventKind> {
    report.steps.iter().map(|e| &e.kind).collect()
}

fn brokered(report: &RestartReport) -> bool {
    kinds(report)
        .iter()
        .any(|k| matches!(k, EventKind::HandoffBrokered { .. }))
}

/// Runs `restarts` restarts with `clients` steady clients connected; every
/// restart must succeed with every client handed over.
fn restarts_keep_every_client(echo: &Echo, clients: usize, restarts: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|id| steady_client(echo.addr, id, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let first = echo.agent.service("echo").generations[0].generation;
    for round in 0..restarts {
        let (_, report) = echo.restart();
        assert_eq!(
            report.outcome,
            Some(RestartOutcome::Succeeded),
            "round {round}: {report:#?}"
        );
        assert!(brokered(&report), "round {round}: {:#?}", kinds(&report));
        let tally = report.connections.expect("the drain's tally");
        assert_eq!(
            (tally.handed_over, tally.cut),
            (clients as u32, 0),
            "round {round}: {tally:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let last = first + restarts as u64;
    for (id, thread) in threads.into_iter().enumerate() {
        let seen = thread.join().unwrap();
        assert_eq!(seen.failure, None, "client {id}: {seen:?}");
        assert!(seen.lines > 20, "client {id}: {seen:?}");
        assert!(
            seen.generations.windows(2).all(|w| w[0] < w[1]),
            "client {id}: the generation went down: {seen:?}"
        );
        assert_eq!(
            seen.generations.last(),
            Some(&last),
            "client {id}: {seen:?}"
        );
        assert!(
            seen.generations.len() > restarts / 2,
            "client {id} was served by too few generations: {seen:?}"
        );
    }
}

#[test]
fn eight_clients_keep_their_connections_through_five_restarts_every_line_echoed_in_order() {
    let echo = Echo::start("");
    restarts_keep_every_client(&echo, 8, 5);
    let events = echo.agent.client().events();
    let handed: Vec<u32> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::ConnectionsHandedOver { connections, .. } => Some(connections),
            _ => None,
        })
        .collect();
    assert_eq!(handed, [8; 5]);
}

/// Waits up to 5 s for the file `name` in `dir`.
fn wait_for_file(dir: &Path, name: &str) -> bool {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if dir.join(name).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn a_declaration_behind_many_other_messages_is_seen_before_readiness() {
    use nix::sys::signal::Signal;
    let echo = Arc::new(Echo::start(""));
    set_flags(echo.dir.path(), "flood-first");
    let mut client = LineClient::connect(echo.addr);
    for generation in 2..=5u64 {
        let restarting = echo.clone();
        let restart = std::thread::spawn(move || restarting.restart());
        assert!(wait_for_file(
            echo.dir.path(),
            &format!("waiting-{generation}")
        ));
        // Both sockets fill while the agent cannot read either.
        echo.agent.signal(Signal::SIGSTOP);
        std::fs::write(echo.dir.path().join(format!("go-{generation}")), "").unwrap();
        let sent = wait_for_file(echo.dir.path(), &format!("ready-{generation}"));
        echo.agent.signal(Signal::SIGCONT);
        assert!(sent, "generation {generation} did not get to READY=1");
        let (_, report) = restart.join().unwrap();
        assert_eq!(
            report.outcome,
            Some(RestartOutcome::Succeeded),
            "{report:#?}"
        );
        assert!(
            brokered(&report),
            "generation {generation}: {:#?}",
            kinds(&report)
        );
        assert_eq!(report.connections.map(|t| t.handed_over), Some(1));
        assert_eq!(client.generation(), generation);
    }
}

#[test]
fn a_count_sent_just_before_exiting_is_in_the_tally() {
    use nix::sys::signal::Signal;
    let echo = Arc::new(Echo::start("flood-before-exit"));
    let mut client = LineClient::connect(echo.addr);
    for generation in 1..=3u64 {
        let restarting = echo.clone();
        let restart = std::thread::spawn(move || restarting.restart());
        assert!(wait_for_file(
            echo.dir.path(),
            &format!("stopping-{generation}")
        ));
        // Its count and its exit both wait while the agent cannot read.
        echo.agent.signal(Signal::SIGSTOP);
        std::fs::write(echo.dir.path().join(format!("go-stop-{generation}")), "").unwrap();
        let exiting = wait_for_file(echo.dir.path(), &format!("exiting-{generation}"));
        std::thread::sleep(Duration::from_millis(100));
        echo.agent.signal(Signal::SIGCONT);
        assert!(exiting, "generation {generation} did not get to its exit");
        let (_, report) = restart.join().unwrap();
        assert_eq!(
            report.outcome,
            Some(RestartOutcome::Succeeded),
            "{report:#?}"
        );
        assert_eq!(
            report.connections,
            Some(ConnectionTally {
                handed_over: 1,
                drained: 0,
                cut: 0
            }),
            "generation {generation}: {report:#?}"
        );
        assert_eq!(client.generation(), generation + 1);
    }
    // The serving generation stops without waiting when the agent does.
    std::fs::write(echo.dir.path().join("go-stop-4"), "").unwrap();
}

#[test]
fn a_new_generation_that_does_not_declare_handoff_gets_none_and_the_old_one_drains() {
    let echo = Echo::start("");
    let mut client = LineClient::connect(echo.addr);
    assert_eq!(client.generation(), 1);
    set_flags(echo.dir.path(), "no-handoff");
    let (_, report) = echo.restart();
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:#?}"
    );
    assert!(!brokered(&report), "{:#?}", kinds(&report));
    assert_eq!(
        report.connections,
        Some(ConnectionTally {
            handed_over: 0,
            drained: 1,
            cut: 0
        }),
        "{report:#?}"
    );
    // The old generation closed the connection it kept, as a drain does.
    assert!(client.ask("still there?").is_err());
    assert_eq!(LineClient::connect(echo.addr).generation(), 2);
}

#[test]
fn the_channel_is_a_socket_pair_with_the_agent_that_no_other_process_can_reach() {
    let echo = Echo::start("");
    let generation = echo.described(1);
    let pid = generation["pid"].as_u64().unwrap();
    let fd = generation["channel_fd"].as_u64().unwrap();
    // After the one listening socket.
    assert_eq!(fd, 4);
    assert_eq!(
        generation["channel_type"].as_i64(),
        Some(SOCK_SEQPACKET),
        "{generation}"
    );
    // Its other end is the agent's: the kernel names the agent as its peer.
    assert_eq!(
        generation["peer_pid"].as_i64(),
        Some(echo.agent.pid() as i64)
    );
    // Unnamed: no path, no abstract name (Python shows an unnamed unix
    // socket's name as empty).
    assert!(
        matches!(generation["name"].as_str(), Some("''") | Some("b''")),
        "{generation}"
    );
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    let inode = link
        .to_str()
        .and_then(|l| l.strip_prefix("socket:["))
        .and_then(|l| l.strip_suffix(']'))
        .expect("a socket")
        .to_string();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let row: Vec<&str> = table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|columns| columns.get(6) == Some(&inode.as_str()))
        .unwrap_or_else(|| panic!("socket {inode} not in /proc/net/unix"));
    // Type 5 (SOCK_SEQPACKET), connected (state 03), and no path column:
    // nothing to connect to.
    assert_eq!((row[4], row[5], row.len()), ("0005", "03", 7), "{row:?}");
    // Nor does the agent hold a named SOCK_SEQPACKET socket anyone could
    // reach a generation through.
    let agent_inodes = socket_inodes(echo.agent.pid() as u32);
    let named_seqpacket: Vec<_> = table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() > 7 && c[4] == "0005" && agent_inodes.iter().any(|i| i == c[6]))
        .collect();
    assert!(named_seqpacket.is_empty(), "{named_seqpacket:?}");
}

const SOCK_SEQPACKET: i64 = 5;

fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|link| {
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn handed_over_from_the_serving_generation_is_ignored() {
    let echo = Echo::start("bogus-handed-over");
    let mut client = LineClient::connect(echo.addr);
    assert_eq!(client.generation(), 1);
    set_flags(echo.dir.path(), "");
    let (events, report) = echo.restart();
    assert_eq!(
        report.outcome,
        Some(RestartOutcome::Succeeded),
        "{report:#?}"
    );
    // Its own count of 99 while serving changed nothing; its real count did.
    let all = echo.agent.client().events();
    let handed: Vec<_> = all
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ConnectionsHandedOver { .. }))
        .map(|e| &e.kind)
        .collect();
    assert_eq!(
        handed,
        [&EventKind::ConnectionsHandedOver {
            from_generation: 1,
            to_generation: 2,
            connections: 1
        }],
        "{events:#?}"
    );
    assert_eq!(report.connections.map(|t| t.handed_over), Some(1));
    assert!(
        echo.agent.log().contains("HandedOver(99) ignored"),
        "{}",
        echo.agent.log()
    );
    assert_eq!(client.generation(), 2);
}

/// `baton ARGS` against the agent; its standard output, once it succeeded.
fn baton(echo: &Echo, args: &[&str]) -> String {
    let out = std::process::Command::new(baton_tests::bin("baton"))
        .arg("--agent")
        .arg(&echo.agent.socket)
        .args(args)
        .env_remove("BATON_SERVER")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "baton {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_connection_handed_over_with_half_a_line_completes_it() {
    let echo = Echo::start("");
    let mut client = LineClient::connect(echo.addr);
    assert_eq!(client.generation(), 1);
    client.send(b"half of a li").unwrap();
    // Read by generation 1 before it hands the connection over.
    std::thread::sleep(Duration::from_millis(300));
    // Through the command line, which says what became of the connection.
    let waited = baton(&echo, &["restart", "echo", "--wait"]);
    assert!(
        waited.contains("\nconnections: 1 handed over, 0 drained, 0 cut\n"),
        "{waited}"
    );
    let shown = baton(&echo, &["show", "1"]);
    assert!(
        shown.contains("\n  connections: 1 handed over, 0 drained, 0 cut\n"),
        "{shown}"
    );
    client.send(b"ne\n").unwrap();
    assert_eq!(client.line().unwrap(), "half of a line");
    assert_eq!(client.generation(), 2);
}

#[test]
fn after_the_agent_upgrades_itself_restarts_still_hand_connections_over() {
    let echo = Echo::start("");
    let boot = echo.agent.status().boot_id;
    echo.agent.signal(nix::sys::signal::Signal::SIGUSR2);
    let started = Instant::now();
    echo.agent
        .wait_for("the new image", Duration::from_secs(10), |s| {
            s.boot_id != boot
        });
    assert!(started.elapsed() < Duration::from_secs(10));
    restarts_keep_every_client(&echo, 4, 2);
    // And once more after a second upgrade, with the channels the first
    // upgraded image made.
    let boot = echo.agent.status().boot_id;
    echo.agent.signal(nix::sys::signal::Signal::SIGUSR2);
    echo.agent
        .wait_for("the next image", Duration::from_secs(10), |s| {
            s.boot_id != boot
        });
    restarts_keep_every_client(&echo, 4, 1);
}
