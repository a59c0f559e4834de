//! Where retroactive publications and named subscribers' state live: in
//! memory (the default), or on disk in a redb database.
//!
//! The broker keeps everything it serves in memory; the store is its
//! write-behind copy, read once at start. Writes go, in the order the
//! broker made them, to one writer thread that commits them in batches:
//! each commit is one redb write transaction, durable when it returns
//! (redb's default `Durability::Immediate`: fsync). [`Store::flush`]
//! waits for the commit holding everything written before it, which is
//! what a confirmed publish waits for.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::mpsc as std_mpsc,
};

use bytes::Bytes;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Stored publications: sequence → record.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// What each name has still to receive: (name, sequence) → ().
const PENDING: TableDefinition<(&str, u64), ()> = TableDefinition::new("pending");
/// Each name's subscriptions and unreported losses in one record: what
/// earlier versions wrote; read, then moved into [`NAMES`] and
/// [`PATTERNS`] when the store is opened.
const COMPONENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("components");
/// Each name's small record: unreported losses and owner. Written when
/// they change, without its patterns.
const NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("names");
/// Each subscription of a name, one row each: (name, pattern) →
/// (retroactive, window). Subscribing writes one row, not the name's all.
const PATTERNS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("patterns");

/// The file the store keeps in its directory.
pub const STORE_FILE: &str = "broker.redb";

/// The store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The directory or file cannot be created or opened.
    #[error("cannot use the store at {path}: {reason}")]
    Open {
        /// The path concerned.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A record on disk does not decode: the file is damaged or from an
    /// incompatible version.
    #[error("the store at {path} is damaged: {reason}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What did not decode.
        reason: String,
    },
    /// A write failed (the broker goes on from memory; what was not
    /// written is lost at the next restart).
    #[error("store write failed: {0}")]
    Write(String),
}

/// A publication as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MessageRecord {
    pub(crate) topic: String,
    /// Receive time, nanoseconds since the Unix epoch.
    pub(crate) time: u64,
    /// The body's format name (`json`, `msgpack`); empty for no body.
    pub(crate) format: String,
    #[serde(with = "serde_bytes_compat")]
    pub(crate) body: Vec<u8>,
}

/// A named subscriber as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ComponentRecord {
    /// pattern → (retroactive, window in ns).
    pub(crate) patterns: Vec<(String, bool, Option<u64>)>,
    /// Messages dropped from its backlog and not yet reported to it.
    pub(crate) missed: u64,
    /// The identity that claimed the name (`None`: claimed without
    /// authentication); only it may take the name again.
    #[serde(default)]
    pub(crate) owner: Option<String>,
}

/// A name's own row ([`NAMES`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct NameRecord {
    pub(crate) missed: u64,
    #[serde(default)]
    pub(crate) owner: Option<String>,
}

/// A subscription's row ([`PATTERNS`]): retroactive, window in ns.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct PatternRecord(pub(crate) bool, pub(crate) Option<u64>);

/// Encodes `Vec<u8>` as MessagePack bin rather than an array of numbers.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain records cannot fail.
    rmp_serde::to_vec(value).unwrap_or_default()
}

/// One change, applied in order.
pub(crate) enum Op {
    PutMessage(u64, Vec<u8>),
    DeleteMessage(u64),
    Hold(String, u64),
    Release(String, u64),
    /// A name's record (not its patterns).
    PutName(String, Vec<u8>),
    /// One subscription of a name.
    PutPattern(String, String, Vec<u8>),
    DeletePattern(String, String),
    /// A name, its record and every pattern.
    DeleteName(String),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// What was on disk at start.
#[derive(Default)]
pub(crate) struct Loaded {
    pub(crate) messages: Vec<(u64, MessageRecord)>,
    pub(crate) pending: HashMap<String, Vec<u64>>,
    pub(crate) components: Vec<(String, ComponentRecord)>,
}

/// The broker's store: memory (writes go nowhere) or a redb file.
pub(crate) struct Store {
    tx: Option<std_mpsc::Sender<Op>>,
    path: Option<PathBuf>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    pub(crate) fn memory() -> Self {
        Self {
            tx: None,
            path: None,
        }
    }

