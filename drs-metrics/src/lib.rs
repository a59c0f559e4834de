//! An HTTP endpoint for a drs [`Server`]'s statistics ([`drs_stats::Stats`]),
//! on an address of its own:
//!
//! - `GET /metrics`: the Prometheus text format (OpenMetrics 1.0), for a
//!   scrape;
//! - `GET /`: a live dashboard (one HTML page, no build step, no CDN):
//!   connections, calls/s per action, latency percentiles and errors,
//!   plotted as they change;
//! - a WebSocket on any other path (`/socket`): the dashboard's live feed,
//!   a drs connection that serves `drs.stats` and nothing else.
//!
//! ```no_run
//! # async fn f(server: drs_core::Server) -> std::io::Result<()> {
//! let endpoint = drs_metrics::serve(&server, "127.0.0.1:9100").await?;
//! println!("metrics at http://{}/metrics, dashboard at http://{}/", endpoint.addr(), endpoint.addr());
//! # Ok(()) }
//! ```
//!
//! Metrics (every command is counted once, when it ends):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `drs_calls_total` | counter | `action`, `outcome` (`ok`, `error`, `exception`, `cancelled`) |
//! | `drs_calls_in_flight` | gauge | `action` |
//! | `drs_call_duration_seconds` | histogram | `action` |
//! | `drs_connections` | gauge | `transport`, `protocol` |
//! | `drs_connections_accepted_total` | counter | |
//! | `drs_disconnects_total` | counter | `reason` |
//! | `drs_bytes_total`, `drs_frames_total` | counter | `direction` (`in`, `out`) |
//! | `drs_uptime_seconds` | gauge | |
//! | `drs_<section>_<name>` | gauge | numbers a plug-in adds ([`drs_stats::section`]), e.g. `drs_broker_subscriptions` (integers print as integers; the broker's say what they count) |
//! | `drs_build_info` | gauge (1) | `version` |
//! | `drs_start_time_seconds` | gauge | |
//! | `process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds` | gauge | (Linux, from `/proc/self`) |
//! | `process_cpu_seconds_total` | counter | (Linux) |
//!
//! `prometheus-client` has no process collector, so the process figures
//! are read from `/proc` at scrape time, as the Prometheus clients of other
//! languages do.
//!
//! Why `prometheus-client`: it is the Prometheus project's own Rust
//! client, writes OpenMetrics text, and takes a custom collector that reads
//! our counters at scrape time, so nothing is added to the per-command
//! path and no global registry is involved (the `metrics` crate's
//! exporter records through a process-wide recorder, which fits one server
//! per process less well than a registry per endpoint).

use drs_auth::{Jail, ServerAuth};
use std::{fmt, io};

use bytes::Bytes;
use drs_core::{HandlerResult, Server, ServerConfig};
use drs_protocol_json::Json;
use drs_stats::{Stats, STATS};
use drs_transport_ws::WsListener;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

/// The dashboard page.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The largest finite bucket bound of `drs_call_duration_seconds`, in
/// microseconds (2^26: 67 s).
const MAX_BUCKET_US: u64 = 1 << 26;

/// Connections the endpoint serves at once (dashboards, scrapers).
pub const MAX_CONNECTIONS: usize = 64;

/// A running endpoint; see the [crate docs](crate).
#[derive(Debug)]
pub struct Endpoint {
    addr: String,
    feed: Server,
}

impl Endpoint {
    /// Where it listens (`HOST:PORT`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Stops serving: closes the feed's connections within `grace`.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.feed.shutdown(grace).await;
    }
}

/// Serves `server`'s statistics on `addr` (port 0 picks a free port).
/// Fails if `server` keeps none (install them with
/// [`Stats::install`] before it listens) or the address cannot be bound.
pub async fn serve(server: &Server, addr: &str) -> io::Result<Endpoint> {
    if Stats::get(server).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the server keeps no statistics (install them with drs_stats::Stats::install before it listens)",
        ));
    }
    // The feed: a server of its own that answers drs.stats with the
    // watched server's numbers, and nothing else.
    let feed = Server::with_config(ServerConfig::default().max_connections(MAX_CONNECTIONS));
    let watched = server.clone();
    feed.on(STATS, move || {
        let snapshot = Stats::get(&watched).map(|stats| stats.snapshot(&watched));
        async move { HandlerResult::Ok(snapshot) }
    });
    feed.jail(Jail::new([STATS]).map_err(io::Error::other)?);
    let scraped = server.clone();
    let listener = WsListener::bind(addr)
        .await?
        .page("/", "text/html; charset=utf-8", DASHBOARD)
        .page_fn("/metrics", CONTENT_TYPE, move || {
            Bytes::from(prometheus_text(&scraped))
        });
    let addr = feed.listen(listener, Json)?;
    Ok(Endpoint { addr, feed })
}

