//! A drs service on Redis: any number of workers share one queue, a
//! request taken by a worker that dies is not lost, and drs clients (and
//! plain Redis clients in any language) call the service.
//!
//! # Keys
//!
//! Every key of service `NAME` starts with `drs:{NAME}:` (one hash tag: on
//! a Redis Cluster they share a slot, as `BLMOVE` needs).
//!
//! | key | what |
//! |---|---|
//! | `queue` | list of requests and connects, for every worker |
//! | `processing:W` | what worker `W` has taken and not finished |
//! | `inbox:W` | frames for worker `W`'s connections |
//! | `worker:W` | worker `W` is alive (expires after 3 heartbeats) |
//! | `workers` | set of the workers that have been seen |
//! | `client:C` | list of frames for client connection `C` |
//! | `alive:C` | client connection `C` is alive |
//!
//! # Requests (any Redis client)
//!
//! `RPUSH drs:{NAME}:queue "R<reply list>\n<frame>"`, then
//! `BLPOP <reply list>`, where the reply list is a key of the service's
//! own, `drs:{NAME}:reply:<anything unique>` (a request naming another key
//! is dropped and logged): one worker runs the frame (one keyed drs frame,
//! JSON or MessagePack as the listener's protocol) and pushes the reply
//! frame, with the same key, to the reply list (which expires
//! [`RedisConfig::reply_ttl`] after its last reply). A worker `BLMOVE`s
//! the entry into its `processing` list first and removes it once the
//! reply is pushed.
//!
//! **The guarantee.** No request is silently dropped, and none runs twice
//! unless its action opted in. A worker that dies leaves its entries in its
//! `processing` list; its heartbeat key expires, and another worker's
//! reaper takes them one by one (`LMOVE`, so each is reaped once): a
//! request whose action is [idempotent](RedisConfig::idempotent) goes back
//! to the queue to run again; any other is answered with `drs.error`
//! `"worker lost"` (it may or may not have run); a connect goes back to the
//! queue. A fire (no key) sent this way is run and not answered.
//!
//! # Connections (drs clients)
//!
//! A [`RedisDialer`] connection is a session with one worker, as over NATS:
//! the client pushes `K<its list>` to the queue; the worker that takes it
//! answers on that list with `K<id> <its inbox>`; then each side pushes
//! `D<id>\n<frame>` to the other's list. Everything drs does on a socket
//! works on it: calls both ways, streams, broadcasts, pub/sub. Each side
//! allows [`RedisConfig::window`] unacknowledged bytes (`A<id>\n<n>`
//! acknowledges), so a slow reader holds its peer up instead of filling
//! Redis; a peer that sends past two windows is disconnected. Liveness:
//! each side refreshes its `worker:`/`alive:` key every
//! [`RedisConfig::heartbeat`] and checks the other's; a key gone ends the
//! connection (its calls fail as closed) within about three heartbeats.

use std::{
    collections::{HashMap, HashSet},
    future::{ready, Ready},
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use drs_core::{
    Client, Conn, ConnInfo, Dialer, Error, FrameSpec, Listener, OutBody, Outgoing, Protocol,
};
use redis::{aio::ConnectionManager, AsyncCommands};
use tokio::{sync::mpsc, task::JoinSet};

use drs_link::{Kind, Link, LinkConfig, LinkIo, LinkSettings, Out, Route};

/// Settings of a Redis service and its connections: the bus settings
/// every such transport shares ([`LinkConfig`], set with
/// [`LinkSettings`]; a side not heard for three heartbeats is gone, and
/// past `max_one_requests` a worker takes nothing more from the queue
/// until one ends, so the other workers take them), and Redis's own.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Heartbeat, window, timeouts and queues.
    pub link: LinkConfig,
    /// How long a reply list lives after its last reply. Default 60 s.
    pub reply_ttl: Duration,
    /// Actions that may run again when their worker died (requests
    /// through the queue).
    pub idempotent: HashSet<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            link: LinkConfig::default(),
            reply_ttl: Duration::from_secs(60),
            idempotent: HashSet::new(),
        }
    }
}

impl LinkSettings for RedisConfig {
    fn link_mut(&mut self) -> &mut LinkConfig {
        &mut self.link
    }
}

