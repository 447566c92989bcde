//! The service page's picture of generations: one lane per host, one bar per
//! generation on a shared time axis, so the overlap of a restart (the new
//! generation starting while the old one still serves, then drains) is seen
//! at a glance. Rendered on the server as SVG: no chart library, no script.

use baton_proto::UnixMillis;
use baton_proto::api::{GenerationRecord, Service};
use std::collections::BTreeMap;
use std::fmt::Write;

use crate::dashboard::format::{clock, duration_ms, timestamp};

/// Older generations add nothing to the picture of the last restarts and
/// would squeeze the recent ones into slivers.
const GENERATIONS_PER_HOST: usize = 6;
const WIDTH: f64 = 1000.0;
const LABEL_WIDTH: f64 = 120.0;
const LANE_HEIGHT: f64 = 44.0;
const BAR_HEIGHT: f64 = 16.0;
const AXIS_HEIGHT: f64 = 26.0;
const MAX_SPAN_MS: u64 = 15 * 60 * 1000;
/// Roughly the width of one character of a bar label, to leave out labels
/// that would spill out of their bar.
const LABEL_CHAR_WIDTH: f64 = 7.5;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `generations` newest first, as the store lists them; `live` is the
/// service as its agents report it now.
pub fn render(generations: &[GenerationRecord], live: Option<&Service>, now: UnixMillis) -> String {
    let mut by_host: BTreeMap<&str, Vec<&GenerationRecord>> = BTreeMap::new();
    for generation in generations {
        let lane = by_host.entry(generation.host.as_str()).or_default();
        if lane.len() < GENERATIONS_PER_HOST {
            lane.push(generation);
        }
    }
    if by_host.is_empty() {
        return "<p class=\"empty\">No generation recorded yet.</p>".to_string();
    }
    let start_of = |g: &GenerationRecord| {
        g.spawned_at
            .or(g.ready_at)
            .or(g.draining_at)
            .or(g.exited_at)
            .unwrap_or(now)
    };
    let earliest = by_host
        .values()
        .flatten()
        .map(|g| start_of(g))
        .min()
        .unwrap_or(now);
    // The newest start (the last restart) gets at least half the width, so
    // its overlap is visible even after a generation that served for a week;
    // at least a minute, at most a quarter of an hour. Older starts are
    // clipped at the left edge.
    let newest = by_host
        .values()
        .flatten()
        .map(|g| start_of(g))
        .max()
        .unwrap_or(now);
    let span = (2 * now.saturating_sub(newest))
        .clamp(60_000, MAX_SPAN_MS)
        .min(now.saturating_sub(earliest).max(60_000));
    let window_start = now - span - span / 20;
    let window = (now - window_start) as f64;
    let plot_width = WIDTH - LABEL_WIDTH - 10.0;
    let x = |at: UnixMillis| {
        LABEL_WIDTH + (at.saturating_sub(window_start) as f64 / window) * plot_width
    };

    let height = AXIS_HEIGHT + LANE_HEIGHT * by_host.len() as f64 + 4.0;
    // Bars too narrow for their number: listed under the picture instead.
    let mut unlabelled: Vec<(&str, &GenerationRecord, UnixMillis, Option<UnixMillis>)> = Vec::new();
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"timeline\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-labelledby=\"timeline-title\">\
         <title id=\"timeline-title\">Generations per host from {} to {}</title>",
        timestamp(window_start),
        timestamp(now)
    );
    for tick in 0..=4 {
        let at = window_start + (now - window_start) * tick / 4;
        let tx = x(at);
        let anchor = match tick {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{AXIS_HEIGHT}\" y2=\"{:.1}\"/>\
             <text class=\"axis\" x=\"{tx:.1}\" y=\"16\" text-anchor=\"{anchor}\">{}</text>",
            height - 2.0,
            clock(at)
        );
    }
    for (lane, (host, generations)) in by_host.iter().enumerate() {
        let top = AXIS_HEIGHT + LANE_HEIGHT * lane as f64;
        let _ = write!(
            svg,
            "<text class=\"host\" x=\"0\" y=\"{:.1}\">{}</text>",
            top + LANE_HEIGHT / 2.0 + 4.0,
            escape(host)
        );
        let on_host = live.and_then(|s| s.hosts.iter().find(|h| h.host == *host));
        let oldest_first: Vec<&GenerationRecord> = generations.iter().rev().copied().collect();
        for (index, generation) in oldest_first.iter().enumerate() {
            // Neighbouring generations alternate between two rows, so the
            // overlap of a restart shows as two bars one above the other.
            let row = (index % 2) as f64;
            let y = top + 4.0 + row * (BAR_HEIGHT + 4.0);
            // A generation with no recorded exit that its connected agent no
            // longer reports ended unseen (the agent was replaced, or its
            // last events were lost): end it where its successor began.
            let vanished = generation.exited_at.is_none()
                && on_host.is_some_and(|h| {
                    h.online && !h.generations().iter().any(|g| g.pid == generation.pid)
                });
            let end = if generation.exited_at.is_some() {
                generation.exited_at
            } else if vanished {
                Some(
                    oldest_first
                        .get(index + 1)
                        .map(|next| start_of(next))
                        .unwrap_or(now),
                )
            } else {
                None
            };
            let start = start_of(generation);
            if !render_bar(&mut svg, generation, start, end, now, y, &x) {
                unlabelled.push((host, generation, start, end));
            }
        }
    }
    svg.push_str("</svg>");
    if !unlabelled.is_empty() {
        svg.push_str(
            "<ul class=\"short-generations\" aria-label=\"Generations too short to label in the picture\">",
        );
        for (host, generation, start, end) in unlabelled {
            let lived = match end {
                Some(end) => format!("lived {}", duration_ms(end.saturating_sub(start))),
                None => "still running".to_string(),
            };
            let status = generation
                .exit_status
                .as_deref()
                .map(|s| format!(", {}", escape(s)))
                .unwrap_or_default();
            let version = generation
                .program
                .as_ref()
                .map(|p| format!(" ({})", escape(&p.label())))
                .unwrap_or_default();
            let _ = write!(
                svg,
                "<li data-generation=\"{}\"><strong>{}</strong> generation {}{version}: started {}, {lived}{status}</li>",
                generation.generation,
                escape(host),
                generation.generation,
                clock(start),
            );
        }
        svg.push_str("</ul>");
    }
    svg
}

