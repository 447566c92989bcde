//! Routes each notify message to the generation that sent it.
//!
//! A message is attributed by what its sender cannot forge: the
//! kernel-reported pid (the generation's own main process), then the
//! sender's cgroup where the agent gives each generation one. Without
//! cgroups it is the sender's process group, which is safe only because
//! every generation then starts a session of its own and `setpgid` into a
//! group of another session fails.
//!
//! A generation's pid is known only once its exec has happened, and a fast
//! service can send `READY=1` before the spawning thread has registered it.
//! So while a spawn is in flight, a message from an unknown sender is parked
//! and routed again when the spawn registers its pid; only when no spawn is
//! in flight is an unknown sender really nobody's. A message read just after
//! its generation ended is late, not a stranger's.

use crate::cgroup::Cgroups;
use crate::notify::NotifyDatagram;
use nix::unistd::Pid;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which generation a process group (or cgroup) belongs to, for routing
/// notify messages.
#[derive(Default)]
pub struct NotifyRouter {
    cgroups: Option<Cgroups>,
    inner: Mutex<RouterInner>,
}

#[derive(Default)]
struct RouterInner {
    /// By the generation's process group (its leader's pid).
    routes: HashMap<i32, (Route, Option<String>)>,
    /// A generation's cgroup to its process group.
    by_cgroup: HashMap<String, i32>,
    spawns_in_flight: usize,
    parked: Vec<Parked>,
    /// Generations that ended lately, newest last. A message sent
    /// just before the exit can be read after it (`STOPPING=1` of a drain
    /// that finished at once): it is late, not a stranger's.
    gone: VecDeque<(Instant, i32, Option<String>)>,
}

/// How long, and for how many ended generations, a late message is known
/// for one of ours.
const GONE_KEPT_FOR: Duration = Duration::from_secs(5);
const GONE_KEPT_MAX: usize = 1024;

impl RouterInner {
    /// Keeps an ended group (and its cgroup) known for its late messages,
    /// forgetting the oldest past the bounds.
    fn remember_gone(&mut self, pgid: Pid, cgroup: Option<String>) {
        let now = Instant::now();
        while self.gone.len() >= GONE_KEPT_MAX
            || self
                .gone
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) >= GONE_KEPT_FOR)
        {
            self.gone.pop_front();
        }
        self.gone.push_back((now, pgid.as_raw(), cgroup));
    }
}

/// Where a sender was when its message was read.
#[derive(Clone, Debug, PartialEq)]
enum Origin {
    Group(i32),
    Cgroup(String),
    Unknown,
}

struct Parked {
    origin: Origin,
    datagram: NotifyDatagram,
}

/// More would only come from a local flood of the notify socket.
const MAX_PARKED: usize = 256;

/// A notify message on its way to the generation that sent it.
pub struct Notification {
    pub generation: u64,
    pub datagram: NotifyDatagram,
}

/// Where one generation's notify messages go: into its service's queue, in
/// the order they arrive among the service's other news.
#[derive(Clone)]
pub struct Route {
    pub generation: u64,
    deliver: Arc<dyn Fn(Notification) + Send + Sync>,
    bucket: Arc<Mutex<Bucket>>,
}

/// Messages one generation may send at once, and per second after that.
/// Beyond, its messages are counted and dropped: each one costs the agent
/// a queue entry and often an event.
pub const NOTIFY_BURST: u32 = 512;
pub const NOTIFY_PER_SECOND: u32 = 256;

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
    dropped: u64,
    logged: Option<Instant>,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * f64::from(NOTIFY_PER_SECOND);
        self.tokens = (self.tokens + refill).min(f64::from(NOTIFY_BURST));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Route {
    pub fn new(generation: u64, deliver: impl Fn(Notification) + Send + Sync + 'static) -> Self {
        Route {
            generation,
            deliver: Arc::new(deliver),
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: f64::from(NOTIFY_BURST),
                at: Instant::now(),
                dropped: 0,
                logged: None,
            })),
        }
    }

    /// Delivers a message unless the generation is over its rate; returns
    /// whether it was delivered.
    pub fn deliver(&self, datagram: NotifyDatagram) -> bool {
        {
            let mut bucket = self.bucket.lock().expect("notify bucket lock");
            if !bucket.take() {
                bucket.dropped += 1;
                if bucket.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    bucket.logged = Some(Instant::now());
                    tracing::warn!(
                        generation = self.generation,
                        dropped = bucket.dropped,
                        "generation over its notify rate; messages dropped"
                    );
                }
                return false;
            }
        }
        (self.deliver)(Notification {
            generation: self.generation,
            datagram,
        });
        true
    }

    /// Messages dropped for going over the rate.
    pub fn dropped(&self) -> u64 {
        self.bucket.lock().expect("notify bucket lock").dropped
    }
}