impl RedisConfig {
    /// Sets [`reply_ttl`](Self::reply_ttl) (at least 1 s).
    pub fn reply_ttl(mut self, ttl: Duration) -> Self {
        self.reply_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Marks `actions` idempotent: run again when their worker died.
    pub fn idempotent<I: IntoIterator<Item = S>, S: Into<String>>(mut self, actions: I) -> Self {
        self.idempotent.extend(actions.into_iter().map(Into::into));
        self
    }

    fn dead_after(&self) -> Duration {
        self.link.heartbeat * 3
    }
}

/// The keys of one service.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys of service `name`.
    pub fn new(name: &str) -> Self {
        Self {
            prefix: format!("drs:{{{name}}}:"),
        }
    }

    /// The shared queue.
    pub fn queue(&self) -> String {
        format!("{}queue", self.prefix)
    }

    fn processing(&self, worker: &str) -> String {
        format!("{}processing:{worker}", self.prefix)
    }

    fn inbox(&self, worker: &str) -> String {
        format!("{}inbox:{worker}", self.prefix)
    }

    fn worker(&self, worker: &str) -> String {
        format!("{}worker:{worker}", self.prefix)
    }

    fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }

    fn client(&self, client: &str) -> String {
        format!("{}client:{client}", self.prefix)
    }

    fn alive(&self, client: &str) -> String {
        format!("{}alive:{client}", self.prefix)
    }

    /// The channel of service-wide broadcasts.
    pub fn broadcast(&self) -> String {
        format!("{}broadcast", self.prefix)
    }

    /// Whether `list` may be a reply list: under `drs:{NAME}:reply:`,
    /// with something after it.
    pub fn is_reply_list(&self, list: &str) -> bool {
        list.strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix("reply:"))
            .is_some_and(|id| !id.is_empty())
    }

    /// A fresh reply list for plain requests.
    pub fn reply_list(&self) -> String {
        format!("{}reply:{}", self.prefix, unique())
    }
}

fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}{:x}",
        now,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e.to_string())
}

/// Opens the reconnecting connection for commands, and one for blocking
/// pops (its replies may take `block` longer).
async fn connections(
    url: &str,
    block: Duration,
) -> io::Result<(ConnectionManager, ConnectionManager)> {
    let client = redis::Client::open(url)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {e}")))?;
    let config = |response: Duration| {
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(response))
    };
    let refused = |e: redis::RedisError| {
        io::Error::new(io::ErrorKind::ConnectionRefused, format!("{url}: {e}"))
    };
    let commands = client
        .get_connection_manager_with_config(config(Duration::from_secs(5)))
        .await
        .map_err(refused)?;
    let blocking = client
        .get_connection_manager_with_config(config(block + Duration::from_secs(5)))
        .await
        .map_err(refused)?;
    Ok((commands, blocking))
}

/// `<kind><head>\n<payload>`.
fn envelope(kind: u8, head: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + head.len() + payload.len());
    v.push(kind);
    v.extend_from_slice(head.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(payload);
    v
}

/// Splits an envelope: kind, head, payload.
fn open(entry: &[u8]) -> Option<(u8, &str, &[u8])> {
    let (&kind, rest) = entry.split_first()?;
    let nl = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let head = std::str::from_utf8(&rest[..nl]).ok()?;
    let payload = rest.get(nl + 1..).unwrap_or(&[]);
    Some((kind, head, payload))
}

/// Where a link's frames and control messages go: an id and a list.
#[derive(Debug, Clone)]
struct RedisOut {
    redis: ConnectionManager,
    list: String,
    id: u64,
}

/// The envelope's first byte for each kind of message.
fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Data => b'D',
        Kind::Ack => b'A',
        Kind::Close => b'C',
    }
}

fn kind_of(byte: u8) -> Option<Kind> {
    match byte {
        b'D' => Some(Kind::Data),
        b'A' => Some(Kind::Ack),
        b'C' => Some(Kind::Close),
        _ => None,
    }
}

impl Out for RedisOut {
    fn send(
        &self,
        kind: Kind,
        payloads: Vec<Bytes>,
    ) -> futures::future::BoxFuture<'static, io::Result<()>> {
        let kind = kind_byte(kind);
        let mut redis = self.redis.clone();
        let head = self.id.to_string();
        let mut push = redis::cmd("RPUSH");
        push.arg(&self.list);
        for payload in &payloads {
            push.arg(envelope(kind, &head, payload));
        }
        Box::pin(async move { push.query_async::<()>(&mut redis).await.map_err(io_err) })
    }
}

