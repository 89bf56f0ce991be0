//! The cluster runtime: a node's peer side. It accepts and makes peer connections, keeps the
//! list of nodes it can reach (with measured round-trip times), hosts stages for coordinators,
//! and coordinates pipelines whose stages run on other nodes ([`ClusterChain`]).

mod coordinator;
mod dispatch;
mod heartbeat;
pub mod holdings;
mod host;
pub mod limits;
pub mod links;
mod pipe_impl;
mod progress;
mod weights;

pub use coordinator::{ClusterChain, Origin, StagePlacement};
pub use host::HostedStage;
pub use weights::{sources_for, PeerSource};

use crate::pipeline::StageFault;
use crate::profile::{self, Profile};
use crate::store::Store;
use crate::transport::{self, Conn, Endpoint, Hello, Message, Security, TransportError, PROTOCOL_VERSION};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How often peers are pinged, and after how long without an answer a peer is dropped.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
pub const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// A disturbed decode probe is repeated this many times, waiting longer each time.
const PROBE_ATTEMPTS: u32 = 6;
const PROBE_RETRY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub namespace: String,
    pub node_name: String,
    /// Where the peer listener binds.
    pub peer_bind: std::net::SocketAddr,
    /// Static peers to connect to (host:port).
    pub peers: Vec<String>,
    /// Caps the memory this node offers.
    pub memory_limit: Option<u64>,
    /// A known decode speed (skips the measurement), e.g. from EXO_DECODE_GBPS.
    pub decode_gbps: Option<f64>,
    /// Where the decode probe model and its result are cached.
    pub cache_dir: std::path::PathBuf,
    pub threads: i32,
    /// Announce and browse with mDNS.
    pub discovery: bool,
    /// The address peers should use for this node, when it differs from the bind address
    /// (NAT, a relay, a wildcard bind on a multi-homed host).
    pub advertise: Option<String>,
    /// The cluster secret and this node's static key (peers without the secret are refused).
    pub security: Security,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    pub node_id: String,
    pub name: String,
    pub address: String,
    /// Measured on the peer connection.
    pub rtt_ms: Option<f64>,
    /// Measured with a timed 1 MiB transfer, bytes per second.
    pub bandwidth: Option<f64>,
    pub last_seen_ms_ago: u64,
    pub profile: Option<Profile>,
    /// Models it holds, as its last pong said.
    pub held: Vec<holdings::Held>,
    /// The links it measured to its own peers, as its last pong said.
    pub links: Vec<holdings::LinkFigure>,
    /// First 8 bytes of the node's Noise static key, in hex (its identity on the wire).
    pub key: String,
}

/// Who waits for the tokens (or the fault) of a batch, by request id.
type TokenWaiter = oneshot::Sender<Result<Answer, StageFault>>;

/// What the last stage answers a batch with.
#[derive(Debug)]
pub(super) enum Answer {
    Tokens(Vec<i32>),
    /// To an embedding batch (`Kind::EmbedForward`).
    Embedding(Vec<f32>),
}

struct PeerState {
    hello: Hello,
    conn: Conn,
    last_seen: Instant,
    rtt: Option<Duration>,
    bandwidth: Option<f64>,
    profile: Option<Profile>,
    held: Vec<holdings::Held>,
    links: Vec<holdings::LinkFigure>,
}

impl PeerState {
    fn alive(&self) -> bool {
        self.last_seen.elapsed() < PEER_TIMEOUT && !self.conn.is_closed()
    }
}

