//! The monitor group's Raft: types, runtime and network, on openraft 0.9.
//!
//! Why openraft 0.9.25 (pinned exactly) and not a 0.10 alpha: 0.9 is the stable line, and it
//! already lets us replace everything that makes a run nondeterministic: the async runtime
//! (`AsyncRuntime`: spawn, sleep, `Instant`, and the RNG behind election timeouts) is a type
//! parameter, and every channel it uses is executor-agnostic. The simulator (`sim` module)
//! runs several monitors on one current-thread tokio runtime with a paused clock, a seeded
//! runtime RNG and [`MonRuntime`]'s seeded election RNG, so one seed replays one history.
//!
//! The log entries carry map [`Command`]s; the state machine (`log::MonStateMachine`)
//! applies them with the same pure `ClusterMap::apply` the single monitor used. A membership
//! entry becomes a `SetMonitors` command, so the map always lists the committed monitor group.

use futures::future::BoxFuture;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AsyncRuntime, TokioInstant};
use proto::{CommandResult, Epoch, MapError};
use rand08::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

pub type NodeId = u64;

/// A monitor as Raft knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonNode {
    pub name: String,
    pub addr: String,
}

impl fmt::Display for MonNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// What applying one log entry produced.
pub type MonResponse = Result<(Epoch, CommandResult), MapError>;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = proto::msg::MonRequest,
        R = MonResponse,
        NodeId = NodeId,
        Node = MonNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = MonRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, MonNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MonNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MonNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// A monitor's Raft node id, derived from its name (names are unique in a cluster, and the
/// id must be known before the monitor has ever talked to the group).
pub fn node_id(name: &str) -> NodeId {
    // FNV-1a 64; 0 is avoided so an id is never the "no node" value of a log id.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// A monitor snapshots its state every this many log entries.
pub const SNAPSHOT_EVERY: u64 = 500;

/// Timing of the monitor group (elections settle within a few seconds of a leader's
/// death), with a snapshot every `snapshot_every` entries.
pub fn config_with(cluster: &str, snapshot_every: u64) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster.to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        install_snapshot_timeout: 2000,
        // Snapshots bound the log: one every `snapshot_every` entries, keeping a fifth of
        // that behind it for peers that are only a little behind.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every / 5,
        purge_batch_size: 64,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Runtime: tokio, with an election RNG that a simulation can seed.

thread_local! {
    static RNG: RefCell<rand08::rngs::StdRng> = RefCell::new(rand08::rngs::StdRng::from_entropy());
}

/// Seeds this thread's election RNG (the simulator does this once per run).
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = rand08::rngs::StdRng::seed_from_u64(seed));
}

/// A handle on the thread's election RNG.
pub struct ThreadRng;

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        RNG.with(|r| r.borrow_mut().next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        RNG.with(|r| r.borrow_mut().next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        RNG.with(|r| r.borrow_mut().fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        RNG.with(|r| r.borrow_mut().try_fill_bytes(dest))
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct MonRuntime;

impl AsyncRuntime for MonRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: Send + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + Send> = tokio::time::Timeout<T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: Send> = openraft::async_runtime::TokioOneShotSender<T>;
    type OneshotReceiver<T: Send> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + Send + 'static,
        T::Output: Send + 'static,
    {
        net::rt::spawn(future)
    }
    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }
    fn timeout<R, F: Future<Output = R> + Send>(d: Duration, f: F) -> Self::Timeout<R, F> {
        tokio::time::timeout(d, f)
    }
    fn timeout_at<R, F: Future<Output = R> + Send>(
        deadline: Self::Instant,
        f: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, f)
    }
    fn is_panic(e: &Self::JoinError) -> bool {
        e.is_panic()
    }
    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }
    fn oneshot<T: Send>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (openraft::async_runtime::TokioOneShotSender(tx), rx)
    }
}

// ---------------------------------------------------------------------------------------
// Network: Raft RPCs as one enum, carried by a `RaftTransport` (TCP, or the simulator's).

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

/// Serves one Raft RPC on the local node.
pub async fn handle_rpc(raft: &Raft, rpc: RaftRpc) -> RaftReply {
    match rpc {
        RaftRpc::Append(r) => RaftReply::Append(raft.append_entries(r).await),
        RaftRpc::Vote(r) => RaftReply::Vote(raft.vote(r).await),
        RaftRpc::Snapshot(r) => RaftReply::Snapshot(raft.install_snapshot(r).await),
    }
}

/// Delivers Raft RPCs to other monitors. An error is "unreachable": the RPC may or may not
/// have been delivered.
pub trait RaftTransport: Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        node: &MonNode,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RaftReply, String>>;
}

pub struct Network {
    pub transport: Arc<dyn RaftTransport>,
}

pub struct Peer {
    transport: Arc<dyn RaftTransport>,
    target: NodeId,
    node: MonNode,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;
    async fn new_client(&mut self, target: NodeId, node: &MonNode) -> Peer {
        Peer {
            transport: Arc::clone(&self.transport),
            target,
            node: node.clone(),
        }
    }
}

#[derive(Debug)]
struct Unreachable(String);
impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Unreachable {}

type RpcResult<T, E> = Result<T, RPCError<NodeId, MonNode, RaftError<NodeId, E>>>;

impl Peer {
    async fn send(&self, rpc: RaftRpc, option: &RPCOption) -> Result<RaftReply, NetworkError> {
        self.transport
            .call(self.target, &self.node, rpc, option.hard_ttl())
            .await
            .map_err(|e| NetworkError::new(&Unreachable(e)))
    }

    #[allow(clippy::result_large_err)] // openraft's error type, returned as openraft wants it
    fn remote<T, E: std::error::Error>(
        &self,
        r: Result<T, RaftError<NodeId, E>>,
    ) -> RpcResult<T, E> {
        r.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

fn mismatched<E: std::error::Error>(
    got: &RaftReply,
) -> RPCError<NodeId, MonNode, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&Unreachable(format!(
        "mismatched raft reply {got:?}"
    ))))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        match self.send(RaftRpc::Append(rpc), &option).await? {
            RaftReply::Append(r) => self.remote(r),
            other => Err(mismatched(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.send(RaftRpc::Snapshot(rpc), &option).await? {
            RaftReply::Snapshot(r) => self.remote(r),
            other => Err(mismatched(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        match self.send(RaftRpc::Vote(rpc), &option).await? {
            RaftReply::Vote(r) => self.remote(r),
            other => Err(mismatched(&other)),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Retry an unreachable peer soon: a monitor restart should rejoin within a second.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("a"), node_id("a"));
        assert_ne!(node_id("a"), node_id("b"));
        assert_ne!(node_id(""), 0);
    }
}
