//! Whether the database can be written, for `/healthz` and `/metrics`: a
//! real write of one row (`store::probe_write`), at most once every
//! [`PROBE_EVERY`] and remembered in between, so polling the health check
//! cannot be made to hammer the disk. A full disk leaves reads working:
//! only a write tells.

use std::time::{Duration, Instant};
use tokio::sync::Mutex;

use crate::store::{self, Db};

/// How long a probe's answer stands.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// The last probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// `None` when the write went through, else why it did not.
    pub failure: Option<String>,
    /// When the probe ran, Unix milliseconds.
    pub at: u64,
}

impl Probed {
    pub fn writable(&self) -> bool {
        self.failure.is_none()
    }
}

#[derive(Default)]
pub struct WriteProbe {
    /// Held across a probe, so callers that arrive during one wait for its
    /// answer instead of writing again.
    last: Mutex<Option<(Instant, Probed)>>,
}

impl WriteProbe {
    /// The answer of a probe at most [`PROBE_EVERY`] old, probing now if
    /// there is none.
    pub async fn check(&self, db: &Db) -> Probed {
        let mut last = self.last.lock().await;
        if let Some((when, probed)) = last.as_ref()
            && when.elapsed() < PROBE_EVERY
        {
            return probed.clone();
        }
        let failure = match store::probe_write(db).await {
            Ok(()) => None,
            Err(error) => {
                let cause = crate::error::database_unavailable(&error).unwrap_or("database error");
                tracing::warn!(
                    error = format!("{error:#}"),
                    "the database cannot be written"
                );
                Some(cause.to_string())
            }
        };
        let probed = Probed {
            failure,
            at: baton_proto::now_millis(),
        };
        *last = Some((Instant::now(), probed.clone()));
        probed
    }
}
