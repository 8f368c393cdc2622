//! The monitor's durable state: the Raft log, the vote, the applied map, snapshots, and the
//! command that produced each recent epoch (for incremental map pushes).
//!
//! Everything lives in a [`Disk`]: redb on a real monitor ([`RedbDisk`]), memory that
//! survives simulated restarts in the simulator ([`MemDisk`]). Every record is sealed with
//! magic, format version and crc32c (`store::seal`), and the whole store is read and checked
//! at start: a damaged record refuses the start instead of serving a wrong map.
//!
//! Tables (all keyed by u64):
//! - `log`: index → `Entry`;
//! - `meta`: `IDENTITY`, `VOTE`, `COMMITTED`, `PURGED` (last purged log id), `APPLIED`
//!   (the state machine: last applied log id, membership, map), `SNAPSHOT` (meta + data);
//! - `hist`: epoch → the `Command` that produced it, for the last `KEEP_HISTORY` epochs.

use crate::raft::{
    Entry, LogId, MonNode, MonResponse, NodeId, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig, Vote,
};
use crate::store::{seal, unseal, unseal_migrating, Identity};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftLogReader, RaftSnapshotBuilder,
    StorageIOError,
};
use proto::map::MonInfo;
use proto::{ClusterMap, Command, CommandResult, Epoch};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How many past epochs' commands are kept for subscribers that fell behind.
pub const KEEP_HISTORY: u64 = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    Log,
    Meta,
    Hist,
}

pub mod key {
    pub const IDENTITY: u64 = 1;
    pub const VOTE: u64 = 2;
    pub const COMMITTED: u64 = 3;
    pub const PURGED: u64 = 4;
    pub const APPLIED: u64 = 5;
    pub const SNAPSHOT: u64 = 6;
}

/// One atomic change to the disk.
#[derive(Default)]
pub struct Batch {
    pub puts: Vec<(Table, u64, Vec<u8>)>,
    /// Removes keys in `[from, to)`.
    pub removes: Vec<(Table, u64, u64)>,
}

impl Batch {
    fn put<T: serde::Serialize>(&mut self, t: Table, k: u64, v: &T) {
        self.puts.push((t, k, seal(v)));
    }
}

#[derive(Default, Clone)]
pub struct Tables {
    pub log: BTreeMap<u64, Vec<u8>>,
    pub meta: BTreeMap<u64, Vec<u8>>,
    pub hist: BTreeMap<u64, Vec<u8>>,
}

impl Tables {
    fn table(&mut self, t: Table) -> &mut BTreeMap<u64, Vec<u8>> {
        match t {
            Table::Log => &mut self.log,
            Table::Meta => &mut self.meta,
            Table::Hist => &mut self.hist,
        }
    }

    fn apply(&mut self, b: Batch) {
        for (t, from, to) in b.removes {
            let tab = self.table(t);
            let keys: Vec<u64> = tab.range(from..to).map(|(k, _)| *k).collect();
            for k in keys {
                tab.remove(&k);
            }
        }
        for (t, k, v) in b.puts {
            self.table(t).insert(k, v);
        }
    }
}

/// Where the monitor's state is kept. `commit` is atomic and durable when it returns.
pub trait Disk: Send + Sync + 'static {
    fn load(&self) -> Result<Tables, String>;
    fn commit(&self, b: Batch) -> Result<(), String>;
    fn describe(&self) -> String;
}

/// The simulator's disk: survives a simulated restart of its monitor.
#[derive(Clone, Default)]
pub struct MemDisk(pub Arc<Mutex<Tables>>);