    /// Opens (creating it if needed) the store in `dir` and reads it.
    pub(crate) fn open(dir: &Path) -> Result<(Self, Loaded), StoreError> {
        let open_err = |path: &Path, reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(dir, e.to_string()))?;
        let file = dir.join(STORE_FILE);
        let corrupt = |reason: String| StoreError::Corrupt {
            path: file.clone(),
            reason,
        };
        // An empty file is what a crash during creation, or a truncation,
        // leaves: refused rather than silently started empty.
        if std::fs::metadata(&file).is_ok_and(|m| m.len() == 0) {
            return Err(corrupt("the file is empty".into()));
        }
        // redb asserts on some damaged files instead of answering an
        // error: a panic here is a damaged store, named by its path.
        let opened = std::panic::catch_unwind(|| Database::create(&file));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)))) => {
                return Err(corrupt(reason))
            }
            Ok(Err(other)) => return Err(open_err(&file, other.to_string())),
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("the database could not be read");
                return Err(corrupt(reason.to_string()));
            }
        };
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(&db)))
            .unwrap_or_else(|_| Err("the database could not be read".into()))
            .map_err(corrupt)?;
        // Prove now that we can write, rather than at the first publish.
        apply(&db, Vec::new()).map_err(|reason| open_err(&file, reason))?;
        migrate(&db, &loaded.components).map_err(|reason| open_err(&file, reason))?;
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("drs-broker-store".into())
            .spawn(move || writer(db, rx))
            .map_err(|e| open_err(&file, e.to_string()))?;
        Ok((
            Self {
                tx: Some(tx),
                path: Some(file),
            },
            loaded,
        ))
    }

    /// The database file, for a durable store.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub(crate) fn is_durable(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a change (to be called in the broker's order).
    pub(crate) fn write(&self, op: Op) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(op);
        }
    }

    /// Waits until everything written before is on disk.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        let (done, wait) = oneshot::channel();
        tx.send(Op::Flush(done))
            .map_err(|_| StoreError::Write("the store writer has stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Write("the store writer has stopped".into()))?
            .map_err(StoreError::Write)
    }
}

fn load(db: &Database) -> Result<Loaded, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let mut loaded = Loaded::default();
    each_row(&txn, MESSAGES, |seq, bytes| {
        let record: MessageRecord =
            rmp_serde::from_slice(bytes).map_err(|e| format!("message {seq}: {e}"))?;
        loaded.messages.push((seq, record));
        Ok(())
    })?;
    each_row(&txn, PENDING, |(name, seq), ()| {
        loaded
            .pending
            .entry(name.to_string())
            .or_default()
            .push(seq);
        Ok(())
    })?;
    let mut names: std::collections::BTreeMap<String, ComponentRecord> = Default::default();
    each_row(&txn, COMPONENTS, |name, bytes| {
        let record: ComponentRecord =
            rmp_serde::from_slice(bytes).map_err(|e| format!("subscriber {name:?}: {e}"))?;
        names.insert(name.to_string(), record);
        Ok(())
    })?;
    each_row(&txn, NAMES, |name, bytes| {
        let record: NameRecord =
            rmp_serde::from_slice(bytes).map_err(|e| format!("name {name:?}: {e}"))?;
        let entry = names.entry(name.to_string()).or_default();
        entry.missed = record.missed;
        entry.owner = record.owner;
        Ok(())
    })?;
    each_row(&txn, PATTERNS, |(name, pattern), bytes| {
        let PatternRecord(retroactive, window) = rmp_serde::from_slice(bytes)
            .map_err(|e| format!("subscription {name:?} {pattern:?}: {e}"))?;
        names.entry(name.to_string()).or_default().patterns.push((
            pattern.to_string(),
            retroactive,
            window,
        ));
        Ok(())
    })?;
    loaded.components = names.into_iter().collect();
    Ok(loaded)
}

/// Moves records of the one-row-per-name layout into [`NAMES`] and
/// [`PATTERNS`] (once, at open).
fn migrate(db: &Database, components: &[(String, ComponentRecord)]) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut old = txn.open_table(COMPONENTS).map_err(|e| e.to_string())?;
        if old.is_empty().map_err(|e| e.to_string())? {
            return Ok(());
        }
        let mut names = txn.open_table(NAMES).map_err(|e| e.to_string())?;
        let mut patterns = txn.open_table(PATTERNS).map_err(|e| e.to_string())?;
        for (name, record) in components {
            let row = encode(&NameRecord {
                missed: record.missed,
                owner: record.owner.clone(),
            });
            names
                .insert(name.as_str(), row.as_slice())
                .map_err(|e| e.to_string())?;
            for (pattern, retroactive, window) in &record.patterns {
                let row = encode(&PatternRecord(*retroactive, *window));
                patterns
                    .insert((name.as_str(), pattern.as_str()), row.as_slice())
                    .map_err(|e| e.to_string())?;
            }
        }
        old.retain(|_, _| false).map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}

/// Calls `f` with every row of `table` (none if it was never written).
fn each_row<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
    mut f: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<(), String>,
) -> Result<(), String> {
    let table = match txn.open_table(table) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    for row in table.iter().map_err(|e| e.to_string())? {
        let (key, value) = row.map_err(|e| e.to_string())?;
        f(key.value(), value.value())?;
    }
    Ok(())
}

