//! Cerbas for drs: a worker that serves unmodified Cerbas clients with drs
//! handlers, through Redis.
//!
//! A Cerbas client (any language; the reference is the Python driver)
//! talks to Redis only:
//!
//! 1. `INCR CERBAS-COUNTER` → k;
//! 2. `SET CERBAS-REQUEST-<k, 10 digits> <request JSON>`;
//! 3. `RPUSH CERBAS-QUEUE <k>`;
//! 4. `SUBSCRIBE CERBAS-RESPONSE-<db>-<k, 10 digits>` (or the same channel
//!    prefixed `MSGPACK:`) and takes the first message.
//!
//! The request is `{"func": F, "source": S, "user": U, "args": {...},
//! "delay": ms}` (`args` and `delay` optional); the reply
//! `{"data":<value>,"status":"ok"}` or `{"data":"<message>","status":"error"}`,
//! published as JSON and, on the `MSGPACK:` channel, as MessagePack.
//!
//! A [`CerbasWorker`] pops the queue (`BLPOP`; several workers may share it),
//! takes and deletes each request, and runs its `func` as the drs action of
//! the same name on a drs [`Server`], through an in-process connection: the
//! same handlers, layers and jails as any peer's command, `args` as the
//! body. Only functions declared to the worker are served (a Cerbas client
//! cannot reach other actions). In order, a request gets:
//!
//! | check | error `data` |
//! |---|---|
//! | the request is not JSON, or its `source` is not allowed | `cerbas authorization - invalid source` |
//! | `func` is not declared | `Undefined function` |
//! | a declared parameter is missing from `args` | `invalid arguments` |
//! | `delay` over [`CerbasConfig::max_delay`] | `delay exceeds N ms` |
//! | the handler runs past [`CerbasConfig::timeout`] (5 s) | `timeout` |
//! | the handler fails with `drs.error` | its message |
//! | the handler fails otherwise (`drs.exception`, a panic) | `error` |
//!
//! `delay` (ms, at the top level) is waited before the checks, as Cerbas
//! does. An *async* function is started and answered at once with data
//! `""`. A function with a cache lifetime has its ok responses stored under
//! `CERBASREQ_<sha1 of the request text>` for that long, and a request with
//! the same text is answered from there without running (Cerbas meant to do
//! this and wrote the cache without reading it).
//!
//! **The subscribe race.** A Cerbas client subscribes to its response
//! channel *after* pushing its request, so a fast worker can publish before
//! anyone listens. The worker therefore publishes both channels, and while
//! both `PUBLISH`es reach nobody retries (after 2 ms, doubling up to
//! 250 ms) for up to [`CerbasConfig::publish_grace`] (10 s); it never
//! publishes again once someone received it. A request sent without
//! waiting for a response costs that grace in a background task, not a
//! request slot; at most four times [`CerbasConfig::max_in_flight`]
//! answers wait so at once.
//!
//! **Halt.** [`Halt::after`] (the demo's `halt` function) stops the worker
//! taking requests after a delay; what is still queued stays in Redis for
//! another worker.
//!
//! **Cron.** With [`CerbasWorker::crontab`], a file of lines
//! `<5-field cron expression> | <request JSON>` is read again when it
//! changes; a due minute (UTC) runs each due request once, in-process, with
//! the same checks and `delay`, and no reply (a 6-field expression starts
//! with seconds: `*/10 * * * * *`). A bad line is logged with its number
//! and skipped.
//!
//! **Guarantees.** A request is taken from the queue by one worker. It is
//! answered once. A worker that dies after taking a request loses it (as
//! Cerbas does: its client waits); the drs work queue of
//! `drs-transport-redis` (its `queue` module) is the at-most-once-with-a-"worker lost"-error
//! alternative for new clients.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

mod cron;
mod msgpack;

pub use redis;

use drs_core::{memory, Client, Conn, Error, Server};
use drs_protocol_json::Json;
use redis::{aio::ConnectionManager, AsyncCommands};
use serde_json::Value;
use tokio::{sync::Semaphore, task::JoinSet};

/// The queue of request numbers.
pub const QUEUE: &str = "CERBAS-QUEUE";
/// The counter clients take request numbers from.
pub const COUNTER: &str = "CERBAS-COUNTER";
/// The sources Cerbas allows by default.
pub const DEFAULT_SOURCES: [&str; 5] = ["cerbastest", "foo", "bar", "web", "tom"];

const INVALID_SOURCE: &str = "cerbas authorization - invalid source";

/// The key a request numbered `k` is stored under.
pub fn request_key(k: u64) -> String {
    format!("CERBAS-REQUEST-{k:010}")
}

