//! Links between every pair of nodes, from the figures each node measured itself (this node's
//! own round trips and bandwidths, and each peer's as its pongs share them): what placement
//! prices hops with and what `/cluster` shows.

use super::PeerStatus;
use serde::{Deserialize, Serialize};

/// Longest round trip taken from a figure; a larger one is a peer's nonsense.
const MAX_RTT_MS: f64 = 600_000.0;

/// One direction of one pair as some node measured it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub from: String,
    pub to: String,
    pub rtt_ms: Option<f64>,
    /// Bytes per second from `from` to `to` (a timed transfer in that direction).
    #[serde(rename = "bandwidth_bytes_per_second")]
    pub bandwidth: Option<f64>,
    /// The node whose figure this is: `from` (it measured its own link), else `to` (the
    /// reverse figure stands in for a direction nobody measured).
    pub measured_by: String,
}

fn rtt(x: Option<f64>) -> Option<f64> {
    x.filter(|r| r.is_finite() && (0.0..=MAX_RTT_MS).contains(r))
}

fn bandwidth(x: Option<f64>) -> Option<f64> {
    x.filter(|b| b.is_finite() && *b > 0.0)
}

/// What node `by` measured to node `to` (node ids), checked; `None` without a figure.
fn figure(here_id: &str, peers: &[PeerStatus], by: &str, to: &str) -> Option<(Option<f64>, Option<f64>)> {
    let f = if by == here_id {
        let p = peers.iter().find(|p| p.node_id == to)?;
        (rtt(p.rtt_ms), bandwidth(p.bandwidth))
    } else {
        let l = peers.iter().find(|p| p.node_id == by)?.links.iter().find(|l| l.node_id == to)?;
        (rtt(l.rtt_ms), bandwidth(l.bandwidth))
    };
    (f.0.is_some() || f.1.is_some()).then_some(f)
}

/// Every direction between this node and its peers (and between peers) that some node
/// measured: `a → b` from a's own figure for b, else from b's figure for a. Nodes are named as
/// this node knows them; figures about nodes it does not see are left out.
pub fn pairwise(here_id: &str, here: &str, peers: &[PeerStatus]) -> Vec<Measured> {
    let mut nodes = vec![(here_id, here)];
    nodes.extend(peers.iter().map(|p| (p.node_id.as_str(), p.name.as_str())));
    let mut out = Vec::new();
    for &(a_id, a) in &nodes {
        for &(b_id, b) in &nodes {
            if a_id == b_id {
                continue;
            }
            let (by, f) = match figure(here_id, peers, a_id, b_id) {
                Some(f) => (a, f),
                None => match figure(here_id, peers, b_id, a_id) {
                    Some(f) => (b, f),
                    None => continue,
                },
            };
            out.push(Measured {
                from: a.to_string(),
                to: b.to_string(),
                rtt_ms: f.0,
                bandwidth: f.1,
                measured_by: by.to_string(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::holdings::LinkFigure;

    fn peer(id: &str, name: &str, rtt: Option<f64>, bw: Option<f64>, links: Vec<LinkFigure>) -> PeerStatus {
        PeerStatus {
            node_id: id.into(),
            name: name.into(),
            address: format!("{name}:1"),
            rtt_ms: rtt,
            bandwidth: bw,
            last_seen_ms_ago: 0,
            profile: None,
            held: vec![],
            links,
            key: String::new(),
        }
    }

    fn fig(id: &str, name: &str, rtt: Option<f64>, bw: Option<f64>) -> LinkFigure {
        LinkFigure { node_id: id.into(), name: name.into(), rtt_ms: rtt, bandwidth: bw }
    }

    #[test]
    fn each_direction_from_its_own_measurer_else_the_reverse() {
        // here (h) measured b; b measured h and c; c measured nothing; d (unknown) is ignored
        let peers = vec![
            peer(
                "B",
                "b",
                Some(1.0),
                Some(100.0),
                vec![
                    fig("H", "h", Some(2.0), Some(200.0)),
                    fig("C", "c", Some(3.0), None),
                    fig("D", "d", Some(9.0), None),
                ],
            ),
            peer("C", "c", None, None, vec![]),
        ];
        let v = pairwise("H", "h", &peers);
        let get = |a: &str, b: &str| v.iter().find(|m| m.from == a && m.to == b).cloned();
        let m = get("h", "b").unwrap();
        assert_eq!((m.rtt_ms, m.bandwidth, m.measured_by.as_str()), (Some(1.0), Some(100.0), "h"));
        let m = get("b", "h").unwrap();
        assert_eq!((m.rtt_ms, m.bandwidth, m.measured_by.as_str()), (Some(2.0), Some(200.0), "b"));
        let m = get("b", "c").unwrap();
        assert_eq!((m.rtt_ms, m.bandwidth, m.measured_by.as_str()), (Some(3.0), None, "b"));
        // nobody measured c → b: b's figure stands in
        assert_eq!(get("c", "b").unwrap().measured_by, "b");
        // h and c: no figure either way
        assert!(get("h", "c").is_none() && get("c", "h").is_none());
        assert_eq!(v.len(), 4);
        assert!(v.iter().all(|m| m.from != "d" && m.to != "d"));
    }

    #[test]
    fn hostile_figures_are_dropped() {
        let peers = vec![peer(
            "B",
            "b",
            None,
            None,
            vec![fig("H", "h", Some(-1.0), Some(0.0)), fig("H", "h", Some(1e12), Some(-5.0))],
        )];
        assert!(pairwise("H", "h", &peers).is_empty());
    }
}
