//! The markdown report: one block of rows per workload (raw, bus, bus/raw) and the issue's
//! targets next to the measured ratios.

use std::fmt::Write as _;

use crate::cli::{GROUP_MEMBERS, Plan};
use crate::payload::PAYLOAD_BYTES;
use crate::stats::Summary;

/// One workload's medians, per side.
#[derive(Debug)]
pub struct Row {
    /// Stable name the targets refer to (`publish.sync`, `e2e.10000`, `group.slow.4`).
    pub key: String,
    pub label: String,
    /// Whether latency percentiles mean something for this workload.
    pub latency: bool,
    pub raw: Option<Summary>,
    pub bus: Option<Summary>,
    /// Rounds in which a consumer stalled (see `recorder::STALL`).
    pub stalls: Vec<String>,
}

const DASH: &str = "—";

fn rate(v: f64) -> String {
    format!("{v:.0}")
}

fn micros(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
        None => DASH.to_owned(),
    }
}

fn ratio(bus: Option<f64>, raw: Option<f64>) -> String {
    match (bus, raw) {
        (Some(b), Some(r)) if r > 0.0 => format!("{:.2}×", b / r),
        _ => DASH.to_owned(),
    }
}

impl Row {
    fn find<'a>(rows: &'a [Row], key: &str) -> Option<&'a Row> {
        rows.iter().find(|r| r.key == key)
    }

    fn both(&self) -> Option<(Summary, Summary)> {
        Some((self.raw?, self.bus?))
    }

    fn write(&self, out: &mut String) {
        let lat = |v: Option<f64>| {
            if self.latency {
                micros(v)
            } else {
                DASH.to_owned()
            }
        };
        for (side, s) in [("raw", self.raw), ("bus", self.bus)] {
            if let Some(s) = s {
                let _ = writeln!(
                    out,
                    "| {} | {side} | {} | {} | {} | {} | {:.1} |",
                    self.label,
                    rate(s.rate),
                    lat(s.p50),
                    lat(s.p99),
                    lat(s.p999),
                    s.cpu
                );
            }
        }
        if let Some((r, b)) = self.both() {
            let lat_ratio = |b: Option<f64>, r: Option<f64>| {
                if self.latency {
                    ratio(b, r)
                } else {
                    DASH.to_owned()
                }
            };
            let _ = writeln!(
                out,
                "| {} | **bus/raw** | **{}** | {} | {} | {} | {} |",
                self.label,
                ratio(Some(b.rate), Some(r.rate)),
                lat_ratio(b.p50, r.p50),
                lat_ratio(b.p99, r.p99),
                lat_ratio(b.p999, r.p999),
                ratio(Some(b.cpu), Some(r.cpu)),
            );
        }
    }
}

/// A target of the issue with what was measured against it.
#[derive(Debug)]
struct Check {
    target: String,
    measured: String,
    met: Option<bool>,
}

