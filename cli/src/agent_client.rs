//! A blocking client of the agent's control socket.

use baton_proto::{AgentMessage, ClientMessage, ErrorBody, Request, Response};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent at {path}: {source} (is baton-agent running? set --agent or BATON_AGENT_SOCKET)"
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to the agent: {0}")]
    Io(#[from] io::Error),
    #[error("the agent sent something unreadable: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("{}", .0.message)]
    Agent(ErrorBody),
    #[error("the agent closed the connection")]
    Closed,
    #[error("timed out")]
    TimedOut,
    #[error("the agent answered with something other than a {0}")]
    Unexpected(&'static str),
}

impl ClientError {
    pub fn from_response(response: Response) -> ClientError {
        match response {
            Response::Error(body) => ClientError::Agent(body),
            _ => ClientError::Unexpected("expected answer"),
        }
    }
}

pub struct AgentClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl AgentClient {
    pub fn connect(path: &Path) -> Result<AgentClient, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let writer = stream.try_clone()?;
        Ok(AgentClient {
            reader: BufReader::new(stream),
            writer,
        })
    }

    pub fn send(&mut self, request: Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(&ClientMessage::new(request))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    /// Sends a request and reads one answer; an agent error becomes `Err`.
    pub fn request(&mut self, request: Request) -> Result<Response, ClientError> {
        self.send(request)?;
        match self.next(None)? {
            Some(Response::Error(body)) => Err(ClientError::Agent(body)),
            Some(response) => Ok(response),
            None => Err(ClientError::Closed),
        }
    }

    /// Tells the agent no request follows, so it closes after its answers.
    pub fn finish_sending(&mut self) -> Result<(), ClientError> {
        self.writer.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    }

    /// The next message, `None` at end of stream. Errors with `TimedOut` once
    /// `deadline` passes.
    pub fn next(&mut self, deadline: Option<Instant>) -> Result<Option<Response>, ClientError> {
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ClientError::TimedOut);
                }
                Some(left)
            }
            None => None,
        };
        self.reader.get_ref().set_read_timeout(wait)?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => {
                let message: AgentMessage = serde_json::from_str(&line)?;
                Ok(Some(message.body))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ClientError::TimedOut)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// `(service, http://address)` of every service whose generation is ready,
/// for people to curl.
pub fn ready_addresses(socket: &Path) -> Result<Vec<(String, String)>, ClientError> {
    let mut client = AgentClient::connect(socket)?;
    let Response::Status(status) = client.request(Request::Status)? else {
        return Err(ClientError::Unexpected("status"));
    };
    Ok(status
        .services
        .iter()
        .filter(|s| s.state == baton_proto::ServiceState::Ready)
        .filter_map(|s| {
            let listen = s.sockets.first()?.listen.as_str();
            Some((s.name.clone(), listen.replacen("tcp://", "http://", 1)))
        })
        .collect())
}
