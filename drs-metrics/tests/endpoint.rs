//! The endpoint against a real server under a scripted load: `/metrics`
//! parses by the Prometheus text format's rules and its numbers are the
//! exact counts; the feed answers `drs.stats` and nothing else; `/` is the
//! dashboard.

use drs_pubsub::PubSub;
use std::{collections::BTreeMap, future::IntoFuture, time::Duration};

use drs_core::{Client, HandlerError, Server};
use drs_protocol_json::Json;
use drs_transport_tcp::{TcpDialer, TcpListener};
use drs_transport_ws::WsDialer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out")
}

/// A plain HTTP GET: (status line, content type, body).
async fn get(addr: &str, path: &str) -> (String, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("response");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head.lines().next().unwrap_or_default().to_string();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string();
    (status, content_type, body.to_string())
}

/// One sample: its name, labels and value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the text format strictly (names, label syntax and escapes,
/// values, a HELP and TYPE before each family's samples, `# EOF` last)
/// and returns the samples and each family's type.
fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let name_ok = |n: &str| {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    };
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().expect("a name"));
            assert!(name_ok(name), "bad name in {line:?}");
            match kind {
                "TYPE" => {
                    let t = parts.next().expect("a type");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "info"
                        ]
                        .contains(&t),
                        "{line:?}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "one TYPE per family"
                    );
                }
                "HELP" | "UNIT" => {}
                other => panic!("unknown descriptor {other} in {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(name_ok(&key), "bad label name in {line:?}");
                    assert_eq!(chars.next(), Some('"'), "label values are quoted: {line:?}");
                    let mut v = String::new();
                    loop {
                        match chars.next().expect("an unterminated label value") {
                            '\\' => match chars.next() {
                                Some('n') => v.push('\n'),
                                Some(c @ ('\\' | '"')) => v.push(c),
                                other => panic!("bad escape {other:?} in {line:?}"),
                            },
                            '"' => break,
                            c => v.push(c),
                        }
                    }
                    labels.insert(key, v);
                    match chars.next() {
                        Some(',') | None => {}
                        other => panic!("unexpected {other:?} in {line:?}"),
                    }
                }
                (name, labels)
            }
        };
        assert!(name_ok(name), "bad sample name in {line:?}");
        let family = types
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("a sample before its TYPE: {line:?}"));
        let suffix = &name[family.len()..];
        assert!(
            ["", "_total", "_bucket", "_count", "_sum", "_created"].contains(&suffix),
            "{line:?}"
        );
        samples.push((name.to_string(), labels, value));
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_hold_the_exact_counts() {
    let server = Server::new();
    drs_stats::Stats::install(&server);
    server.on("double", |x: i64| async move { x * 2 });
    server.on("fail", || async { Err::<(), _>(HandlerError::new("no")) });
    let _broker = drs_broker::Broker::attach(&server, Default::default()).unwrap();
    let addr = server
        .listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), Json)
        .unwrap();
    let endpoint = within(drs_metrics::serve(&server, "127.0.0.1:0"))
        .await
        .unwrap();

    let conn = within(Client::new().connect(TcpDialer::new(&addr), Json))
        .await
        .unwrap();
    for i in 0..25 {
        within(conn.call::<i64>("double", i).into_future())
            .await
            .unwrap();
    }
    for _ in 0..4 {
        assert!(within(conn.call::<()>("fail", ()).into_future())
            .await
            .is_err());
    }
    within(conn.subscribe("news.*", || async { drs_core::HandlerResult::Ok(()) }))
        .await
        .unwrap();

    let (status, content_type, text) = within(get(endpoint.addr(), "/metrics")).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(content_type, drs_metrics::CONTENT_TYPE);
    let (samples, types) = parse(&text);
    if std::env::var_os("DRS_SHOW_METRICS").is_some() {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
    }
    assert_eq!(types["drs_calls"], "counter", "{text}");
    assert_eq!(types["drs_call_duration_seconds"], "histogram");
    let calls = |action, outcome| {
        value(
            &samples,
            "drs_calls_total",
            &[("action", action), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("double", "ok"), Some(25.0), "{text}");
    assert_eq!(calls("double", "error"), Some(0.0));
    assert_eq!(calls("fail", "error"), Some(4.0));
    assert_eq!(calls("fail", "cancelled"), Some(0.0));
    // The histogram holds every call, cumulative up to +Inf.
    let count = value(
        &samples,
        "drs_call_duration_seconds_count",
        &[("action", "double")],
    );
    assert_eq!(count, Some(25.0));
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == "drs_call_duration_seconds_bucket"
                && l.get("action").map(String::as_str) == Some("double")
        })
        .map(|(_, l, v)| {
            let le = &l["le"];
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                *v,
            )
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 10, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 25.0));
    assert!(
        value(
            &samples,
            "drs_call_duration_seconds_sum",
            &[("action", "double")]
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        value(
            &samples,
            "drs_connections",
            &[("transport", "tcp"), ("protocol", "json")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "drs_connections_accepted_total", &[]),
        Some(1.0)
    );
    assert!(value(&samples, "drs_frames_total", &[("direction", "in")]).unwrap() >= 30.0);
    assert_eq!(value(&samples, "drs_broker_subscriptions", &[]), Some(1.0));
    // Broker figures say what they count, and counts print as integers.
    assert!(
        text.contains(
            "# HELP drs_broker_subscriptions Subscriptions held, of connections and of names\n"
        ),
        "{text}"
    );
    assert!(text.contains("\ndrs_broker_subscriptions 1\n"), "{text}");
    // The build, the start, and the process's own figures.
    assert_eq!(
        value(
            &samples,
            "drs_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(value(&samples, "drs_start_time_seconds", &[]).unwrap() > 1.6e9);
    assert!(value(&samples, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(value(&samples, "process_open_fds", &[]).unwrap() >= 3.0);
    assert!(value(&samples, "process_cpu_seconds_total", &[]).unwrap() >= 0.0);
    assert!(value(&samples, "process_start_time_seconds", &[]).unwrap() > 1.6e9);
    assert_eq!(
        types.get("process_cpu_seconds").map(String::as_str),
        Some("counter")
    );

    // The feed: drs.stats over a drs WebSocket connection, nothing else.
    let feed = within(Client::new().connect(
        WsDialer::new(format!("ws://{}/socket", endpoint.addr())),
        Json,
    ))
    .await
    .unwrap();
    let stats: Value = within(feed.call::<Value>("drs.stats", ()).into_future())
        .await
        .unwrap();
    assert_eq!(stats["actions"]["double"]["calls"], 25);
    assert_eq!(stats["actions"]["fail"]["errors"], 4);
    assert_eq!(stats["broker"]["subscribers"], 1);
    let e = within(feed.call::<Value>("double", 1).into_future())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("action not allowed"), "{e}");
    // The feed's own calls are not the watched server's.
    assert!(stats["actions"].get("drs.stats").is_none());

    let (status, content_type, page) = within(get(endpoint.addr(), "/")).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(content_type.starts_with("text/html"));
    assert!(page.contains("<title>drs dashboard</title>"));
    endpoint.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_server_without_statistics_is_refused() {
    let server = Server::new();
    let e = within(drs_metrics::serve(&server, "127.0.0.1:0"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the server keeps no statistics (install them with drs_stats::Stats::install before it listens)"
    );
    assert_eq!(drs_metrics::prometheus_text(&server), "# EOF\n");
}

#[test]
fn names_of_plug_in_sections_are_sanitised() {
    let server = Server::new();
    drs_stats::Stats::install(&server);
    drs_stats::section(
        &server,
        "my plug-in",
        || serde_json::json!({"queue depth": 3, "label": "x"}),
    );
    let text = drs_metrics::prometheus_text(&server);
    let (samples, _) = parse(&text);
    assert_eq!(
        value(&samples, "drs_my_plug_in_queue_depth", &[]),
        Some(3.0)
    );
    assert!(!text.contains("label"), "only numbers become gauges");
}