fn checks(rows: &[Row]) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some((r, b)) = Row::find(rows, "publish.window").and_then(Row::both) {
        let x = b.rate / r.rate;
        out.push(Check {
            target: "windowed typed publish ≥ 0.90× raw".into(),
            measured: format!("{x:.2}×"),
            met: Some(x >= 0.90),
        });
    }
    if let Some((r, b)) = Row::find(rows, "publish.sync").and_then(Row::both)
        && let (Some(rp), Some(bp)) = (r.p50, b.p50)
    {
        let d = bp - rp;
        out.push(Check {
            target: "one-at-a-time publish p50 within 5 µs of raw".into(),
            measured: format!("{d:+.1} µs ({bp:.1} vs {rp:.1})"),
            met: Some(d <= 5.0),
        });
    }
    for row in rows
        .iter()
        .filter(|r| r.key.starts_with("e2e.") && r.latency)
    {
        let Some((r, b)) = row.both() else { continue };
        if let (Some(r50), Some(b50), Some(r99), Some(b99)) = (r.p50, b.p50, r.p99, b.p99) {
            let (x50, x99) = (b50 / r50, b99 / r99);
            out.push(Check {
                target: format!("{}: p50 ≤ 1.15×, p99 ≤ 1.3× raw", row.label),
                measured: format!("p50 {x50:.2}×, p99 {x99:.2}×"),
                met: Some(x50 <= 1.15 && x99 <= 1.3),
            });
        }
    }
    for row in rows.iter().filter(|r| r.key.starts_with("group.")) {
        let Some((r, b)) = row.both() else { continue };
        let x = b.rate / r.rate;
        out.push(Check {
            target: format!("{}: ≥ 0.9× raw", row.label),
            measured: format!("{x:.2}×"),
            met: Some(x >= 0.9),
        });
    }
    let (first, last) = (GROUP_MEMBERS[0], GROUP_MEMBERS[GROUP_MEMBERS.len() - 1]);
    let one = Row::find(rows, &format!("group.slow.{first}"));
    let many = Row::find(rows, &format!("group.slow.{last}"));
    if let (Some(one), Some(many)) = (one, many) {
        let scale = |a: Option<Summary>, b: Option<Summary>| Some(b?.rate / a?.rate);
        if let Some(bus) = scale(one.bus, many.bus) {
            let raw = scale(one.raw, many.raw)
                .map(|x| format!(" (raw {x:.2}×)"))
                .unwrap_or_default();
            out.push(Check {
                target: format!("200 µs handler scales ≥ 3.5× from {first} to {last} members"),
                measured: format!("bus {bus:.2}×{raw}"),
                met: Some(bus >= 3.5),
            });
        }
    }
    out
}

/// The whole report.
pub fn markdown(plan: &Plan, rows: &[Row], notes: &[String]) -> String {
    let mut out = String::new();
    let topology = if plan.nodes == 1 {
        "R1: 1 nats-server, file storage, 1 replica".to_owned()
    } else {
        format!(
            "R3: {} nats-servers in a cluster, file storage, 3 replicas",
            plan.nodes
        )
    };
    if rows.is_empty() {
        // Only sections of their own (the tracing workload's): no empty table.
        let _ = writeln!(out, "#### {topology}");
        for note in notes {
            let _ = writeln!(out, "\n{note}");
        }
        return out;
    }
    let _ = writeln!(
        out,
        "#### {topology}{}\n\n{PAYLOAD_BYTES}-byte JSON data; median of {} interleaved rounds per side; \
         end-to-end group: 1 member × {} handler slots; group workload: {} slots per member. \
         Latency in µs; CPU = user+sys time of the benchmark process (publisher and consumers, not \
         the servers) per message.\n",
        if plan.quick {
            " (--quick: smoke run)"
        } else {
            ""
        },
        plan.rounds,
        plan.e2e_concurrency,
        plan.group_concurrency,
    );
    out += "| workload | side | msgs/s | p50 | p99 | p99.9 | CPU µs/msg |\n";
    out += "|---|---|--:|--:|--:|--:|--:|\n";
    for row in rows {
        row.write(&mut out);
    }
    let checks = checks(rows);
    if !checks.is_empty() {
        out += "\n| target | measured | met |\n|---|---|---|\n";
        for c in checks {
            let met = match c.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => DASH,
            };
            let _ = writeln!(out, "| {} | {} | {met} |", c.target, c.measured);
        }
    }
    let stalls: Vec<String> = rows
        .iter()
        .flat_map(|r| r.stalls.iter().map(move |s| format!("{}, {s}", r.label)))
        .collect();
    if !stalls.is_empty() {
        out += "\nStalls (a consumer received nothing for a second or more; the median of rounds \
                keeps one such round out of the table):\n\n";
        for s in stalls {
            let _ = writeln!(out, "- {s}");
        }
    }
    for note in notes {
        let _ = writeln!(out, "\n{note}");
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Args;

    #[test]
    fn given_no_rows_should_print_no_table_only_the_notes() {
        let plan = Plan::new(&Args::parse_from(["bus-bench", "--workloads", "tracing"]));
        let out = markdown(&plan, &[], &["Run time 1 s.".to_owned()]);
        assert!(!out.contains("| workload"), "{out}");
        assert!(out.contains("Run time 1 s."), "{out}");
    }
}
