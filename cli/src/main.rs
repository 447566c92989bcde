#![forbid(unsafe_code)]

/// `println!` that ends the command quietly when nobody reads its output
/// any more (`baton events | head`): the standard macro panics on the
/// broken pipe, since Rust ignores SIGPIPE.
macro_rules! outln {
    () => {
        $crate::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!`, ended quietly on a broken pipe like [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!($($arg)*))
    };
}

mod demo;
mod output;
mod server_mode;

use baton_client::{AgentClient, Error, ProtocolError, StatusCode};
use baton_proto::api::{MaxParallel, Pause, RestartRequest};
use baton_proto::{
    ErrorBody, ErrorKind, EventKind, Request, Response, RestartOutcome, ServiceName, exit,
};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Drive baton: restart services without dropping connections, and see their state.
#[derive(Parser)]
#[command(name = "baton", version)]
struct Cli {
    /// The agent's control socket [default: $BATON_AGENT_SOCKET, else
    /// $XDG_RUNTIME_DIR/baton/agent.sock, else /run/baton/agent.sock].
    #[arg(long, global = true, env = "BATON_AGENT_SOCKET")]
    agent: Option<PathBuf>,
    /// Talk to the server at this URL instead of a local agent.
    #[arg(long, global = true, env = "BATON_SERVER")]
    server: Option<String>,
    /// API token for the server (an operator's to restart).
    #[arg(long, global = true, env = "BATON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificates to trust for an https:// server, besides the system's.
    #[arg(long, global = true, env = "BATON_CA_CERT")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every service with its generations, connections and last restart.
    Status {
        /// Print the agent's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hot-restart a service.
    Restart {
        service: ServiceName,
        /// Print every step as it happens; exit 0 only if the restart succeeded.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (e.g. 90s, 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Why, for the history.
        #[arg(long)]
        reason: Option<String>,
        /// Restart only this host (server mode; repeat for several). Every
        /// host that runs the service when absent.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// How many hosts restart at the same time, a count or a percentage
        /// of the restart's hosts such as 10% (server mode) [default: 1].
        #[arg(long, value_name = "N|P%")]
        max_parallel: Option<MaxParallel>,
        /// Restart this many hosts first, alone as a batch (server mode).
        #[arg(long, value_name = "N")]
        canary: Option<u32>,
        /// Wait this long after the canary batch, e.g. 60s (server mode;
        /// at most 24h).
        #[arg(long, value_name = "DURATION", requires = "canary")]
        pause: Option<Pause>,
        /// How many hosts may end without succeeding before the rollout
        /// stops and skips the rest (server mode) [default: 0].
        #[arg(long, value_name = "N")]
        failure_budget: Option<u32>,
    },
    /// Show a restart's report (with --server: the server's restart ID,
    /// across its hosts).
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Print the agent's events, oldest first.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
    },
    /// A service's output (stdout and stderr), as the agent captured it:
    /// its serving generation's last lines unless told otherwise.
    Logs {
        service: ServiceName,
        /// Keep printing new lines as they are written.
        #[arg(long, short)]
        follow: bool,
        /// Only this generation's lines.
        #[arg(long, value_name = "N")]
        generation: Option<u64>,
        /// How many of the last lines to print first.
        #[arg(long, short = 'n', value_name = "N", default_value_t = 100)]
        lines: usize,
        /// The host whose agent has the service (server mode).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
    },
    /// Have the agent read its configuration again and apply it: added
    /// services start, removed ones stop, changed ones hot-restart. A bad
    /// file changes nothing and is reported with its line.
    Reload,
    /// A service's restart history (server mode).
    History {
        service: ServiceName,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Run a server, an agent and two demo services on this machine.
    Demo {
        /// Where the server (API and dashboard) listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Keep the SQLite file, logs and configs here [default: a temporary folder].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (mut cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match front_door(&matches) {
        Ok(FrontDoor::Agent) => cli.server = None,
        Ok(FrontDoor::AsGiven) => {}
        Err(message) => {
            eprintln!("baton: {message}");
            return ExitCode::from(exit::USAGE);
        }
    }
    if let Command::Demo { listen, data_dir } = cli.command {
        return match demo::run(listen, data_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baton demo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(server) = &cli.server {
        let client = match baton_client::ServerClient::new(
            server,
            cli.token.clone(),
            cli.ca_cert.as_deref(),
        ) {
            Ok(client) => client,
            Err(e) => {
                eprintln!("baton: {e}");
                return ExitCode::from(exit::USAGE);
            }
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("baton: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = match cli.command {
            Command::Restart {
                service,
                wait,
                timeout,
                reason,
                hosts,
                max_parallel,
                canary,
                pause,
                failure_budget,
            } => {
                let body = RestartRequest {
                    reason,
                    hosts: (!hosts.is_empty()).then_some(hosts),
                    max_parallel,
                    canary,
                    pause,
                    failure_budget,
                };
                runtime.block_on(server_mode::restart(&client, &service, wait, timeout, body))
            }
            Command::Status { json } => runtime.block_on(server_mode::status(&client, json)),
            Command::History { service, limit } => {
                runtime.block_on(server_mode::history(&client, &service, limit))
            }
            Command::Show { id, json } => runtime.block_on(server_mode::show(&client, id, json)),
            Command::Logs {
                service,
                follow,
                generation,
                lines,
                host,
            } => runtime.block_on(server_mode::logs(
                &client, &service, host, generation, lines, follow,
            )),
            Command::Events { .. } | Command::Reload | Command::Demo { .. } => {
                eprintln!("baton: this command talks to an agent; drop --server");
                return ExitCode::from(exit::USAGE);
            }
        };
        return ExitCode::from(result.unwrap_or_else(|e| {
            eprintln!("baton: {e}");
            exit_code(&e)
        }));
    }
    if let Command::Logs { host: Some(_), .. } = &cli.command {
        eprintln!(
            "baton: --host chooses among the server's hosts; pass --server URL (or set BATON_SERVER)"
        );
        return ExitCode::from(exit::USAGE);
    }
    if let Command::History { .. } = cli.command {
        eprintln!("baton: history is kept by the server; pass --server URL (or set BATON_SERVER)");
        return ExitCode::from(exit::USAGE);
    }
    if let Command::Restart {
        hosts,
        max_parallel,
        canary,
        pause,
        failure_budget,
        ..
    } = &cli.command
        && (!hosts.is_empty()
            || max_parallel.is_some()
            || canary.is_some()
            || pause.is_some()
            || failure_budget.is_some())
    {
        // An agent restarts only its own host: these choose among the
        // server's hosts.
        eprintln!(
            "baton: --host, --max-parallel, --canary, --pause and --failure-budget choose among the server's hosts; pass --server URL (or set BATON_SERVER)"
        );
        return ExitCode::from(exit::USAGE);
    }
    let socket = cli.agent.unwrap_or_else(baton_proto::default_agent_socket);
    let code = match run(&socket, cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton: {e}");
            exit_code(&e)
        }
    };
    ExitCode::from(code)
}

/// Which front door a command goes to when the flags and the environment
/// name both.
#[derive(Debug, PartialEq, Eq)]
enum FrontDoor {
    /// `--agent` on the command line: a `BATON_SERVER` in the environment
    /// does not take the command elsewhere.
    Agent,
    /// The server when one is named, else the agent.
    AsGiven,
}

/// An explicit flag always wins over the environment: `--agent` over an
/// exported `BATON_SERVER` (as `--server` wins over `BATON_AGENT_SOCKET`,
/// the server being asked first). Both flags at once is a mistake.
fn front_door(matches: &clap::ArgMatches) -> Result<FrontDoor, &'static str> {
    let explicit = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    match (explicit("agent"), explicit("server")) {
        (true, true) => Err("--agent and --server name two front doors; pass one"),
        (true, false) => Ok(FrontDoor::Agent),
        (false, _) => Ok(FrontDoor::AsGiven),
    }
}

/// How long `restart --wait` waits for an agent that went away mid-restart
/// to come back (a supervisor starts it again in well under that), when the
/// command has no `--timeout` of its own.
const AGENT_RETURN_WAIT: Duration = Duration::from_secs(60);

/// The agent went away while `restart --wait` followed restart `id` (killed,
/// or restarted by its supervisor). The agent that takes over its
/// generations carries the restart on under the same id: reconnect and
/// follow it there. Its outcome, or `interrupted` when the new agent does
/// not know the restart (its state was lost; the old generation serves on).
fn follow_taken_over(
    socket: &std::path::Path,
    id: u64,
    service: &str,
    started: Instant,
    deadline: Option<Instant>,
) -> Result<Option<RestartOutcome>, Error> {
    eprintln!(
        "baton: lost the agent during restart {id}; following it on the agent that takes over"
    );
    let give_up = || deadline.unwrap_or_else(|| Instant::now() + AGENT_RETURN_WAIT);
    let mut until = give_up();
    loop {
        let mut followed = false;
        match follow_on_agent(socket, id, service, started, deadline, &mut followed) {
            // A dying agent's listener may still take a connection before
            // the kernel closes it: try again until the new agent answers.
            Err(
                Error::AgentUnreachable { .. }
                | Error::Io(_)
                | Error::Protocol(ProtocolError::Closed),
            ) if Instant::now() < until || followed => {
                if followed {
                    // Lost again once following: as long again to return.
                    until = give_up();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// One try of [`follow_taken_over`]; `followed` turns true once the agent
/// has said it carries the restart on.
fn follow_on_agent(
    socket: &std::path::Path,
    id: u64,
    service: &str,
    started: Instant,
    deadline: Option<Instant>,
    followed: &mut bool,
) -> Result<Option<RestartOutcome>, Error> {
    let mut events = AgentClient::connect(socket)?;
    events.send(Request::Events {
        after: 0,
        follow: true,
    })?;
    // Asked once subscribed: an outcome reached in between is in one of the two.
    match AgentClient::connect(socket)?.restart_report(id) {
        Ok(report) if report.service == service => {
            if report.outcome.is_some() {
                return Ok(report.outcome);
            }
        }
        Ok(_)
        | Err(Error::Agent(ErrorBody {
            kind: ErrorKind::UnknownRestart,
            ..
        })) => {
            eprintln!(
                "baton: the agent that took over does not know restart {id} (its state was lost); the old generation serves on"
            );
            return Ok(Some(RestartOutcome::Interrupted));
        }
        Err(e) => return Err(e),
    }
    *followed = true;
    loop {
        match events.receive_before(deadline)? {
            Some(Response::Event(event))
                if event.restart == Some(id) && event.service == service =>
            {
                out!("{}", output::restart_step(&event, started));
                if let EventKind::RestartFinished { outcome, .. } = event.kind {
                    return Ok(Some(outcome));
                }
            }
            Some(Response::Event(_)) => {}
            Some(Response::Error(body)) => return Err(Error::Agent(body)),
            Some(_) => return Err(ProtocolError::Unexpected { expected: "event" }.into()),
            None => return Err(ProtocolError::Closed.into()),
        }
    }
}

fn run(socket: &std::path::Path, command: Command) -> Result<u8, Error> {
    let timeout = match &command {
        Command::Restart { timeout, .. } => *timeout,
        _ => None,
    };
    let mut client = AgentClient::connect(socket)?.with_patience(timeout);
    match command {
        Command::Demo { .. } | Command::History { .. } => unreachable!("handled before connecting"),
        Command::Status { json } => {
            let status = client.status()?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                );
            } else {
                out!("{}", output::status_table(&status));
            }
            Ok(exit::SUCCEEDED)
        }
        Command::Reload => {
            let summary = client.reload()?;
            out!("{}", output::reload(&summary));
            Ok(exit::SUCCEEDED)
        }
        Command::Show { id, json } => {
            let report = client.restart_report(id)?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                out!("{}", output::report(&report));
            }
            Ok(exit::SUCCEEDED)
        }
        Command::Logs {
            service,
            follow,
            generation,
            lines,
            ..
        } => {
            client.send(Request::Logs {
                service: service.to_string(),
                generation,
                lines,
                follow,
            })?;
            if !follow {
                client.finish_sending()?;
            }
            loop {
                match client.receive()? {
                    Some(Response::Output(line)) => outln!("{}", output::output_line(&line)),
                    Some(Response::Error(body)) => return Err(Error::Agent(body)),
                    Some(_) => {
                        return Err(baton_client::ProtocolError::Unexpected {
                            expected: "output line",
                        }
                        .into());
                    }
                    None => return Ok(exit::SUCCEEDED),
                }
            }
        }
        Command::Events { follow } => {
            client.send(Request::Events { after: 0, follow })?;
            if !follow {
                // The agent closes after answering the last request it read.
                client.finish_sending()?;
            }
            loop {
                match client.receive()? {
                    Some(Response::Event(event)) => outln!("{}", output::event_line(&event)),
                    Some(Response::Error(body)) => return Err(Error::Agent(body)),
                    Some(_) => {
                        return Err(
                            baton_client::ProtocolError::Unexpected { expected: "event" }.into(),
                        );
                    }
                    None => return Ok(exit::SUCCEEDED),
                }
            }
        }
        Command::Restart {
            service,
            wait,
            timeout: _,
            reason,
            ..
        } => {
            let started = Instant::now();
            let deadline = timeout.map(|t| started + t);
            let id = client.start_restart(service.as_str(), reason, wait)?;
            outln!("restart {id} of {service} started");
            if !wait {
                return Ok(exit::SUCCEEDED);
            }
            let followed = client
                .follow_restart(deadline, |event| {
                    out!("{}", output::restart_step(&event, started));
                })
                .map(|report| report.outcome);
            let followed = match followed {
                Err(Error::Protocol(ProtocolError::Closed) | Error::Io(_)) => {
                    follow_taken_over(socket, id, service.as_str(), started, deadline)
                }
                other => other,
            };
            match followed {
                Ok(outcome) => Ok(exit::of_outcome(outcome)),
                Err(Error::TimedOut) => {
                    eprintln!(
                        "baton: gave up waiting after {}; restart {id} is still running (see `baton show {id}`)",
                        humantime::format_duration(started.elapsed())
                    );
                    Ok(exit::TIMEOUT)
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// What a CI step sees when a command did not get as far as an outcome.
fn exit_code(error: &Error) -> u8 {
    match error {
        Error::Agent(body) => match body.kind {
            ErrorKind::UnknownService | ErrorKind::UnknownRestart | ErrorKind::BadRequest => {
                exit::USAGE
            }
            ErrorKind::RestartInProgress | ErrorKind::ShuttingDown | ErrorKind::InvalidConfig => {
                exit::REFUSED
            }
            ErrorKind::UnsupportedVersion => exit::UNREACHABLE,
        },
        Error::TokenRefused { .. } => exit::NOT_AUTHORIZED,
        Error::Status { status, .. } => match *status {
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                exit::USAGE
            }
            StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS => exit::REFUSED,
            status if status.is_server_error() => exit::SERVER_ERROR,
            _ => exit::UNREACHABLE,
        },
        Error::TimedOut => exit::TIMEOUT,
        Error::AgentUnreachable { .. }
        | Error::ServerUnreachable { .. }
        | Error::Io(_)
        | Error::Protocol(_) => exit::UNREACHABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: StatusCode) -> Error {
        Error::Status {
            status,
            message: "no".into(),
            restart_id: None,
        }
    }

    #[test]
    fn a_failing_server_is_told_from_an_unreachable_one() {
        assert_eq!(
            exit_code(&answered(StatusCode::SERVICE_UNAVAILABLE)),
            exit::SERVER_ERROR
        );
        assert_eq!(
            exit_code(&answered(StatusCode::INTERNAL_SERVER_ERROR)),
            exit::SERVER_ERROR
        );
        assert_eq!(exit_code(&answered(StatusCode::CONFLICT)), exit::REFUSED);
        assert_eq!(
            exit_code(&answered(StatusCode::TOO_MANY_REQUESTS)),
            exit::REFUSED
        );
        let io = Error::Io(std::io::Error::other("reset"));
        assert_eq!(exit_code(&io), exit::UNREACHABLE);
    }
}
