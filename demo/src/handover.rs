//! Handing this generation's connections to the next one (baton-sdk's
//! `handoff`), or not (`--no-handoff`): each protocol calls `offer` at its
//! own message boundary once draining has begun.

use std::os::fd::AsFd;

use baton_sdk::shutdown::{Guard, ShutdownHandle};

/// What a connection needs to hand itself over. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handover {
    handle: Option<ShutdownHandle>,
}

impl Handover {
    /// Hands over through the exit coordinator behind `handle`.
    pub fn new(handle: ShutdownHandle) -> Handover {
        Handover {
            handle: Some(handle),
        }
    }

    /// Never hands over: connections drain as without baton's handoff.
    pub fn disabled() -> Handover {
        Handover { handle: None }
    }

    /// Held by a connection for as long as this generation serves it: the
    /// coordinator keeps offering while any is held.
    pub fn connection(&self) -> Option<Guard> {
        self.handle.as_ref().map(ShutdownHandle::connection)
    }

    /// Whether a connection may still be handed over now.
    pub async fn possible(&self) -> bool {
        match &self.handle {
            Some(handle) => handle.can_hand_over().await,
            None => false,
        }
    }

    /// Offers `stream`; `Ok` when the next generation took it (our copy
    /// is closed), the stream back otherwise.
    pub async fn offer<S: AsFd>(
        &self,
        name: &str,
        stream: S,
        buffer: &[u8],
        state: &[u8],
    ) -> Result<(), S> {
        let Some(handle) = &self.handle else {
            return Err(stream);
        };
        match handle.hand_over(name, stream, buffer, state).await {
            Ok(()) => {
                tracing::debug!(socket = name, "connection handed over");
                Ok(())
            }
            Err(returned) => {
                tracing::debug!(socket = name, reason = %returned.reason, "connection kept");
                Err(returned.stream)
            }
        }
    }
}