impl Disk for MemDisk {
    fn load(&self) -> Result<Tables, String> {
        Ok(net::sync::lock(&self.0).clone())
    }
    fn commit(&self, b: Batch) -> Result<(), String> {
        net::sync::lock(&self.0).apply(b);
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

const LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
const META: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("meta");
const HIST: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("hist");

fn def(t: Table) -> redb::TableDefinition<'static, u64, &'static [u8]> {
    match t {
        Table::Log => LOG,
        Table::Meta => META,
        Table::Hist => HIST,
    }
}

pub struct RedbDisk {
    db: redb::Database,
    path: PathBuf,
}

impl RedbDisk {
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("mon.redb")
    }

    pub fn create(dir: &Path) -> Result<RedbDisk, String> {
        let path = Self::path_in(dir);
        if path.exists() {
            return Err(format!("monitor store {} already exists", path.display()));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let db = redb::Database::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let d = RedbDisk { db, path };
        // Create the tables so a read transaction finds them.
        d.commit(Batch::default())?;
        Ok(d)
    }

    pub fn open(dir: &Path) -> Result<RedbDisk, String> {
        let path = Self::path_in(dir);
        if !path.exists() {
            return Err(format!(
                "monitor store {} does not exist; create it with `atlant-mon mkfs`",
                path.display()
            ));
        }
        let db = redb::Database::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(RedbDisk { db, path })
    }
}

impl Disk for RedbDisk {
    fn load(&self) -> Result<Tables, String> {
        use redb::{ReadableDatabase, ReadableTable, TableHandle};
        let p = self.path.display();
        let txn = self.db.begin_read().map_err(|e| format!("{p}: {e}"))?;
        // Format 2 (one monitor) kept a table of maps.
        let old = txn
            .list_tables()
            .map_err(|e| format!("{p}: {e}"))?
            .any(|t| t.name() == "maps");
        if old {
            return Err(format!(
                "{p} is a monitor store of format 2 (one monitor, written by an older build); \
                 this build reads format {}: recreate this monitor with `atlant-mon mkfs --join` \
                 and add it to the group",
                crate::store::FORMAT_VERSION
            ));
        }
        let mut out = Tables::default();
        for t in [Table::Log, Table::Meta, Table::Hist] {
            let tab = match txn.open_table(def(t)) {
                Ok(tab) => tab,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(format!("{p}: {e}")),
            };
            for kv in tab.iter().map_err(|e| format!("{p}: {e}"))? {
                let (k, v) = kv.map_err(|e| format!("{p}: {e}"))?;
                out.table(t).insert(k.value(), v.value().to_vec());
            }
        }
        Ok(out)
    }

    fn commit(&self, b: Batch) -> Result<(), String> {
        let p = self.path.display();
        let txn = self.db.begin_write().map_err(|e| format!("{p}: {e}"))?;
        {
            let mut tabs = [
                txn.open_table(LOG).map_err(|e| format!("{p}: {e}"))?,
                txn.open_table(META).map_err(|e| format!("{p}: {e}"))?,
                txn.open_table(HIST).map_err(|e| format!("{p}: {e}"))?,
            ];
            for (t, from, to) in b.removes {
                tabs[t as usize]
                    .retain_in(from..to, |_, _| false)
                    .map_err(|e| format!("{p}: {e}"))?;
            }
            for (t, k, v) in b.puts {
                tabs[t as usize]
                    .insert(k, v.as_slice())
                    .map_err(|e| format!("{p}: {e}"))?;
            }
        }
        txn.commit().map_err(|e| format!("{p}: {e}"))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

// ---------------------------------------------------------------------------------------

/// The state machine's state: what the map is after applying the log up to `last_applied`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub map: ClusterMap,
    /// Each client's last request: (seq, answer, log index). A retry of it gets the same
    /// answer instead of being applied twice.
    pub sessions: BTreeMap<u128, (u64, MonResponse, u64)>,
}

/// `Applied` as an older format stored it: the same, with that format's map `M`.
#[derive(serde::Deserialize)]
pub struct AppliedWith<M> {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    map: M,
    sessions: BTreeMap<u128, (u64, MonResponse, u64)>,
}

impl<M: Into<ClusterMap>> From<AppliedWith<M>> for Applied {
    fn from(a: AppliedWith<M>) -> Applied {
        Applied {
            last_applied: a.last_applied,
            membership: a.membership,
            map: a.map.into(),
            sessions: a.sessions,
        }
    }
}

/// Format 3: the map without PG history.
pub type AppliedV3 = AppliedWith<proto::map::ClusterMapV3>;
/// Format 4: the map without interval starts.
pub type AppliedV4 = AppliedWith<proto::map::ClusterMapV4>;
/// Format 5: the map without `auto_out`.
pub type AppliedV5 = AppliedWith<proto::map::ClusterMapV5>;

fn unseal_applied(raw: &[u8]) -> Result<Applied, String> {
    unseal_migrating::<Applied, AppliedV3, AppliedV4, AppliedV5>(raw)
}

/// How many clients' last answers are kept.
const MAX_SESSIONS: usize = 4096;

/// Everything read from the disk at start, checked.
pub struct Opened {
    pub identity: Identity,
    pub disk: Arc<dyn Disk>,
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
    pub log: BTreeMap<u64, Entry>,
    pub applied: Applied,
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    pub history: BTreeMap<Epoch, Command>,
}

/// Creates a new monitor store holding only the identity.
pub fn format(disk: &dyn Disk, identity: &Identity) -> Result<(), String> {
    let mut b = Batch::default();
    b.put(Table::Meta, key::IDENTITY, identity);
    disk.commit(b)
}

/// Reads and checks everything.
pub fn open(disk: Arc<dyn Disk>) -> Result<Opened, String> {
    let t = disk.load()?;
    let where_ = disk.describe();
    let damaged = |what: String| {
        format!("monitor store {where_} is damaged: {what}; refusing to start rather than serve a wrong map")
    };
    fn meta<T: serde::de::DeserializeOwned>(
        t: &Tables,
        k: u64,
        name: &str,
        damaged: &dyn Fn(String) -> String,
    ) -> Result<Option<T>, String> {
        match t.meta.get(&k) {
            None => Ok(None),
            Some(raw) => unseal(raw)
                .map(Some)
                .map_err(|e| damaged(format!("{name}: {e}"))),
        }
    }
    let identity: Identity = meta(&t, key::IDENTITY, "identity", &damaged)?
        .ok_or_else(|| damaged("no identity record (not a monitor store?)".into()))?;
    let vote = meta(&t, key::VOTE, "vote", &damaged)?;
    let committed = meta::<Option<LogId>>(&t, key::COMMITTED, "committed", &damaged)?.flatten();
    let purged = meta::<Option<LogId>>(&t, key::PURGED, "purged", &damaged)?.flatten();
    let applied = match t.meta.get(&key::APPLIED) {
        None => None,
        Some(raw) => Some(unseal_applied(raw).map_err(|e| damaged(format!("applied state: {e}")))?),
    };
    let applied = applied.unwrap_or_else(|| Applied {
        last_applied: None,
        membership: StoredMembership::default(),
        map: ClusterMap::new(identity.fsid, vec![]),
        sessions: BTreeMap::new(),
    });
    if applied.map.fsid != identity.fsid {
        return Err(damaged("the map belongs to another cluster".into()));
    }
    let snapshot: Option<(SnapshotMeta, Vec<u8>)> = meta(&t, key::SNAPSHOT, "snapshot", &damaged)?;
    // A snapshot of an older format is converted now, so peers are sent the current one.
    let snapshot = match snapshot {
        None => None,
        Some((m, data)) => {
            let a = unseal_applied(&data).map_err(|e| damaged(format!("snapshot: {e}")))?;
            Some((m, seal(&a)))
        }
    };
    let mut log = BTreeMap::new();
    let mut prev: Option<u64> = None;
    for (k, raw) in &t.log {
        let e: Entry = unseal(raw).map_err(|e| damaged(format!("log entry {k}: {e}")))?;
        if e.log_id.index != *k {
            return Err(damaged(format!(
                "log entry stored at {k} says {}",
                e.log_id.index
            )));
        }
        if prev.is_some_and(|p| p + 1 != *k) {
            return Err(damaged(format!("log has a hole before {k}")));
        }
        prev = Some(*k);
        log.insert(*k, e);
    }
    let mut history = BTreeMap::new();
    for (k, raw) in &t.hist {
        let c: Command = unseal(raw).map_err(|e| damaged(format!("history at epoch {k}: {e}")))?;
        history.insert(*k, c);
    }
    Ok(Opened {
        identity,
        disk,
        vote,
        committed,
        purged,
        log,
        applied,
        snapshot,
        history,
    })
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: String) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(e)).into()
}

// ---------------------------------------------------------------------------------------
// The log.

struct LogInner {
    disk: Arc<dyn Disk>,
    log: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

#[derive(Clone)]
pub struct MonLog {
    inner: Arc<Mutex<LogInner>>,
}

impl MonLog {
    pub fn new(o: &Opened) -> MonLog {
        MonLog {
            inner: Arc::new(Mutex::new(LogInner {
                disk: Arc::clone(&o.disk),
                log: o.log.clone(),
                vote: o.vote,
                committed: o.committed,
                purged: o.purged,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        net::sync::lock(&self.inner)
    }
}

impl RaftLogReader<TypeConfig> for MonLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let g = self.lock();
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        if start > end {
            return Err(io_err(
                ErrorSubject::Logs,
                ErrorVerb::Read,
                format!("log range {start}..{end} is inverted"),
            ));
        }
        Ok(g.log.range(start..end).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for MonLog {
    type LogReader = MonLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let g = self.lock();
        let last = g.log.values().next_back().map(|e| e.log_id).or(g.purged);
        Ok(LogState {
            last_purged_log_id: g.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> MonLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut g = self.lock();
        let mut b = Batch::default();
        b.put(Table::Meta, key::VOTE, vote);
        g.disk
            .commit(b)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        g.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut g = self.lock();
        let mut b = Batch::default();
        b.put(Table::Meta, key::COMMITTED, &committed);
        g.disk
            .commit(b)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        g.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut g = self.lock();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut b = Batch::default();
        for e in &entries {
            b.put(Table::Log, e.log_id.index, e);
        }
        let r = g.disk.commit(b);
        if let Err(e) = r {
            callback.log_io_completed(Err(std::io::Error::other(e.clone())));
            return Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e));
        }
        for e in entries {
            g.log.insert(e.log_id.index, e);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut g = self.lock();
        let b = Batch {
            removes: vec![(Table::Log, log_id.index, u64::MAX)],
            ..Default::default()
        };
        g.disk
            .commit(b)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        g.log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut g = self.lock();
        let mut b = Batch::default();
        b.put(Table::Meta, key::PURGED, &Some(log_id));
        b.removes.push((Table::Log, 0, log_id.index + 1));
        g.disk
            .commit(b)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        g.purged = Some(log_id);
        g.log = g.log.split_off(&(log_id.index + 1));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The state machine.

/// What the rest of the monitor sees of the state machine.
pub struct Published {
    pub map: watch::Sender<Arc<ClusterMap>>,
    /// Epoch → the command that produced it (recent epochs only).
    pub history: Mutex<BTreeMap<Epoch, Command>>,
}

impl Published {
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.borrow().clone()
    }

    /// The commands that take the map at epoch `from` to epoch `to`, if all are still kept.
    pub fn between(&self, from: Epoch, to: Epoch) -> Option<Vec<Command>> {
        if to <= from {
            return Some(Vec::new());
        }
        let h = net::sync::lock(&self.history);
        let out: Vec<Command> = h.range(from + 1..=to).map(|(_, c)| c.clone()).collect();
        (out.len() as u64 == to - from).then_some(out)
    }
}

/// The latest snapshot (meta and sealed data), shared by the state machine and its builder.
type SnapshotSlot = Arc<Mutex<Option<(SnapshotMeta, Vec<u8>)>>>;

pub struct MonStateMachine {
    disk: Arc<dyn Disk>,
    fsid: u128,
    applied: Applied,
    snapshot: SnapshotSlot,
    published: Arc<Published>,
    snapshot_seq: u64,
}

impl MonStateMachine {
    pub fn new(o: &Opened) -> (MonStateMachine, Arc<Published>) {
        let (tx, _) = watch::channel(Arc::new(o.applied.map.clone()));
        let published = Arc::new(Published {
            map: tx,
            history: Mutex::new(o.history.clone()),
        });
        (
            MonStateMachine {
                disk: Arc::clone(&o.disk),
                fsid: o.identity.fsid,
                applied: o.applied.clone(),
                snapshot: Arc::new(Mutex::new(o.snapshot.clone())),
                published: Arc::clone(&published),
                snapshot_seq: 0,
            },
            published,
        )
    }

    fn publish(&self, new_epochs: Vec<(Epoch, Command)>) {
        if !new_epochs.is_empty() {
            let mut h = net::sync::lock(&self.published.history);
            h.extend(new_epochs);
            let cur = self.applied.map.epoch;
            if cur > KEEP_HISTORY {
                *h = h.split_off(&(cur - KEEP_HISTORY));
            }
        }
        let m = Arc::new(self.applied.map.clone());
        self.published.map.send_replace(m);
    }
}

/// The monitor list a membership implies: its voters, by name.
pub fn mons_of(m: &StoredMembership) -> Vec<MonInfo> {
    let ms = m.membership();
    let mut mons: Vec<MonInfo> = ms
        .voter_ids()
        .filter_map(|id| ms.get_node(&id))
        .map(|n| MonInfo {
            name: n.name.clone(),
            addr: n.addr.clone(),
        })
        .collect();
    mons.sort_by(|a, b| a.name.cmp(&b.name));
    mons
}

impl RaftStateMachine<TypeConfig> for MonStateMachine {
    type SnapshotBuilder = MonSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MonResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut b = Batch::default();
        let mut new_epochs = Vec::new();
        for e in entries {
            self.applied.last_applied = Some(e.log_id);
            let mut session = None;
            let cmd = match e.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(req) => {
                    match self.applied.sessions.get(&req.client) {
                        Some((seq, answer, _)) if *seq == req.seq => {
                            out.push(answer.clone());
                            continue;
                        }
                        Some((seq, _, _)) if *seq > req.seq => {
                            out.push(Err(proto::MapError::Invalid(format!(
                                "request {} of this client is older than its last ({seq}); not applied",
                                req.seq
                            ))));
                            continue;
                        }
                        _ => {}
                    }
                    session = Some((req.client, req.seq));
                    Some(req.cmd)
                }
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(e.log_id), m);
                    let mons = mons_of(&self.applied.membership);
                    (mons != self.applied.map.mons).then_some(Command::SetMonitors { mons })
                }
            };
            let r = match cmd {
                None => Ok((self.applied.map.epoch, CommandResult::Done)),
                Some(cmd) => match self.applied.map.apply(&cmd) {
                    Ok((next, result)) => {
                        self.applied.map = next;
                        let epoch = self.applied.map.epoch;
                        b.put(Table::Hist, epoch, &cmd);
                        new_epochs.push((epoch, cmd));
                        Ok((epoch, result))
                    }
                    Err(e) => Err(e),
                },
            };
            if let Some((client, seq)) = session {
                let s = &mut self.applied.sessions;
                s.insert(client, (seq, r.clone(), e.log_id.index));
                if s.len() > MAX_SESSIONS {
                    if let Some(oldest) = s.iter().min_by_key(|(_, v)| v.2).map(|(k, _)| *k) {
                        s.remove(&oldest);
                    }
                }
            }
            out.push(r);
        }
        let cur = self.applied.map.epoch;
        if cur > KEEP_HISTORY && !new_epochs.is_empty() {
            b.removes.push((Table::Hist, 0, cur - KEEP_HISTORY));
        }
        b.put(Table::Meta, key::APPLIED, &self.applied);
        self.disk
            .commit(b)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        self.publish(new_epochs);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> MonSnapshotBuilder {
        self.snapshot_seq += 1;
        MonSnapshotBuilder {
            disk: Arc::clone(&self.disk),
            slot: Arc::clone(&self.snapshot),
            applied: self.applied.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let applied: Applied = unseal_applied(&data).map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                format!("received snapshot is damaged: {e}"),
            )
        })?;
        if applied.map.fsid != self.fsid {
            return Err(io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                format!(
                    "received a snapshot of cluster {} but this monitor belongs to {}",
                    proto::uuid_hex(applied.map.fsid),
                    proto::uuid_hex(self.fsid)
                ),
            ));
        }
        let mut b = Batch::default();
        b.put(Table::Meta, key::APPLIED, &applied);
        b.put(Table::Meta, key::SNAPSHOT, &(meta.clone(), data.clone()));
        // History older than the snapshot no longer leads to its map.
        b.removes.push((Table::Hist, 0, u64::MAX));
        self.disk
            .commit(b)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        self.applied = applied;
        *net::sync::lock(&self.snapshot) = Some((meta.clone(), data));
        net::sync::lock(&self.published.history).clear();
        self.publish(Vec::new());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let slot = net::sync::lock(&self.snapshot);
        Ok(slot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

pub struct MonSnapshotBuilder {
    disk: Arc<dyn Disk>,
    slot: SnapshotSlot,
    applied: Applied,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for MonSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = seal(&self.applied);
        let last = self.applied.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.applied.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                last.map(|l| l.leader_id.term).unwrap_or(0),
                last.map(|l| l.index).unwrap_or(0),
                self.seq
            ),
        };
        let mut b = Batch::default();
        b.put(Table::Meta, key::SNAPSHOT, &(meta.clone(), data.clone()));
        self.disk.commit(b).map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        })?;
        *net::sync::lock(&self.slot) = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Creates the identity record; used by `mkfs`.
pub fn node_of(id: &Identity) -> (NodeId, MonNode) {
    (
        crate::raft::node_id(&id.name),
        MonNode {
            name: id.name.clone(),
            addr: id.addr.clone(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            name: "a".into(),
            addr: "127.0.0.1:1".into(),
            fsid: 5,
            initial: vec![],
        }
    }

    #[test]
    fn open_refuses_damaged_records_and_foreign_state() {
        let disk = MemDisk::default();
        format(&disk, &identity()).unwrap();
        let opened = open(Arc::new(disk.clone())).unwrap();
        assert_eq!(opened.identity.name, "a");
        assert_eq!(opened.applied.map.fsid, 5);

        // A flipped bit in the vote.
        let mut b = Batch::default();
        b.put(Table::Meta, key::VOTE, &Vote::new(3, 1));
        disk.commit(b).unwrap();
        open(Arc::new(disk.clone())).unwrap();
        {
            let mut t = disk.0.lock().unwrap();
            let v = t.meta.get_mut(&key::VOTE).unwrap();
            let last = v.len() - 1;
            v[last] ^= 1;
        }
        let e = open(Arc::new(disk.clone())).err().unwrap();
        assert!(e.contains("vote") && e.contains("damaged"), "{e}");

        // A state machine of another cluster.
        let disk = MemDisk::default();
        format(&disk, &identity()).unwrap();
        let mut b = Batch::default();
        let foreign = Applied {
            last_applied: None,
            membership: StoredMembership::default(),
            map: ClusterMap::new(6, vec![]),
            sessions: BTreeMap::new(),
        };
        b.put(Table::Meta, key::APPLIED, &foreign);
        disk.commit(b).unwrap();
        let e = open(Arc::new(disk)).err().unwrap();
        assert!(e.contains("another cluster"), "{e}");

        // No identity: not a monitor store.
        let e = open(Arc::new(MemDisk::default())).err().unwrap();
        assert!(e.contains("identity"), "{e}");
    }

    #[test]
    fn a_format_2_store_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("atlant-mon-v2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let db = redb::Database::create(RedbDisk::path_in(&dir)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let def: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("maps");
                let mut t = txn.open_table(def).unwrap();
                t.insert(1, [1u8, 2, 3].as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let e = RedbDisk::open(&dir).unwrap().load().err().unwrap();
        assert!(e.contains("format 2"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
