//! The drain machinery, after mini-redis: a `watch` tells every task that
//! draining has begun, and each connection holds a clone of one `mpsc::Sender`
//! whose drop says "this one is done". When the last sender is gone, `recv`
//! returns `None` and the process may exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, watch};

/// The one place that starts a drain.
#[derive(Debug)]
pub struct DrainTrigger {
    sender: watch::Sender<bool>,
}

/// What connections and accept loops watch to learn that draining began.
#[derive(Debug, Clone)]
pub struct DrainWatch {
    receiver: watch::Receiver<bool>,
}

pub fn channel() -> (DrainTrigger, DrainWatch) {
    let (sender, receiver) = watch::channel(false);
    (DrainTrigger { sender }, DrainWatch { receiver })
}

impl DrainTrigger {
    pub fn start(&self) {
        self.sender.send_replace(true);
    }

    pub fn watch(&self) -> DrainWatch {
        DrainWatch {
            receiver: self.sender.subscribe(),
        }
    }
}

impl DrainWatch {
    pub fn is_draining(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once draining has begun (at once if it already has). Never
    /// resolves once the trigger is gone without starting a drain, so that a
    /// caller looping on it cannot spin.
    pub async fn draining(&mut self) {
        if self.receiver.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Counts the tasks that must finish before the process exits.
#[derive(Debug)]
pub struct TaskTracker {
    sender: mpsc::Sender<()>,
    receiver: mpsc::Receiver<()>,
    active: Arc<AtomicUsize>,
}

/// The number of live guards, for progress logs while draining.
#[derive(Debug, Clone)]
pub struct ActiveCount(Arc<AtomicUsize>);

impl ActiveCount {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Held by one connection or accept loop; dropping it marks the task done.
#[derive(Debug)]
pub struct TaskGuard {
    _sender: mpsc::Sender<()>,
    active: Arc<AtomicUsize>,
}

impl Clone for TaskGuard {
    /// A connection accepted by a loop holds its own guard: the loop may end
    /// long before the connection does.
    fn clone(&self) -> Self {
        self.active.fetch_add(1, Ordering::Relaxed);
        TaskGuard {
            _sender: self._sender.clone(),
            active: self.active.clone(),
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for TaskTracker {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel(1);
        TaskTracker {
            sender,
            receiver,
            active: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl TaskTracker {
    pub fn guard(&self) -> TaskGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        TaskGuard {
            _sender: self.sender.clone(),
            active: self.active.clone(),
        }
    }

    /// Tasks (connections and accept loops) still running.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// A count that stays readable after `wait_all_done` took the tracker.
    pub fn active_count(&self) -> ActiveCount {
        ActiveCount(self.active.clone())
    }

    /// Waits until every guard handed out (and any handed out meanwhile by
    /// holders of a guard) has been dropped.
    pub async fn wait_all_done(self) {
        let TaskTracker {
            sender,
            mut receiver,
            ..
        } = self;
        drop(sender);
        // Nothing is ever sent: `None` means every sender is gone.
        let _ = receiver.recv().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_every_guard() {
        let tracker = TaskTracker::default();
        let guard = tracker.guard();
        assert_eq!(tracker.active(), 1);
        let (trigger, mut watch) = channel();
        let task = tokio::spawn(async move {
            watch.draining().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(guard);
        });
        assert!(!trigger.watch().is_draining());
        trigger.start();
        let started = std::time::Instant::now();
        tracker.wait_all_done().await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        task.await.unwrap();
    }
}