/// The channel the JSON reply to request `k` is published on, for Redis
/// database `db` (channels are shared by all databases).
pub fn response_channel(db: i64, k: u64) -> String {
    format!("CERBAS-RESPONSE-{db}-{k:010}")
}

/// The key a response to the request text `request` is cached under.
pub fn cache_key(request: &str) -> String {
    format!("CERBASREQ_{}", sha1_smol::Sha1::from(request).digest())
}

/// Settings of a [`CerbasWorker`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CerbasConfig {
    /// Allowed values of a request's `source`. Default
    /// [`DEFAULT_SOURCES`].
    pub sources: HashSet<String>,
    /// How long a function may run before its answer is `timeout`.
    /// Default 5 s.
    pub timeout: Duration,
    /// How long an answer is published again while nobody listens.
    /// Default 10 s.
    pub publish_grace: Duration,
    /// Publish only the JSON answer, not the MessagePack one (Cerbas's
    /// `only_raw_response`). Default off.
    pub json_only: bool,
    /// Requests taken whose answer is not made yet; at the limit the
    /// worker stops taking more (they wait in Redis). Default 1024.
    pub max_in_flight: usize,
    /// The longest `delay` accepted. Default 1 hour.
    pub max_delay: Duration,
    /// How long one `BLPOP` waits before looking again (and noticing a
    /// halt). Default 1 s.
    pub poll: Duration,
}

impl Default for CerbasConfig {
    fn default() -> Self {
        Self {
            sources: DEFAULT_SOURCES.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(5),
            publish_grace: Duration::from_secs(10),
            json_only: false,
            max_in_flight: 1024,
            max_delay: Duration::from_secs(3600),
            poll: Duration::from_secs(1),
        }
    }
}

impl CerbasConfig {
    /// Sets [`sources`](Self::sources).
    pub fn sources<I: IntoIterator<Item = S>, S: Into<String>>(mut self, sources: I) -> Self {
        self.sources = sources.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`publish_grace`](Self::publish_grace).
    pub fn publish_grace(mut self, grace: Duration) -> Self {
        self.publish_grace = grace;
        self
    }

    /// Sets [`json_only`](Self::json_only).
    pub fn json_only(mut self, on: bool) -> Self {
        self.json_only = on;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight) (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Sets [`max_delay`](Self::max_delay).
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// Sets [`poll`](Self::poll) (at least 10 ms).
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(10));
        self
    }
}

#[derive(Debug, Clone, Default)]
struct Function {
    params: Vec<String>,
    is_async: bool,
    cache: Option<Duration>,
}

/// Stops a [`CerbasWorker`] taking requests.
#[derive(Debug, Clone, Default)]
pub struct Halt {
    halted: Arc<AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
}

impl Halt {
    /// A handle that has not halted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Halts now.
    pub fn now(&self) {
        self.halted.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Halts after `delay` (in a task of its own).
    pub fn after(&self, delay: Duration) {
        let halt = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            halt.now();
        });
    }

    /// Whether it has halted.
    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::SeqCst)
    }

    /// Waits until it halts.
    pub async fn halted(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_halted() {
                return;
            }
            notified.await;
        }
    }
}

/// Serves Cerbas clients with the handlers of a drs [`Server`]; see the
/// [module docs](self).
#[derive(Debug)]
pub struct CerbasWorker {
    url: String,
    config: CerbasConfig,
    functions: HashMap<String, Function>,
    crontab: Option<PathBuf>,
    halt: Halt,
}