/// A connection over Redis, as [`drs_core::Transport`].
pub type RedisIo = LinkIo;

enum Accepted {
    Link {
        link: Link,
        out: RedisOut,
        peer: String,
        id: u64,
    },
    OneShot {
        frame: Bytes,
        reply: String,
        entry: Vec<u8>,
        place: drs_link::OneRequestPlace,
    },
}

struct Shared {
    keys: Keys,
    worker: String,
    config: RedisConfig,
    redis: ConnectionManager,
    protocol: Arc<dyn Protocol>,
    conns: Mutex<HashMap<u64, (Link, String)>>,
    next: AtomicU64,
    accepted: mpsc::Sender<Accepted>,
    one_requests: drs_link::OneRequests,
}

/// Serves a drs [`Server`](drs_core::Server) as service `NAME` on Redis.
pub struct RedisListener {
    shared: Arc<Shared>,
    incoming: mpsc::Receiver<Accepted>,
    _tasks: JoinSet<()>,
}

impl std::fmt::Debug for RedisListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisListener")
            .field("queue", &self.shared.keys.queue())
            .field("worker", &self.shared.worker)
            .finish()
    }
}

impl RedisListener {
    /// Joins service `name` on the Redis at `url` as a new worker.
    /// `protocol` is the one given to `Server::listen` (it writes the
    /// "worker lost" answers of the reaper).
    pub async fn bind<P: Protocol>(url: &str, name: &str, protocol: P) -> io::Result<Self> {
        Self::bind_with(url, name, Arc::new(protocol), RedisConfig::default()).await
    }

    /// [`bind`](Self::bind) with `config`.
    pub async fn bind_with(
        url: &str,
        name: &str,
        protocol: Arc<dyn Protocol>,
        config: RedisConfig,
    ) -> io::Result<Self> {
        crate::check_service(name)?;
        let block = Duration::from_secs(1);
        let (redis, queue_popper) = connections(url, block).await?;
        let (_, inbox_popper) = connections(url, block).await?;
        let keys = Keys::new(name);
        let worker = unique();
        let (accepted, incoming) = mpsc::channel(config.link.accept_queue);
        let shared = Arc::new(Shared {
            one_requests: drs_link::OneRequests::new(config.link.max_one_requests),
            keys,
            worker,
            config,
            redis,
            protocol,
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            accepted,
        });
        // Alive before taking anything, so no reaper takes it for dead.
        beat(&shared).await?;
        let mut tasks = JoinSet::new();
        tasks.spawn(take_queue(shared.clone(), queue_popper));
        tasks.spawn(take_inbox(shared.clone(), inbox_popper));
        tasks.spawn(keep_alive(shared.clone()));
        Ok(Self {
            shared,
            incoming,
            _tasks: tasks,
        })
    }

    /// This worker's id.
    pub fn worker(&self) -> &str {
        &self.shared.worker
    }
}

impl Listener for RedisListener {
    type Io = RedisIo;
    type Handshake = Ready<io::Result<(RedisIo, ConnInfo)>>;

    async fn accept(&mut self, spec: FrameSpec) -> io::Result<Self::Handshake> {
        let accepted = self
            .incoming
            .recv()
            .await
            .ok_or_else(|| io_err("the Redis worker's tasks ended"))?;
        let queue = self.shared.keys.queue();
        let io = match accepted {
            Accepted::Link {
                link,
                out,
                peer,
                id,
            } => {
                let shared = self.shared.clone();
                let info = ConnInfo::new("redis")
                    .with_peer_addr(peer)
                    .with_local_addr(queue);
                let io = LinkIo::link(
                    link,
                    Box::new(out),
                    spec.max_frame_len,
                    Some(Box::new(move || {
                        shared.conns.lock().unwrap().remove(&id);
                    })),
                );
                (io, info)
            }
            Accepted::OneShot {
                frame,
                reply,
                entry,
                place,
            } => {
                let info = ConnInfo::new("redis")
                    .with_peer_addr(reply.clone())
                    .with_local_addr(queue)
                    .one_request();
                let done = OneShotReply {
                    shared: self.shared.clone(),
                    reply,
                    entry,
                };
                let io = LinkIo::oneshot(
                    frame,
                    spec.max_frame_len,
                    self.shared.config.link.oneshot_linger,
                    Box::new(move |frame| done.send(frame)),
                )
                .holding(place);
                (io, info)
            }
        };
        Ok(ready(Ok(io)))
    }

