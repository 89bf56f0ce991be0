//! The heartbeat: every [`HEARTBEAT`] each peer is pinged (its round trip, and its pong: profile,
//! holdings, the links it measured), now and then its bandwidth is measured with a timed
//! transfer, and static peers that are down are dialed again.

use super::{ClusterNode, HEARTBEAT, PEER_TIMEOUT};
use crate::transport::{Conn, Kind, Message, TransportError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of the timed transfer that measures a link's bandwidth.
const BULK: usize = 1 << 20;
/// Every how many heartbeats the bandwidth is measured again.
const BULK_EVERY: u64 = 20;

/// Longest wait between dials of a static peer that refused us (another cluster, another
/// namespace, a bad handshake) and of one that did not answer: each failure doubles the wait.
const MAX_REDIAL_REFUSED: Duration = Duration::from_secs(60);
const MAX_REDIAL_DOWN: Duration = Duration::from_secs(4);

/// The next wait after a failed dial that waited `last`.
fn backoff(last: Duration, refused: bool) -> Duration {
    let cap = if refused { MAX_REDIAL_REFUSED } else { MAX_REDIAL_DOWN };
    (last * 2).clamp(HEARTBEAT, cap)
}

/// Longest wait for one pong: pings go to every peer at once, so a peer that hangs delays
/// nobody else's.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) async fn heartbeat(node: std::sync::Weak<ClusterNode>, statics: Vec<String>) {
    let mut beat = 0u64;
    let mut dialing: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    // a refusal is worth saying once (not every heartbeat); an absent peer is not
    let last_error: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    // when each static peer that failed may be dialed again, and the wait that led there
    let redial: Arc<Mutex<HashMap<String, (Instant, Duration)>>> = Arc::default();
    loop {
        beat += 1;
        let Some(n) = node.upgrade() else { return };
        // stages whose coordinator is gone go after a grace period
        n.host.sweep(|id| n.alive_id(id));
        if beat % 4 == 1 {
            // memory and the refined decode speed, fresh for the pongs
            let n2 = n.clone();
            let _ = tokio::task::spawn_blocking(move || {
                n2.profile();
                n2.refresh_held();
            })
            .await;
        }
        // static peers that are down are dialed in the background, one attempt at a time each
        for addr in &statics {
            if n.alive(addr) || dialing.get(addr).is_some_and(|h| !h.is_finished()) {
                continue;
            }
            if redial.lock().unwrap().get(addr).is_some_and(|(at, _)| Instant::now() < *at) {
                continue;
            }
            let (weak, a, errors, redial) = (node.clone(), addr.clone(), last_error.clone(), redial.clone());
            dialing.insert(
                addr.clone(),
                tokio::spawn(async move {
                    let Some(n) = weak.upgrade() else { return };
                    let refused = match n.conn(&a).await {
                        Ok(_) => {
                            errors.lock().unwrap().remove(&a);
                            redial.lock().unwrap().remove(&a);
                            return;
                        }
                        Err(
                            e @ (TransportError::OtherCluster { .. }
                            | TransportError::Refused(_)
                            | TransportError::Handshake(_)
                            | TransportError::Namespace { .. }),
                        ) => {
                            let msg = e.to_string();
                            let mut errors = errors.lock().unwrap();
                            if errors.get(&a) != Some(&msg) {
                                tracing::warn!(addr = %a, "cannot join peer: {msg}");
                                errors.insert(a.clone(), msg);
                            }
                            true
                        }
                        Err(e) => {
                            tracing::debug!(addr = %a, "static peer not reachable: {e}");
                            false
                        }
                    };
                    let mut r = redial.lock().unwrap();
                    let wait = backoff(r.get(&a).map_or(Duration::ZERO, |x| x.1), refused);
                    r.insert(a, (Instant::now() + wait, wait));
                }),
            );
        }
        let conns: Vec<(String, Conn)> =
            n.peers.lock().unwrap().iter().map(|(id, p)| (id.clone(), p.conn.clone())).collect();
        drop(n);
        for (id, c) in conns {
            if !c.is_closed() {
                tokio::spawn(ping(node.clone(), id, c, beat % BULK_EVERY == 1));
            }
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// One heartbeat to one peer: its round trip and profile, now and then its bandwidth.
async fn ping(node: std::sync::Weak<ClusterNode>, id: String, c: Conn, bulk: bool) {
    let t = Instant::now();
    // the frame, not `call`: a pong that does not decode still proves the peer alive
    let Ok(f) = c.request(Kind::Ping, vec![], PING_TIMEOUT).await else { return };
    let rtt = t.elapsed();
    if let Some(n) = node.upgrade() {
        if let Some(p) = n.peers.lock().unwrap().get_mut(&id) {
            p.last_seen = Instant::now();
            p.rtt = Some(rtt);
            // a pong carries the peer's profile, what it holds and what it measured
            match Message::decode(f.kind, &f.payload) {
                Ok(Message::Pong(pong)) => (p.profile, p.held, p.links) = (Some(pong.profile), pong.held, pong.links),
                _ => p.profile = None,
            }
        }
    }
    if bulk {
        // a ping carrying 1 MiB: the extra time over the round trip is the transfer
        let t2 = Instant::now();
        if c.request(Kind::Ping, Message::Ping { padding: BULK as u32 }.encode(), PEER_TIMEOUT).await.is_ok() {
            let extra = t2.elapsed().saturating_sub(rtt).as_secs_f64().max(1e-6);
            if let Some(n) = node.upgrade() {
                if let Some(p) = n.peers.lock().unwrap().get_mut(&id) {
                    p.bandwidth = Some(BULK as f64 / extra);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_peers_are_dialed_ever_less_often_down_ones_soon_again() {
        let mut w = Duration::ZERO;
        let mut waits = Vec::new();
        for _ in 0..12 {
            w = backoff(w, true);
            waits.push(w);
        }
        assert_eq!(waits[0], HEARTBEAT);
        assert!(waits.windows(2).all(|p| p[1] >= p[0]));
        assert_eq!(*waits.last().unwrap(), MAX_REDIAL_REFUSED);
        // a refusal every 0.5 s forever became at most one a minute
        let mut w = Duration::ZERO;
        for _ in 0..12 {
            w = backoff(w, false);
        }
        assert_eq!(w, MAX_REDIAL_DOWN);
    }
}