/// At most one log line per this interval for a flood of dropped messages.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// What became of a notify message.
pub enum Routed {
    Delivered,
    /// Kept until the spawns in flight have registered their pids.
    Parked,
    /// From a generation that has just ended; nothing is left to act on it.
    Late,
    /// From no generation of ours.
    Nobody(NotifyDatagram),
}

impl RouterInner {
    fn recently_gone(&self, pid: i32, origin: &Origin) -> bool {
        let now = Instant::now();
        self.gone.iter().any(|(at, group, cgroup)| {
            now.duration_since(*at) < GONE_KEPT_FOR
                && (*group == pid
                    || match origin {
                        Origin::Group(g) => g == group,
                        Origin::Cgroup(c) => cgroup.as_ref() == Some(c),
                        Origin::Unknown => false,
                    })
        })
    }

    fn find(&self, pid: i32, origin: &Origin) -> Option<&Route> {
        let group = match origin {
            Origin::Group(group) => Some(*group),
            Origin::Cgroup(cgroup) => self.by_cgroup.get(cgroup).copied(),
            Origin::Unknown => None,
        };
        self.routes
            .get(&pid)
            .or_else(|| group.and_then(|g| self.routes.get(&g)))
            .map(|(route, _)| route)
    }

    fn insert(&mut self, pgid: i32, cgroup: Option<String>, route: Route) {
        if let Some(cgroup) = &cgroup {
            self.by_cgroup.insert(cgroup.clone(), pgid);
        }
        self.routes.insert(pgid, (route, cgroup));
    }
}

impl NotifyRouter {
    /// A router that attributes by cgroup when `cgroups` is given, else by
    /// process group.
    pub fn new(cgroups: Option<Cgroups>) -> Self {
        NotifyRouter {
            cgroups,
            inner: Mutex::default(),
        }
    }

    /// The agent's generation cgroups, when it has them.
    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.cgroups.as_ref()
    }

    fn origin(&self, pid: i32) -> Origin {
        match &self.cgroups {
            Some(cgroups) => crate::cgroup::of_pid(pid)
                .filter(|c| cgroups.owns(c))
                .map_or(Origin::Unknown, Origin::Cgroup),
            None => nix::unistd::getpgid(Some(Pid::from_raw(pid)))
                .map_or(Origin::Unknown, |g| Origin::Group(g.as_raw())),
        }
    }

    /// Sends a message to the generation of its sender: found by the
    /// sender's pid, then its cgroup (or, without cgroups, its process group).
    pub fn route(&self, datagram: NotifyDatagram) -> Routed {
        let pid = datagram.pid;
        if pid <= 0 {
            return Routed::Nobody(datagram);
        }
        let origin = self.origin(pid);
        let mut inner = self.inner.lock().expect("notify router lock");
        if let Some(route) = inner.find(pid, &origin) {
            route.deliver(datagram);
            return Routed::Delivered;
        }
        if inner.recently_gone(pid, &origin) {
            return Routed::Late;
        }
        if inner.spawns_in_flight > 0 && inner.parked.len() < MAX_PARKED {
            inner.parked.push(Parked { origin, datagram });
            return Routed::Parked;
        }
        Routed::Nobody(datagram)
    }

    /// Opens a spawn window; `SpawnWindow::register` then records the pid.
    pub fn begin_spawn(&self) -> SpawnWindow<'_> {
        self.inner
            .lock()
            .expect("notify router lock")
            .spawns_in_flight += 1;
        SpawnWindow {
            router: self,
            closed: false,
            ignored: Vec::new(),
        }
    }

    /// Registers a generation the agent did not spawn itself (adopted in an
    /// upgrade): its cgroup is the one its leader is in, if that is one of
    /// the agent's generation cgroups.
    pub fn insert(&self, pgid: Pid, route: Route) {
        let cgroup = self
            .cgroups
            .as_ref()
            .and_then(|cgroups| crate::cgroup::of_pid(pgid.as_raw()).filter(|c| cgroups.owns(c)));
        self.inner
            .lock()
            .expect("notify router lock")
            .insert(pgid.as_raw(), cgroup, route);
    }

    /// The folder of the cgroup of the generation led by `pgid`, if it has one.
    pub fn cgroup_folder(&self, pgid: Pid) -> Option<PathBuf> {
        let cgroups = self.cgroups.as_ref()?;
        let inner = self.inner.lock().expect("notify router lock");
        let (_, cgroup) = inner.routes.get(&pgid.as_raw())?;
        cgroup.as_deref().map(|relative| cgroups.folder(relative))
    }

    /// The cgroup of the generation led by `pgid`, as `/proc/PID/cgroup`
    /// names it, if it has one.
    pub fn cgroup_of(&self, pgid: Pid) -> Option<String> {
        let inner = self.inner.lock().expect("notify router lock");
        inner.routes.get(&pgid.as_raw())?.1.clone()
    }

    /// Forgets one exited instance of a generation that runs several: its
    /// process group no longer routes, while the generation's cgroup (and
    /// the other instances' routes) stay. Its late messages are known for a
    /// while.
    pub fn remove_member(&self, pgid: Pid) {
        let mut inner = self.inner.lock().expect("notify router lock");
        let Some((_, cgroup)) = inner.routes.remove(&pgid.as_raw()) else {
            return;
        };
        if let Some(cgroup) = &cgroup
            && inner.by_cgroup.get(cgroup) == Some(&pgid.as_raw())
        {
            // The cgroup attributes through another instance of it, if one
            // is left.
            let other = inner
                .routes
                .iter()
                .find(|(_, (_, c))| c.as_ref() == Some(cgroup))
                .map(|(other, _)| *other);
            match other {
                Some(other) => {
                    inner.by_cgroup.insert(cgroup.clone(), other);
                }
                None => {
                    inner.by_cgroup.remove(cgroup);
                }
            }
        }
        inner.remember_gone(pgid, cgroup);
    }

    /// Forgets an ended generation and removes its cgroup; its late
    /// messages are known for a while.
    pub fn remove(&self, pgid: Pid) {
        let mut inner = self.inner.lock().expect("notify router lock");
        if let Some((_, cgroup)) = inner.routes.remove(&pgid.as_raw()) {
            if let Some(cgroup) = &cgroup {
                inner.by_cgroup.remove(cgroup);
                if let Some(cgroups) = &self.cgroups {
                    cgroups.remove(cgroup);
                }
            }
            inner.remember_gone(pgid, cgroup);
        }
    }
}