    fn local_addr(&self) -> io::Result<String> {
        Ok(self.shared.keys.queue())
    }
}

/// Answers a plain request: the reply pushed, the entry off the worker's
/// processing list.
struct OneShotReply {
    shared: Arc<Shared>,
    reply: String,
    entry: Vec<u8>,
}

impl OneShotReply {
    fn send(self, frame: Option<Bytes>) -> futures::future::BoxFuture<'static, io::Result<()>> {
        Box::pin(async move {
            let shared = &self.shared;
            let mut redis = shared.redis.clone();
            let mut pipe = redis::pipe();
            pipe.atomic();
            if let Some(frame) = frame {
                pipe.cmd("RPUSH")
                    .arg(&self.reply)
                    .arg(frame.as_ref())
                    .ignore();
                pipe.cmd("PEXPIRE")
                    .arg(&self.reply)
                    .arg(shared.config.reply_ttl.as_millis() as u64)
                    .ignore();
            }
            pipe.cmd("LREM")
                .arg(shared.keys.processing(&shared.worker))
                .arg(1)
                .arg(&self.entry)
                .ignore();
            pipe.query_async::<()>(&mut redis).await.map_err(io_err)
        })
    }
}

async fn beat(shared: &Shared) -> io::Result<()> {
    let mut redis = shared.redis.clone();
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(shared.keys.worker(&shared.worker))
        .arg(1)
        .arg("PX")
        .arg(shared.config.dead_after().as_millis() as u64)
        .ignore();
    pipe.cmd("SADD")
        .arg(shared.keys.workers())
        .arg(&shared.worker)
        .ignore();
    pipe.query_async::<()>(&mut redis).await.map_err(io_err)
}

/// Takes requests and connects from the queue into the processing list.
async fn take_queue(shared: Arc<Shared>, mut popper: ConnectionManager) {
    let queue = shared.keys.queue();
    let processing = shared.keys.processing(&shared.worker);
    loop {
        // Room for what is taken, before taking it: a place in the
        // accept queue, and one among the plain requests (given back at
        // once if it is a connect).
        let place = shared.one_requests.take().await;
        let Ok(permit) = shared.accepted.reserve().await else {
            return;
        };
        let entry: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("BLMOVE")
            .arg(&queue)
            .arg(&processing)
            .arg("LEFT")
            .arg("RIGHT")
            .arg(1)
            .query_async(&mut popper)
            .await;
        let entry = match entry {
            Ok(Some(entry)) => entry,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "redis worker: BLMOVE failed; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut redis = shared.redis.clone();
        match open(&entry) {
            Some((b'K', client, _)) if !client.is_empty() => {
                let id = shared.next.fetch_add(1, Ordering::Relaxed);
                let link = Link::new(shared.config.link.window);
                let client_list = shared.keys.client(client);
                let out = RedisOut {
                    redis: redis.clone(),
                    list: client_list.clone(),
                    id: 0,
                };
                shared
                    .conns
                    .lock()
                    .unwrap()
                    .insert(id, (link.clone(), client.to_string()));
                let answer = envelope(
                    b'K',
                    &format!("{id} {}", shared.keys.inbox(&shared.worker)),
                    &[],
                );
                // The list expires unless its client keeps it (its
                // heartbeat refreshes the expiry): a connect that nobody
                // follows leaves nothing behind.
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("RPUSH")
                    .arg(&client_list)
                    .arg(answer)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&client_list)
                    .arg(shared.config.reply_ttl.as_millis() as u64)
                    .ignore()
                    .cmd("LREM")
                    .arg(&processing)
                    .arg(1)
                    .arg(&entry)
                    .ignore();
                let _: redis::RedisResult<()> = pipe.query_async(&mut redis).await;
                permit.send(Accepted::Link {
                    link,
                    out,
                    peer: client_list,
                    id,
                });
            }
            Some((b'R', reply, _)) if !shared.keys.is_reply_list(reply) => {
                // Pushing to (and setting the expiry of) a key outside the
                // service's own would let any client write anywhere.
                tracing::warn!(
                    reply,
                    "redis worker: a request whose reply list is not under {}reply:; dropped",
                    shared.keys.prefix
                );
                let _: redis::RedisResult<()> = redis.lrem(&processing, 1, entry).await;
            }
            Some((b'R', reply, frame)) => {
                permit.send(Accepted::OneShot {
                    frame: Bytes::copy_from_slice(frame),
                    reply: reply.to_string(),
                    entry,
                    place,
                });
            }
            _ => {
                tracing::warn!("redis worker: a queue entry that is neither K nor R; dropped");
                let _: redis::RedisResult<()> = redis.lrem(&processing, 1, entry).await;
            }
        }
    }
}