/// Applies `ops` in one transaction.
fn apply(db: &Database, ops: Vec<Op>) -> Result<Vec<oneshot::Sender<Result<(), String>>>, String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let mut flushes = Vec::new();
    {
        let mut messages = txn.open_table(MESSAGES).map_err(|e| e.to_string())?;
        let mut pending = txn.open_table(PENDING).map_err(|e| e.to_string())?;
        let mut names = txn.open_table(NAMES).map_err(|e| e.to_string())?;
        let mut patterns = txn.open_table(PATTERNS).map_err(|e| e.to_string())?;
        for op in ops {
            let done = match op {
                Op::PutMessage(seq, bytes) => messages.insert(seq, bytes.as_slice()).map(drop),
                Op::DeleteMessage(seq) => messages.remove(seq).map(drop),
                Op::Hold(name, seq) => pending.insert((name.as_str(), seq), ()).map(drop),
                Op::Release(name, seq) => pending.remove((name.as_str(), seq)).map(drop),
                Op::PutName(name, bytes) => names.insert(name.as_str(), bytes.as_slice()).map(drop),
                Op::PutPattern(name, pattern, bytes) => patterns
                    .insert((name.as_str(), pattern.as_str()), bytes.as_slice())
                    .map(drop),
                Op::DeletePattern(name, pattern) => {
                    patterns.remove((name.as_str(), pattern.as_str())).map(drop)
                }
                Op::DeleteName(name) => names.remove(name.as_str()).and_then(|_| {
                    let name = name.as_str();
                    patterns.retain_in((name, "")..(name, "\u{10ffff}"), |_, _| false)
                }),
                Op::Flush(done) => {
                    flushes.push(done);
                    Ok(())
                }
            };
            done.map_err(|e| e.to_string())?;
        }
    }
    txn.commit().map_err(|e| e.to_string())?;
    Ok(flushes)
}

/// Most changes committed in one transaction.
const BATCH: usize = 4096;

fn writer(db: Database, rx: std_mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        // Flushes are answered after the commit, or with its failure.
        let waiting: usize = ops.iter().filter(|op| matches!(op, Op::Flush(_))).count();
        let mut flushes = Vec::with_capacity(waiting);
        let mut writes = Vec::with_capacity(ops.len() - waiting);
        for op in ops {
            match op {
                Op::Flush(done) => flushes.push(done),
                other => writes.push(other),
            }
        }
        match apply(&db, writes) {
            Ok(_) => flushes.into_iter().for_each(|f| {
                let _ = f.send(Ok(()));
            }),
            Err(e) => {
                tracing::error!(error = %e, "broker store write failed");
                flushes.into_iter().for_each(|f| {
                    let _ = f.send(Err(e.clone()));
                });
            }
        }
    }
}

/// A stored body back into a body, given the formats the broker knows.
pub(crate) fn body_from(
    format: &str,
    bytes: Vec<u8>,
    registry: Option<&drs_core::Registry>,
) -> Option<drs_core::Body> {
    if format.is_empty() {
        return Some(drs_core::Body::absent());
    }
    let f = format_named(format, registry)?;
    Some(drs_core::Body::from_raw(Bytes::from(bytes), f))
}