/// How long a goodbye waits for one peer's connection to take it.
const BYE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct ClusterNode {
    pub hello: Hello,
    pub store: Store,
    /// Hello, keys, incoming queue and byte budget for every connection.
    endpoint: Endpoint,
    /// Inbound connections per remote address.
    accepted: Arc<limits::PerAddress>,
    /// Inbound connections still in their handshake ([`limits::Pending`]).
    pending: limits::Pending,
    /// Outgoing connections by peer address.
    conns: tokio::sync::Mutex<HashMap<String, Conn>>,
    /// Data bytes sent on connections since replaced in `conns`.
    retired_data_sent: std::sync::atomic::AtomicU64,
    /// CPU threads for the stages this node hosts (`--threads`).
    pub(crate) threads: i32,
    peers: Mutex<HashMap<String, PeerState>>,
    /// Nodes that said goodbye: their late messages do not bring them back (a node that starts
    /// again has a new id).
    departed: Mutex<std::collections::HashSet<String>>,
    /// Names seen on more than one node (warned about once).
    duplicates_warned: Mutex<std::collections::HashSet<String>>,
    waiters: Mutex<HashMap<u64, TokenWaiter>>,
    next_request: AtomicU64,
    host: host::Host,
    /// The last profile snapshot (what pings answer with).
    profile: Mutex<Profile>,
    /// The decode probe's figure (or EXO_DECODE_GBPS); the profile refines it.
    probe: Mutex<Option<f64>>,
    /// What this node's store holds (what its pongs tell).
    held: Mutex<Vec<holdings::Held>>,
    memory_limit: Option<u64>,
    discovery: Mutex<Option<crate::discovery::Discovery>>,
    /// The node's own tasks (accepting, dispatching, heartbeats, discovery, the decode probe):
    /// they hold the node weakly and are stopped when it drops, so its peer port is released.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}

impl ClusterNode {
    /// Binds the peer port, starts accepting peers and connecting to the static ones.
    pub async fn start(cfg: NodeConfig, store: Store) -> Result<Arc<ClusterNode>, TransportError> {
        let listener = tokio::net::TcpListener::bind(cfg.peer_bind).await?;
        let addr = listener.local_addr()?;
        let node_id = format!("{:016x}", random_u64());
        let hello = Hello {
            version: PROTOCOL_VERSION,
            namespace: cfg.namespace.clone(),
            node_id: node_id.clone(),
            node_name: cfg.node_name.clone(),
            peer_addr: cfg.advertise.clone().unwrap_or_else(|| advertised(addr)),
        };
        let (tx, rx) = mpsc::channel(1024);
        let node = Arc::new(ClusterNode {
            endpoint: Endpoint::new(hello.clone(), cfg.security.clone(), tx),
            accepted: Arc::new(limits::PerAddress::new(limits::MAX_CONNS_PER_ADDRESS)),
            pending: limits::Pending::new(limits::MAX_PENDING_PER_ADDRESS, limits::MAX_PENDING),
            hello,
            store,
            conns: tokio::sync::Mutex::new(HashMap::new()),
            retired_data_sent: Default::default(),
            threads: cfg.threads,
            peers: Mutex::new(HashMap::new()),
            departed: Mutex::default(),
            duplicates_warned: Mutex::default(),
            waiters: Mutex::new(HashMap::new()),
            // request ids unique across nodes: a random high half
            next_request: AtomicU64::new(random_u64() & 0xFFFF_FFFF_0000_0000),
            host: host::Host::default(),
            profile: Mutex::new(profile::snapshot(cfg.memory_limit, cfg.decode_gbps)),
            probe: Mutex::new(cfg.decode_gbps),
            held: Mutex::new(vec![]),
            memory_limit: cfg.memory_limit,
            discovery: Mutex::new(None),
            tasks: Mutex::default(),
        });
        let own = |t: tokio::task::JoinHandle<()>| node.tasks.lock().unwrap().push(t.abort_handle());
        if cfg.discovery {
            // mDNS hands over addresses from its own thread; connecting happens here
            let (found_tx, mut found_rx) = mpsc::unbounded_channel::<String>();
            match crate::discovery::Discovery::start(&node.hello, cfg.security.key_id(), addr.port(), move |a| {
                let _ = found_tx.send(a);
            }) {
                Ok(d) => *node.discovery.lock().unwrap() = Some(d),
                Err(e) => tracing::warn!("{e}; only --peers will be used"),
            }
            let weak = Arc::downgrade(&node);
            own(tokio::spawn(async move {
                while let Some(a) = found_rx.recv().await {
                    let Some(n) = weak.upgrade() else { return };
                    if let Err(e) = n.conn(&a).await {
                        tracing::debug!(addr = %a, "discovered peer not reachable: {e}");
                    }
                }
            }));
        }
        if cfg.decode_gbps.is_none() {
            // measured in the background: the node serves meanwhile; a disturbed measurement
            // is used for now and repeated later
            let weak = Arc::downgrade(&node);
            let (dir, threads) = (cfg.cache_dir.clone(), cfg.threads);
            own(tokio::spawn(async move {
                for attempt in 0..PROBE_ATTEMPTS {
                    let (d, t) = (dir.clone(), threads);
                    match tokio::task::spawn_blocking(move || profile::measure_decode_gbps(&d, t)).await {
                        Ok(Ok(p)) => {
                            tracing::info!(
                                decode_gbps = format!("{:.1}", p.gbps),
                                kept = p.cached,
                                "measured decode speed"
                            );
                            let Some(n) = weak.upgrade() else { return };
                            *n.probe.lock().unwrap() = Some(p.gbps);
                            n.profile();
                            if p.cached {
                                return;
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::warn!("cannot measure the decode speed: {e}");
                            return;
                        }
                        Err(_) => return,
                    }
                    tokio::time::sleep(PROBE_RETRY * (attempt + 1)).await;
                }
            }));
        }
        own(tokio::spawn(accept_loop(Arc::downgrade(&node), listener)));
        own(tokio::spawn(dispatch::dispatch(Arc::downgrade(&node), rx)));
        own(tokio::spawn(heartbeat::heartbeat(Arc::downgrade(&node), cfg.peers.clone())));
        tracing::info!(peer_addr = %node.hello.peer_addr, name = %node.hello.node_name, key_id = %cfg.security.key_id(), "peer listener up");
        if cfg.security.plaintext {
            tracing::warn!("EXO_UNSAFE_PLAINTEXT_PEERS: peer traffic is NOT encrypted (benchmarks only)");
        }
        Ok(node)
    }

    /// This node's profile, memory refreshed.
    pub fn profile(&self) -> Profile {
        let probe = *self.probe.lock().unwrap();
        let p = profile::snapshot(self.memory_limit, profile::refined_decode_gbps(probe));
        *self.profile.lock().unwrap() = p.clone();
        p
    }

    /// The cluster's key id (public: mDNS announces it).
    pub fn key_id(&self) -> crate::secret::KeyId {
        self.endpoint.security.key_id()
    }

    /// First 8 bytes of this node's static key, in hex.
    pub fn key_fingerprint(&self) -> String {
        self.endpoint.security.keys.fingerprint()
    }

    pub fn peer_addr(&self) -> &str {
        &self.hello.peer_addr
    }

    /// Inference data (batches, sampled tokens) this node has sent to peers, headers included.
    pub async fn data_bytes_sent(&self) -> u64 {
        let open: u64 = self.conns.lock().await.values().map(Conn::data_bytes_sent).sum();
        open + self.retired_data_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Inference data sent on the open connection to each peer address (since it opened).
    pub async fn data_bytes_by_addr(&self) -> Vec<(String, u64)> {
        self.conns.lock().await.iter().map(|(a, c)| (a.clone(), c.data_bytes_sent())).collect()
    }

    /// The connection to `addr`, opened (with the handshake) if needed.
    pub async fn conn(&self, addr: &str) -> Result<Conn, TransportError> {
        if let Some(c) = self.conns.lock().await.get(addr) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        // connect without holding the map: a peer that does not answer must not stall the
        // traffic to the others
        let c = transport::connect(addr, &self.endpoint).await?;
        let mut conns = self.conns.lock().await;
        if let Some(existing) = conns.get(addr) {
            if !existing.is_closed() {
                return Ok(existing.clone()); // someone else connected meanwhile
            }
        }
        if let Some(old) = conns.insert(addr.to_string(), c.clone()) {
            self.retired_data_sent.fetch_add(old.data_bytes_sent(), std::sync::atomic::Ordering::Relaxed);
        }
        drop(conns);
        self.note_peer(&c);
        Ok(c)
    }

    fn note_peer(&self, c: &Conn) {
        let h = c.peer().clone();
        if h.node_id == self.hello.node_id || self.departed.lock().unwrap().contains(&h.node_id) {
            return;
        }
        let mut peers = self.peers.lock().unwrap();
        let e = peers.entry(h.node_id.clone()).or_insert(PeerState {
            hello: h,
            conn: c.clone(),
            last_seen: Instant::now(),
            rtt: None,
            bandwidth: None,
            profile: None,
            held: vec![],
            links: vec![],
        });
        e.conn = c.clone();
        e.last_seen = Instant::now();
    }

    /// Tells every peer this node is leaving (they drop it at once instead of timing out).
    pub async fn goodbye(&self) {
        let conns: Vec<Conn> = self.peers.lock().unwrap().values().map(|p| p.conn.clone()).collect();
        tracing::info!(peers = conns.len(), hosted_stages = self.host.list().len(), "leaving the cluster");
        // all at once, each bounded: a hung peer (its socket full) must not keep the others
        // from hearing it
        let mut sends = tokio::task::JoinSet::new();
        for c in conns {
            sends.spawn(async move { tokio::time::timeout(BYE_TIMEOUT, c.tell(0, &Message::Bye)).await });
        }
        while sends.join_next().await.is_some() {}
        *self.discovery.lock().unwrap() = None;
    }

    /// Nodes heard from within [`PEER_TIMEOUT`] whose connection is open.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let peers = self.peers.lock().unwrap();
        let mut v: Vec<PeerStatus> = peers
            .values()
            .filter(|p| p.alive())
            .map(|p| PeerStatus {
                node_id: p.hello.node_id.clone(),
                name: p.hello.node_name.clone(),
                address: p.hello.peer_addr.clone(),
                rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1e3),
                bandwidth: p.bandwidth,
                last_seen_ms_ago: p.last_seen.elapsed().as_millis() as u64,
                profile: p.profile.clone(),
                held: p.held.clone(),
                links: p.links.clone(),
                key: p.conn.peer_key(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.node_id.cmp(&b.node_id)));
        self.unique_names(&mut v);
        v
    }

    /// Two nodes with one name cannot be told apart: each of them is shown (and placed) as
    /// `name#<first 6 hex digits of its id>`, with a warning once per name.
    fn unique_names(&self, v: &mut [PeerStatus]) {
        let mut count: HashMap<String, usize> = HashMap::new();
        count.insert(self.hello.node_name.clone(), 1);
        for p in v.iter() {
            *count.entry(p.name.clone()).or_default() += 1;
        }
        for p in v.iter_mut().filter(|p| count[&p.name] > 1) {
            if self.duplicates_warned.lock().unwrap().insert(p.name.clone()) {
                tracing::warn!(name = %p.name, "several nodes are named {:?}: give each its own --node-name; until then they are told apart by id", p.name);
            }
            p.name = format!("{}#{}", p.name, &p.node_id[..6.min(p.node_id.len())]);
        }
    }

    /// The id of the node at peer address `addr`, if it is up.
    pub fn id_at(&self, addr: &str) -> Option<String> {
        if addr == self.hello.peer_addr {
            return Some(self.hello.node_id.clone());
        }
        self.peers
            .lock()
            .unwrap()
            .values()
            .find(|p| p.hello.peer_addr == addr && p.alive())
            .map(|p| p.hello.node_id.clone())
    }

    /// Whether the node with this id is this node or a peer that is up.
    pub fn alive_id(&self, id: &str) -> bool {
        id == self.hello.node_id || self.peers.lock().unwrap().get(id).is_some_and(PeerState::alive)
    }

    /// Stages this node runs for coordinators.
    pub fn hosted(&self) -> Vec<HostedStage> {
        self.host.list()
    }

    /// Waits until this node hosts no stages (their coordinators moved them away after its
    /// goodbye), at most `limit`.
    pub async fn drain(&self, limit: Duration) {
        let t = Instant::now();
        while !self.host.is_empty() && t.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the node at peer address `addr` is up: this node, or a peer that answers its
    /// heartbeats on an open connection. A node that died or hangs is down within
    /// [`PEER_TIMEOUT`] (at once when its connection closes).
    pub fn alive(&self, addr: &str) -> bool {
        addr == self.hello.peer_addr
            || self.peers.lock().unwrap().values().any(|p| p.hello.peer_addr == addr && p.alive())
    }

    /// The peer address of a node by name (as `peers` shows it) or id (this node included).
    pub fn address_of(&self, name: &str) -> Option<String> {
        if name == self.hello.node_name || name == self.hello.node_id {
            return Some(self.hello.peer_addr.clone());
        }
        self.peers().into_iter().find(|p| p.name == name || p.node_id == name).map(|p| p.address)
    }

    fn new_request(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    fn wait_tokens(&self, request: u64) -> oneshot::Receiver<Result<Answer, StageFault>> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(request, tx);
        rx
    }

    fn forget(&self, request: u64) {
        self.waiters.lock().unwrap().remove(&request);
    }
}

fn advertised(addr: std::net::SocketAddr) -> String {
    // a wildcard bind is reached on loopback by co-located peers; LAN peers learn the address
    // they connected to, and discovery announces the interface addresses
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

async fn accept_loop(node: std::sync::Weak<ClusterNode>, listener: tokio::net::TcpListener) {
    let mut backoff = std::time::Duration::ZERO;
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => {
                backoff = std::time::Duration::ZERO;
                x
            }
            Err(e) => {
                // out of file descriptors and the like: retrying at once would spin a core
                backoff = (backoff * 2).clamp(std::time::Duration::from_millis(10), std::time::Duration::from_secs(1));
                if backoff == std::time::Duration::from_millis(10) {
                    tracing::warn!(error = %e, "cannot accept peer connections; backing off");
                }
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Some(n) = node.upgrade() else { return };
        // handshaking: a pending place (the oldest pending one goes when there are too many);
        // the per-address slot only once the peer proved it holds the cluster's key
        let ticket = n.pending.admit(from.ip());
        let endpoint = n.endpoint.clone();
        let weak = node.clone();
        drop(n);
        tokio::spawn(async move {
            let r = tokio::select! {
                r = transport::accept(stream, &endpoint, ()) => r,
                _ = ticket.evicted() => {
                    tracing::debug!(%from, "closed a handshaking peer connection: too many pending");
                    return;
                }
            };
            drop(ticket);
            match r {
                Ok(c) => {
                    let Some(n) = weak.upgrade() else { return };
                    let Some(slot) = n.accepted.clone().take(from.ip()) else {
                        tracing::warn!(%from, "closing a peer connection: {} connections from this address already", n.accepted.max);
                        c.close();
                        return;
                    };
                    n.note_peer(&c);
                    // the slot lives as long as the connection
                    tokio::spawn(async move {
                        c.closed().await;
                        drop(slot);
                    });
                }
                Err(e) => tracing::warn!(%from, "refused a peer connection: {e}"),
            }
        });
    }
}
