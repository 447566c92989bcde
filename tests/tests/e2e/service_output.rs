//! A service's stdout and stderr, captured by the agent (`docs/logs.md`):
//! tagged lines in memory and in rotated files, `baton logs`, the old
//! behaviour on demand, and a service that is never held up by its output:
//! not by a fast writer, not by a folder that cannot be written, not by the
//! agent's upgrade or its `kill -9`.

use baton_proto::api::Restart;
use baton_proto::{
    EventKind, GenerationState, OutputStream, Request, Response, RestartOutcome, ServiceState,
};
use baton_testkit::{Agent, AgentSetup};
use baton_tests::server::ServerUnderTest;
use baton_tests::{AgentUnderTest, bin};
use nix::sys::signal::Signal;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A `[[service]]` running a shell script, ready as soon as it runs.
fn sh_service(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\ncommand = [\"/bin/sh\", \"-c\", '''{script}''']\nready = \"exec\"\n{extra}\n"
    )
}

fn baton(socket: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin("baton"))
        .arg("--agent")
        .arg(socket)
        .args(args)
        .env_remove("BATON_SERVER")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls until `done` holds, panicking with `what` and `context()` after
/// `timeout`.
fn eventually(
    what: &str,
    timeout: Duration,
    done: impl Fn() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Every numbered line (`line N`) in a service's files, oldest file first.
fn numbers_in_files(folder: &Path, service: &str) -> Vec<u64> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{service}.log")))
                })
                .collect()
        })
        .unwrap_or_default();
    // web.log.2, web.log.1, web.log: oldest first.
    files.sort_by_key(|p| {
        std::cmp::Reverse(
            p.extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    files
        .iter()
        .flat_map(|file| {
            read(file)
                .lines()
                .filter_map(|line| line.rsplit_once(" out line ")?.1.parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect()
}

fn pid_of(agent: &Agent, service: &str) -> u32 {
    agent.service(service).unwrap().generations[0].pid
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_service_s_output_is_captured_tagged_by_generation_and_stream_and_kept_out_of_the_agent_s_log()
{
    let agent = AgentUnderTest::start(&sh_service(
        "web",
        "echo hello from generation $BATON_GENERATION; echo trouble on stderr >&2; exec sleep 600",
        "",
    ));
    let logs = || baton(&agent.socket, &["logs", "web"]).1;
    eventually(
        "both lines in `baton logs`",
        Duration::from_secs(10),
        || logs().contains("trouble on stderr") && logs().contains("hello from"),
        || format!("{}\n{}", logs(), agent.log()),
    );
    let printed = logs();
    assert!(
        printed.contains("[1 out] hello from generation 1"),
        "{printed}"
    );
    assert!(printed.contains("[1 err] trouble on stderr"), "{printed}");

    let file = agent.dir().join("logs").join("web.log");
    eventually(
        "the lines in web.log",
        Duration::from_secs(10),
        || read(&file).contains("trouble on stderr"),
        || read(&file),
    );
    let text = read(&file);
    assert!(text.contains(" 1 out hello from generation 1\n"), "{text}");
    assert!(text.contains(" 1 err trouble on stderr\n"), "{text}");
    assert!(
        !agent.log().contains("hello from generation"),
        "the service's output is in the agent's log:\n{}",
        agent.log()
    );

    // The serving generation's lines by default; an older one on demand.
    agent.restart("web");
    eventually(
        "generation 2's line",
        Duration::from_secs(10),
        || logs().contains("[2 out] hello from generation 2"),
        logs,
    );
    assert!(!logs().contains("[1 out]"), "{}", logs());
    let (code, first, stderr) = baton(&agent.socket, &["logs", "web", "--generation", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(first.contains("[1 out] hello from generation 1"), "{first}");
    assert!(!first.contains("[2 out]"), "{first}");
    let (code, _, stderr) = baton(&agent.socket, &["logs", "nope"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("nope"), "{stderr}");
}

#[test]
fn baton_logs_follow_prints_new_lines_as_they_are_written() {
    let agent = AgentUnderTest::start(&sh_service(
        "ticker",
        "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done",
        "",
    ));
    let mut follower = Command::new(bin("baton"))
        .arg("--agent")
        .arg(&agent.socket)
        .args(["logs", "ticker", "-f", "--lines", "1"])
        .env_remove("BATON_SERVER")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(follower.stdout.take().unwrap()).lines();
    let mut ticks = Vec::new();
    for _ in 0..5 {
        let line = lines.next().expect("a line").unwrap();
        let n: u64 = line.rsplit_once("tick ").unwrap().1.parse().unwrap();
        ticks.push(n);
    }
    let _ = follower.kill();
    let _ = follower.wait();
    // One line of the past, then each new one in order.
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "not one after the other: {ticks:?}"
    );
}

#[test]
fn output_inherit_leaves_a_generation_writing_to_the_agent_s_own_output() {
    let agent = AgentUnderTest::start(&sh_service(
        "old",
        "echo inherited line; exec sleep 600",
        "output = \"inherit\"",
    ));
    eventually(
        "the line in the agent's log",
        Duration::from_secs(10),
        || agent.log().contains("inherited line"),
        || agent.log(),
    );
    assert!(!agent.dir().join("logs").join("old.log").exists());
    let (_, printed, _) = baton(&agent.socket, &["logs", "old"]);
    assert!(!printed.contains("inherited line"), "{printed}");
}

/// How long a service takes to write `bytes` of 100-byte lines, as the
/// service itself measures it, with its output going where `extra` and
/// `sink` say.
fn time_to_write(bytes: u64, sink: &str, extra: &str, top: &str) -> (Duration, AgentUnderTest) {
    let result = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let result_path = result.to_path_buf();
    let script = format!(
        "start=$(date +%s%N); yes '{}' | head -c {bytes} {sink}; end=$(date +%s%N); \
         echo $(( (end - start) / 1000000 )) > {}; exec sleep 600",
        "x".repeat(99),
        result_path.display()
    );
    let agent = AgentUnderTest::start(&format!("{top}{}", sh_service("fast", &script, extra)));
    eventually(
        "the service to finish writing",
        Duration::from_secs(180),
        || read(&result_path).trim().parse::<u64>().is_ok(),
        || agent.log(),
    );
    let millis: u64 = read(&result_path).trim().parse().unwrap();
    (Duration::from_millis(millis), agent)
}

fn mb_per_second(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64().max(0.001)
}

#[test]
fn a_service_writing_100_mb_fast_is_never_held_up_and_rotation_keeps_the_configured_files() {
    const BYTES: u64 = 100_000_000;
    let top = "[logs]\nmax_bytes = 4194304\nfiles = 3\n";
    let (baseline, _) = time_to_write(BYTES, "> /dev/null", "", top);
    let (captured, agent) = time_to_write(BYTES, "", "", top);
    let (inherited, inheriting) = time_to_write(BYTES, "", "output = \"inherit\"", top);
    drop(inheriting);
    eprintln!(
        "100 MB of 100-byte lines: to /dev/null {:?} ({:.0} MB/s), captured {:?} ({:.0} MB/s), \
         inherited into the agent's log file {:?} ({:.0} MB/s)",
        baseline,
        mb_per_second(BYTES, baseline),
        captured,
        mb_per_second(BYTES, captured),
        inherited,
        mb_per_second(BYTES, inherited),
    );

    // Every line reached the agent: the last one is in the tail.
    let logs = || baton(&agent.socket, &["logs", "fast", "--lines", "1"]).1;
    eventually(
        "the last line in the tail",
        Duration::from_secs(30),
        || logs().contains(&"x".repeat(99)),
        logs,
    );
    let folder = agent.dir().join("logs");
    eventually(
        "the files to settle",
        Duration::from_secs(30),
        || folder.join("fast.log.2").exists(),
        || format!("{:?}", std::fs::read_dir(&folder).map(|d| d.count())),
    );
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["fast.log", "fast.log.1", "fast.log.2"]);
    for name in &names {
        let size = std::fs::metadata(folder.join(name)).unwrap().len();
        assert!(size <= 4_194_304, "{name}: {size} bytes");
    }
}

#[test]
fn a_folder_that_cannot_be_written_holds_up_nothing_and_is_complained_about_rarely() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_folder = dir.path().join("file");
    std::fs::write(&not_a_folder, b"").unwrap();
    let top = format!("[logs]\nfolder = \"{}/logs\"\n", not_a_folder.display());
    let (took, agent) = time_to_write(10_000_000, "", "", &top);
    assert!(took < Duration::from_secs(30), "10 MB took {took:?}");
    let (_, printed, _) = baton(&agent.socket, &["logs", "fast", "--lines", "3"]);
    assert_eq!(printed.lines().count(), 3, "{printed}");
    let complaints = agent
        .log()
        .matches("could not write the service's output file")
        .count();
    assert!(
        (1..=took.as_secs() as usize + 2).contains(&complaints),
        "{complaints} complaints in {took:?}:\n{}",
        agent.log()
    );
}

/// Writes `line 1`, `line 2`, ... for ever, a little slower than flat out
/// (a pause every 100 lines), so a pipe nobody reads takes seconds to fill.
const COUNTER: &str =
    "i=0; while :; do i=$((i+1)); echo line $i; if [ $((i % 100)) = 0 ]; then sleep 0.01; fi; done";

/// Like [`COUNTER`], each line in two writes (its text, then its newline),
/// so a reader stopped at any moment has often read half a line.
const HALVES: &str = "i=0; while :; do i=$((i+1)); printf 'line %d' $i; printf '\\n'; \
                      if [ $((i % 100)) = 0 ]; then sleep 0.01; fi; done";

/// Every line of the service's files that is not `line N`.
fn other_lines(folder: &Path, service: &str) -> Vec<String> {
    let mut others = Vec::new();
    for index in 0..5 {
        let name = match index {
            0 => format!("{service}.log"),
            n => format!("{service}.log.{n}"),
        };
        for line in read(&folder.join(name)).lines() {
            let text = line.splitn(4, ' ').nth(3).unwrap_or("");
            let well_formed = text
                .strip_prefix("line ")
                .is_some_and(|n| n.parse::<u64>().is_ok());
            if !well_formed {
                others.push(line.to_string());
            }
        }
    }
    others
}

#[test]
fn an_upgrade_loses_no_line_and_the_writer_never_notices() {
    let agent = AgentUnderTest::start(&sh_service("counter", HALVES, ""));
    let folder = agent.dir().join("logs");
    let pid = agent.service("counter").generations[0].pid;
    eventually(
        "the first lines",
        Duration::from_secs(10),
        || numbers_in_files(&folder, "counter").len() > 1_000,
        || agent.log(),
    );
    for round in 1..=2 {
        agent.signal(Signal::SIGUSR2);
        eventually(
            "the upgrade",
            Duration::from_secs(20),
            || agent.log().matches("upgraded in place").count() == round,
            || agent.log(),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let before = numbers_in_files(&folder, "counter").len();
    eventually(
        "more lines after the upgrades",
        Duration::from_secs(10),
        || numbers_in_files(&folder, "counter").len() > before + 1_000,
        || agent.log(),
    );
    let status = agent.service("counter");
    assert_eq!(status.generations.len(), 1);
    assert_eq!(status.generations[0].pid, pid, "the writer was replaced");
    assert!(process_alive(pid));
    let cut = other_lines(&folder, "counter");
    assert!(cut.is_empty(), "lines cut in two: {cut:?}");
    let numbers = numbers_in_files(&folder, "counter");
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    if numbers != expected {
        let first_wrong = numbers
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(numbers.len());
        panic!(
            "lines lost, doubled or out of order near line {first_wrong}: {:?}\n{}",
            &numbers[first_wrong.saturating_sub(3)..(first_wrong + 3).min(numbers.len())],
            agent.log()
        );
    }
}

#[test]
fn after_a_kill_9_of_the_agent_the_writer_lives_on_and_its_output_is_captured_again() {
    let folder = tempfile::Builder::new()
        .prefix("baton-test-")
        .tempdir()
        .unwrap();
    let services = sh_service("counter", COUNTER, "");
    let start = || {
        AgentSetup::new(bin("baton-agent"), services.clone())
            .in_folder(folder.path())
            .env("BATON_LOG", "info")
            .start()
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let mut agent = start();
    agent.wait_all_ready(Duration::from_secs(30)).unwrap();
    let logs = folder.path().join("logs");
    let pid = pid_of(&agent, "counter");
    eventually(
        "the first lines",
        Duration::from_secs(10),
        || numbers_in_files(&logs, "counter").len() > 1_000,
        || agent.process().log(),
    );
    agent.process_mut().kill();
    let killed_log = agent.process().log();
    drop(agent);
    let at_kill = numbers_in_files(&logs, "counter").last().copied().unwrap();
    // Long enough for a writer without a reader to die of EPIPE many
    // times over; too short to fill the pipe's 1 MiB at this pace.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        process_alive(pid),
        "the service died while no agent ran\n{killed_log}"
    );

    let agent = start();
    agent.wait_all_ready(Duration::from_secs(30)).unwrap();
    assert_eq!(pid_of(&agent, "counter"), pid, "{}", agent.process().log());
    eventually(
        "lines written after the kill, captured by the new agent",
        Duration::from_secs(20),
        || {
            numbers_in_files(&logs, "counter")
                .last()
                .is_some_and(|n| *n > at_kill + 20_000)
        },
        || agent.process().log(),
    );
    // What the writer wrote while no agent ran waited in the pipe: from
    // the first line the new agent read, none is missing.
    let numbers = numbers_in_files(&logs, "counter");
    let resumed = numbers.iter().position(|n| *n > at_kill).unwrap();
    let after = &numbers[resumed..];
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap after the new agent took over"
    );
    let lost = after[0] - at_kill - 1;
    eprintln!("lines read by the killed agent and never written to a file: {lost}");
    let status = agent.service("counter").unwrap();
    assert_eq!(status.state, ServiceState::Ready);
    assert_eq!(status.generations[0].state, GenerationState::Ready);
    let mut agent = agent;
    agent.process_mut().stop();
}

/// A service that says `READY=1` (from the process that stays), unless
/// the file `broken` exists: then it explains itself on stderr, with
/// markup and a terminal colour code, and exits.
fn fussy_service(broken: &Path) -> String {
    let script = format!(
        "if [ -f {broken} ]; then echo starting; echo '<b>fatal</b>: no key \"db\" in /etc/web.toml' >&2; \
         printf 'colour \\033[31mred\\n' >&2; exit 3; fi; \
         exec python3 -c \"import os, socket, time; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); \
         s.connect(os.environ['NOTIFY_SOCKET']); s.send(b'READY=1'); time.sleep(600)\"",
        broken = broken.display()
    );
    format!(
        "[[service]]\nname = \"web\"\ncommand = [\"/bin/sh\", \"-c\", '''{script}''']\nready_timeout = \"10s\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_restart_says_why_in_the_new_generation_s_words_in_the_report_the_api_and_the_page()
 {
    let server = ServerUnderTest::start();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    let agent = AgentUnderTest::start(&format!(
        "host = \"alpha\"\n{}{}",
        server.agent_section("alpha"),
        fussy_service(&broken)
    ));
    server.wait_for_hosts(1).await;
    std::fs::write(&broken, b"").unwrap();
    let restart = server.restart_and_wait("web").await;
    assert_eq!(
        restart.outcome,
        Some(RestartOutcome::RolledBack),
        "{restart:#?}"
    );

    // The API.
    let host = &restart.hosts[0];
    // Two pipes, read apart: each stream in its order, not one against
    // the other.
    let said = |stream: OutputStream| -> Vec<&str> {
        host.output_tail
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text.as_str())
            .collect()
    };
    assert_eq!(said(OutputStream::Stdout), ["starting"], "{host:#?}");
    assert_eq!(
        said(OutputStream::Stderr),
        [
            "<b>fatal</b>: no key \"db\" in /etc/web.toml",
            // Escaped by the server, as every string an agent sends.
            "colour \\u{1b}[31mred",
        ],
        "{host:#?}"
    );
    assert!(host.output_tail.iter().all(|l| l.generation == 2));
    let fetched: Restart = server.get_json(&format!("/restarts/{}", restart.id)).await;
    assert_eq!(fetched.hosts[0].output_tail, host.output_tail);

    // The agent's own report of its restart.
    let report = agent.client().request(Request::GetRestart {
        id: host.agent_restart_id.unwrap(),
    });
    let Response::Restart(report) = report else {
        panic!("{report:?}")
    };
    assert_eq!(report.output_tail.len(), 3, "{report:#?}");
    assert!(
        report
            .output_tail
            .iter()
            .any(|l| l.text.contains("<b>fatal</b>"))
    );
    let tail_step = report
        .steps
        .iter()
        .position(|s| matches!(s.kind, EventKind::OutputTail { .. }))
        .expect("an output_tail step");
    assert!(matches!(
        report.steps[tail_step + 1].kind,
        EventKind::RestartFinished { .. }
    ));

    // The restart page, escaped.
    let page = server
        .page_as_viewer(&format!("/restarts/{}", restart.id))
        .await;
    let shown = page
        .split("id=\"output-alpha\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no output on the restart page: {page}"));
    let shown = &shown[..shown.find("</pre>").unwrap()];
    assert!(shown.contains("Last output of generation 2"), "{shown}");
    assert!(
        shown.contains("&#60;b&#62;fatal&#60;/b&#62;")
            || shown.contains("&lt;b&gt;fatal&lt;/b&gt;"),
        "{shown}"
    );
    assert!(!shown.contains("<b>"), "{shown}");
    assert!(!shown.contains('\u{1b}'), "{shown}");
    assert!(shown.contains("log-err"), "{shown}");
}

/// The highest `tick N` each instance (`instance I tick N`) wrote, from
/// `baton logs`.
fn ticks_by_instance(socket: &Path) -> std::collections::BTreeMap<u32, u64> {
    let (_, printed, _) = baton(socket, &["logs", "multi", "--lines", "1000"]);
    let mut last = std::collections::BTreeMap::new();
    for line in printed.lines() {
        let Some((_, rest)) = line.split_once("instance ") else {
            continue;
        };
        let Some((index, tick)) = rest.split_once(" tick ") else {
            continue;
        };
        if let (Ok(index), Ok(tick)) = (index.parse::<u32>(), tick.trim().parse::<u64>()) {
            let seen = last.entry(index).or_insert(0);
            *seen = (*seen).max(tick);
        }
    }
    last
}

#[test]
fn every_instance_s_output_is_captured_and_stays_captured_across_an_upgrade() {
    let agent = AgentUnderTest::start(&sh_service(
        "multi",
        "i=0; while :; do i=$((i+1)); echo instance $BATON_INSTANCE tick $i; sleep 0.05; done",
        "instances = 3",
    ));
    let all_three = || ticks_by_instance(&agent.socket).len() == 3;
    eventually(
        "lines from each of the three instances",
        Duration::from_secs(15),
        all_three,
        || format!("{:?}\n{}", ticks_by_instance(&agent.socket), agent.log()),
    );
    let pids = |agent: &AgentUnderTest| -> Vec<Option<u32>> {
        agent.service("multi").generations[0]
            .instances
            .iter()
            .map(|i| i.pid)
            .collect()
    };
    let before = pids(&agent);
    agent.signal(Signal::SIGUSR2);
    eventually(
        "the upgrade",
        Duration::from_secs(20),
        || agent.log().contains("upgraded in place"),
        || agent.log(),
    );
    let at_upgrade = ticks_by_instance(&agent.socket);
    eventually(
        "each instance's lines after the upgrade",
        Duration::from_secs(15),
        || {
            let now = ticks_by_instance(&agent.socket);
            (0..3).all(|i| {
                now.get(&i).copied().unwrap_or(0) > at_upgrade.get(&i).copied().unwrap_or(0) + 10
            })
        },
        || {
            format!(
                "{at_upgrade:?} → {:?}\n{}",
                ticks_by_instance(&agent.socket),
                agent.log()
            )
        },
    );
    assert_eq!(pids(&agent), before, "an instance was replaced");
}

#[test]
fn after_a_kill_9_of_the_agent_every_instance_s_output_is_captured_again() {
    let folder = tempfile::Builder::new()
        .prefix("baton-test-")
        .tempdir()
        .unwrap();
    let services = sh_service(
        "multi",
        "i=0; while :; do i=$((i+1)); echo instance $BATON_INSTANCE tick $i; sleep 0.05; done",
        "instances = 3",
    );
    let start = || {
        AgentSetup::new(bin("baton-agent"), services.clone())
            .in_folder(folder.path())
            .env("BATON_LOG", "info")
            .start()
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let socket = folder.path().join("agent.sock");
    let mut agent = start();
    agent.wait_all_ready(Duration::from_secs(30)).unwrap();
    eventually(
        "lines from each of the three instances",
        Duration::from_secs(15),
        || ticks_by_instance(&socket).len() == 3,
        || agent.process().log(),
    );
    let at_kill = ticks_by_instance(&socket);
    agent.process_mut().kill();
    drop(agent);
    std::thread::sleep(Duration::from_millis(500));
    let agent = start();
    agent.wait_all_ready(Duration::from_secs(30)).unwrap();
    eventually(
        "each instance's new lines read by the new agent",
        Duration::from_secs(15),
        || {
            let now = ticks_by_instance(&socket);
            (0..3).all(|i| now.get(&i).copied().unwrap_or(0) > at_kill[&i] + 20)
        },
        || {
            format!(
                "{at_kill:?} → {:?}\n{}",
                ticks_by_instance(&socket),
                agent.process().log()
            )
        },
    );
    assert!(
        !agent.process().log().contains("no longer captured"),
        "{}",
        agent.process().log()
    );
    let mut agent = agent;
    agent.process_mut().stop();
}
