//! A blocking client of the agent's control socket: one JSON line per
//! request, JSON lines back.

use crate::{Error, ProtocolError, Result};
use baton_proto::{
    AgentMessage, AgentStatus, ClientMessage, Event, ReloadSummary, Request, Response, RestartId,
    RestartReport,
};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct AgentClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    patience: Option<Duration>,
}

impl AgentClient {
    pub fn connect(path: &Path) -> Result<AgentClient> {
        let stream = UnixStream::connect(path).map_err(|source| Error::AgentUnreachable {
            path: path.to_path_buf(),
            source,
        })?;
        AgentClient::from_stream(stream)
    }

    /// A client on a stream that is already connected.
    pub fn from_stream(stream: UnixStream) -> Result<AgentClient> {
        Ok(AgentClient {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            patience: None,
        })
    }

    /// Bounds every wait for the agent's next line: past it, a read fails
    /// with [`Error::TimedOut`]. `None` (the default) waits for ever, as a
    /// feed that may stay quiet must.
    pub fn with_patience(mut self, patience: Option<Duration>) -> AgentClient {
        self.patience = patience;
        self
    }

    pub fn send(&mut self, request: Request) -> Result<()> {
        let line = serde_json::to_string(&ClientMessage::new(request))
            .map_err(ProtocolError::AgentUnreadable)?;
        self.send_line(&line)
    }

    /// Sends one line as it is, for callers that test what the agent does
    /// with a line that is not a valid request.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.writer.write_all(&bytes)?;
        Ok(())
    }

    /// Tells the agent no request follows, so it closes after its answers.
    pub fn finish_sending(&mut self) -> Result<()> {
        self.writer.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    }

    /// The next message, `None` once the agent closed the connection.
    pub fn receive(&mut self) -> Result<Option<Response>> {
        self.receive_before(None)
    }

    /// Like [`AgentClient::receive`], failing with [`Error::TimedOut`] once
    /// `deadline` passes.
    pub fn receive_before(&mut self, deadline: Option<Instant>) -> Result<Option<Response>> {
        let left = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::TimedOut);
                }
                Some(left)
            }
            None => None,
        };
        let wait = match (left, self.patience) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.reader.get_ref().set_read_timeout(wait)?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => {
                let message: AgentMessage =
                    serde_json::from_str(&line).map_err(ProtocolError::AgentUnreadable)?;
                Ok(Some(message.body))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(Error::TimedOut)
            }
            // The agent closes its side while re-executing itself for an
            // upgrade: that ends the conversation as a close does.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends a request and reads one answer; an agent's error becomes
    /// [`Error::Agent`].
    pub fn request(&mut self, request: Request) -> Result<Response> {
        self.send(request)?;
        match self.receive()? {
            Some(Response::Error(body)) => Err(Error::Agent(body)),
            Some(response) => Ok(response),
            None => Err(ProtocolError::Closed.into()),
        }
    }

    pub fn status(&mut self) -> Result<AgentStatus> {
        match self.request(Request::Status)? {
            Response::Status(status) => Ok(status),
            _ => Err(Error::unexpected("status")),
        }
    }

    /// Has the agent read its configuration file again and apply it.
    pub fn reload(&mut self) -> Result<ReloadSummary> {
        match self.request(Request::Reload)? {
            Response::Reloaded(summary) => Ok(summary),
            _ => Err(Error::unexpected("reload summary")),
        }
    }

    pub fn restart_report(&mut self, id: RestartId) -> Result<RestartReport> {
        match self.request(Request::GetRestart { id })? {
            Response::Restart(report) => Ok(report),
            _ => Err(Error::unexpected("restart report")),
        }
    }

    /// Every event the agent remembers, oldest first.
    pub fn events(mut self) -> Result<Vec<Event>> {
        self.send(Request::Events {
            after: 0,
            follow: false,
        })?;
        // The agent closes once it has answered the last request it read.
        self.finish_sending()?;
        let mut events = Vec::new();
        while let Some(response) = self.receive()? {
            events.push(expect_event(response)?);
        }
        Ok(events)
    }

    /// Asks for a restart and returns its id once the agent accepted it.
    /// With `follow`, the agent then sends its events and its report: read
    /// them with [`AgentClient::follow_restart`].
    pub fn start_restart(
        &mut self,
        service: &str,
        reason: Option<String>,
        follow: bool,
    ) -> Result<RestartId> {
        self.send(Request::Restart {
            service: service.to_owned(),
            follow,
            reason,
        })?;
        match self.receive()? {
            Some(Response::RestartAccepted { id }) => Ok(id),
            Some(other) => Err(refusal(other, "restart acceptance")),
            None => Err(ProtocolError::Closed.into()),
        }
    }

    /// Hands every event of a followed restart to `on_event` as it arrives
    /// and returns the report that ends the stream.
    pub fn follow_restart(
        &mut self,
        deadline: Option<Instant>,
        mut on_event: impl FnMut(Event),
    ) -> Result<RestartReport> {
        loop {
            match self.receive_before(deadline)? {
                Some(Response::Event(event)) => on_event(event),
                Some(Response::Restart(report)) => return Ok(report),
                Some(other) => return Err(refusal(other, "restart event")),
                None => return Err(ProtocolError::Closed.into()),
            }
        }
    }
}

/// The error an answer other than the expected one stands for.
fn refusal(response: Response, expected: &'static str) -> Error {
    match response {
        Response::Error(body) => Error::Agent(body),
        _ => Error::unexpected(expected),
    }
}

