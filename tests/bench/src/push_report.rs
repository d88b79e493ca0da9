//! The push workload's section of the report: the rate ladder of each side, the memory
//! per idle connection, and the targets against the bus's numbers.

use std::fmt::Write as _;

use crate::cli::{Plan, Side};
use crate::push::{EVENT_TYPE, KEEP_UP, MemoryRow, StepRow, name, sse_bytes};

/// Deliveries per second the bus must sustain with 1,000 clients.
const TARGET_DELIVERIES: f64 = 100_000.0;
/// The rate of the latency target, and its p99 bound in milliseconds.
const TARGET_LATENCY_RATE: f64 = 1_000.0;
const TARGET_P99_MS: f64 = 50.0;
/// Resident memory per idle connection, KiB.
const TARGET_KIB_PER_CLIENT: f64 = 10.0;
/// The client count the targets are stated for.
const TARGET_CLIENTS: usize = 1_000;

const DASH: &str = "—";

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The highest deliveries/s of the rates `side` kept up with.
fn sustained(steps: &[StepRow], side: Side) -> Option<&StepRow> {
    steps
        .iter()
        .filter(|s| s.side == side && s.ladder && s.kept_up)
        .max_by(|a, b| a.per_s.total_cmp(&b.per_s))
}

fn first_missed(steps: &[StepRow], side: Side) -> Option<&StepRow> {
    steps
        .iter()
        .find(|s| s.side == side && s.ladder && !s.kept_up)
}

pub fn markdown(plan: &Plan, steps: &[StepRow], memory: &[MemoryRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n#### Push fan-out: SSE, {} clients{}\n\n{} clients in the bench process (hyper HTTP/1, \
         one task each) on `GET /v1/events/stream?types=bench.push.%3E`; `{EVENT_TYPE}` events \
         (about {} bytes of SSE each) published with the SDK (JetStream), open loop, {:.0} s per \
         rate, rising until deliveries/s < {:.0} % of rate × clients or a client is cut off. \
         bus: one bus-node process (release, auth and telemetry off, `push.client_buffer` 256); \
         bare: a core NATS subscription feeding per-client buffers of 256 and a hyper SSE \
         server, in a process of its own, connections {}. Latency: scheduled publish → the client reads the \
         event, ms; not delivered: of events × clients, within 5 s of the step's last publish. \
         CPU: % of one core over the step (2 cores in all).\n",
        plan.push_clients,
        if plan.quick {
            " (--quick: smoke run)"
        } else {
            ""
        },
        plan.push_clients,
        sse_bytes(),
        plan.push_step.as_secs_f64(),
        100.0 * KEEP_UP,
        if plan.bare_nagle {
            "with Nagle's algorithm on (`--bare-nagle`), as bus-node's"
        } else {
            "`TCP_NODELAY` (bus-node's are not)"
        },
    );
    let ladder: Vec<&StepRow> = steps.iter().filter(|s| s.ladder).collect();
    let latency: Vec<&StepRow> = steps.iter().filter(|s| !s.ladder).collect();
    step_rows(&mut out, &ladder);
    if !latency.is_empty() {
        let _ = writeln!(
            out,
            "\nThe latency row: {} fresh clients at {}/s, after the ladder.\n",
            latency[0].clients,
            thousands(latency[0].rate)
        );
        step_rows(&mut out, &latency);
    }
    out += "\n| side | RSS before (KiB) | with the clients idle | per idle connection (KiB) | \
            after the ladder |\n|---|--:|--:|--:|--:|\n";
    for m in memory {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {} |",
            name(m.side),
            thousands(m.before as f64),
            thousands(m.idle as f64),
            m.per_client(),
            thousands(m.after as f64),
        );
    }
    out += &targets(plan, steps, memory);
    out
}

fn step_rows(out: &mut String, steps: &[&StepRow]) {
    *out += "| side | events/s | clients | deliveries/s | of rate × clients | p50 | p99 | p99.9 | max | \
            not delivered | cut | server µs/delivery | CPU % server / bench / nats |\n";
    *out += "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
    for s in steps {
        let lat = |i: usize| s.latency_ms.map_or(DASH.to_owned(), |l| ms(l[i]));
        let share = s.per_s / (s.rate * s.clients.max(1) as f64);
        let cut = if s.failed > 0 {
            format!("{} (+{} failed)", s.cut, s.failed)
        } else {
            s.cut.to_string()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {}{:.1} %{} | {} | {} | {} | {} | {} | {cut} | {:.2} | {:.0} / {:.0} / {:.0} |",
            name(s.side),
            thousands(s.rate),
            s.clients,
            thousands(s.per_s),
            if s.kept_up { "" } else { "**" },
            100.0 * share,
            if s.kept_up { "" } else { "**" },
            lat(0),
            lat(1),
            lat(2),
            lat(3),
            thousands((s.events * s.clients as u64).saturating_sub(s.delivered) as f64),
            s.server_us,
            s.cpu_share[0],
            s.cpu_share[1],
            s.cpu_share[2],
        );
    }
}

