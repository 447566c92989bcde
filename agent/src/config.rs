//! The agent's TOML configuration, parsed into validated types.
//!
//! Parse, don't validate: everything the rest of the agent reads has already
//! been checked here, and every error names the file, the line and the field.

use baton_proto::ServiceName;
use nix::sys::signal::Signal;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub control_socket: PathBuf,
    /// Where generations send `READY=1`; next to the control socket unless set.
    pub notify_socket: PathBuf,
    /// The name this host reports; the kernel's host name unless set.
    pub host: Option<String>,
    /// The control plane this agent reports to, if any.
    pub server: Option<ServerConfig>,
    pub services: Vec<ServiceConfig>,
    /// Give each generation a cgroup of its own where a writable cgroup v2
    /// hierarchy exists (`cgroups = false` turns that off: each generation
    /// then starts a session of its own instead).
    pub cgroups: bool,
    /// How many events the agent keeps for the server and `baton events`
    /// (`event_history`); restart reports are kept apart from them.
    pub event_history: usize,
    /// Where captured output is written, and how much is kept (`[logs]`).
    pub logs: crate::output::files::FileLimits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT` (or `ws://`, `wss://`); the
    /// agent dials `/agent/v1/connect`. Several (`urls`) are servers on one
    /// database: the link tries them in turn, never none.
    pub urls: Vec<String>,
    pub token: String,
    /// Where the token was read from, when not from the config itself.
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates trusted for `https://` besides the system's.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
    pub user: Option<String>,
    pub ready: Readiness,
    pub ready_timeout: Duration,
    pub stop_signal: Signal,
    pub drain_timeout: Duration,
    /// After the new generation of a restart is ready, both generations
    /// accept for this long before the old one is told to stop: for servers
    /// that say ready before their workers are (gunicorn's arbiter). 0 stops
    /// the old one at once.
    pub min_overlap: Duration,
    pub restart_on_crash: bool,
    /// Nice value of a generation until it is ready, so its warm-up yields the
    /// CPU to the generation that is serving. 0 leaves the priority alone.
    pub warmup_nice: i32,
    pub sockets: Vec<SocketConfig>,
    /// How many processes a generation runs on the same sockets
    /// (`BATON_INSTANCE`, `BATON_INSTANCES`).
    pub instances: u32,
    /// How many new instances a restart may run beyond `instances` before
    /// it stops old ones: `instances` starts the whole new generation at
    /// once; fewer replaces the old one in batches of this size.
    pub max_surge: u32,
    /// The variable of `env` whose value is the version the service runs,
    /// until a generation declares its own with `X_BATON_VERSION=`.
    pub version_env: Option<String>,
    /// Where the generations' stdout and stderr go (`output`).
    pub output: OutputMode,
}

/// `output = "capture"` (the default): the agent reads each generation's
/// stdout and stderr (`docs/logs.md`); `"inherit"`: the generations write
/// to the agent's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    Capture,
    Inherit,
}

pub use baton_proto::MAX_INSTANCES;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The generation sends `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    /// Running is ready.
    Exec,
    /// `GET` on an address the generation owns answers 2xx.
    Http(HttpProbe),
    /// A TCP connect to an address the generation owns succeeds.
    Tcp { addr: ProbeTemplate },
}

/// `http://AUTHORITY/PATH`, split once when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// `host:port`, also sent as the `Host` header.
    pub authority: ProbeTemplate,
    /// Starts with `/`.
    pub path: ProbeTemplate,
}

impl Readiness {
    pub fn uses_probe_port(&self) -> bool {
        match self {
            Readiness::Http(http) => http.authority.uses_port() || http.path.uses_port(),
            Readiness::Tcp { addr } => addr.uses_port(),
            Readiness::Notify | Readiness::Exec => false,
        }
    }
}

/// Probe text that may hold `{generation}` and `{port}` (a free port the agent
/// picks for each generation and passes as `BATON_PROBE_PORT`), split at its
/// placeholders once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTemplate(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Generation,
    Port,
}

