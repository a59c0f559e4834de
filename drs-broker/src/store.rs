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
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Stored publications: sequence → record.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// What each name has still to receive: (name, sequence) → ().
const PENDING: TableDefinition<(&str, u64), ()> = TableDefinition::new("pending");
/// Each name's subscriptions and unreported losses.
const COMPONENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("components");

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
}

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
    PutComponent(String, Vec<u8>),
    DeleteComponent(String),
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
        let db = Database::create(&file).map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
                StoreError::Corrupt {
                    path: file.clone(),
                    reason,
                }
            }
            other => open_err(&file, other.to_string()),
        })?;
        let loaded = load(&db).map_err(|reason| StoreError::Corrupt {
            path: file.clone(),
            reason,
        })?;
        // Prove now that we can write, rather than at the first publish.
        apply(&db, Vec::new()).map_err(|reason| open_err(&file, reason))?;
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
    each_row(&txn, COMPONENTS, |name, bytes| {
        let record: ComponentRecord =
            rmp_serde::from_slice(bytes).map_err(|e| format!("subscriber {name:?}: {e}"))?;
        loaded.components.push((name.to_string(), record));
        Ok(())
    })?;
    Ok(loaded)
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
        let mut components = txn.open_table(COMPONENTS).map_err(|e| e.to_string())?;
        for op in ops {
            let done = match op {
                Op::PutMessage(seq, bytes) => messages.insert(seq, bytes.as_slice()).map(drop),
                Op::DeleteMessage(seq) => messages.remove(seq).map(drop),
                Op::Hold(name, seq) => pending.insert((name.as_str(), seq), ()).map(drop),
                Op::Release(name, seq) => pending.remove((name.as_str(), seq)).map(drop),
                Op::PutComponent(name, bytes) => {
                    components.insert(name.as_str(), bytes.as_slice()).map(drop)
                }
                Op::DeleteComponent(name) => components.remove(name.as_str()).map(drop),
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
pub(crate) fn body_from(format: &str, bytes: Vec<u8>) -> Option<drs_core::Body> {
    use drs_core::Protocol;
    if format.is_empty() {
        return Some(drs_core::Body::absent());
    }
    let json = drs_protocol_json::Json.body_format();
    let msgpack = drs_protocol_msgpack::MsgPack.body_format();
    let known = [json, msgpack];
    let f = known.into_iter().find(|f| f.name() == format)?;
    Some(drs_core::Body::from_raw(Bytes::from(bytes), f))
}
