//! What the generations write on stdout and stderr (`docs/logs.md`).
//!
//! Each generation of a service whose `output` is `"capture"` (the default)
//! writes into two pipes the agent owns (`capture.rs`). The agent reads them
//! all the time, whoever reads the lines, so a service never waits on its
//! output while the agent runs. Each line is kept in the generation's tail
//! in memory (`tail.rs`), offered to the service's files (`files.rs`) and to
//! whoever follows the service (`baton logs -f`).

pub mod capture;
pub mod files;
pub mod lines;
pub mod tail;

use baton_proto::{OutputLine, OutputStream};
use files::{FileLimits, FileSink};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tail::Tail;
use tokio::sync::broadcast;

/// Tails of generations that are gone, kept per service for the report of
/// the restart that ended them (a rollback's new generation), newest kept.
const FORGOTTEN_TAILS: usize = 4;
/// Lines a follower may fall behind by before it misses some.
const FOLLOW_BACKLOG: usize = 4_096;

/// Every service's output, and the files they go to.
pub struct Outputs {
    files: Option<(Arc<FileSink>, FileLimits)>,
    services: Mutex<HashMap<String, Arc<ServiceOutput>>>,
}

impl Outputs {
    /// Without `limits`, output is kept in memory only (the service tests).
    pub fn new(limits: Option<FileLimits>) -> Arc<Outputs> {
        Arc::new(Outputs {
            files: limits.map(|limits| (FileSink::start(limits.clone()), limits)),
            services: Mutex::new(HashMap::new()),
        })
    }

    /// The service's output, made on first use.
    pub fn service(&self, name: &str) -> Arc<ServiceOutput> {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(ServiceOutput {
                    name: Arc::from(name),
                    store: Mutex::new(Store::default()),
                    live: broadcast::channel(FOLLOW_BACKLOG).0,
                    files: self.files.as_ref().map(|(sink, _)| sink.clone()),
                    reader_done: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }

    pub fn find(&self, name: &str) -> Option<Arc<ServiceOutput>> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services.get(name).cloned()
    }

    pub fn limits(&self) -> Option<&FileLimits> {
        self.files.as_ref().map(|(_, limits)| limits)
    }

    /// Blocking: every line read so far is in the files (or `patience`
    /// passed), before the agent re-executes itself.
    pub fn flush(&self, patience: std::time::Duration) {
        if let Some((sink, _)) = &self.files {
            sink.flush(patience);
        }
    }

    /// The last `n` lines of a service (of `generation`, else of its
    /// serving generation), from the tail, or from the files when the tail
    /// has fewer (an older line, or a tail lost in an upgrade).
    pub fn last(
        &self,
        service: &ServiceOutput,
        generation: Option<u64>,
        n: usize,
    ) -> Vec<OutputLine> {
        let generation = generation.or_else(|| service.serving());
        let from_tail = service.last(generation, n);
        if from_tail.len() >= n {
            return from_tail;
        }
        let Some(limits) = self.limits() else {
            return from_tail;
        };
        let from_files = files::read_back(limits, &service.name, generation, n);
        if from_files.len() > from_tail.len() {
            from_files
        } else {
            from_tail
        }
    }
}

/// One service's output: the generations' tails and its followers.
pub struct ServiceOutput {
    name: Arc<str>,
    store: Mutex<Store>,
    live: broadcast::Sender<OutputLine>,
    files: Option<Arc<FileSink>>,
    reader_done: tokio::sync::Notify,
}

#[derive(Default)]
struct Store {
    tails: BTreeMap<u64, Tail>,
    forgotten: VecDeque<u64>,
    serving: Option<u64>,
    /// Readers still reading, by generation.
    readers: HashMap<u64, usize>,
}

/// The last lines of `lines` whose text holds at most `max_bytes`.
pub fn bound_bytes(mut lines: Vec<OutputLine>, max_bytes: usize) -> Vec<OutputLine> {
    let mut bytes = 0;
    let keep = lines
        .iter()
        .rev()
        .take_while(|line| {
            bytes += line.text.len();
            bytes <= max_bytes
        })
        .count();
    lines.split_off(lines.len() - keep)
}

impl ServiceOutput {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lines just read from one of a generation's pipes.
    pub fn append(&self, generation: u64, stream: OutputStream, texts: Vec<String>) {
        let time = files::now_millis();
        let lines: Vec<OutputLine> = texts
            .into_iter()
            .map(|text| OutputLine {
                time,
                generation,
                stream,
                text,
            })
            .collect();
        {
            let mut store = self.lock();
            let tail = store.tails.entry(generation).or_default();
            for line in &lines {
                tail.push(line.clone());
            }
        }
        if self.live.receiver_count() > 0 {
            for line in &lines {
                let _ = self.live.send(line.clone());
            }
        }
        if let Some(files) = &self.files {
            files.offer(&self.name, lines);
        }
    }

    /// The generation is gone: its tail is kept a little longer, for the
    /// report of the restart that ended it.
    pub fn forget(&self, generation: u64) {
        let mut store = self.lock();
        if !store.tails.contains_key(&generation) || store.forgotten.contains(&generation) {
            return;
        }
        store.forgotten.push_back(generation);
        while store.forgotten.len() > FORGOTTEN_TAILS {
            if let Some(old) = store.forgotten.pop_front() {
                store.tails.remove(&old);
            }
        }
    }

    pub fn set_serving(&self, generation: Option<u64>) {
        self.lock().serving = generation;
    }

    pub fn serving(&self) -> Option<u64> {
        self.lock().serving
    }

    /// The last `n` lines of `generation`'s tail, or of every tail kept
    /// (by time) without one.
    pub fn last(&self, generation: Option<u64>, n: usize) -> Vec<OutputLine> {
        let store = self.lock();
        match generation {
            Some(generation) => store
                .tails
                .get(&generation)
                .map(|tail| tail.last(n).cloned().collect())
                .unwrap_or_default(),
            None => {
                let mut all: Vec<OutputLine> = store
                    .tails
                    .values()
                    .flat_map(|tail| tail.last(n).cloned())
                    .collect();
                all.sort_by_key(|line| line.time);
                let skip = all.len().saturating_sub(n);
                all.split_off(skip)
            }
        }
    }

    pub(crate) fn reader_started(&self, generation: u64) {
        *self.lock().readers.entry(generation).or_default() += 1;
    }

    pub(crate) fn reader_ended(&self, generation: u64) {
        let mut store = self.lock();
        if let Some(count) = store.readers.get_mut(&generation) {
            *count -= 1;
            if *count == 0 {
                store.readers.remove(&generation);
            }
        }
        drop(store);
        self.reader_done.notify_waiters();
    }

    /// Waits (at most `patience`) until nothing of `generation`'s output is
    /// left to read: every writer gone and every line read.
    pub async fn drained(&self, generation: u64, patience: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let done = self.reader_done.notified();
            if !self.lock().readers.contains_key(&generation) {
                return;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return;
            }
        }
    }

    /// New lines as they are read.
    pub fn subscribe(&self) -> broadcast::Receiver<OutputLine> {
        self.live.subscribe()
    }
}