/// Draws one generation's bar; false when it was too narrow for its label.
fn render_bar(
    svg: &mut String,
    generation: &GenerationRecord,
    start: UnixMillis,
    ended: Option<UnixMillis>,
    now: UnixMillis,
    y: f64,
    x: &impl Fn(UnixMillis) -> f64,
) -> bool {
    let end = ended.unwrap_or(now);
    let ready = generation.ready_at;
    let draining = generation.draining_at;
    // Phases in order; each ends where the next begins.
    let serving_from = ready.unwrap_or(end);
    let serving_to = draining.unwrap_or(end);
    let segments = [
        ("starting", start, serving_from),
        ("serving", serving_from, serving_to),
        ("draining", draining.unwrap_or(end), end),
    ];
    let mut tooltip = format!(
        "generation {} · pid {}",
        generation.generation, generation.pid
    );
    if let Some(program) = &generation.program {
        let _ = write!(
            tooltip,
            " · {} · {}",
            program.label(),
            super::views::program_words(program)
        );
    }
    for (label, at) in [
        ("spawned", generation.spawned_at),
        ("ready", ready),
        ("draining", draining),
        ("exited", generation.exited_at),
    ] {
        if let Some(at) = at {
            let _ = write!(tooltip, " · {label} {}", clock(at));
        }
    }
    if let Some(ready) = ready {
        let _ = write!(
            tooltip,
            " · ready after {}",
            duration_ms(ready.saturating_sub(start))
        );
    }
    if ended.is_some() && generation.exited_at.is_none() {
        tooltip.push_str(" · its end was not recorded");
    }
    if let Some(cut) = generation.connections_cut {
        let _ = write!(tooltip, " · {cut} connections cut");
    }
    let _ = write!(
        svg,
        "<g class=\"generation\" data-generation=\"{}\"><title>{}</title>",
        generation.generation,
        escape(&tooltip)
    );
    for (class, from, to) in segments {
        if to <= from {
            continue;
        }
        let x1 = x(from);
        let w = (x(to) - x1).max(1.5);
        let _ = write!(
            svg,
            "<rect class=\"{class}\" x=\"{x1:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{BAR_HEIGHT}\" rx=\"3\"/>"
        );
    }
    let serving = ended.is_none() && draining.is_none() && ready.is_some();
    let bar_width = x(end) - x(start);
    let version = generation.program.as_ref().map(|p| p.label());
    let with_version = |label: String| match &version {
        Some(version) => format!("{label} · {version}"),
        None => label,
    };
    let long_label = with_version(format!("{} serving", generation.generation));
    let versioned_label = with_version(generation.generation.to_string());
    let short_label = generation.generation.to_string();
    let label = [long_label.clone(), versioned_label, short_label]
        .into_iter()
        .filter(|l| serving || *l != long_label)
        .find(|l| (l.len() as f64) * LABEL_CHAR_WIDTH + 8.0 <= bar_width);
    let labelled = label.is_some();
    if let Some(label) = label {
        let _ = write!(
            svg,
            "<text class=\"bar-label\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x(start) + 4.0,
            y + BAR_HEIGHT - 4.0,
            escape(&label),
        );
    }
    svg.push_str("</g>");
    labelled
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::api::GenerationPhase;

    fn record(generation: u64, spawned: u64, exited: Option<u64>) -> GenerationRecord {
        GenerationRecord {
            id: generation,
            host: "alpha".into(),
            service: "web".into(),
            generation,
            pid: 100 + generation as u32,
            phase: if exited.is_some() {
                GenerationPhase::Exited
            } else {
                GenerationPhase::Ready
            },
            spawned_at: Some(spawned),
            ready_at: Some(spawned + 500),
            draining_at: exited.map(|e| e - 1000),
            exited_at: exited,
            exit_status: None,
            connections_cut: None,
            agent_restart_id: None,
            program: None,
        }
    }

    #[test]
    fn overlapping_generations_are_two_bars_on_one_lane() {
        let now = 1_000_000;
        let svg = render(
            &[record(2, 900_000, None), record(1, 800_000, Some(902_000))],
            None,
            now,
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert_eq!(svg.matches("class=\"generation\"").count(), 2);
        assert_eq!(svg.matches("class=\"draining\"").count(), 1);
        assert!(svg.contains("2 serving"), "{svg}");
        assert!(svg.contains(">alpha<"));
    }

    #[test]
    fn a_generation_too_short_for_its_label_is_listed_under_the_picture() {
        let now = 1_000_000;
        let mut crashed = record(2, 900_000, Some(900_300));
        crashed.ready_at = None;
        crashed.draining_at = None;
        crashed.exit_status = Some("exited with status 1".into());
        let svg = render(
            &[
                record(3, 901_000, None),
                crashed,
                record(1, 800_000, Some(902_000)),
            ],
            None,
            now,
        );
        let list = &svg[svg
            .find("<ul class=\"short-generations\"")
            .unwrap_or_else(|| panic!("no list of short generations: {svg}"))..];
        assert!(
            list.contains("generation 2: started 00:15:00, lived 300 ms, exited with status 1"),
            "{list}"
        );
        // Those with a label in their bar are not listed again.
        assert!(!list.contains("generation 3"), "{list}");
        assert!(!list.contains("generation 1:"), "{list}");
    }

    #[test]
    fn no_generation_is_a_sentence_not_an_empty_picture() {
        assert!(render(&[], None, 5).contains("No generation"));
    }
}
