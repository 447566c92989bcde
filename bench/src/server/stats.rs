use std::time::Duration;

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn median(samples: impl IntoIterator<Item = Duration>) -> Option<Duration> {
    let mut sorted: Vec<Duration> = samples.into_iter().collect();
    sorted.sort_unstable();
    percentile(&sorted, 0.5)
}

pub fn sorted(samples: &[Duration]) -> Vec<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted
}

/// User plus system CPU time of a process so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields are counted
    // from the last `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ, which the kernel fixes at 100 for /proc on every architecture.
    Some((user + system) / 100.0)
}

/// The machine's CPU time so far, in seconds, from the first line of
/// `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct MachineTimes {
    /// User and system time of every process.
    pub processes: f64,
    /// Interrupts and softirqs, which a process is not charged for: on
    /// loopback much of TCP's receive work runs there.
    pub interrupts: f64,
    /// Time the hypervisor gave this VM's cores to someone else.
    pub steal: f64,
}

pub fn machine_times() -> Option<MachineTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal, in USER_HZ.
    let field = |index: usize| ticks.get(index).map(|t| t / 100.0);
    Some(MachineTimes {
        processes: field(0)? + field(1)? + field(2)?,
        interrupts: field(5)? + field(6)?,
        steal: field(7)?,
    })
}

pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

pub fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|release| release.trim().to_owned())
}
