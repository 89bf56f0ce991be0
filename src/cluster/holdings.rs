//! What each node tells its peers with every pong besides its profile: the models it holds
//! (whole, or windows of layers in partial files) and the links it measured to its own peers, so
//! that every node knows where bytes are and how fast every pair of nodes talks (not only its
//! own links).

use super::{ClusterNode, PeerStatus};
use crate::store::Store;
pub use crate::transport::{Held, LinkFigure, Pong, MAX_HELD, MAX_LINKS};

/// The models this node's store holds: whole single-file models, then partial windows.
/// Blocking (scans the models dirs).
pub fn scan(store: &Store) -> Vec<Held> {
    let mut v: Vec<Held> = store
        .local_models()
        .into_iter()
        .filter(|m| m.paths.len() == 1)
        .map(|m| Held { model: m.name, size: m.size, whole: true, windows: vec![] })
        .collect();
    for p in store.partials() {
        // a partial assembled whole and verified can send windows like the whole file
        let whole = p.verified_whole();
        let s = p.sidecar;
        if (whole || !s.windows.is_empty()) && !v.iter().any(|h| h.model == s.model && h.whole) {
            let windows = if whole { vec![] } else { s.windows };
            v.push(Held { model: s.model, size: s.size, whole, windows });
        }
    }
    v.dedup_by(|a, b| a.model == b.model && a.whole && b.whole);
    v.truncate(MAX_HELD);
    v
}

/// The links this node measured, as it shares them.
pub fn figures(peers: &[PeerStatus]) -> Vec<LinkFigure> {
    peers
        .iter()
        .take(MAX_LINKS)
        .map(|p| LinkFigure {
            node_id: p.node_id.clone(),
            name: p.name.clone(),
            rtt_ms: p.rtt_ms,
            bandwidth: p.bandwidth,
        })
        .collect()
}

impl ClusterNode {
    /// What this node holds (refreshed with the profile, and after every window fetch).
    pub fn held_here(&self) -> Vec<Held> {
        self.held.lock().unwrap().clone()
    }

    /// Rescans the store (blocking).
    pub fn refresh_held(&self) -> Vec<Held> {
        let v = scan(&self.store);
        *self.held.lock().unwrap() = v.clone();
        v
    }

    /// Nodes (this one included, first) that hold `model` of `size` bytes whole: name and peer
    /// address.
    pub fn holders(&self, model: &str, size: Option<u64>) -> Vec<(String, String)> {
        let has = |h: &[Held]| h.iter().any(|h| h.whole && h.model == model && size.is_none_or(|s| s == h.size));
        let mut v = Vec::new();
        if has(&self.held_here()) {
            v.push((self.hello.node_name.clone(), self.hello.peer_addr.clone()));
        }
        v.extend(self.peers().into_iter().filter(|p| has(&p.held)).map(|p| (p.name, p.address)));
        v
    }

    /// The pong this node answers pings with.
    pub(super) fn pong(&self) -> Pong {
        // one lock at a time
        let profile = self.profile.lock().unwrap().clone();
        Pong { profile, held: self.held_here(), links: figures(&self.peers()) }
    }
}