impl ProbeTemplate {
    pub fn parse(text: &str) -> Self {
        let mut pieces = Vec::new();
        let mut rest = text;
        loop {
            let next = [("{generation}", Piece::Generation), ("{port}", Piece::Port)]
                .into_iter()
                .filter_map(|(mark, piece)| rest.find(mark).map(|at| (at, mark, piece)))
                .min_by_key(|(at, _, _)| *at);
            let Some((at, mark, piece)) = next else { break };
            if at > 0 {
                pieces.push(Piece::Text(rest[..at].to_string()));
            }
            pieces.push(piece);
            rest = &rest[at + mark.len()..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        ProbeTemplate(pieces)
    }

    pub fn uses_port(&self) -> bool {
        self.0.contains(&Piece::Port)
    }

    /// Without a port, `{port}` stays as written.
    pub fn fill(&self, generation: u64, port: Option<u16>) -> String {
        let mut text = String::new();
        for piece in &self.0 {
            match (piece, port) {
                (Piece::Text(t), _) => text.push_str(t),
                (Piece::Generation, _) => text.push_str(&generation.to_string()),
                (Piece::Port, Some(port)) => text.push_str(&port.to_string()),
                (Piece::Port, None) => text.push_str("{port}"),
            }
        }
        text
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketConfig {
    pub name: String,
    pub listen: ListenAddr,
    pub backlog: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} has no scheme; use tcp://, udp:// or unix://"))?;
        match scheme {
            "tcp" | "udp" => {
                let addr: SocketAddr = rest.parse().map_err(|_| {
                    format!(
                        "{rest:?} is not an IP address and port, like 127.0.0.1:8000 or [::1]:8000"
                    )
                })?;
                Ok(if scheme == "tcp" {
                    ListenAddr::Tcp(addr)
                } else {
                    ListenAddr::Udp(addr)
                })
            }
            "unix" => {
                let path = PathBuf::from(rest);
                if !path.is_absolute() {
                    return Err(format!("unix socket path {rest:?} must be absolute"));
                }
                Ok(ListenAddr::Unix(path))
            }
            other => Err(format!(
                "unknown scheme {other:?}; use tcp://, udp:// or unix://"
            )),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
            ListenAddr::Udp(a) => write!(f, "udp://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

impl ConfigError {
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => Some(*line),
            ConfigError::Read { .. } => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    control_socket: Option<PathBuf>,
    notify_socket: Option<PathBuf>,
    host: Option<String>,
    server: Option<RawServer>,
    cgroups: Option<bool>,
    event_history: Option<Spanned<usize>>,
    logs: Option<RawLogs>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    folder: Option<PathBuf>,
    max_bytes: Option<Spanned<u64>>,
    files: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    url: Option<Spanned<String>>,
    urls: Option<Spanned<Vec<Spanned<String>>>>,
    token: Option<String>,
    token_file: Option<Spanned<PathBuf>>,
    ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    command: Spanned<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    workdir: Option<PathBuf>,
    user: Option<Spanned<String>>,
    ready: Option<Spanned<String>>,
    ready_timeout: Option<Spanned<String>>,
    stop_signal: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    min_overlap: Option<Spanned<String>>,
    #[serde(default = "default_true")]
    restart_on_crash: bool,
    warmup_nice: Option<Spanned<i32>>,
    instances: Option<Spanned<i64>>,
    max_surge: Option<Spanned<i64>>,
    output: Option<Spanned<String>>,
    #[serde(default, rename = "socket")]
    sockets: Vec<RawSocket>,
    version_env: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocket {
    name: Spanned<String>,
    listen: Spanned<String>,
    backlog: Option<Spanned<i32>>,
}

fn default_true() -> bool {
    true
}

pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BACKLOG: i32 = 4096;
/// `min_overlap` keeps two generations serving; past a few minutes that is
/// a mistake, not a warm-up.
pub const MAX_MIN_OVERLAP: Duration = Duration::from_secs(300);
/// Measured with `baton-bench`: p99 during restart windows drops by about a
/// third when the warm-up runs at nice 10 (README, "Benchmark").
pub const DEFAULT_WARMUP_NICE: i32 = 10;
/// Each service's output file is rotated at this size (`[logs] max_bytes`).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Files kept per service, the one written included (`[logs] files`).
pub const DEFAULT_LOG_FILES: u32 = 5;
const MIN_LOG_MAX_BYTES: u64 = 4096;
const MAX_LOG_FILES: u32 = 1000;

impl Config {
    /// The files holding the server token (the config itself, or its
    /// `token_file`) that users other than their owner may read: whoever can
    /// read the token can speak for this host to the server.
    pub fn token_readable_by_others(&self, config_path: &Path) -> Vec<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let Some(server) = &self.server else {
            return Vec::new();
        };
        let holder = server.token_file.as_deref().unwrap_or(config_path);
        match std::fs::metadata(holder) {
            Ok(metadata) if metadata.permissions().mode() & 0o077 != 0 => {
                vec![holder.to_path_buf()]
            }
            _ => Vec::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// `origin` names the text in errors (the file path).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let err = |span: Option<Range<usize>>, message: String| {
            let (line, column) = span
                .map(|s| line_and_column(text, s.start))
                .unwrap_or((1, 1));
            ConfigError::Invalid {
                path: origin.to_string(),
                line,
                column,
                message,
            }
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().to_string();
            err(e.span(), message)
        })?;

        let control_socket = raw
            .control_socket
            .unwrap_or_else(baton_proto::default_agent_socket);
        let notify_socket = raw.notify_socket.unwrap_or_else(|| {
            control_socket
                .parent()
                .unwrap_or(Path::new("/"))
                .join("notify.sock")
        });

        let mut services = Vec::with_capacity(raw.services.len());
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for raw_service in raw.services {
            let service = parse_service(raw_service, &err)?;
            services.push(service);
        }
        for service in &services {
            if !names.insert(service.name.clone()) {
                return Err(err(
                    find_span(text, &format!("\"{}\"", service.name), 1),
                    format!("service {:?} is defined twice", service.name),
                ));
            }
            for socket in &service.sockets {
                let is_ephemeral = matches!(&socket.listen,
                    ListenAddr::Tcp(a) | ListenAddr::Udp(a) if a.port() == 0);
                if !is_ephemeral && !addresses.insert(socket.listen.clone()) {
                    return Err(err(
                        find_span(text, &socket.listen.to_string(), 2),
                        format!(
                            "service {:?}, socket {:?}: {} is already used by another socket",
                            service.name, socket.name, socket.listen
                        ),
                    ));
                }
            }
        }
        let server = match raw.server {
            None => None,
            Some(server) => Some(parse_server(server, find_span(text, "[server]", 1), &err)?),
        };
        let event_history = match raw.event_history {
            None => crate::events::DEFAULT_EVENT_HISTORY,
            Some(n) if *n.get_ref() >= crate::events::MIN_EVENT_HISTORY => n.into_inner(),
            Some(n) => {
                return Err(err(
                    Some(n.span()),
                    format!(
                        "event_history: must be at least {}",
                        crate::events::MIN_EVENT_HISTORY
                    ),
                ));
            }
        };
        let raw_logs = raw.logs.unwrap_or(RawLogs {
            folder: None,
            max_bytes: None,
            files: None,
        });
        let max_bytes = match raw_logs.max_bytes {
            None => DEFAULT_LOG_MAX_BYTES,
            Some(n) if *n.get_ref() >= MIN_LOG_MAX_BYTES => n.into_inner(),
            Some(n) => {
                return Err(err(
                    Some(n.span()),
                    format!("logs field `max_bytes`: must be at least {MIN_LOG_MAX_BYTES}"),
                ));
            }
        };
        let files = match raw_logs.files {
            None => DEFAULT_LOG_FILES,
            Some(n) if (1..=MAX_LOG_FILES).contains(n.get_ref()) => n.into_inner(),
            Some(n) => {
                return Err(err(
                    Some(n.span()),
                    format!("logs field `files`: must be between 1 and {MAX_LOG_FILES}"),
                ));
            }
        };
        // Beside the state file (next to the control socket) unless set.
        let folder = raw_logs.folder.unwrap_or_else(|| {
            control_socket
                .parent()
                .unwrap_or(Path::new("/"))
                .join("logs")
        });
        let logs = crate::output::files::FileLimits {
            folder,
            max_bytes,
            files,
        };
        Ok(Config {
            logs,
            control_socket,
            notify_socket,
            host: raw.host,
            server,
            services,
            cgroups: raw.cgroups.unwrap_or(true),
            event_history,
        })
    }
}

fn parse_server(
    raw: RawServer,
    section_span: Option<Range<usize>>,
    err: &impl Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<ServerConfig, ConfigError> {
    let (urls, url_span, field) = match (raw.url, raw.urls) {
        (Some(url), None) => {
            let span = url.span();
            (vec![url], span, "url")
        }
        (None, Some(urls)) => {
            let span = urls.span();
            let urls = urls.into_inner();
            if urls.is_empty() {
                return Err(err(
                    Some(span),
                    "server field `urls`: name at least one server".to_string(),
                ));
            }
            (urls, span, "urls")
        }
        (None, None) => {
            return Err(err(
                section_span,
                "server: set `url` (one server) or `urls` (servers tried in turn)".to_string(),
            ));
        }
        (Some(url), Some(_)) => {
            return Err(err(
                Some(url.span()),
                "server: set either `url` or `urls`, not both".to_string(),
            ));
        }
    };
    let mut checked: Vec<String> = Vec::with_capacity(urls.len());
    for url in urls {
        let span = url.span();
        let url = url.into_inner();
        let rest = ["http://", "ws://", "https://", "wss://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme));
        match rest {
            Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {}
            _ => {
                return Err(err(
                    Some(span),
                    format!(
                        "server field `{field}`: {url:?} is not like \"http://HOST:PORT\" or \"https://HOST:PORT\""
                    ),
                ));
            }
        }
        let url = url.trim_end_matches('/').to_string();
        if checked.contains(&url) {
            return Err(err(
                Some(span),
                format!("server field `{field}`: {url:?} is listed twice"),
            ));
        }
        checked.push(url);
    }
    let mut token_file = None;
    let token = match (raw.token, raw.token_file) {
        (Some(token), None) => token,
        (None, Some(file)) => {
            let span = file.span();
            let path = file.into_inner();
            token_file = Some(path.clone());
            std::fs::read_to_string(&path)
                .map(|t| t.trim().to_string())
                .map_err(|e| {
                    err(
                        Some(span),
                        format!("server field `token_file`: {}: {e}", path.display()),
                    )
                })?
        }
        _ => {
            return Err(err(
                Some(url_span),
                "server: set exactly one of `token` and `token_file`".to_string(),
            ));
        }
    };
    if token.is_empty() {
        return Err(err(
            Some(url_span),
            "server: the token is empty".to_string(),
        ));
    }
    // Checked now, so a missing or broken CA file is a config error with
    // its line, not a link that never comes up.
    let ca_file = match raw.ca_file {
        None => None,
        Some(file) => {
            let span = file.span();
            let path = file.into_inner();
            baton_tls::read_certificates(&path)
                .map_err(|e| err(Some(span), format!("server field `ca_file`: {e}")))?;
            Some(path)
        }
    };
    Ok(ServerConfig {
        urls: checked,
        token,
        token_file,
        ca_file,
    })
}

fn parse_service(
    raw: RawService,
    err: &impl Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<ServiceConfig, ConfigError> {
    let name_span = raw.name.span();
    let name = raw.name.into_inner();
    if let Err(problem) = validate_name(&name) {
        return Err(err(Some(name_span), format!("field `name`: {problem}")));
    }
    let at = |field: &str| format!("service {name:?}, field `{field}`");

    let command_span = raw.command.span();
    let command = raw.command.into_inner();
    if command.is_empty() || command[0].is_empty() {
        return Err(err(
            Some(command_span),
            format!("{}: must name a program", at("command")),
        ));
    }

    let ready = match raw.ready {
        None => Readiness::Notify,
        Some(spanned) => {
            let span = spanned.span();
            parse_readiness(spanned.get_ref())
                .map_err(|problem| err(Some(span), format!("{}: {problem}", at("ready"))))?
        }
    };
    let ready_timeout = parse_duration_field(raw.ready_timeout, DEFAULT_READY_TIMEOUT)
        .map_err(|(span, problem)| err(span, format!("{}: {problem}", at("ready_timeout"))))?;
    let drain_timeout = parse_duration_field(raw.drain_timeout, DEFAULT_DRAIN_TIMEOUT)
        .map_err(|(span, problem)| err(span, format!("{}: {problem}", at("drain_timeout"))))?;
    let min_overlap_span = raw.min_overlap.as_ref().map(Spanned::span);
    let min_overlap = parse_duration_field(raw.min_overlap, Duration::ZERO)
        .map_err(|(span, problem)| err(span, format!("{}: {problem}", at("min_overlap"))))?;
    if min_overlap > MAX_MIN_OVERLAP {
        return Err(err(
            min_overlap_span,
            format!(
                "{}: {} is longer than the most allowed, {}",
                at("min_overlap"),
                humantime::format_duration(min_overlap),
                humantime::format_duration(MAX_MIN_OVERLAP)
            ),
        ));
    }
    let stop_signal = match raw.stop_signal {
        None => Signal::SIGTERM,
        Some(spanned) => {
            let span = spanned.span();
            parse_signal(spanned.get_ref())
                .map_err(|problem| err(Some(span), format!("{}: {problem}", at("stop_signal"))))?
        }
    };
    if let Some(user) = &raw.user
        && user.get_ref().is_empty()
    {
        return Err(err(
            Some(user.span()),
            format!("{}: must not be empty", at("user")),
        ));
    }
    let warmup_nice = match raw.warmup_nice {
        // Only an agent that may raise the priority again (root) lowers it:
        // otherwise the generation would serve at nice 10 for good.
        None if nix::unistd::geteuid().is_root() => DEFAULT_WARMUP_NICE,
        None => 0,
        Some(nice) if (0..=19).contains(nice.get_ref()) => nice.into_inner(),
        Some(nice) => {
            return Err(err(
                Some(nice.span()),
                format!("{}: must be between 0 and 19", at("warmup_nice")),
            ));
        }
    };

    let instances = match raw.instances {
        None => 1,
        Some(n) if (1..=i64::from(MAX_INSTANCES)).contains(n.get_ref()) => *n.get_ref() as u32,
        Some(n) => {
            return Err(err(
                Some(n.span()),
                format!("{}: must be between 1 and {MAX_INSTANCES}", at("instances")),
            ));
        }
    };
    let max_surge = match raw.max_surge {
        None => instances,
        Some(n) if (1..=i64::from(instances)).contains(n.get_ref()) => *n.get_ref() as u32,
        Some(n) => {
            return Err(err(
                Some(n.span()),
                format!(
                    "{}: must be between 1 and `instances` ({instances})",
                    at("max_surge")
                ),
            ));
        }
    };
    let output = match raw.output {
        None => OutputMode::Capture,
        Some(mode) => match mode.get_ref().as_str() {
            "capture" => OutputMode::Capture,
            "inherit" => OutputMode::Inherit,
            other => {
                return Err(err(
                    Some(mode.span()),
                    format!(
                        "{}: {other:?} is neither \"capture\" nor \"inherit\"",
                        at("output")
                    ),
                ));
            }
        },
    };

    let mut env = BTreeMap::new();
    for (key, value) in raw.env {
        let span = key.span();
        let key = key.into_inner();
        check_env(&key, &value)
            .map_err(|problem| err(Some(span), format!("{}: {problem}", at("env"))))?;
        env.insert(key, value);
    }

    let version_env = match raw.version_env {
        None => None,
        Some(spanned) => {
            let span = spanned.span();
            let key = spanned.into_inner();
            check_version_env(&key, &env)
                .map_err(|problem| err(Some(span), format!("{}: {problem}", at("version_env"))))?;
            Some(key)
        }
    };

    let mut sockets = Vec::with_capacity(raw.sockets.len());
    let mut socket_names = HashSet::new();
    for raw_socket in raw.sockets {
        let name_span = raw_socket.name.span();
        let socket_name = raw_socket.name.into_inner();
        validate_name(&socket_name).map_err(|problem| {
            err(
                Some(name_span.clone()),
                format!("service {name:?}, socket field `name`: {problem}"),
            )
        })?;
        if !socket_names.insert(socket_name.clone()) {
            return Err(err(
                Some(name_span),
                format!("service {name:?}: socket {socket_name:?} is defined twice"),
            ));
        }
        let listen_span = raw_socket.listen.span();
        let listen = ListenAddr::parse(raw_socket.listen.get_ref()).map_err(|problem| {
            err(
                Some(listen_span),
                format!("service {name:?}, socket {socket_name:?}, field `listen`: {problem}"),
            )
        })?;
        let backlog = match raw_socket.backlog {
            None => DEFAULT_BACKLOG,
            Some(b) if *b.get_ref() > 0 => b.into_inner(),
            Some(b) => {
                return Err(err(
                    Some(b.span()),
                    format!(
                        "service {name:?}, socket {socket_name:?}, field `backlog`: must be positive"
                    ),
                ));
            }
        };
        sockets.push(SocketConfig {
            name: socket_name,
            listen,
            backlog,
        });
    }

    Ok(ServiceConfig {
        name,
        command,
        env,
        workdir: raw.workdir,
        user: raw.user.map(Spanned::into_inner),
        ready,
        ready_timeout,
        stop_signal,
        drain_timeout,
        min_overlap,
        restart_on_crash: raw.restart_on_crash,
        warmup_nice,
        sockets,
        instances,
        max_surge,
        version_env,
        output,
    })
}

/// Names end up in URLs, file names and `LISTEN_FDNAMES` (where `:` separates).
/// Service and socket names follow the one rule of [`ServiceName`].
pub fn validate_name(name: &str) -> Result<(), String> {
    ServiceName::parse(name)
        .map(drop)
        .map_err(|e| format!("{name:?}: {}", e.problem()))
}

fn parse_readiness(text: &str) -> Result<Readiness, String> {
    match text {
        "notify" => Ok(Readiness::Notify),
        "exec" => Ok(Readiness::Exec),
        _ if text.starts_with("http://") => {
            let rest = &text["http://".len()..];
            if rest.is_empty() || rest.starts_with('/') {
                return Err(format!("{text:?} has no host"));
            }
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, "/"),
            };
            Ok(Readiness::Http(HttpProbe {
                authority: ProbeTemplate::parse(authority),
                path: ProbeTemplate::parse(path),
            }))
        }
        _ if text.starts_with("tcp://") => Ok(Readiness::Tcp {
            addr: ProbeTemplate::parse(&text["tcp://".len()..]),
        }),
        _ => Err(format!(
            "{text:?} is not one of \"notify\", \"exec\", \"http://HOST:PORT/PATH\", \"tcp://HOST:PORT\""
        )),
    }
}

fn parse_duration_field(
    field: Option<Spanned<String>>,
    default: Duration,
) -> Result<Duration, (Option<Range<usize>>, String)> {
    match field {
        None => Ok(default),
        Some(spanned) => humantime::parse_duration(spanned.get_ref()).map_err(|e| {
            (
                Some(spanned.span()),
                format!(
                    "{:?} is not a duration like \"30s\" or \"500ms\" ({e})",
                    spanned.get_ref()
                ),
            )
        }),
    }
}

pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|_| format!("{text:?} is not a signal name like \"SIGTERM\""))
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Best effort to point at the `nth` occurrence of a value for errors found
/// after parsing, when the value's own span is gone.
/// A variable a service may set: a name the environment can hold, and not
/// one of those the agent sets itself for the protocol (a service that set
/// `LISTEN_FDS` or `NOTIFY_SOCKET` would be told of sockets it does not
/// have, or speak for itself on a socket of its choosing).
fn check_env(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a variable needs a name".into());
    }
    if key.contains('=') || key.contains('\0') {
        return Err(format!("{key:?} is not a variable name (no `=` or NUL)"));
    }
    if value.contains('\0') {
        return Err(format!("the value of {key:?} contains a NUL byte"));
    }
    if key.starts_with("LISTEN_") || key == "NOTIFY_SOCKET" || key.starts_with("BATON_") {
        return Err(format!(
            "{key:?} is set by the agent (LISTEN_*, NOTIFY_SOCKET and BATON_* are reserved)"
        ));
    }
    Ok(())
}

/// `version_env` names a variable of the service's own `env` whose value
/// reads as a version: one line of at most
/// [`baton_proto::program::MAX_VERSION_BYTES`], no control characters.
fn check_version_env(key: &str, env: &BTreeMap<String, String>) -> Result<(), String> {
    let Some(value) = env.get(key) else {
        return Err(format!(
            "names {key:?}, which is not set in the service's `env`"
        ));
    };
    if value.is_empty() {
        return Err(format!("the value of {key:?} is empty"));
    }
    if value.len() > baton_proto::program::MAX_VERSION_BYTES {
        return Err(format!(
            "the value of {key:?} is longer than {} bytes",
            baton_proto::program::MAX_VERSION_BYTES
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("the value of {key:?} contains a control character"));
    }
    Ok(())
}

fn find_span(text: &str, needle: &str, nth: usize) -> Option<Range<usize>> {
    text.match_indices(needle)
        .nth(nth.saturating_sub(1))
        .or_else(|| text.match_indices(needle).next())
        .map(|(i, _)| i..i + needle.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
control_socket = "/tmp/baton-test/agent.sock"

[[service]]
name = "web"
command = ["/srv/web/current/bin/web", "--port-from-fd"]
env = { RUST_LOG = "info" }
workdir = "/srv/web"
user = "www-data"
ready = "notify"
ready_timeout = "30s"
stop_signal = "SIGTERM"
drain_timeout = "60s"
restart_on_crash = true

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:8000"

[[service.socket]]
name = "admin"
listen = "unix:///run/web.sock"

[[service]]
name = "dns"
command = ["dnsd"]
ready = "http://127.0.0.1:{port}/healthz"
stop_signal = "QUIT"

[[service.socket]]
name = "udp"
listen = "udp://[::1]:5353"
"#;

    #[test]
    fn parses_the_documented_example() {
        let config = Config::parse(GOOD, "agent.toml").unwrap();
        assert_eq!(
            config.control_socket,
            PathBuf::from("/tmp/baton-test/agent.sock")
        );
        assert_eq!(
            config.notify_socket,
            PathBuf::from("/tmp/baton-test/notify.sock")
        );
        let web = &config.services[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.user.as_deref(), Some("www-data"));
        assert_eq!(web.ready, Readiness::Notify);
        assert_eq!(web.drain_timeout, Duration::from_secs(60));
        assert_eq!(web.sockets.len(), 2);
        assert_eq!(
            web.sockets[1].listen,
            ListenAddr::Unix(PathBuf::from("/run/web.sock"))
        );
        let dns = &config.services[1];
        assert_eq!(dns.stop_signal, Signal::SIGQUIT);
        assert!(dns.ready.uses_probe_port());
        assert_eq!(dns.sockets[0].listen.to_string(), "udp://[::1]:5353");
    }

    #[test]
    fn a_probe_url_is_split_once_and_filled_per_generation() {
        let Ok(Readiness::Http(http)) = parse_readiness("http://127.0.0.1:{port}/g/{generation}")
        else {
            panic!("an http probe");
        };
        assert_eq!(http.authority.fill(7, Some(8080)), "127.0.0.1:8080");
        assert_eq!(http.path.fill(7, Some(8080)), "/g/7");
        let Ok(Readiness::Http(bare)) = parse_readiness("http://localhost:81") else {
            panic!("an http probe");
        };
        assert_eq!(bare.path.fill(1, None), "/");
        assert!(!bare.authority.uses_port());
        let Ok(Readiness::Tcp { addr }) = parse_readiness("tcp://[::1]:{port}") else {
            panic!("a tcp probe");
        };
        assert_eq!(addr.fill(3, None), "[::1]:{port}");
        assert_eq!(addr.fill(3, Some(9)), "[::1]:9");
    }

    fn error_of(text: &str) -> (usize, String) {
        match Config::parse(text, "agent.toml") {
            Err(ConfigError::Invalid {
                line,
                message,
                path,
                ..
            }) => {
                assert_eq!(path, "agent.toml");
                (line, message)
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn instances_default_to_one_and_max_surge_to_all_of_them() {
        let config = Config::parse(
            "[[service]]\nname = \"web\"\ncommand = [\"x\"]\n",
            "agent.toml",
        )
        .expect("valid");
        assert_eq!(
            (config.services[0].instances, config.services[0].max_surge),
            (1, 1)
        );
        let config = Config::parse(
            "[[service]]\nname = \"web\"\ncommand = [\"x\"]\ninstances = 4\n",
            "agent.toml",
        )
        .expect("valid");
        assert_eq!(
            (config.services[0].instances, config.services[0].max_surge),
            (4, 4)
        );
        let config = Config::parse(
            "[[service]]\nname = \"web\"\ncommand = [\"x\"]\ninstances = 4\nmax_surge = 1\n",
            "agent.toml",
        )
        .expect("valid");
        assert_eq!(
            (config.services[0].instances, config.services[0].max_surge),
            (4, 1)
        );
    }

    #[test]
    fn instances_and_max_surge_out_of_bounds_name_their_line() {
        for (fields, line, field) in [
            ("instances = 0", 4, "`instances`"),
            ("instances = 257", 4, "`instances`"),
            ("instances = -1", 4, "`instances`"),
            ("instances = 2\nmax_surge = 3", 5, "`max_surge`"),
            ("instances = 2\nmax_surge = 0", 5, "`max_surge`"),
            ("max_surge = 2", 4, "`max_surge`"),
        ] {
            let (at, message) = error_of(&format!(
                "[[service]]\nname = \"web\"\ncommand = [\"x\"]\n{fields}\n"
            ));
            assert_eq!(at, line, "{fields}: {message}");
            assert!(message.contains(field), "{fields}: {message}");
        }
    }

    #[test]
    fn env_keys_the_agent_sets_or_the_environment_cannot_hold_are_refused() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"RUST_LOG = "info""#, None),
            (r#"LISTEN = "x""#, None),
            (r#"MY_BATON_HOME = "x""#, None),
            (r#""A=B" = "x""#, Some("not a variable name")),
            (r#""" = "x""#, Some("needs a name")),
            (r#""A\u0000" = "x""#, Some("not a variable name")),
            (r#"A = "x\u0000y""#, Some("NUL")),
            (r#"LISTEN_FDS = "3""#, Some("reserved")),
            (r#"LISTEN_PID = "1""#, Some("reserved")),
            (r#"NOTIFY_SOCKET = "/tmp/x""#, Some("reserved")),
            (r#"BATON_SERVICE = "db""#, Some("reserved")),
            (r#"BATON_GENERATION = "9""#, Some("reserved")),
        ];
        for (entry, problem) in cases {
            let text = format!(
                "[[service]]\nname = \"web\"\ncommand = [\"x\"]\n\n[service.env]\n{entry}\n"
            );
            match problem {
                None => {
                    Config::parse(&text, "agent.toml").unwrap_or_else(|e| panic!("{entry}: {e}"));
                }
                Some(problem) => {
                    let (line, message) = error_of(&text);
                    assert_eq!(line, 6, "{entry}: {message}");
                    assert!(message.contains("`env`"), "{entry}: {message}");
                    assert!(message.contains(problem), "{entry}: {message}");
                }
            }
        }
    }

    #[test]
    fn version_env_names_a_variable_of_the_service_env_that_reads_as_a_version() {
        let text = |value: &str| {
            format!(
                "[[service]]\nname = \"web\"\ncommand = [\"x\"]\nversion_env = \"APP_VERSION\"\n\n[service.env]\n{value}\n"
            )
        };
        let config = Config::parse(&text(r#"APP_VERSION = "1.4.3""#), "agent.toml").unwrap();
        assert_eq!(
            config.services[0].version_env.as_deref(),
            Some("APP_VERSION")
        );
        assert_eq!(
            crate::program::configured_version(&config.services[0]).as_deref(),
            Some("1.4.3")
        );
        for (value, problem) in [
            (r#"OTHER = "1.4.3""#, "not set in the service's `env`"),
            (r#"APP_VERSION = """#, "is empty"),
            (r#"APP_VERSION = "1.4\n3""#, "control character"),
        ] {
            let (line, message) = error_of(&text(value));
            assert_eq!(line, 4, "{value}: {message}");
            assert!(message.contains("`version_env`"), "{message}");
            assert!(message.contains(problem), "{value}: {message}");
        }
        let long = format!("APP_VERSION = \"{}\"", "1".repeat(65));
        assert!(error_of(&text(&long)).1.contains("longer than 64 bytes"));
    }

    #[test]
    fn the_event_history_has_a_default_and_a_floor() {
        let config = Config::parse("event_history = 500\n", "agent.toml").unwrap();
        assert_eq!(config.event_history, 500);
        let config = Config::parse("", "agent.toml").unwrap();
        assert_eq!(config.event_history, crate::events::DEFAULT_EVENT_HISTORY);
        let (line, message) = error_of("host = \"a\"\nevent_history = 10\n");
        assert_eq!(line, 2);
        assert!(message.contains("event_history"), "{message}");
    }

    #[test]
    fn min_overlap_defaults_to_none_and_is_bounded() {
        let service = "[[service]]\nname = \"web\"\ncommand = [\"x\"]\n";
        let config = Config::parse(service, "agent.toml").unwrap();
        assert_eq!(config.services[0].min_overlap, Duration::ZERO);
        let config =
            Config::parse(&format!("{service}min_overlap = \"3s\"\n"), "agent.toml").unwrap();
        assert_eq!(config.services[0].min_overlap, Duration::from_secs(3));
        for (value, problem) in [("\"soon\"", "not a duration"), ("\"1h\"", "longer than")] {
            let (line, message) = error_of(&format!("{service}min_overlap = {value}\n"));
            assert_eq!(line, 4, "{message}");
            assert!(message.contains("min_overlap"), "{message}");
            assert!(message.contains(problem), "{message}");
        }
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let (line, message) =
            error_of("[[service]]\nname = \"web\"\ncommand = [\"x\"]\ndrain_timeout = \"soon\"\n");
        assert_eq!(line, 4);
        assert!(message.contains("drain_timeout"), "{message}");

        let (line, message) = error_of(
            "[[service]]\nname = \"web\"\ncommand = [\"x\"]\n\n[[service.socket]]\nname = \"http\"\nlisten = \"http://127.0.0.1:80\"\n",
        );
        assert_eq!(line, 7);
        assert!(message.contains("listen"), "{message}");
        assert!(message.contains("unknown scheme"), "{message}");

        let (line, message) = error_of("[[service]]\nname = \"web\"\ncomand = [\"x\"]\n");
        assert_eq!(line, 3);
        assert!(message.contains("comand"), "{message}");

        let (line, message) = error_of("[[service]]\nname = \"web/1\"\ncommand = [\"x\"]\n");
        assert_eq!(line, 2);
        assert!(message.contains("name"), "{message}");

        let (line, _) =
            error_of("[[service]]\nname = \"web\"\ncommand = [\"x\"]\nstop_signal = \"SIGNOPE\"\n");
        assert_eq!(line, 4);

        let (line, message) = error_of("[[service]]\nname = \"web\"\ncommand = []\n");
        assert_eq!(line, 3);
        assert!(message.contains("command"), "{message}");

        let (_, message) = error_of(
            "[[service]]\nname = \"web\"\ncommand = [\"x\"]\n[[service]]\nname = \"web\"\ncommand = [\"y\"]\n",
        );
        assert!(message.contains("defined twice"), "{message}");

        let (line, message) = error_of(
            "[[service]]\nname = \"a\"\ncommand = [\"x\"]\n[[service.socket]]\nname = \"s\"\nlisten = \"tcp://127.0.0.1:9\"\n[[service]]\nname = \"b\"\ncommand = [\"x\"]\n[[service.socket]]\nname = \"s\"\nlisten = \"tcp://127.0.0.1:9\"\n",
        );
        assert_eq!(line, 12);
        assert!(message.contains("already used"), "{message}");

        let (line, _) = error_of("this is not toml\n");
        assert_eq!(line, 1);
    }

    #[test]
    fn output_and_logs_settings_are_checked_and_name_their_line() {
        let config = Config::parse(
            "control_socket = \"/run/b/agent.sock\"\n[[service]]\nname = \"web\"\ncommand = [\"x\"]\n[[service]]\nname = \"old\"\ncommand = [\"x\"]\noutput = \"inherit\"\n",
            "agent.toml",
        )
        .unwrap();
        assert_eq!(config.services[0].output, OutputMode::Capture);
        assert_eq!(config.services[1].output, OutputMode::Inherit);
        assert_eq!(config.logs.folder, Path::new("/run/b/logs"));
        assert_eq!(config.logs.max_bytes, DEFAULT_LOG_MAX_BYTES);
        assert_eq!(config.logs.files, DEFAULT_LOG_FILES);

        let config = Config::parse(
            "[logs]\nfolder = \"/var/log/baton\"\nmax_bytes = 1048576\nfiles = 3\n",
            "agent.toml",
        )
        .unwrap();
        assert_eq!(config.logs.folder, Path::new("/var/log/baton"));
        assert_eq!((config.logs.max_bytes, config.logs.files), (1_048_576, 3));

        let (line, message) =
            error_of("[[service]]\nname = \"web\"\ncommand = [\"x\"]\noutput = \"file\"\n");
        assert_eq!(line, 4);
        assert!(message.contains("output"), "{message}");
        let (line, message) = error_of("[logs]\nmax_bytes = 10\n");
        assert_eq!(line, 2);
        assert!(message.contains("max_bytes"), "{message}");
        let (line, message) = error_of("[logs]\n\nfiles = 0\n");
        assert_eq!(line, 3);
        assert!(message.contains("files"), "{message}");
        let (line, message) = error_of("[logs]\nfolders = \"/x\"\n");
        assert_eq!(line, 2);
        assert!(message.contains("folders"), "{message}");
    }

    #[test]
    fn a_token_that_others_may_read_is_pointed_out() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("agent.toml");
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, "secret\n").unwrap();
        let chmod = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let inline = "[server]\nurl = \"http://h:1\"\ntoken = \"t\"\n".to_string();
        let in_file = format!(
            "[server]\nurl = \"http://h:1\"\ntoken_file = \"{}\"\n",
            token_path.display()
        );
        for (text, holder) in [(&inline, &config_path), (&in_file, &token_path)] {
            std::fs::write(&config_path, text).unwrap();
            let config = Config::load(&config_path).unwrap();
            chmod(&config_path, 0o644);
            chmod(&token_path, 0o644);
            assert_eq!(
                config.token_readable_by_others(&config_path),
                vec![holder.clone()]
            );
            chmod(holder, 0o600);
            assert!(config.token_readable_by_others(&config_path).is_empty());
        }
        let no_server = Config::parse("", "agent.toml").unwrap();
        assert!(no_server.token_readable_by_others(&config_path).is_empty());
    }

    #[test]
    fn the_server_section_takes_a_token_or_a_token_file() {
        let config = Config::parse(
            "[server]\nurl = \"http://127.0.0.1:8080/\"\ntoken = \"abc\"\n",
            "agent.toml",
        )
        .unwrap();
        let server = config.server.unwrap();
        assert_eq!(server.urls, ["http://127.0.0.1:8080"]);
        assert_eq!(server.token, "abc");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "secret\n").unwrap();
        let config = Config::parse(
            &format!(
                "[server]\nurl = \"http://h:1\"\ntoken_file = \"{}\"\n",
                file.display()
            ),
            "agent.toml",
        )
        .unwrap();
        assert_eq!(config.server.unwrap().token, "secret");

        let (line, message) = error_of("\n[server]\nurl = \"ftp://h\"\ntoken = \"t\"\n");
        assert_eq!(line, 3);
        assert!(message.contains("url"), "{message}");
        let (_, message) = error_of("[server]\nurl = \"http://h:1\"\n");
        assert!(message.contains("token"), "{message}");
    }

    #[test]
    fn the_server_section_takes_a_list_of_servers_tried_in_turn() {
        let config = Config::parse(
            "[server]\nurls = [\"http://a:8080/\", \"https://b:8443\"]\ntoken = \"t\"\n",
            "agent.toml",
        )
        .unwrap();
        assert_eq!(
            config.server.unwrap().urls,
            ["http://a:8080", "https://b:8443"]
        );

        // Each entry is checked as `url` is, its own line named.
        let (line, message) =
            error_of("[server]\nurls = [\n  \"http://a:1\",\n  \"ftp://b\",\n]\ntoken = \"t\"\n");
        assert_eq!(line, 4);
        assert!(
            message.contains("`urls`") && message.contains("ftp://b"),
            "{message}"
        );
        let (line, message) = error_of(
            "[server]\nurls = [\n  \"http://a:1\",\n  \"http://a:1/\",\n]\ntoken = \"t\"\n",
        );
        assert_eq!(line, 4);
        assert!(message.contains("twice"), "{message}");
        let (line, message) = error_of("[server]\ntoken = \"t\"\nurls = []\n");
        assert_eq!(line, 3);
        assert!(message.contains("at least one"), "{message}");
        let (line, message) =
            error_of("[server]\nurl = \"http://a:1\"\nurls = [\"http://b:1\"]\ntoken = \"t\"\n");
        assert_eq!(line, 2);
        assert!(message.contains("not both"), "{message}");
        let (line, message) = error_of("\n\n[server]\ntoken = \"t\"\n");
        assert_eq!(line, 3);
        assert!(message.contains("`urls`"), "{message}");
    }

    #[test]
    fn an_https_server_takes_a_ca_file_that_must_hold_a_certificate() {
        let config = Config::parse(
            "[server]\nurl = \"https://baton.example:8443\"\ntoken = \"t\"\n",
            "agent.toml",
        )
        .unwrap();
        let server = config.server.unwrap();
        assert_eq!(server.urls, ["https://baton.example:8443"]);
        assert_eq!(server.ca_file, None);

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-ca.pem");
        let (line, message) = error_of(&format!(
            "[server]\nurl = \"https://h:1\"\ntoken = \"t\"\nca_file = \"{}\"\n",
            missing.display()
        ));
        assert_eq!(line, 4);
        assert!(
            message.contains("ca_file") && message.contains("missing-ca.pem"),
            "{message}"
        );
    }

    #[test]
    fn signals_parse_with_or_without_prefix() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigquit").unwrap(), Signal::SIGQUIT);
        assert!(parse_signal("SIGFOO").is_err());
    }
}
