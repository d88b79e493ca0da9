//! The live page in a real browser: headless Chromium (Debian's, driven through
//! ChromeDriver over WebDriver) opens `/ui/live` on a node, an event published through
//! the SDK shows up with its sequence, type and node, its JSON opens on a click, a filter
//! keeps other types out, events published while paused show after resume, and a
//! screenshot is kept in `target/test-artifacts/live_page.png`.
//! Needs `chromium` and `chromedriver` (`scripts/ensure-chromium.sh`, which `make test`
//! runs); `CHROMEDRIVER_BIN` / `CHROMIUM_BIN` point elsewhere.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bus_sdk::bus_core::{Event, EventType};
use bus_tests::fixtures::*;
use bus_tests::{NatsCluster, Probe, try_poll_until};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use super::push_fixtures::{publish, publisher};

/// A ChromeDriver process on a free port, killed when dropped.
struct Driver {
    _child: tokio::process::Child,
    url: String,
    _port: bus_tests::ReservedPort,
}

async fn chromedriver() -> anyhow::Result<Driver> {
    let binary =
        std::env::var("CHROMEDRIVER_BIN").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    anyhow::ensure!(
        std::path::Path::new(&binary).exists(),
        "{binary} is missing: run scripts/ensure-chromium.sh (make test does)"
    );
    let port = bus_tests::reserve(1)?.remove(0);
    let child = tokio::process::Command::new(&binary)
        .arg(format!("--port={}", port.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{}", port.port());
    let status = format!("{url}/status");
    let http = http()?;
    try_poll_until("chromedriver ready", Duration::from_secs(20), || async {
        Ok(match http.get(&status).send().await {
            Ok(r) if r.status() == 200 => Probe::Ready(()),
            Ok(r) => Probe::NotYet(r.status().to_string()),
            Err(e) => Probe::NotYet(e.to_string()),
        })
    })
    .await?;
    Ok(Driver {
        _child: child,
        url,
        _port: port,
    })
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> anyhow::Result<Client> {
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,800", format!("--user-data-dir={}", profile.display())],
        }),
    );
    Ok(ClientBuilder::new(hyper_util_connector())
        .capabilities(caps)
        .connect(&driver.url)
        .await?)
}

fn hyper_util_connector() -> hyper_util::client::legacy::connect::HttpConnector {
    hyper_util::client::legacy::connect::HttpConnector::new()
}

/// The page's rows: (seq, type), newest first.
async fn rows(page: &Client) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for li in page.find_all(Locator::Css("#events li[data-seq]")).await? {
        let seq = li.attr("data-seq").await?.unwrap_or_default();
        let t = li.attr("data-type").await?.unwrap_or_default();
        out.push((seq, t));
    }
    Ok(out)
}

async fn wait_rows(
    page: &Client,
    what: &str,
    holds: impl Fn(&[(String, String)]) -> bool,
) -> anyhow::Result<Vec<(String, String)>> {
    try_poll_until(what, Duration::from_secs(20), || async {
        let r = rows(page).await?;
        Ok(if holds(&r) {
            Probe::Ready(r)
        } else {
            Probe::NotYet(format!("{r:?}"))
        })
    })
    .await
}