impl CerbasWorker {
    /// A worker for the Redis at `url` (`redis://HOST:PORT/DB`; Cerbas's
    /// development database is 1).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            config: CerbasConfig::default(),
            functions: HashMap::new(),
            crontab: None,
            halt: Halt::new(),
        }
    }

    /// Uses `config`.
    pub fn config(mut self, config: CerbasConfig) -> Self {
        self.config = config;
        self
    }

    /// Serves `name` (the drs action of that name) with the named
    /// parameters `params`, each required in `args`.
    pub fn func(mut self, name: impl Into<String>, params: &[&str]) -> Self {
        self.functions.insert(
            name.into(),
            Function {
                params: params.iter().map(|p| p.to_string()).collect(),
                ..Function::default()
            },
        );
        self
    }

    /// Serves `name` as an async function: started, and answered at once
    /// with data `""`.
    pub fn async_func(mut self, name: impl Into<String>, params: &[&str]) -> Self {
        self.functions.insert(
            name.into(),
            Function {
                params: params.iter().map(|p| p.to_string()).collect(),
                is_async: true,
                cache: None,
            },
        );
        self
    }

    /// Caches the ok answers of function `name` (declared before) for
    /// `ttl`.
    pub fn cache(mut self, name: &str, ttl: Duration) -> Self {
        if let Some(f) = self.functions.get_mut(name) {
            f.cache = (!ttl.is_zero()).then_some(ttl);
        }
        self
    }

    /// Runs the requests of a crontab file (see the [module docs](self)).
    pub fn crontab(mut self, path: impl Into<PathBuf>) -> Self {
        self.crontab = Some(path.into());
        self
    }

    /// Uses `halt` to stop (e.g. from a `halt` handler).
    pub fn halt_with(mut self, halt: Halt) -> Self {
        self.halt = halt;
        self
    }

    /// Connects to Redis and starts serving `server`'s actions.
    pub async fn start(self, server: &Server) -> Result<CerbasHandle, Error> {
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| Error::Io(std::io::Error::other(format!("{}: {e}", self.url))))?;
        let db = client.get_connection_info().redis_settings().db();
        let timeouts = |response: Duration| {
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(response))
        };
        let redis_err = |e: redis::RedisError| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("{}: {e}", self.url),
            ))
        };
        let commands = client
            .get_connection_manager_with_config(timeouts(Duration::from_secs(5)))
            .await
            .map_err(redis_err)?;
        let popper = client
            .get_connection_manager_with_config(timeouts(self.config.poll + Duration::from_secs(5)))
            .await
            .map_err(redis_err)?;
        let (listener, dialer) = memory::listener();
        server.listen(listener, Json)?;
        let conn = Client::new().connect(dialer, Json).await?;
        let publishing = Arc::new(Semaphore::new(self.config.max_in_flight.saturating_mul(4)));
        let inner = Arc::new(Inner {
            db,
            config: self.config,
            functions: self.functions,
            publishing,
            conn,
            redis: commands,
        });
        let halt = self.halt.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(consume(inner.clone(), popper, halt.clone()));
        if let Some(path) = self.crontab {
            tasks.spawn(crate::cron::run(path, inner.clone(), halt.clone()));
        }
        Ok(CerbasHandle {
            halt,
            db,
            _tasks: Arc::new(tasks),
        })
    }
}

/// A running [`CerbasWorker`]; it stops when every handle is dropped or
/// when halted.
#[derive(Debug, Clone)]
pub struct CerbasHandle {
    halt: Halt,
    db: i64,
    _tasks: Arc<JoinSet<()>>,
}

impl CerbasHandle {
    /// The worker's halt.
    pub fn halt(&self) -> &Halt {
        &self.halt
    }

    /// The Redis database served (from the URL).
    pub fn db(&self) -> i64 {
        self.db
    }
}

pub(crate) struct Inner {
    db: i64,
    config: CerbasConfig,
    functions: HashMap<String, Function>,
    conn: Conn,
    redis: ConnectionManager,
    publishing: Arc<Semaphore>,
}

/// An answer: ok with data, or an error message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    Ok(Value),
    Error(String),
}

impl Answer {
    fn error(msg: impl Into<String>) -> Self {
        Answer::Error(msg.into())
    }

    /// Cerbas's reply JSON: `{"data":…,"status":"ok"|"error"}`.
    pub(crate) fn json(&self) -> String {
        let (data, status) = match self {
            Answer::Ok(v) => (v.to_string(), "ok"),
            Answer::Error(m) => (Value::String(m.clone()).to_string(), "error"),
        };
        format!(r#"{{"data":{data},"status":"{status}"}}"#)
    }
}

/// Takes requests until halted.
async fn consume(inner: Arc<Inner>, mut popper: ConnectionManager, halt: Halt) {
    let permits = Arc::new(Semaphore::new(inner.config.max_in_flight));
    let poll = inner.config.poll.as_secs_f64();
    while !halt.is_halted() {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let popped: redis::RedisResult<Option<(String, String)>> = tokio::select! {
            r = popper.blpop(QUEUE, poll) => r,
            () = halt.halted() => return,
        };
        let entry = match popped {
            Ok(Some((_, entry))) => entry,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cerbas: BLPOP failed; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if halt.is_halted() {
            // Taken as the halt came: back at the head for another worker.
            let _: redis::RedisResult<()> = popper.lpush(QUEUE, &entry).await;
            return;
        }
        let Ok(k) = entry.trim().parse::<u64>() else {
            tracing::warn!(%entry, "cerbas: a queue entry that is not a request number; skipped");
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move { serve(&inner, k, permit).await });
    }
}

/// Answers request `k`. Its in-flight `permit` goes once the answer is
/// made: waiting for a listener (the subscribe race) holds no slot.
async fn serve(inner: &Inner, k: u64, permit: tokio::sync::OwnedSemaphorePermit) {
    let mut redis = inner.redis.clone();
    let key = request_key(k);
    let text: Option<String> = match redis.get(&key).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(k, error = %e, "cerbas: GET of the request failed");
            None
        }
    };
    let _: redis::RedisResult<()> = redis.del(&key).await;
    let answer = match text {
        None => Answer::error(format!("no request stored at {key}")),
        Some(text) => run(inner, &text, true).await,
    };
    // Answers waiting for a listener are bounded too (four times the
    // requests in flight): past that, taking requests waits.
    let publishing = inner.publishing.clone().acquire_owned().await;
    drop(permit);
    publish(inner, k, &answer).await;
    drop(publishing);
}

