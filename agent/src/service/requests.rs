//! Restart requests a generation sent (`X_BATON_RESTART=1`) that started
//! no restart: counted for the agent's status and logged at most once a
//! second, so a service that asks in a loop cannot fill the log. They are
//! not events: a refused request changes nothing worth keeping.

use super::effects::RequestRefusal;
use baton_proto::RestartRequester;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static REFUSED: AtomicU64 = AtomicU64::new(0);
static LOGGED: Mutex<Option<Instant>> = Mutex::new(None);
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Restart requests of generations refused since the agent started.
pub fn refused() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Counts a refused request and logs it unless one was logged within the
/// last second.
pub(super) fn note_refused(service: &str, requester: RestartRequester, refusal: RequestRefusal) {
    let count = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut logged = LOGGED.lock().expect("refused request log lock");
        if logged.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        *logged = Some(Instant::now());
    }
    tracing::warn!(
        service,
        generation = requester.generation,
        pid = requester.pid,
        refused = count,
        "restart request refused: {refusal}"
    );
}
