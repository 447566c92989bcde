//! How much memory and CPU a generation uses, read when a fresh status is
//! built (never on a timer of its own).
//!
//! With a cgroup, CPU is the cgroup's `cpu.stat` `usage_usec`, which cgroup
//! v2 keeps for every cgroup, controllers or not, and memory its
//! `memory.current` when the memory controller is enabled there (on a
//! hybrid layout it often is not). Whatever the cgroup does not say is summed
//! over the generation's live processes: `utime + stime` (and what their
//! reaped children used) from `/proc/<pid>/stat`, the resident set from
//! `/proc/<pid>/statm`.

use crate::connections::Members;
use baton_proto::{GenerationInfo, UsageSource};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One reading of a generation's memory and CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory: Option<(u64, UsageSource)>,
    pub cpu_usec: Option<(u64, UsageSource)>,
}

impl Usage {
    pub fn fill(self, info: &mut GenerationInfo) {
        info.memory_bytes = self.memory.map(|(bytes, _)| bytes);
        info.memory_source = self.memory.map(|(_, source)| source);
        info.cpu_usec = self.cpu_usec.map(|(usec, _)| usec);
        info.cpu_source = self.cpu_usec.map(|(_, source)| source);
    }
}

/// A walk of `/proc` this recent serves every generation of one status.
const WALK_REUSED_FOR: Duration = Duration::from_secs(1);

/// Reads a generation's usage. Blocking (`/proc`, the cgroup's files).
pub fn sample(members: &Members) -> Usage {
    match members {
        Members::Cgroup(folder) => {
            let cpu = cgroup_cpu_usec(folder).map(|usec| (usec, UsageSource::Cgroup));
            let memory = cgroup_memory(folder).map(|bytes| (bytes, UsageSource::Cgroup));
            if cpu.is_some() && memory.is_some() {
                return Usage {
                    memory,
                    cpu_usec: cpu,
                };
            }
            let summed = of_processes(&members.pids());
            Usage {
                memory: memory.or(summed.memory),
                cpu_usec: cpu.or(summed.cpu_usec),
            }
        }
        Members::Traced(traced) => of_processes(&traced.pids_within(WALK_REUSED_FOR)),
        Members::Group(_) => of_processes(&members.pids()),
    }
}

/// [`sample`] for several generations, off the async threads.
pub async fn sample_all(members: Vec<Members>) -> Vec<Usage> {
    let count = members.len();
    tokio::task::spawn_blocking(move || members.iter().map(sample).collect())
        .await
        .unwrap_or_else(|_| vec![Usage::default(); count])
}

/// The last reading of each generation of one service, shown in the
/// statuses between two readings.
#[derive(Clone, Default)]
pub struct Cache(Arc<Mutex<HashMap<u64, Usage>>>);

impl Cache {
    /// Fills each generation with its last reading, and forgets the
    /// readings of generations that are gone.
    pub fn fill(&self, generations: &mut [GenerationInfo]) {
        let mut readings = self.0.lock().expect("usage cache lock");
        readings.retain(|number, _| generations.iter().any(|g| g.generation == *number));
        for generation in generations {
            if let Some(usage) = readings.get(&generation.generation) {
                usage.fill(generation);
            }
        }
    }

    /// Whether `generation` has been read at least once.
    pub fn has(&self, generation: u64) -> bool {
        self.0
            .lock()
            .expect("usage cache lock")
            .contains_key(&generation)
    }

    pub fn remember(&self, generation: u64, usage: Usage) {
        self.0
            .lock()
            .expect("usage cache lock")
            .insert(generation, usage);
    }
}

/// `usage_usec` of a cgroup's `cpu.stat`: every process it ever held.
pub fn cgroup_cpu_usec(folder: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(folder.join("cpu.stat")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|value| value.trim().parse().ok())
}

/// `memory.current`: there only when the memory controller is enabled for
/// the cgroup.
pub fn cgroup_memory(folder: &Path) -> Option<u64> {
    std::fs::read_to_string(folder.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Summed over live processes; a process that exits mid-read is left out.
/// `None` for no process at all.
pub fn of_processes(pids: &[i32]) -> Usage {
    let page_size = procfs::page_size();
    let ticks_per_second = procfs::ticks_per_second().max(1);
    let mut memory = 0u64;
    let mut ticks = 0u64;
    let mut read = 0usize;
    for pid in pids {
        let Ok(process) = procfs::process::Process::new(*pid) else {
            continue;
        };
        let (Ok(stat), Ok(statm)) = (process.stat(), process.statm()) else {
            continue;
        };
        read += 1;
        memory += statm.resident * page_size;
        ticks += stat.utime
            + stat.stime
            + u64::try_from(stat.cutime).unwrap_or(0)
            + u64::try_from(stat.cstime).unwrap_or(0);
    }
    if read == 0 {
        return Usage::default();
    }
    Usage {
        memory: Some((memory, UsageSource::Processes)),
        cpu_usec: Some((ticks * 1_000_000 / ticks_per_second, UsageSource::Processes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_memory_and_cpu() {
        let mut burnt = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            burnt = std::hint::black_box(burnt.wrapping_add(1));
        }
        let held = vec![1u8; 8 << 20];
        let usage = of_processes(&[std::process::id() as i32]);
        let (memory, source) = usage.memory.unwrap();
        assert_eq!(source, UsageSource::Processes);
        assert!(memory >= 8 << 20, "{memory}");
        assert!(usage.cpu_usec.unwrap().0 > 0);
        assert_eq!(of_processes(&[]), Usage::default());
        drop(std::hint::black_box(held));
    }

    #[test]
    fn cgroup_files_are_read_where_they_are() {
        let folder = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_cpu_usec(folder.path()), None);
        std::fs::write(
            folder.path().join("cpu.stat"),
            "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n",
        )
        .unwrap();
        std::fs::write(folder.path().join("memory.current"), "4096\n").unwrap();
        assert_eq!(cgroup_cpu_usec(folder.path()), Some(1234));
        assert_eq!(cgroup_memory(folder.path()), Some(4096));
        assert_eq!(
            sample(&Members::Cgroup(folder.path().to_path_buf())),
            Usage {
                memory: Some((4096, UsageSource::Cgroup)),
                cpu_usec: Some((1234, UsageSource::Cgroup)),
            }
        );
    }
}
