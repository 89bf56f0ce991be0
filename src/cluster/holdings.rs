//! What each node tells its peers with every pong besides its profile: the models it holds
//! (whole, or windows of layers in partial files) and the links it measured to its own peers, so
//! that every node knows where bytes are and how fast every pair of nodes talks (not only its
//! own links).

use super::{ClusterNode, PeerStatus};
use crate::profile::Profile;
use crate::store::Store;
use serde::{Deserialize, Serialize};

/// Most models a pong may list (a models dir with more is listed in part).
pub const MAX_HELD: usize = 256;
/// Most links a pong may list.
pub const MAX_LINKS: usize = 256;
/// Longest model or node name kept from a pong.
const MAX_NAME: usize = 256;
/// Most windows kept for one held model.
const MAX_WINDOWS: usize = 64;

/// A model a node holds: the whole file (it can send any window), or some layer windows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub model: String,
    /// Bytes of the whole file.
    pub size: u64,
    /// The whole single-file model is on that node.
    pub whole: bool,
    /// Layer windows `[begin, end)` present in a partial file (empty when whole).
    #[serde(default)]
    pub windows: Vec<(u32, u32)>,
}

/// What a node measured to one of its peers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkFigure {
    pub node_id: String,
    pub name: String,
    pub rtt_ms: Option<f64>,
    /// Bytes per second.
    pub bandwidth: Option<f64>,
}

/// A pong: the profile (its fields at the top level, as older nodes sent it alone), what the
/// node holds and what it measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pong {
    #[serde(flatten)]
    pub profile: Profile,
    #[serde(default)]
    pub held: Vec<Held>,
    #[serde(default)]
    pub links: Vec<LinkFigure>,
}

impl Pong {
    /// Drops what is past the caps (a hostile peer's pong sizes nothing here beyond them).
    pub fn bounded(mut self) -> Pong {
        self.held.truncate(MAX_HELD);
        self.links.truncate(MAX_LINKS);
        self.held.retain(|h| h.model.len() <= MAX_NAME && h.windows.len() <= MAX_WINDOWS);
        self.links.retain(|l| l.name.len() <= MAX_NAME && l.node_id.len() <= MAX_NAME);
        self
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pong_is_a_profile_with_extras_and_a_bare_profile_still_reads() {
        let p = crate::profile::snapshot(Some(1 << 30), Some(10.0));
        let bare = serde_json::to_vec(&p).unwrap();
        let pong: Pong = serde_json::from_slice(&bare).unwrap();
        assert!(pong.held.is_empty() && pong.links.is_empty());
        let full = Pong {
            profile: p.clone(),
            held: vec![Held { model: "m".into(), size: 9, whole: false, windows: vec![(0, 4)] }],
            links: vec![LinkFigure { node_id: "x".into(), name: "b".into(), rtt_ms: Some(0.2), bandwidth: None }],
        };
        let b = serde_json::to_vec(&full).unwrap();
        // older nodes read a pong as a profile
        let _: Profile = serde_json::from_slice(&b).unwrap();
        let back: Pong = serde_json::from_slice(&b).unwrap();
        assert_eq!((back.held, back.links), (full.held, full.links));
    }

    #[test]
    fn hostile_pongs_are_cut_to_the_caps() {
        let p = crate::profile::snapshot(None, Some(1.0));
        let held = vec![Held { model: "m".into(), size: 1, whole: true, windows: vec![] }; MAX_HELD + 10];
        let links = vec![LinkFigure { node_id: "x".into(), name: "n".into(), rtt_ms: None, bandwidth: None }; 999];
        let b = Pong { profile: p, held, links }.bounded();
        assert_eq!((b.held.len(), b.links.len()), (MAX_HELD, MAX_LINKS));
        let long = Held { model: "x".repeat(MAX_NAME + 1), size: 1, whole: true, windows: vec![] };
        let many = Held { model: "m".into(), size: 1, whole: false, windows: vec![(0, 1); MAX_WINDOWS + 1] };
        let ok = Held { model: "m".into(), size: 1, whole: true, windows: vec![] };
        let p = crate::profile::snapshot(None, Some(1.0));
        let b = Pong { profile: p, held: vec![long, many, ok.clone()], links: vec![] }.bounded();
        assert_eq!(b.held, vec![ok]);
    }
}
