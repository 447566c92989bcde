//! `baton-bench`: restarts under load, through the agent and the naive way,
//! printed as markdown tables. Progress goes to stderr, the tables to stdout.
#![forbid(unsafe_code)]

mod agent;
mod binaries;
mod cli;
mod handoff;
mod load;
mod many_services;
mod memory;
mod overhead;
mod report;
mod standalone;
mod stats;
mod under_load;

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use crate::binaries::Binaries;
use crate::cli::{Cli, Scenario};
use crate::memory::Memory;
use crate::overhead::Overhead;
use crate::stats::{LoadStats, median};
use crate::under_load::{Connections, LoadSettings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(markdown) => {
            print!("{markdown}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("baton-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<String> {
    let mut binaries = Binaries::next_to_this_program()?;
    if let Some(agent) = &cli.agent_binary {
        binaries.agent = agent.clone();
    }
    let settings = LoadSettings {
        duration: cli.duration,
        restart_every: cli.restart_every,
        connections: cli.connections,
        warmup: cli.warmup,
    };
    let mut scenarios = cli.scenarios.clone();
    scenarios.sort_unstable();
    scenarios.dedup();

    let load_average_before = report::load_average();
    let mut load: BTreeMap<Scenario, Vec<LoadStats>> = BTreeMap::new();
    let mut overheads = Vec::new();
    let mut memories = Vec::new();
    let mut many_services = Vec::new();
    let mut idle_handoffs = Vec::new();
    // Runs outermost, so that a drift of the machine over time spreads over
    // every scenario instead of favouring the ones that ran first.
    for run in 1..=cli.runs {
        for &scenario in &scenarios {
            eprintln!("baton-bench: run {run}/{}: {}", cli.runs, scenario.name());
            let context = || format!("scenario {} failed", scenario.name());
            match scenario {
                Scenario::Baseline
                | Scenario::Agent
                | Scenario::AgentNice
                | Scenario::Handoff
                | Scenario::Naive => {
                    let outcome = match scenario {
                        Scenario::Baseline => under_load::through_agent(
                            &binaries,
                            &settings,
                            false,
                            None,
                            Connections::Drain,
                        ),
                        Scenario::Agent => under_load::through_agent(
                            &binaries,
                            &settings,
                            true,
                            None,
                            Connections::Drain,
                        ),
                        Scenario::AgentNice => under_load::through_agent(
                            &binaries,
                            &settings,
                            true,
                            Some(cli.warmup_nice),
                            Connections::Drain,
                        ),
                        Scenario::Handoff => under_load::through_agent(
                            &binaries,
                            &settings,
                            true,
                            None,
                            Connections::HandOver,
                        ),
                        _ => under_load::naive(&binaries, &settings),
                    };
                    let stats = LoadStats::of(&outcome.with_context(context)?);
                    eprintln!(
                        "baton-bench:   {} ok, {} failed, {} restarts",
                        stats.ok, stats.failed, stats.restarts
                    );
                    load.entry(scenario).or_default().push(stats);
                }
                Scenario::Overhead => overheads
                    .push(overhead::measure(&binaries, cli.restarts).with_context(context)?),
                Scenario::Memory => {
                    memories.push(memory::measure(&binaries, cli.services).with_context(context)?)
                }
                Scenario::ManyServices => many_services
                    .push(many_services::measure(&binaries, cli.services).with_context(context)?),
                Scenario::HandoffIdle => idle_handoffs.push(
                    handoff::idle_connections(&binaries, cli.idle_connections)
                        .with_context(context)?,
                ),
            }
        }
    }

    let results = report::Results {
        settings,
        runs: cli.runs,
        warmup_nice: cli.warmup_nice,
        load: load
            .into_iter()
            .filter(|(scenario, _)| scenario.is_load())
            .filter_map(|(scenario, runs)| Some((scenario, LoadStats::combine(&runs)?)))
            .collect(),
        overhead: combine_overheads(&overheads),
        memory: combine_memories(&memories),
        // One run is minutes long; with several, each run gets its table.
        many_services,
        idle_handoffs,
        load_average_before,
        load_average_after: report::load_average(),
    };
    Ok(report::render(&results))
}

fn combine_overheads(runs: &[Overhead]) -> Option<Overhead> {
    let first = runs.first()?;
    let mut outcomes = BTreeMap::new();
    for run in runs {
        for (outcome, count) in &run.outcomes {
            *outcomes.entry(outcome.clone()).or_default() += count;
        }
    }
    Some(Overhead {
        restarts: runs.iter().map(|r| r.restarts).sum(),
        via_agent: median(runs.iter().map(|r| r.via_agent))?,
        via_agent_p90: median(runs.iter().map(|r| r.via_agent_p90))?,
        standalone: median(runs.iter().map(|r| r.standalone))?,
        standalone_p90: median(runs.iter().map(|r| r.standalone_p90))?,
        agent_reported_startup: median(runs.iter().map(|r| r.agent_reported_startup))
            .unwrap_or(first.agent_reported_startup),
        outcomes,
    })
}

fn combine_memories(runs: &[Memory]) -> Option<Memory> {
    Some(Memory {
        services: runs.first()?.services,
        after_start: median(runs.iter().map(|r| r.after_start))?,
        after_restarts: median(runs.iter().map(|r| r.after_restarts))?,
        peak: median(runs.iter().map(|r| r.peak))?,
    })
}
