//! Command-line flags of `baton-bench`.

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Measures hot restarts under load: the agent, the agent with a reniced
/// warm-up, and the naive stop-then-start, each against a run without restarts.
/// Every part (agent, services, load generator) runs on this machine.
#[derive(Debug, Parser)]
#[command(name = "baton-bench", version)]
pub struct Cli {
    /// How long each load scenario runs.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub duration: Duration,

    /// Time between restarts in the load scenarios.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "4s")]
    pub restart_every: Duration,

    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,

    /// CPU-bound warm-up of the demo service before it is ready.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    pub warmup: Duration,

    /// Sequential restarts of the overhead scenario (and standalone starts it
    /// is compared with).
    #[arg(long, default_value_t = 100)]
    pub restarts: usize,

    /// Services the memory and many-services scenarios give one agent.
    #[arg(long, default_value_t = 100)]
    pub services: usize,

    /// Which scenarios to run, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "baseline,agent,agent+nice,handoff,naive,overhead,memory,handoff-idle"
    )]
    pub scenarios: Vec<Scenario>,

    /// Repeat every scenario this many times; the tables show medians of
    /// rates, latencies and gaps, and totals of counts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,

    /// Measure this `baton-agent` instead of the one next to the bench: to
    /// compare with another build (the other programs stay the bench's).
    #[arg(long, value_name = "PATH")]
    pub agent_binary: Option<std::path::PathBuf>,

    /// Idle keep-alive connections the `handoff-idle` scenario hands over.
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: usize,

    /// The nice value of a starting generation in the `agent+nice` scenario.
    #[arg(long, default_value_t = 10)]
    pub warmup_nice: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// Agent and service under load, no restarts: the reference.
    Baseline,
    /// Hot restarts through the agent under load.
    Agent,
    /// Hot restarts through the agent, the new generation warming up at a
    /// lower priority.
    #[value(name = "agent+nice")]
    AgentNice,
    /// Hot restarts through the agent, the old generation handing its
    /// keep-alive connections over to the new one instead of closing them.
    Handoff,
    /// No agent: SIGTERM the service, wait for it to exit, start a new one
    /// that binds the port itself.
    Naive,
    /// The agent's own time per restart, without load.
    Overhead,
    /// The agent's resident memory with many services.
    Memory,
    /// One agent with `--services` demo services linked to a real server:
    /// idle CPU, `baton status`, the link's hello, restarting every service,
    /// memory. Not in the default set: it takes minutes at 1,000.
    ManyServices,
    /// `--idle-connections` idle keep-alive connections handed over in one
    /// restart: the restart's length, the cost per connection, and whether
    /// each connection answers from the new generation afterwards.
    HandoffIdle,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::Agent => "agent",
            Scenario::AgentNice => "agent+nice",
            Scenario::Handoff => "handoff",
            Scenario::Naive => "naive",
            Scenario::Overhead => "overhead",
            Scenario::Memory => "memory",
            Scenario::ManyServices => "many-services",
            Scenario::HandoffIdle => "handoff-idle",
        }
    }

    pub fn is_load(self) -> bool {
        matches!(
            self,
            Scenario::Baseline
                | Scenario::Agent
                | Scenario::AgentNice
                | Scenario::Handoff
                | Scenario::Naive
        )
    }
}