fn targets(plan: &Plan, steps: &[StepRow], memory: &[MemoryRow]) -> String {
    let mut out = String::from("\n| target | bus | bare | met |\n|---|---|---|---|\n");
    let scale = if plan.push_clients == TARGET_CLIENTS {
        String::new()
    } else {
        format!(
            " (run with {} clients, not {TARGET_CLIENTS})",
            plan.push_clients
        )
    };
    let throughput = |side: Side| match (sustained(steps, side), first_missed(steps, side)) {
        (Some(s), missed) => format!(
            "{} at {}/s{}",
            thousands(s.per_s),
            thousands(s.rate),
            missed.map_or(String::new(), |m| format!(
                "; {} at {}/s not kept up",
                thousands(m.per_s),
                thousands(m.rate)
            ))
        ),
        (None, Some(m)) => format!(
            "none kept up ({} at {}/s)",
            thousands(m.per_s),
            thousands(m.rate)
        ),
        (None, None) => DASH.to_owned(),
    };
    let met = sustained(steps, Side::Bus)
        .map(|s| s.per_s >= TARGET_DELIVERIES && plan.push_clients >= TARGET_CLIENTS);
    row(
        &mut out,
        &format!(
            "≥ {} deliveries/s, {TARGET_CLIENTS} clients{scale}",
            thousands(TARGET_DELIVERIES)
        ),
        &throughput(Side::Bus),
        &throughput(Side::Raw),
        met,
    );

    let ladder_at = |side: Side| {
        steps
            .iter()
            .find(|s| s.side == side && s.ladder && (s.rate - TARGET_LATENCY_RATE).abs() < 0.5)
    };
    let latency = |side: Side| match ladder_at(side) {
        Some(s) => p99(s),
        None => match first_missed(steps, side) {
            Some(m) => format!("not reached: fell behind at {}/s", thousands(m.rate)),
            None => DASH.to_owned(),
        },
    };
    let met = ladder_at(Side::Bus)
        .map(p99_met)
        .or_else(|| first_missed(steps, Side::Bus).map(|_| false));
    row(
        &mut out,
        &format!(
            "p99 publish → client ≤ {TARGET_P99_MS:.0} ms at {}/s, {} clients{scale}",
            thousands(TARGET_LATENCY_RATE),
            plan.push_clients
        ),
        &latency(Side::Bus),
        &latency(Side::Raw),
        met,
    );
    let latency_row = |side: Side| steps.iter().find(|s| s.side == side && !s.ladder);
    if let Some(bus) = latency_row(Side::Bus) {
        row(
            &mut out,
            &format!("the same, {} clients (the latency row)", bus.clients),
            &p99(bus),
            &latency_row(Side::Raw).map_or(DASH.to_owned(), p99),
            Some(p99_met(bus)),
        );
    }

    let mem = |side: Side| memory.iter().find(|m| m.side == side);
    let kib =
        |side: Side| mem(side).map_or(DASH.to_owned(), |m| format!("{:.1} KiB", m.per_client()));
    row(
        &mut out,
        &format!("≤ {TARGET_KIB_PER_CLIENT:.0} KiB resident per idle connection"),
        &kib(Side::Bus),
        &kib(Side::Raw),
        mem(Side::Bus).map(|m| m.per_client() <= TARGET_KIB_PER_CLIENT),
    );
    out
}

fn p99(s: &StepRow) -> String {
    match s.latency_ms {
        Some(l) => format!(
            "p99 {} ms{}",
            ms(l[1]),
            if s.kept_up { "" } else { " (not kept up)" }
        ),
        None => "nothing delivered".to_owned(),
    }
}

fn p99_met(s: &StepRow) -> bool {
    s.kept_up && s.latency_ms.is_some_and(|l| l[1] <= TARGET_P99_MS)
}

fn row(out: &mut String, target: &str, bus: &str, bare: &str, met: Option<bool>) {
    let met = match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => DASH,
    };
    let _ = writeln!(out, "| {target} | {bus} | {bare} | {met} |");
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}