/// Runs one request's text: checks, delay, cache, the function.
pub(crate) async fn run(inner: &Inner, text: &str, with_cache: bool) -> Answer {
    let request: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Answer::error(INVALID_SOURCE),
    };
    if let Some(delay) = request.get("delay").and_then(Value::as_f64) {
        if delay > 0.0 {
            let max = inner.config.max_delay;
            if delay > max.as_millis() as f64 {
                return Answer::error(format!("delay exceeds {} ms", max.as_millis()));
            }
            tokio::time::sleep(Duration::from_secs_f64(delay / 1000.0)).await;
        }
    }
    let source = request.get("source").and_then(Value::as_str).unwrap_or("");
    if !inner.config.sources.contains(source) {
        return Answer::error(INVALID_SOURCE);
    }
    let Some((name, function)) = request
        .get("func")
        .and_then(Value::as_str)
        .and_then(|f| inner.functions.get_key_value(f))
    else {
        return Answer::error("Undefined function");
    };
    let args = request.get("args").cloned().unwrap_or(Value::Null);
    let complete = function
        .params
        .iter()
        .all(|p| args.as_object().is_some_and(|a| a.contains_key(p)));
    if !complete {
        return Answer::error("invalid arguments");
    }
    if function.is_async {
        return match inner.conn.fire(name, &args).await {
            Ok(()) => Answer::Ok(Value::String(String::new())),
            Err(_) => Answer::error("error"),
        };
    }
    let cache = function
        .cache
        .filter(|_| with_cache)
        .map(|ttl| (cache_key(text), ttl));
    if let Some((key, _)) = &cache {
        let mut redis = inner.redis.clone();
        if let Ok(Some(hit)) = redis.get::<_, Option<String>>(key).await {
            if let Ok(v) = serde_json::from_str::<Value>(&hit) {
                if v.get("status").and_then(Value::as_str) == Some("ok") {
                    return Answer::Ok(v.get("data").cloned().unwrap_or(Value::Null));
                }
            }
        }
    }
    let answer = match inner
        .conn
        .call::<Value>(name, &args)
        .timeout(inner.config.timeout)
        .await
    {
        Ok(v) => Answer::Ok(v),
        Err(Error::Timeout(_)) => Answer::error("timeout"),
        Err(Error::Remote(e)) => Answer::error(e.message.clone()),
        Err(e) => {
            tracing::debug!(func = %name, error = %e, "cerbas: function failed");
            Answer::error("error")
        }
    };
    if let (Some((key, ttl)), Answer::Ok(_)) = (&cache, &answer) {
        let mut redis = inner.redis.clone();
        let _: redis::RedisResult<()> =
            redis.set_ex(key, answer.json(), ttl.as_secs().max(1)).await;
    }
    answer
}

/// Publishes an answer on both channels until someone has it (see "the
/// subscribe race" in the module docs).
async fn publish(inner: &Inner, k: u64, answer: &Answer) {
    let json = answer.json();
    let channel = response_channel(inner.db, k);
    let msgpack = (!inner.config.json_only).then(|| crate::msgpack::cerbas_msgpack(answer));
    let mut redis = inner.redis.clone();
    let deadline = tokio::time::Instant::now() + inner.config.publish_grace;
    let mut pause = Duration::from_millis(2);
    loop {
        let mut received: i64 = redis.publish(&channel, &json).await.unwrap_or(0);
        if let Some(bytes) = &msgpack {
            let n: i64 = redis
                .publish(format!("MSGPACK:{channel}"), bytes.as_slice())
                .await
                .unwrap_or(0);
            received += n;
        }
        if received > 0 || tokio::time::Instant::now() >= deadline {
            if received == 0 {
                tracing::debug!(k, "cerbas: nobody took the answer within the grace");
            }
            return;
        }
        // A client subscribes within milliseconds; one that never does
        // costs a few dozen PUBLISHes over the grace, not thousands.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// When a crontab's minute is due, runs a request, no reply.
pub(crate) async fn run_request(inner: &Inner, text: &str) {
    let answer = run(inner, text, false).await;
    if let Answer::Error(e) = answer {
        tracing::warn!(request = %text, error = %e, "cerbas cron: request failed");
    }
}