/// One spawn in flight. Registering its pid delivers the messages its
/// generation sent before; closing the window (on drop) gives back the
/// parked messages that no generation claimed once no spawn is left.
pub struct SpawnWindow<'a> {
    router: &'a NotifyRouter,
    closed: bool,
    ignored: Vec<NotifyDatagram>,
}

impl SpawnWindow<'_> {
    /// Records the spawned generation's group and, if it has one, its cgroup.
    pub fn register(&mut self, pgid: Pid, cgroup: Option<String>, route: Route) {
        let mut inner = self.router.inner.lock().expect("notify router lock");
        inner.insert(pgid.as_raw(), cgroup, route);
        Self::replay(&mut inner);
    }

    /// Closes the window and returns what was parked for nobody.
    pub fn close(mut self) -> Vec<NotifyDatagram> {
        self.finish();
        std::mem::take(&mut self.ignored)
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let mut inner = self.router.inner.lock().expect("notify router lock");
        inner.spawns_in_flight -= 1;
        Self::replay(&mut inner);
        if inner.spawns_in_flight == 0 {
            let parked = std::mem::take(&mut inner.parked);
            let strangers = parked
                .into_iter()
                .filter(|p| !inner.recently_gone(p.datagram.pid, &p.origin))
                .map(|p| p.datagram);
            self.ignored.extend(strangers);
        }
    }

    fn replay(inner: &mut RouterInner) {
        let parked = std::mem::take(&mut inner.parked);
        for parked in parked {
            match inner.find(parked.datagram.pid, &parked.origin) {
                Some(route) => {
                    route.deliver(parked.datagram);
                }
                None => inner.parked.push(parked),
            }
        }
    }
}

impl Drop for SpawnWindow<'_> {
    /// A window dropped without `close` (a panic in the spawn) still ends,
    /// and whatever it held for nobody is dropped with a warning.
    fn drop(&mut self) {
        self.finish();
        for datagram in self.ignored.drain(..) {
            tracing::warn!(
                pid = datagram.pid,
                "notify message from a process of no generation ignored"
            );
        }
    }
}

/// Notify messages from processes of no generation, since the agent started.
static STRANGERS: AtomicU64 = AtomicU64::new(0);
/// When a stranger's message was last logged.
static STRANGER_LOGGED: Mutex<Option<Instant>> = Mutex::new(None);

/// How many notify messages came from processes of no generation.
pub fn strangers() -> u64 {
    STRANGERS.load(Ordering::Relaxed)
}

