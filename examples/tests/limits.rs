//! The limits of a server, tried as an adversary on loopback would, against
//! a `demo_server` process (so its memory and file descriptors can be read
//! from `/proc`): bounded in time, in bytes sent and in connections.

#![cfg(target_os = "linux")]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpStream},
    time::{Duration, Instant},
};

use common::{DemoServer, READ_TIMEOUT};
use serde_json::Value;

const MIB: usize = 1024 * 1024;

fn start(args: &[&str]) -> DemoServer {
    let mut all = vec!["--tcp", "127.0.0.1:0"];
    all.extend_from_slice(args);
    DemoServer::start(&all)
}

fn connect(server: &DemoServer) -> TcpStream {
    let stream = TcpStream::connect(server.addr(0)).expect("connect");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream
}

fn call(stream: &mut TcpStream, line: &str) -> Value {
    stream.write_all(line.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    read_line(stream)
}

fn read_line(stream: &mut TcpStream) -> Value {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    assert!(reader.read_line(&mut line).expect("read") > 0, "closed");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// Reads what is left until the server closes; panics if it does not
/// close within the read timeout.
fn read_to_close(stream: &mut TcpStream) -> Vec<Value> {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        // Closed with unread input on the server's side: a reset.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
    rest.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// A field of `/proc/PID/status`, in bytes (`VmRSS`, `VmHWM`).
fn proc_status(server: &DemoServer, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field}"));
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn open_fds(server: &DemoServer) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
        .unwrap()
        .count()
}

/// Waits (bounded) for a condition on the server process that has no
/// event to wait on: its file descriptors.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(server: &DemoServer) {
    let mut s = connect(server);
    let pong = call(&mut s, r#"{"key":"p","action":"drs.ping"}"#);
    assert_eq!(pong["action"], "drs.response", "{pong}");
}

/// 32 connections park unfinished 6 MiB frames, 192 MiB in all, against a
/// 64 MiB budget: the largest holders are disconnected, the server's peak
/// memory stays near the budget, and a well-behaved client is served.
#[test]
fn partial_frames_beyond_the_memory_budget() {
    let server = start(&["--memory-budget", &(64 * MIB).to_string()]);
    ping(&server);
    let base = proc_status(&server, "VmRSS");
    let chunk = vec![b'x'; 256 * 1024];
    let parkers: Vec<_> = (0..32)
        .map(|_| {
            let mut s = connect(&server);
            let chunk = chunk.clone();
            std::thread::spawn(move || {
                s.write_all(br#"{"action":"echo","body":""#).unwrap();
                for _ in 0..24 {
                    if s.write_all(&chunk).is_err() {
                        break; // disconnected by the budget
                    }
                }
                s
            })
        })
        .collect();
    let mut streams: Vec<TcpStream> = parkers.into_iter().map(|t| t.join().unwrap()).collect();
    // Meanwhile and after, a new client is served.
    ping(&server);
    let peak = proc_status(&server, "VmHWM");
    // The budget, plus one read buffer's growth per connection at most and
    // the allocator's slack; without a budget this would be ~200 MiB.
    assert!(
        peak < base + 64 * MIB + 48 * MIB,
        "peak RSS {} MiB over a base of {} MiB",
        peak / MIB,
        base / MIB
    );
    // Some were disconnected, told why.
    let mut evicted = 0;
    for s in &mut streams {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = s.read(&mut buf) {
            if n > 0 && String::from_utf8_lossy(&buf[..n]).contains("memory budget") {
                evicted += 1;
            }
        }
    }
    assert!(
        evicted >= 16,
        "only {evicted} connections were disconnected"
    );
}

/// A peer that calls `echo` with large bodies and never reads the replies:
/// the server holds at most its outbound bound (and the bounded queue of
/// commands waiting), then drops the peer as too slow.
#[test]
fn a_peer_that_never_reads() {
    let server = start(&[
        "--max-outbound",
        &(4 * MIB).to_string(),
        "--write-stall-timeout",
        "2",
    ]);
    ping(&server);
    let base = proc_status(&server, "VmRSS");
    let mut s = connect(&server);
    let mut writer = s.try_clone().unwrap();
    let body = "y".repeat(MIB);
    // 64 MiB of calls, none of whose replies is read.
    let flood = std::thread::spawn(move || {
        for i in 0..64 {
            let line = format!("{{\"key\":\"{i}\",\"action\":\"echo\",\"body\":\"{body}\"}}\n");
            if writer.write_all(line.as_bytes()).is_err() {
                return i;
            }
        }
        64
    });
    // The write-stall deadline ends it: the connection closes (reading
    // now only drains what the kernel holds; the server already stopped).
    let sent = flood.join().unwrap();
    assert!(sent < 64, "the server read all 64 MiB without stalling");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = read_to_close(&mut s);
    // Outbound 4 MiB + waiting commands 16 MiB + socket and read buffers.
    let peak = proc_status(&server, "VmHWM");
    assert!(
        peak < base + 40 * MIB,
        "peak RSS {} MiB over a base of {} MiB",
        peak / MIB,
        base / MIB
    );
    ping(&server);
}

/// A peer at the in-flight limit (1024 calls of a long `sleep`) that then
/// closes: its handlers are stopped within the close linger and its socket
/// is released, not left in CLOSE_WAIT until the handlers end.
#[test]
fn a_peer_at_the_in_flight_limit_that_closes() {
    let server = start(&[]);
    ping(&server);
    let base = open_fds(&server);
    for _ in 0..3 {
        let mut s = connect(&server);
        let mut lines = String::new();
        for i in 0..1500 {
            lines.push_str(&format!(
                "{{\"key\":\"{i}\",\"action\":\"sleep\",\"body\":{{\"ms\":600000}}}}\n"
            ));
        }
        s.write_all(lines.as_bytes()).unwrap();
        s.shutdown(Shutdown::Both).unwrap();
    }
    // The close linger is 1 s.
    wait_for(
        "the sockets to be released",
        Duration::from_secs(10),
        || open_fds(&server) <= base,
    );
    ping(&server);
}

/// Connections past the maximum are accepted, told why and closed at once
/// (not left in the backlog); those already there are untouched.
#[test]
fn a_flood_of_connections_beyond_the_maximum() {
    let server = start(&["--max-connections", "8"]);
    let mut kept: Vec<TcpStream> = (0..8).map(|_| connect(&server)).collect();
    for (i, s) in kept.iter_mut().enumerate() {
        let pong = call(s, &format!(r#"{{"key":"{i}","action":"drs.ping"}}"#));
        assert_eq!(pong["action"], "drs.response");
    }
    for _ in 0..50 {
        let mut extra = connect(&server);
        let got = read_to_close(&mut extra);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["action"], "drs.error");
        assert!(got[0].get("key").is_none());
        let message = got[0]["body"]["message"].as_str().unwrap();
        assert!(message.contains("connection limit (8)"), "{message}");
    }
    for (i, s) in kept.iter_mut().enumerate() {
        let pong = call(s, &format!(r#"{{"key":"{i}","action":"drs.ping"}}"#));
        assert_eq!(pong["action"], "drs.response");
    }
}

/// A frame started and never finished is cut off at the frame deadline;
/// hooks that take too long hit the admission deadline; a handler past its
/// deadline is stopped — each with a clear message.
#[test]
fn frame_admission_and_handler_deadlines_from_the_command_line() {
    let server = start(&["--frame-timeout", "0.3", "--handler-timeout", "0.3"]);
    let mut s = connect(&server);
    s.write_all(br#"{"key":"1","action":"echo","body":"never end"#)
        .unwrap();
    let got = read_to_close(&mut s);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0]["body"]["message"]
        .as_str()
        .unwrap()
        .contains("frame deadline exceeded"));

    let mut s = connect(&server);
    let reply = call(
        &mut s,
        r#"{"key":"2","action":"sleep","body":{"ms":60000}}"#,
    );
    assert_eq!(reply["action"], "drs.exception");
    assert_eq!(reply["body"]["message"], "handler deadline exceeded");

    let slow = start(&["--slow-admission", "60000", "--admission-timeout", "0.3"]);
    let mut s = connect(&slow);
    let got = read_to_close(&mut s);
    assert_eq!(
        got[0]["body"]["message"],
        "connection rejected: admission deadline exceeded"
    );
}

/// `demo_server --help` lists every limit with its default.
#[test]
fn help_lists_the_limits() {
    let out = std::process::Command::new(common::example_path("demo_server"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    for flag in [
        "--idle-timeout",
        "--frame-timeout",
        "--admission-timeout",
        "--write-stall-timeout",
        "--handler-timeout",
        "--keepalive",
        "--max-connections",
        "--memory-budget",
        "--max-outbound",
        "--max-frame",
        "--slow-admission",
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{text}"));
        assert!(line.contains("default"), "{line}");
    }
    let bad = std::process::Command::new(common::example_path("demo_server"))
        .args(["--max-connections", "lots"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--max-connections"));
}

/// Replies collected for callers that did not ask for a stream are held
/// in their encoded form (a few bytes an item beyond its encoding, where
/// a list of values had cost ~220 B an item) and on the memory budget:
/// four calls of `count` with 200,000 items at once, each collecting up to
/// the 1 MiB frame limit, against a 2 MiB budget: the largest holders are
/// disconnected, told why, and a new client is served.
#[test]
fn collected_replies_are_on_the_budget() {
    let server = start(&[
        "--memory-budget",
        &(2 * MIB).to_string(),
        "--max-frame",
        &MIB.to_string(),
    ]);
    ping(&server);
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let mut s = connect(&server);
            std::thread::spawn(move || {
                let line = r#"{"key":"1","action":"count","body":{"n":200000}}"#;
                s.write_all(format!("{line}\n").as_bytes()).unwrap();
                read_to_close_or(&mut s, 2)
            })
        })
        .collect();
    let mut evicted = 0;
    for caller in callers {
        let seen = caller.join().unwrap();
        if seen.iter().any(|r| {
            r["body"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("memory budget"))
        }) {
            evicted += 1;
        }
    }
    assert!(evicted >= 1, "no collecting connection was disconnected");
    ping(&server);
}

/// Reads up to `n` frames, or what came until the server closed.
fn read_to_close_or(stream: &mut TcpStream, n: usize) -> Vec<Value> {
    let mut reader = BufReader::new(stream);
    let mut out = Vec::new();
    while out.len() < n {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    out.push(v);
                }
            }
        }
    }
    out
}
