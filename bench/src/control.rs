//! A blocking client of the agent's control socket, shared by both benches:
//! one JSON line out, JSON lines back.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use baton_proto::{AgentMessage, ClientMessage, Request, Response};

pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    /// `read_timeout` bounds every wait for the agent's next line; `None`
    /// waits for ever, as a feed that may stay quiet must.
    pub fn connect(path: &Path, read_timeout: Option<Duration>) -> anyhow::Result<ControlClient> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("cannot connect to the agent at {}", path.display()))?;
        stream.set_read_timeout(read_timeout)?;
        Ok(ControlClient {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    pub fn send(&mut self, request: Request) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(&ClientMessage::new(request))?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .context("cannot send to the agent")
    }

    /// The next response, or `None` when the agent closed the connection.
    pub fn next(&mut self) -> anyhow::Result<Option<Response>> {
        let mut line = String::new();
        if self
            .reader
            .read_line(&mut line)
            .context("cannot read from the agent")?
            == 0
        {
            return Ok(None);
        }
        let message: AgentMessage = serde_json::from_str(&line)
            .with_context(|| format!("the agent sent something unreadable: {line:?}"))?;
        Ok(Some(message.body))
    }
}
