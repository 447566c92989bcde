//! When connections are counted: one task counts for every service of the
//! agent, and only when something needs a count.
//!
//! - A draining generation needs its count every `drain_every` (its
//!   `drain_progress`, and the end of its drain).
//! - A status request (the control socket's `status`, the server link's
//!   status period) needs every live generation's count, no older than it
//!   says. Requests that arrive while a fresh enough count runs wait for it;
//!   the last full count is kept with its time, so a burst of requests costs
//!   one count.
//! - Nothing draining and nobody asking: nothing is counted.
//!
//! Each count reads the kernel once for all the generations it covers
//! ([`super::count_many`]), on a blocking thread: never on a service's task
//! or the server link's loop.

use super::{ListenAddrs, Members, count_many};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How often a draining generation's connections are counted.
pub const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// How long a status waits for a count before it answers with the last.
const COUNT_PATIENCE: Duration = Duration::from_secs(10);

/// Told each count of a draining generation; returns false once nobody
/// listens any more.
type DrainReport = Arc<dyn Fn(Option<u32>) -> bool + Send + Sync>;

/// The generation a count is of: its service's name and its number.
type GenerationKey = (String, u64);

pub struct ConnectionCounter {
    state: Mutex<State>,
    /// Wakes the counting task: a request, a new drain.
    wake: Notify,
    /// The newest full count (every registered generation).
    published: watch::Sender<Option<Arc<Counts>>>,
    drain_every: Duration,
}

#[derive(Default)]
struct State {
    next_id: u64,
    generations: HashMap<u64, Registered>,
    /// A full count is wanted at the next round.
    full_wanted: bool,
    /// When the full count running now began.
    full_running_since: Option<Instant>,
}

struct Registered {
    key: GenerationKey,
    members: Members,
    listen: ListenAddrs,
    drain: Option<DrainReport>,
}

/// Connection counts of every generation the counter knew, at one moment.
#[derive(Debug, Default)]
pub struct Counts {
    /// When the count began: no connection it reports is older.
    pub taken_at: Option<Instant>,
    by_generation: HashMap<GenerationKey, u32>,
}

impl Counts {
    /// `None` when the generation was not known then or could not be counted.
    pub fn of(&self, service: &str, generation: u64) -> Option<u32> {
        self.by_generation
            .get(&(service.to_owned(), generation))
            .copied()
    }

    /// The same counts of the same generations, whenever taken.
    pub fn same_as(&self, other: &Counts) -> bool {
        self.by_generation == other.by_generation
    }
}

/// A generation known to the counter; dropping it forgets the generation.
pub struct Registration {
    id: u64,
    counter: Arc<ConnectionCounter>,
}

impl Registration {
    /// Counts the generation every `drain_every` from now on and hands each
    /// count to `report`, until `report` returns false or the registration
    /// is dropped.
    pub fn watch_drain(&self, report: impl Fn(Option<u32>) -> bool + Send + Sync + 'static) {
        {
            let mut state = self.counter.state.lock().expect("counter lock");
            if let Some(registered) = state.generations.get_mut(&self.id) {
                registered.drain = Some(Arc::new(report));
            }
        }
        self.counter.wake.notify_one();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.counter
            .state
            .lock()
            .expect("counter lock")
            .generations
            .remove(&self.id);
    }
}

impl ConnectionCounter {
    /// Starts the counting task; must run inside a tokio runtime.
    pub fn start(drain_every: Duration) -> Arc<ConnectionCounter> {
        let counter = Arc::new(ConnectionCounter {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            published: watch::channel(None).0,
            drain_every,
        });
        tokio::spawn(run(counter.clone()));
        counter
    }

    /// Makes a generation countable: its processes and the service's stream
    /// listeners its connections were accepted from.
    pub fn register(
        self: &Arc<Self>,
        service: &str,
        generation: u64,
        members: Members,
        listen: ListenAddrs,
    ) -> Registration {
        let mut state = self.state.lock().expect("counter lock");
        let id = state.next_id;
        state.next_id += 1;
        state.generations.insert(
            id,
            Registered {
                key: (service.to_owned(), generation),
                members,
                listen,
                drain: None,
            },
        );
        Registration {
            id,
            counter: self.clone(),
        }
    }