/// The body format called `name`: JSON's, MessagePack's, or that of a
/// protocol in `registry`.
pub(crate) fn format_named(
    name: &str,
    registry: Option<&drs_core::Registry>,
) -> Option<&'static dyn drs_core::BodyFormat> {
    use drs_core::Protocol;
    let builtin = [
        drs_protocol_json::Json.body_format(),
        drs_protocol_msgpack::MsgPack.body_format(),
    ];
    let registered = registry.into_iter().flat_map(|r| {
        r.protocols()
            .into_iter()
            .filter_map(|p| r.find_protocol(p))
            .map(|p| p.body_format())
    });
    builtin
        .into_iter()
        .chain(registered)
        .find(|f| f.name() == name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A format of one's own: JSON text under another name.
    #[derive(Debug, Clone, Copy, Default)]
    struct ToyFormat;

    impl drs_core::BodyFormat for ToyFormat {
        fn name(&self) -> &'static str {
            "toy"
        }
        fn is_text(&self) -> bool {
            true
        }
        fn deserialize(
            &self,
            raw: &[u8],
            visit: &mut dyn FnMut(
                &mut dyn drs_core::erased_serde::Deserializer<'_>,
            ) -> Result<(), drs_core::erased_serde::Error>,
        ) -> Result<(), drs_core::DecodeError> {
            use drs_core::Protocol;
            drs_protocol_json::Json
                .body_format()
                .deserialize(raw, visit)
        }
    }

    fn toy_decode(frame: Bytes) -> Result<drs_core::Command, drs_core::DecodeError> {
        use drs_core::Protocol;
        drs_protocol_json::Json.decode(frame)
    }

    fn toy_encode(
        cmd: &drs_core::Outgoing<'_>,
        dst: &mut bytes::BytesMut,
    ) -> Result<(), drs_core::EncodeError> {
        use drs_core::Protocol;
        drs_protocol_json::Json.encode(cmd, dst)
    }

    drs_core::protocol! {
        /// A third protocol, for the store's format lookup.
        Toy: "toy", Lines, format &ToyFormat, decode toy_decode, encode toy_encode
    }

    /// A registry that knows [`Toy`].
    pub(crate) fn toy_registry() -> &'static drs_core::Registry {
        static REGISTRY: std::sync::OnceLock<drs_core::Registry> = std::sync::OnceLock::new();
        REGISTRY.get_or_init(|| {
            let r = drs_core::Registry::new();
            r.protocol(Toy);
            r
        })
    }

    /// Stored bodies come back in their format: JSON and MessagePack
    /// always, a registered protocol's when the broker is given the
    /// registry, none otherwise (the store is then reported damaged).
    #[test]
    fn stored_bodies_find_their_format_by_name() {
        let body = |format: &str, registry| body_from(format, b"[1,2]".to_vec(), registry);
        let json = body("json", None).expect("json is known");
        assert_eq!(json.deserialize::<Vec<u8>>().unwrap(), [1, 2]);
        assert!(body("", None).unwrap().is_absent());
        assert!(body("toy", None).is_none(), "unknown without the registry");
        let registry = toy_registry();
        let toy = body("toy", Some(registry)).expect("registered");
        assert_eq!(toy.raw().unwrap().1.name(), "toy");
        assert_eq!(toy.deserialize::<Vec<u8>>().unwrap(), [1, 2]);
        assert!(body("yaml", Some(registry)).is_none());
    }

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("drs-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A store written with one record per name is read, and moved to a
    /// row per subscription, once.
    #[test]
    fn one_record_per_name_is_migrated_to_rows() {
        let dir = dir("migrate");
        {
            let db = Database::create(dir.join(STORE_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut old = txn.open_table(COMPONENTS).unwrap();
                let record = ComponentRecord {
                    patterns: vec![("a.*".into(), true, None), ("b.>".into(), false, Some(5))],
                    missed: 3,
                    owner: None,
                };
                // The old layout: no owner field.
                let bytes = rmp_serde::to_vec(&(record.patterns.clone(), record.missed)).unwrap();
                old.insert("legacy", bytes.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        for _ in 0..2 {
            // The previous writer thread lets the file go once it has seen
            // its sender dropped.
            let started = std::time::Instant::now();
            let (store, loaded) = loop {
                match Store::open(&dir) {
                    Ok(opened) => break opened,
                    Err(StoreError::Open { .. }) if started.elapsed().as_secs() < 10 => {
                        std::thread::yield_now()
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(loaded.components.len(), 1);
            let (name, record) = &loaded.components[0];
            assert_eq!(name, "legacy");
            assert_eq!(record.missed, 3);
            let mut patterns = record.patterns.clone();
            patterns.sort();
            assert_eq!(
                patterns,
                vec![("a.*".into(), true, None), ("b.>".into(), false, Some(5))]
            );
            drop(store);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Writes cost what changed: one subscription is one row; dropping a
    /// name drops its rows.
    #[test]
    fn rows_per_subscription() {
        let dir = dir("rows");
        let db = Database::create(dir.join(STORE_FILE)).unwrap();
        let put = |name: &str, pattern: &str| {
            Op::PutPattern(
                name.into(),
                pattern.into(),
                encode(&PatternRecord(true, None)),
            )
        };
        apply(
            &db,
            vec![
                Op::PutName("n".into(), encode(&NameRecord::default())),
                put("n", "a"),
                put("n", "b"),
                put("m", "a"),
            ],
        )
        .unwrap();
        apply(&db, vec![Op::DeletePattern("n".into(), "a".into())]).unwrap();
        let loaded = load(&db).unwrap();
        let n = &loaded.components.iter().find(|(k, _)| k == "n").unwrap().1;
        assert_eq!(n.patterns, vec![("b".to_string(), true, None)]);
        apply(&db, vec![Op::DeleteName("n".into())]).unwrap();
        let loaded = load(&db).unwrap();
        let names: Vec<&str> = loaded.components.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["m"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