/// Counts a notify message that no generation sent, and logs it at most
/// once a second (with the count). It is not stored: the socket is open to
/// every local user, and a stored event each would let anyone flush the
/// agent's history.
pub fn ignore_notification(datagram: NotifyDatagram) {
    let count = STRANGERS.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut logged = STRANGER_LOGGED.lock().expect("stranger log lock");
        if logged.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        *logged = Some(Instant::now());
    }
    // Escaped: a newline in a datagram must not start a log line of its own.
    let message: String = datagram
        .text
        .chars()
        .take(200)
        .collect::<String>()
        .escape_debug()
        .to_string();
    tracing::warn!(
        pid = datagram.pid,
        uid = datagram.uid,
        %message,
        strangers = count,
        "notify message from a process of no generation ignored"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::NotifyMessage;
    use std::sync::mpsc;

    fn datagram(pid: i32) -> NotifyDatagram {
        NotifyDatagram {
            pid,
            uid: 0,
            gid: 0,
            text: "READY=1".into(),
            messages: vec![NotifyMessage::Ready],
            fds: Vec::new(),
            truncated: false,
        }
    }

    fn route(generation: u64) -> (Route, mpsc::Receiver<Notification>) {
        let (tx, rx) = mpsc::channel();
        let route = Route::new(generation, move |n| {
            let _ = tx.send(n);
        });
        (route, rx)
    }

    fn notified(rx: &mut mpsc::Receiver<Notification>) -> Option<(u64, i32)> {
        rx.try_recv().ok().map(|n| (n.generation, n.datagram.pid))
    }

    /// Pids far above any real one, so `getpgid` finds no such process.
    const CHILD: i32 = 0x3fff_fff0;
    const STRANGER: i32 = 0x3fff_fff1;

    #[test]
    fn a_message_that_beats_the_registration_is_delivered_once_it_lands() {
        let router = NotifyRouter::default();
        let (route, mut rx) = route(7);
        let mut window = router.begin_spawn();
        assert!(matches!(router.route(datagram(CHILD)), Routed::Parked));
        assert!(notified(&mut rx).is_none());
        window.register(Pid::from_raw(CHILD), None, route);
        assert_eq!(notified(&mut rx), Some((7, CHILD)));
        assert!(window.close().is_empty());
        // Registered now: later messages go straight through.
        assert!(matches!(router.route(datagram(CHILD)), Routed::Delivered));
        assert_eq!(notified(&mut rx), Some((7, CHILD)));
    }

    #[test]
    fn a_message_nobody_claims_is_given_back_when_the_last_spawn_ends() {
        let router = NotifyRouter::default();
        let (route, _rx) = route(1);
        let mut first = router.begin_spawn();
        let second = router.begin_spawn();
        assert!(matches!(router.route(datagram(STRANGER)), Routed::Parked));
        first.register(Pid::from_raw(CHILD), None, route);
        assert!(first.close().is_empty(), "another spawn is still in flight");
        let ignored = second.close();
        assert_eq!(
            ignored.iter().map(|d| d.pid).collect::<Vec<_>>(),
            [STRANGER]
        );
        assert!(matches!(
            router.route(datagram(STRANGER)),
            Routed::Nobody(_)
        ));
    }

    #[test]
    fn a_message_from_a_generation_that_just_ended_is_late_not_a_strangers() {
        let router = NotifyRouter::default();
        let (route, mut rx) = route(3);
        let mut window = router.begin_spawn();
        window.register(Pid::from_raw(CHILD), None, route);
        assert!(window.close().is_empty());
        router.remove(Pid::from_raw(CHILD));
        assert!(matches!(router.route(datagram(CHILD)), Routed::Late));
        assert!(notified(&mut rx).is_none());
        // During a spawn it is not parked either, so it is never reported.
        let window = router.begin_spawn();
        assert!(matches!(router.route(datagram(CHILD)), Routed::Late));
        assert!(window.close().is_empty());
        assert!(matches!(
            router.route(datagram(STRANGER)),
            Routed::Nobody(_)
        ));
    }

    #[test]
    fn a_generation_flooding_its_notify_socket_is_held_to_its_rate() {
        let (route, rx) = route(4);
        let delivered = (0..20_000)
            .filter(|_| route.deliver(datagram(CHILD)))
            .count();
        assert!(delivered >= NOTIFY_BURST as usize, "{delivered}");
        // The burst, and what the rate refilled while the loop ran.
        assert!(delivered < 2 * NOTIFY_BURST as usize, "{delivered}");
        assert_eq!(route.dropped(), (20_000 - delivered) as u64);
        assert_eq!(rx.try_iter().count(), delivered);
    }

    #[test]
    fn without_a_spawn_in_flight_an_unknown_sender_is_nobody() {
        let router = NotifyRouter::default();
        assert!(matches!(
            router.route(datagram(STRANGER)),
            Routed::Nobody(_)
        ));
        assert!(matches!(router.route(datagram(0)), Routed::Nobody(_)));
    }
}