/// Takes up to 256 entries of `list` in one round trip, waiting up to a
/// second for the first (`BLMPOP`, Redis 7).
async fn pop_batch(popper: &mut ConnectionManager, list: &str) -> redis::RedisResult<Vec<Vec<u8>>> {
    let popped: Option<(String, Vec<Vec<u8>>)> = redis::cmd("BLMPOP")
        .arg(1)
        .arg(1)
        .arg(list)
        .arg("LEFT")
        .arg("COUNT")
        .arg(256)
        .query_async(popper)
        .await?;
    Ok(popped.map(|(_, entries)| entries).unwrap_or_default())
}

/// Routes what comes to the worker's inbox to its connections.
async fn take_inbox(shared: Arc<Shared>, mut popper: ConnectionManager) {
    let inbox = shared.keys.inbox(&shared.worker);
    loop {
        let entries = match pop_batch(&mut popper, &inbox).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "redis worker: BLPOP failed; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for entry in entries {
            let Some((Some(kind), head, payload)) =
                open(&entry).map(|(k, h, p)| (kind_of(k), h, p))
            else {
                continue;
            };
            let Ok(id) = head.parse::<u64>() else {
                continue;
            };
            let link = shared
                .conns
                .lock()
                .unwrap()
                .get(&id)
                .map(|(l, _)| l.clone());
            if let Some(link) = link {
                if let Route::End = link.route(kind, Bytes::copy_from_slice(payload)) {
                    shared.conns.lock().unwrap().remove(&id);
                }
            }
        }
    }
}

/// Says this worker is alive, ends connections whose client is gone, and
/// reaps what dead workers left.
async fn keep_alive(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.link.heartbeat);
    loop {
        tick.tick().await;
        if let Err(e) = beat(&shared).await {
            tracing::warn!(error = %e, "redis worker: heartbeat failed");
            continue;
        }
        let conns: Vec<(u64, Link, String)> = shared
            .conns
            .lock()
            .unwrap()
            .iter()
            .map(|(id, (l, c))| (*id, l.clone(), c.clone()))
            .collect();
        if !conns.is_empty() {
            let mut redis = shared.redis.clone();
            let mut pipe = redis::pipe();
            for (_, _, client) in &conns {
                pipe.cmd("EXISTS").arg(shared.keys.alive(client));
            }
            if let Ok(alive) = pipe.query_async::<Vec<bool>>(&mut redis).await {
                for ((id, link, client), alive) in conns.iter().zip(alive) {
                    if !alive {
                        link.fail(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            format!("the client {client} is gone (no heartbeat)"),
                        ));
                        shared.conns.lock().unwrap().remove(id);
                        let _: redis::RedisResult<()> = redis.del(shared.keys.client(client)).await;
                    }
                }
            }
        }
        reap(&shared).await;
    }
}