fn expect_event(response: Response) -> Result<Event> {
    match response {
        Response::Event(event) => Ok(event),
        other => Err(refusal(other, "event")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{ErrorBody, ErrorKind, EventKind, RestartOutcome};
    use std::io::BufReader;
    use std::thread;

    /// Plays the agent on the other end of a socket pair: reads one request
    /// line, checks it, and writes `answers` as agent messages.
    fn agent(
        expect: impl FnOnce(ClientMessage) + Send + 'static,
        answers: Vec<Response>,
    ) -> (AgentClient, thread::JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let handle = thread::spawn(move || {
            let mut reader = BufReader::new(theirs.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            expect(serde_json::from_str(&line).unwrap());
            let mut writer = theirs;
            for answer in answers {
                let mut out = serde_json::to_vec(&AgentMessage::new(answer)).unwrap();
                out.push(b'\n');
                writer.write_all(&out).unwrap();
            }
        });
        (AgentClient::from_stream(ours).unwrap(), handle)
    }

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            seq,
            at: 1_700_000_000_000,
            service: "web".into(),
            restart: Some(7),
            kind,
        }
    }

    fn report(outcome: RestartOutcome) -> RestartReport {
        RestartReport {
            id: 7,
            service: "web".into(),
            reason: None,
            started_at: 1_700_000_000_000,
            finished_at: Some(1_700_000_001_000),
            outcome: Some(outcome),
            outcome_reason: None,
            old_generation: Some(1),
            new_generation: Some(2),
            connections_cut: None,
            connections: None,
            steps: Vec::new(),
            versions: None,
            output_tail: Vec::new(),
        }
    }

    #[test]
    fn a_followed_restart_yields_its_id_every_event_and_the_report() {
        let (mut client, agent) = agent(
            |message| {
                assert_eq!(
                    message.request,
                    Request::Restart {
                        service: "web".into(),
                        follow: true,
                        reason: Some("deploy".into())
                    }
                );
            },
            vec![
                Response::RestartAccepted { id: 7 },
                Response::Event(event(
                    1,
                    EventKind::GenerationSpawned {
                        generation: 2,
                        pid: 42,
                        program: None,
                    },
                )),
                Response::Restart(report(RestartOutcome::Succeeded)),
            ],
        );
        let id = client
            .start_restart("web", Some("deploy".into()), true)
            .unwrap();
        assert_eq!(id, 7);
        let mut seen = Vec::new();
        let report = client.follow_restart(None, |e| seen.push(e.seq)).unwrap();
        assert_eq!(seen, [1]);
        assert_eq!(report.outcome, Some(RestartOutcome::Succeeded));
        agent.join().unwrap();
    }

    #[test]
    fn an_agent_refusal_is_an_error_callers_can_branch_on() {
        let (mut client, agent) = agent(
            |_| {},
            vec![Response::Error(ErrorBody {
                kind: ErrorKind::RestartInProgress,
                message: "a restart of web is running".into(),
                running_restart: Some(3),
            })],
        );
        match client.start_restart("web", None, false) {
            Err(Error::Agent(body)) => {
                assert_eq!(body.kind, ErrorKind::RestartInProgress);
                assert_eq!(body.running_restart, Some(3));
            }
            other => panic!("expected the agent's refusal, got {other:?}"),
        }
        agent.join().unwrap();
    }

    #[test]
    fn a_line_that_is_not_json_is_a_protocol_error() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"{not json\n").unwrap();
        let mut client = AgentClient::from_stream(ours).unwrap();
        assert!(matches!(
            client.receive(),
            Err(Error::Protocol(ProtocolError::AgentUnreadable(_)))
        ));
    }

    #[test]
    fn a_close_before_the_answer_is_a_protocol_error() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let mut client = AgentClient::from_stream(ours).unwrap();
        assert!(matches!(
            client.status(),
            Err(Error::Protocol(ProtocolError::Closed)) | Err(Error::Io(_))
        ));
    }

    #[test]
    fn a_quiet_agent_times_out_at_the_deadline() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut client = AgentClient::from_stream(ours).unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(100);
        assert!(matches!(
            client.receive_before(Some(deadline)),
            Err(Error::TimedOut)
        ));
        assert!(started.elapsed() >= Duration::from_millis(100));
        let mut patient = client.with_patience(Some(Duration::from_millis(50)));
        assert!(matches!(patient.receive(), Err(Error::TimedOut)));
    }

    #[test]
    fn events_are_read_until_the_agent_closes() {
        let (client, agent) = agent(
            |message| {
                assert_eq!(
                    message.request,
                    Request::Events {
                        after: 0,
                        follow: false
                    }
                );
            },
            vec![
                Response::Event(event(
                    1,
                    EventKind::GenerationSpawned {
                        generation: 1,
                        pid: 40,
                        program: None,
                    },
                )),
                Response::Event(event(
                    2,
                    EventKind::GenerationSpawned {
                        generation: 2,
                        pid: 41,
                        program: None,
                    },
                )),
            ],
        );
        // The fake agent closes when its thread ends, as the real one does
        // after its last answer.
        let events = client.events().unwrap();
        agent.join().unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn connecting_to_a_missing_socket_says_the_agent_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        match AgentClient::connect(&path) {
            Err(error @ Error::AgentUnreachable { .. }) => {
                assert!(
                    error.to_string().contains("cannot reach the agent"),
                    "{error}"
                );
            }
            other => panic!("expected unreachable, got {:?}", other.err()),
        }
    }
}
