//! Interleaved A/B rounds: raw, bus, raw, bus, ... so that drift of the box (other
//! processes, the page cache, thermal state) hits both sides alike; each side's metrics
//! are the median of its rounds.

use std::future::Future;

use anyhow::{Context as _, Result};

use crate::cli::{Plan, Side};
use crate::report::Row;
use crate::stats::{Sample, Summary};

/// Runs `run` for each side, `plan.rounds` times, interleaved, and summarises; `None` when
/// `--only` leaves the row out.
pub async fn compare<F, Fut>(
    plan: &Plan,
    key: impl Into<String>,
    label: impl Into<String>,
    latency: bool,
    mut run: F,
) -> Result<Option<Row>>
where
    F: FnMut(Side) -> Fut,
    Fut: Future<Output = Result<Sample>>,
{
    let (key, label) = (key.into(), label.into());
    if !plan.wants(&key) {
        return Ok(None);
    }
    let mut raw = Vec::new();
    let mut bus = Vec::new();
    let mut stalls = Vec::new();
    for round in 1..=plan.rounds {
        for &side in &plan.sides {
            let sample = run(side)
                .await
                .with_context(|| format!("{label}: {} side, round {round}", side.name()))?;
            eprintln!(
                "bus-bench: {label:<44} {} #{round}  {}",
                side.name(),
                sample.brief()
            );
            if let Some(stall) = sample.stall {
                stalls.push(format!(
                    "{} round {round}: no delivery for {:.1} s",
                    side.name(),
                    stall.as_secs_f64()
                ));
            }
            match side {
                Side::Raw => raw.push(sample),
                Side::Bus => bus.push(sample),
            }
        }
    }
    Ok(Some(Row {
        key,
        label,
        latency,
        raw: Summary::of(&raw),
        bus: Summary::of(&bus),
        stalls,
    }))
}