    /// Counts of every generation, taken at most `max_age` before this call:
    /// the last count when it is recent enough, the one running when it
    /// began recently enough, else a new one (shared with every request
    /// that arrives meanwhile).
    pub async fn fresh(&self, max_age: Duration) -> Arc<Counts> {
        let asked = Instant::now();
        let oldest = asked.checked_sub(max_age).unwrap_or(asked);
        let recent = |counts: &Option<Arc<Counts>>| {
            counts
                .as_ref()
                .filter(|c| c.taken_at.is_some_and(|at| at >= oldest))
                .cloned()
        };
        let mut published = self.published.subscribe();
        loop {
            if let Some(counts) = recent(&published.borrow_and_update()) {
                return counts;
            }
            let wake = {
                let mut state = self.state.lock().expect("counter lock");
                let running_will_do = state.full_running_since.is_some_and(|at| at >= oldest);
                if !running_will_do && !state.full_wanted {
                    state.full_wanted = true;
                    true
                } else {
                    false
                }
            };
            if wake {
                self.wake.notify_one();
            }
            // A count never legitimately takes this long (a netlink reply
            // times out sooner); a status answers with what there is.
            match tokio::time::timeout(COUNT_PATIENCE, published.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.latest(),
            }
        }
    }

    /// Asks for a full count without waiting for it: [`Self::latest`] has it
    /// once done.
    pub fn refresh(&self) {
        let wake = {
            let mut state = self.state.lock().expect("counter lock");
            let wake = !state.full_wanted && state.full_running_since.is_none();
            state.full_wanted = true;
            wake
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// The last full count, however old; empty before the first.
    pub fn latest(&self) -> Arc<Counts> {
        self.published.borrow().clone().unwrap_or_default()
    }
}

/// One round's work: which generations, and whether it is a full count.
struct Round {
    full: bool,
    keys: Vec<GenerationKey>,
    drains: Vec<Option<DrainReport>>,
    targets: Vec<(Members, ListenAddrs)>,
}

/// The counting task, for as long as the agent runs.
async fn run(counter: Arc<ConnectionCounter>) {
    let mut last_drain_count: Option<Instant> = None;
    loop {
        let round = match counter.next_round(last_drain_count) {
            Ok(round) => round,
            Err(wait) => {
                // A wake-up between the look and the wait is not lost:
                // `notify_one` leaves a permit when nobody waits.
                let wake = async { counter.wake.notified().await };
                let wait = async {
                    match wait {
                        Some(until) => tokio::time::sleep_until(until).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = wake => {}
                    _ = wait => {}
                }
                continue;
            }
        };
        let started = Instant::now();
        let Round {
            full,
            keys,
            drains,
            targets,
        } = round;
        let counts = tokio::task::spawn_blocking(move || count_many(&targets))
            .await
            .unwrap_or_default();
        if drains.iter().any(Option::is_some) {
            last_drain_count = Some(started);
        }
        let mut done_draining = Vec::new();
        for (index, drain) in drains.iter().enumerate() {
            if let Some(report) = drain
                && !report(counts.get(index).copied().flatten())
            {
                done_draining.push(index);
            }
        }
        if full {
            let by_generation = keys
                .iter()
                .zip(&counts)
                .filter_map(|(key, count)| count.map(|count| (key.clone(), count)))
                .collect();
            counter
                .state
                .lock()
                .expect("counter lock")
                .full_running_since = None;
            counter.published.send_replace(Some(Arc::new(Counts {
                taken_at: Some(started),
                by_generation,
            })));
        }
        if !done_draining.is_empty() {
            let mut state = counter.state.lock().expect("counter lock");
            for registered in state.generations.values_mut() {
                if done_draining
                    .iter()
                    .any(|&index| keys[index] == registered.key)
                {
                    registered.drain = None;
                }
            }
        }
    }
}

impl ConnectionCounter {
    /// What to count now, or how long to wait (`None`: until woken).
    fn next_round(&self, last_drain_count: Option<Instant>) -> Result<Round, Option<Instant>> {
        let mut state = self.state.lock().expect("counter lock");
        let draining = state.generations.values().any(|g| g.drain.is_some());
        let drain_due = last_drain_count.map(|at| at + self.drain_every);
        let drain_now = draining && drain_due.is_none_or(|due| due <= Instant::now());
        if !state.full_wanted && !drain_now {
            return Err(if draining { drain_due } else { None });
        }
        let full = state.full_wanted;
        state.full_wanted = false;
        if full {
            state.full_running_since = Some(Instant::now());
        }
        let mut round = Round {
            full,
            keys: Vec::new(),
            drains: Vec::new(),
            targets: Vec::new(),
        };
        for registered in state.generations.values() {
            if full || registered.drain.is_some() {
                round.keys.push(registered.key.clone());
                round.drains.push(registered.drain.clone());
                round
                    .targets
                    .push((registered.members.clone(), registered.listen.clone()));
            }
        }
        Ok(round)
    }
}