fn artifact(name: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_events_as_they_arrive_filters_pauses_and_resumes() -> anyhow::Result<()>
{
    let cluster = NatsCluster::start(1).await?;
    let mut node = open_node(&cluster, "live-node").await?;
    let bus = publisher(&cluster).await?;
    let driver = chromedriver().await?;
    let profile = tempfile::tempdir()?;
    let page = browser(&driver, profile.path()).await?;
    let outcome = exercise(&page, &mut node, &bus).await;
    // A picture of the page whatever happened.
    if let Ok(png) = page.screenshot().await {
        std::fs::write(artifact("live_page.png")?, png)?;
    }
    page.close().await?;
    outcome
}

async fn exercise(
    page: &Client,
    node: &mut bus_tests::BusNode,
    bus: &bus_sdk::Bus,
) -> anyhow::Result<()> {
    let base = node.url();
    page.goto(&format!("{base}/ui/live")).await?;
    try_poll_until("the page connected", Duration::from_secs(20), || async {
        let status = page.find(Locator::Id("status")).await?.text().await?;
        Ok(if status.contains("live on node live-node") {
            Probe::Ready(())
        } else {
            Probe::NotYet(status)
        })
    })
    .await?;

    let first = Event::builder(EventType::new("shop.order.created")?, "/tests/live")
        .data_json(&json!({"n": 1}))?
        .build();
    let seq = bus.publish_event(&first).await?.seq;
    let shown = wait_rows(page, "the event on the page", |r| {
        r.iter().any(|(s, _)| *s == seq.to_string())
    })
    .await?;
    assert_eq!(shown[0], (seq.to_string(), "shop.order.created".to_owned()));
    let row = page
        .find(Locator::Css(&format!("#events li[data-seq='{seq}']")))
        .await?;
    let node_name = row.find(Locator::Css(".node")).await?.text().await?;
    assert_eq!(node_name, "live-node");
    // Its JSON, on a click.
    row.find(Locator::Css("summary")).await?.click().await?;
    let json_text = row.find(Locator::Css("pre")).await?.text().await?;
    let event: serde_json::Value = serde_json::from_str(&json_text)?;
    assert_eq!(event["id"], first.id.as_str());
    assert_eq!(event["type"], "shop.order.created");
    assert_eq!(event["data"]["n"], 1);

    // A filter: only what it matches comes.
    let filter = page.find(Locator::Id("filter")).await?;
    filter.send_keys("billing.*").await?;
    page.find(Locator::Id("apply")).await?.click().await?;
    // The page reconnects with the filter; the hello of that stream marks the status.
    try_poll_until("the filter applied", Duration::from_secs(20), || async {
        let status = page.find(Locator::Id("status")).await?;
        let state = status.attr("data-state").await?;
        let types = status.attr("data-types").await?;
        Ok(
            if state.as_deref() == Some("live") && types.as_deref() == Some("billing.*") {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("state {state:?}, types {types:?}"))
            },
        )
    })
    .await?;
    let billed = publish(bus, "billing.paid", 2).await?;
    publish(bus, "shop.order.created", 3).await?;
    let last = publish(bus, "billing.paid", 4).await?;
    let r = wait_rows(page, "the filtered events", |r| {
        r.iter().any(|(s, _)| *s == last.to_string())
    })
    .await?;
    assert!(
        r.iter()
            .all(|(s, t)| t == "billing.paid" || *s == seq.to_string()),
        "{r:?}"
    );
    assert!(r.iter().any(|(s, _)| *s == billed.to_string()), "{r:?}");

    // Paused: events are held; resumed: they show, in order, none twice.
    page.find(Locator::Id("pause")).await?.click().await?;
    let mut held = Vec::new();
    for n in 5..8 {
        held.push(publish(bus, "billing.paid", n).await?.to_string());
    }
    try_poll_until(
        "events held while paused",
        Duration::from_secs(20),
        || async {
            let counts = page.find(Locator::Id("counts")).await?.text().await?;
            Ok(if counts.contains("3 held") {
                Probe::Ready(())
            } else {
                Probe::NotYet(counts)
            })
        },
    )
    .await?;
    assert!(
        !rows(page).await?.iter().any(|(s, _)| held.contains(s)),
        "nothing shows while paused"
    );
    page.find(Locator::Id("pause")).await?.click().await?;
    let r = wait_rows(page, "the held events after resume", |r| {
        held.iter().all(|h| r.iter().any(|(s, _)| s == h))
    })
    .await?;
    let seqs: Vec<&String> = r.iter().map(|(s, _)| s).collect();
    let unique: std::collections::HashSet<&String> = seqs.iter().copied().collect();
    assert_eq!(seqs.len(), unique.len(), "none twice: {seqs:?}");
    assert_eq!(
        seqs[..3],
        [&held[2], &held[1], &held[0]],
        "newest first, in order"
    );

    // The node goes away; an event is stored meanwhile; the node comes back: the page
    // reconnects from the last id it showed and shows what it missed, once.
    node.kill()?;
    let missed = publish(bus, "billing.paid", 8).await?.to_string();
    node.restart().await?;
    let r = wait_rows(page, "the event stored while the node was away", |r| {
        r.iter().any(|(s, _)| *s == missed)
    })
    .await?;
    assert_eq!(r[0].0, missed);
    assert_eq!(r[1].0, held[2], "nothing between: no gap, none twice");
    Ok(())
}