/// Takes over what workers that stopped beating left in their processing
/// lists.
async fn reap(shared: &Shared) {
    let mut redis = shared.redis.clone();
    let workers: Vec<String> = redis
        .smembers(shared.keys.workers())
        .await
        .unwrap_or_default();
    for w in workers.into_iter().filter(|w| *w != shared.worker) {
        let alive: bool = redis.exists(shared.keys.worker(&w)).await.unwrap_or(true);
        if alive {
            continue;
        }
        let processing = shared.keys.processing(&w);
        loop {
            // One at a time, atomically: each entry is reaped once, even
            // with reapers racing.
            let entry: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("LPOP")
                .arg(&processing)
                .query_async(&mut redis)
                .await;
            let Ok(Some(entry)) = entry else {
                break;
            };
            reap_one(shared, &mut redis, &w, entry).await;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SREM").arg(shared.keys.workers()).arg(&w).ignore();
        pipe.cmd("DEL").arg(shared.keys.inbox(&w)).ignore();
        let _: redis::RedisResult<()> = pipe.query_async(&mut redis).await;
        tracing::info!(worker = %w, "redis worker: reaped a dead worker");
    }
}

async fn reap_one(shared: &Shared, redis: &mut ConnectionManager, dead: &str, entry: Vec<u8>) {
    let queue = shared.keys.queue();
    let again = || async {
        let mut r = redis.clone();
        let _: redis::RedisResult<()> = r.lpush(&queue, entry.as_slice()).await;
    };
    match open(&entry) {
        Some((b'K', _, _)) => again().await,
        Some((b'R', reply, _)) if !shared.keys.is_reply_list(reply) => {
            tracing::warn!(
                reply,
                "redis reaper: a reply list outside the service; dropped"
            );
        }
        Some((b'R', reply, frame)) => {
            let command = shared.protocol.decode(Bytes::copy_from_slice(frame));
            let (key, action) = match &command {
                Ok(c) => (c.key.as_ref().map(|k| k.to_string()), c.action.to_string()),
                Err(e) => (
                    e.key().map(str::to_string),
                    e.action().unwrap_or("").to_string(),
                ),
            };
            if shared.config.idempotent.contains(&action) {
                tracing::info!(%action, worker = %dead, "redis reaper: an idempotent request runs again");
                again().await;
                return;
            }
            let Some(key) = key else {
                // A fire: nobody to tell.
                return;
            };
            let mut frame = BytesMut::new();
            let encoded = {
                let message = ErrorMessage("worker lost");
                let out = Outgoing::new(drs_core::ERROR)
                    .key(Some(&key))
                    .body(OutBody::Value(&message));
                shared.protocol.encode(&out, &mut frame).is_ok()
            };
            if encoded {
                let mut pipe = redis::pipe();
                pipe.cmd("RPUSH").arg(reply).arg(frame.as_ref()).ignore();
                pipe.cmd("PEXPIRE")
                    .arg(reply)
                    .arg(shared.config.reply_ttl.as_millis() as u64)
                    .ignore();
                let _: redis::RedisResult<()> = pipe.query_async(redis).await;
            }
            tracing::info!(%action, %key, worker = %dead, "redis reaper: answered worker lost");
        }
        _ => {}
    }
}

/// `{"message": …}`.
struct ErrorMessage(&'static str);

impl serde::Serialize for ErrorMessage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("message", self.0)?;
        map.end()
    }
}

/// Connects drs clients to service `NAME` on Redis.
#[derive(Debug, Clone)]
pub struct RedisDialer {
    url: String,
    keys: Keys,
    config: RedisConfig,
}

impl RedisDialer {
    /// Dials service `name` on the Redis at `url`.
    pub fn new(url: impl Into<String>, name: &str) -> Self {
        Self {
            url: url.into(),
            keys: Keys::new(name),
            config: RedisConfig::default(),
        }
    }

    /// Uses `config`.
    pub fn config(mut self, config: RedisConfig) -> Self {
        self.config = config;
        self
    }
}

impl Dialer for RedisDialer {
    type Io = RedisIo;

