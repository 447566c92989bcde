//! A CPU-bound start, like a JIT or a cache being filled: the point is to load
//! the machine while the previous generation is still serving, as a real warm-up
//! would, so that benchmarks see its effect on latency. A sleep would not.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Burns every core for `duration`. Dropping the future stops the burn early
/// (the threads notice within a few microseconds).
pub async fn burn_cpu(duration: Duration) {
    if duration.is_zero() {
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cancelled = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(cancelled.clone());
    let deadline = Instant::now() + duration;
    let mut burners = Vec::with_capacity(threads);
    for _ in 0..threads {
        let cancelled = cancelled.clone();
        burners.push(tokio::task::spawn_blocking(move || {
            spin(deadline, &cancelled)
        }));
    }
    for burner in burners {
        let _ = burner.await;
    }
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn spin(deadline: Instant, cancelled: &AtomicBool) -> u64 {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    while Instant::now() < deadline && !cancelled.load(Ordering::Relaxed) {
        for _ in 0..10_000 {
            // xorshift: cheap work the optimiser cannot remove.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state = black_box(state);
        }
    }
    state
}

/// `mib` MiB, every page written so that it is resident.
pub fn hold_memory(mib: u64) -> Vec<u8> {
    let bytes = usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    let mut held = vec![0u8; bytes];
    for page in held.chunks_mut(4096) {
        page[0] = 1;
    }
    black_box(held)
}

/// Burns `percent` of every 100 ms on this thread, for ever.
pub fn keep_busy(percent: u8) {
    let busy = Duration::from_millis(u64::from(percent.min(100)));
    let period = Duration::from_millis(100);
    let never = AtomicBool::new(false);
    loop {
        let started = Instant::now();
        spin(started + busy, &never);
        std::thread::sleep(period.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn burns_for_the_requested_time() {
        let started = Instant::now();
        burn_cpu(Duration::from_millis(100)).await;
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }
}