/// `server`'s statistics in the Prometheus text format (empty when it
/// keeps none).
pub fn prometheus_text(server: &Server) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collect {
        server: server.clone(),
    }));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// Reads a server's [`Stats`] at scrape time.
struct Collect {
    server: Server,
}

impl fmt::Debug for Collect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collect").finish_non_exhaustive()
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

impl Collector for Collect {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let Some(stats) = Stats::get(&self.server) else {
            return Ok(());
        };
        let actions = stats.actions();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);

        let mut m = enc.encode_descriptor(
            "drs_calls",
            "Commands served, by action and outcome; each counted once, when it ends",
            None,
            MetricType::Counter,
        )?;
        for (action, a) in &actions {
            for (outcome, n) in [
                ("ok", load(&a.ok)),
                ("error", load(&a.errors)),
                ("exception", load(&a.exceptions)),
                ("cancelled", load(&a.cancelled)),
            ] {
                let labels: Labels = vec![("action", action), ("outcome", outcome)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "drs_calls_in_flight",
            "Commands being served now, by action",
            None,
            MetricType::Gauge,
        )?;
        for (action, a) in &actions {
            let labels: Labels = vec![("action", action)];
            let n = a
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(0);
            ConstGauge::new(n).encode(m.encode_family(&labels)?)?;
        }

        let mut m = enc.encode_descriptor(
            "drs_call_duration_seconds",
            "How long commands took, from dispatch to outcome, by action",
            None,
            MetricType::Histogram,
        )?;
        for (action, a) in &actions {
            let labels: Labels = vec![("action", action)];
            // Bounds every two octaves from 4 µs to 67 s, then +Inf.
            let mut buckets = Vec::with_capacity(16);
            let mut below = 0;
            for (le_us, count) in a.latency.cumulative(2) {
                if le_us <= MAX_BUCKET_US {
                    buckets.push((le_us as f64 / 1e6, count - below));
                    below = count;
                }
            }
            buckets.push((f64::MAX, a.latency.count() - below));
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                a.latency.sum_us() as f64 / 1e6,
                a.latency.count(),
                &buckets,
                None,
            )?;
        }

        let live = self.server.connections();
        let mut by: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
        for conn in &live {
            *by.entry((conn.info().transport, conn.protocol().name()))
                .or_default() += 1;
        }
        let mut m = enc.encode_descriptor(
            "drs_connections",
            "Live connections, by transport and protocol",
            None,
            MetricType::Gauge,
        )?;
        for ((transport, protocol), n) in by {
            let labels: Labels = vec![("transport", transport), ("protocol", protocol)];
            ConstGauge::new(n).encode(m.encode_family(&labels)?)?;
        }
        let m = enc.encode_descriptor(
            "drs_connections_accepted",
            "Connections admitted since the start",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(stats.accepted()).encode(m)?;
        let mut m = enc.encode_descriptor(
            "drs_disconnects",
            "Connections ended, by close reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in stats.disconnects() {
            let labels: Labels = vec![("reason", &reason)];
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }
        let io = stats.io(&live);
        for (name, help, pair) in [
            (
                "drs_bytes",
                "Bytes of frames, by direction",
                (io.bytes_in, io.bytes_out),
            ),
            (
                "drs_frames",
                "Frames, by direction",
                (io.frames_in, io.frames_out),
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (direction, n) in [("in", pair.0), ("out", pair.1)] {
                let labels: Labels = vec![("direction", direction)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let m = enc.encode_descriptor(
            "drs_uptime_seconds",
            "Seconds since the statistics began",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(stats.uptime().as_secs_f64()).encode(m)?;

        // The sections plug-ins add: each number a gauge.
        let snapshot = stats.snapshot(&self.server);
        if let Some(all) = snapshot.as_object() {
            for (section, value) in all {
                if matches!(
                    section.as_str(),
                    "actions" | "connections" | "io" | "uptime_s"
                ) {
                    continue;
                }
                let Some(fields) = value.as_object() else {
                    continue;
                };
                for (field, v) in fields {
                    let name = format!("drs_{}_{}", metric_name(section), metric_name(field));
                    let help = section_help(section, field)
                        .map_or_else(|| format!("{section}.{field}"), str::to_string);
                    if !v.is_number() {
                        continue;
                    }
                    let m = enc.encode_descriptor(&name, &help, None, MetricType::Gauge)?;
                    // Counts print as integers, other numbers as they are.
                    match v.as_i64() {
                        Some(n) => ConstGauge::new(n).encode(m)?,
                        None => ConstGauge::new(v.as_f64().unwrap_or_default()).encode(m)?,
                    }
                }
            }
        }

        let mut m = enc.encode_descriptor(
            "drs_build_info",
            "The drs version serving these statistics (always 1)",
            None,
            MetricType::Gauge,
        )?;
        let labels: Labels = vec![("version", env!("CARGO_PKG_VERSION"))];
        ConstGauge::new(1).encode(m.encode_family(&labels)?)?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |now| {
                (now.saturating_sub(stats.uptime())).as_secs_f64()
            });
        let m = enc.encode_descriptor(
            "drs_start_time_seconds",
            "When the statistics began, in seconds since the Unix epoch",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(started).encode(m)?;
        process_metrics(&mut enc)?;
        Ok(())
    }
}

/// What the numbers plug-ins add mean (the broker's), by section and field.
fn section_help(section: &str, field: &str) -> Option<&'static str> {
    Some(match (section, field) {
        ("broker", "subscriptions") => "Subscriptions held, of connections and of names",
        ("broker", "subscribers") => "Connections and names with at least one subscription",
        ("broker", "names") => "Names (drs.identify) the broker keeps state for",
        ("broker", "stored_topics") => "Topics with publications kept for retroactive subscribers",
        ("broker", "stored_messages") => "Publications kept for named retroactive subscribers",
        ("broker", "stored_bytes") => "Bytes of the bodies of the publications kept",
        ("broker", "exposed_actions") => "Actions some connection exposes (drs.expose)",
        _ => return None,
    })
}

/// The process's own figures, read from /proc/self (Linux; elsewhere
/// none): resident memory, open file descriptors, CPU time, start time.
fn process_metrics(enc: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
    let Some(process) = Process::read() else {
        return Ok(());
    };
    let m = enc.encode_descriptor(
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(process.resident_bytes).encode(m)?;
    let m = enc.encode_descriptor(
        "process_open_fds",
        "Number of open file descriptors",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(process.open_fds).encode(m)?;
    let m = enc.encode_descriptor(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(process.cpu_seconds).encode(m)?;
    if let Some(start) = process.start_time {
        let m = enc.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(start).encode(m)?;
    }
    Ok(())
}

/// Figures of this process, from /proc.
struct Process {
    resident_bytes: i64,
    open_fds: i64,
    cpu_seconds: f64,
    start_time: Option<f64>,
}

impl Process {
    /// Clock ticks per second of /proc's times (USER_HZ, 100 on Linux).
    const TICKS: f64 = 100.0;
    /// The page size of /proc/self/statm (4 KiB on the platforms drs runs on).
    const PAGE: i64 = 4096;

    fn read() -> Option<Process> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let resident_pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
        // Fields after the command name, which may hold spaces: its ")"
        // ends it. utime and stime are the 14th and 15th fields, the start
        // time (ticks after boot) the 22nd.
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
        let cpu_seconds = (ticks(14)? + ticks(15)?) / Self::TICKS;
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|b| b.trim().parse::<f64>().ok())
        });
        let start_time = boot.zip(ticks(22)).map(|(b, t)| b + t / Self::TICKS);
        Some(Process {
            resident_bytes: resident_pages * Self::PAGE,
            open_fds,
            cpu_seconds,
            start_time,
        })
    }
}

/// `text` with every character outside `[a-zA-Z0-9_]` replaced by `_`.
fn metric_name(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