    async fn dial(&self, spec: FrameSpec) -> io::Result<(RedisIo, ConnInfo)> {
        let (redis, mut popper) = connections(&self.url, Duration::from_secs(1)).await?;
        let client = unique();
        let list = self.keys.client(&client);
        let alive = self.keys.alive(&client);
        let dead_after = self.config.dead_after().as_millis() as u64;
        let mut r = redis.clone();
        redis::cmd("SET")
            .arg(&alive)
            .arg(1)
            .arg("PX")
            .arg(dead_after)
            .query_async::<()>(&mut r)
            .await
            .map_err(io_err)?;
        r.rpush::<_, _, ()>(self.keys.queue(), envelope(b'K', &client, &[]))
            .await
            .map_err(io_err)?;
        // The worker's answer comes first on our list.
        let answer = tokio::time::timeout(self.config.link.connect_timeout, async {
            loop {
                let popped: Option<(String, Vec<u8>)> = redis::cmd("BLPOP")
                    .arg(&list)
                    .arg(1)
                    .query_async(&mut popper)
                    .await
                    .map_err(io_err)?;
                if let Some((_, entry)) = popped {
                    return Ok::<_, io::Error>(entry);
                }
            }
        })
        .await;
        let answer = match answer {
            Ok(answer) => answer?,
            Err(_) => {
                // Nobody took it: take it back so no worker connects to a
                // client that gave up.
                let _: redis::RedisResult<()> = r
                    .lrem(self.keys.queue(), 1, envelope(b'K', &client, &[]))
                    .await;
                let _: redis::RedisResult<()> = r.del(&alive).await;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no worker of {} answered within {:?}",
                        self.keys.queue(),
                        self.config.link.connect_timeout
                    ),
                ));
            }
        };
        let (id, inbox) = match open(&answer) {
            Some((b'K', head, _)) => head
                .split_once(' ')
                .and_then(|(id, inbox)| Some((id.parse::<u64>().ok()?, inbox.to_string())))
                .ok_or_else(|| io_err("a malformed answer from the worker"))?,
            _ => return Err(io_err("a malformed answer from the worker")),
        };
        let worker_key = inbox.replacen(":inbox:", ":worker:", 1);
        let link = Link::new(self.config.link.window);
        let out = RedisOut {
            redis: redis.clone(),
            list: inbox.clone(),
            id,
        };
        let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(client_pump(
            redis.clone(),
            popper,
            list.clone(),
            alive.clone(),
            worker_key,
            link.clone(),
            self.config.clone(),
            stop,
        ));
        let info = ConnInfo::new("redis")
            .with_peer_addr(inbox)
            .with_local_addr(list);
        let io = LinkIo::link(
            link,
            Box::new(out),
            spec.max_frame_len,
            Some(Box::new(move || {
                let _ = stop_tx.send(());
            })),
        );
        Ok((io, info))
    }
}

/// A client connection's reader and heartbeat, until it or its worker
/// goes.
#[allow(clippy::too_many_arguments)]
async fn client_pump(
    redis: ConnectionManager,
    mut popper: ConnectionManager,
    list: String,
    alive: String,
    worker_key: String,
    link: Link,
    config: RedisConfig,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let beats = {
        let mut redis = redis.clone();
        let alive = alive.clone();
        let link = link.clone();
        let dead_after = config.dead_after().as_millis() as u64;
        let reply_ttl = config.reply_ttl.as_millis() as u64;
        let list = list.clone();
        async move {
            let mut tick = tokio::time::interval(config.link.heartbeat);
            loop {
                tick.tick().await;
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(&alive)
                    .arg(1)
                    .arg("PX")
                    .arg(dead_after)
                    .ignore();
                // Our list goes by itself if we die (and the worker drops
                // it when it sees us gone).
                pipe.cmd("PEXPIRE").arg(&list).arg(reply_ttl).ignore();
                pipe.cmd("EXISTS").arg(&worker_key);
                match pipe.query_async::<(bool,)>(&mut redis).await {
                    Ok((true,)) => {}
                    Ok((false,)) => {
                        link.fail(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            "the worker is gone (no heartbeat)",
                        ));
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "redis client: heartbeat failed"),
                }
            }
        }
    };
    let reads = async {
        loop {
            match pop_batch(&mut popper, &list).await {
                Ok(entries) => {
                    for entry in entries {
                        if let Some((Some(kind), _, payload)) =
                            open(&entry).map(|(k, h, p)| (kind_of(k), h, p))
                        {
                            if let Route::End = link.route(kind, Bytes::copy_from_slice(payload)) {
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "redis client: BLPOP failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    tokio::select! {
        () = beats => {}
        () = reads => {}
        _ = &mut stop => {}
    }
    let mut redis = redis;
    let _: redis::RedisResult<()> = redis.del(&[&alive, &list]).await;
}

/// Connects to service `name` on the Redis at `url` with default settings.
pub async fn connect<P: Protocol>(url: &str, name: &str, protocol: P) -> Result<Conn, Error> {
    Client::new()
        .connect(RedisDialer::new(url, name), protocol)
        .await
}
