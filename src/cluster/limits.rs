//! Bounds on what peers that have not (yet) proven anything can hold. A connection that is
//! still in its handshake is *pending* ([`Pending`]): few per address and few in all, and beyond
//! either cap a new one closes the oldest pending one, so silent connections reopened as they
//! time out cannot keep a member (who completes its handshake in milliseconds) out. A connection
//! whose handshake succeeded holds a [`PerAddress`] slot until it closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Inbound peer connections one address may hold at once. A real peer holds one or two; the
/// headroom covers several nodes behind one address (NAT, or all on one machine in tests).
pub const MAX_CONNS_PER_ADDRESS: usize = 32;

/// Handshaking connections one address may hold at once, and all addresses together.
pub const MAX_PENDING_PER_ADDRESS: usize = 8;
pub const MAX_PENDING: usize = 64;

/// Connections in their handshake, oldest first per address and overall.
pub struct Pending {
    per_address: usize,
    total: usize,
    open: Mutex<PendingQueue>,
}

type PendingQueue = std::collections::VecDeque<(IpAddr, std::sync::Weak<tokio::sync::Notify>)>;

/// A handshaking connection's place; [`Ticket::evicted`] completes when a newer one took it.
pub struct Ticket {
    evict: Arc<tokio::sync::Notify>,
}

impl Ticket {
    pub async fn evicted(&self) {
        self.evict.notified().await
    }
}

impl Pending {
    pub fn new(per_address: usize, total: usize) -> Pending {
        Pending { per_address: per_address.max(1), total: total.max(1), open: Mutex::new(Default::default()) }
    }

    /// A place for a new connection from `ip`; beyond the caps the oldest pending one from the
    /// same address (else the oldest of all) is told to close.
    pub fn admit(&self, ip: IpAddr) -> Ticket {
        let evict = Arc::new(tokio::sync::Notify::new());
        let mut q = self.open.lock().unwrap_or_else(|e| e.into_inner());
        q.retain(|(_, w)| w.strong_count() > 0);
        let evict_first = |q: &mut std::collections::VecDeque<(IpAddr, std::sync::Weak<tokio::sync::Notify>)>,
                           same: bool| {
            if let Some(i) = q.iter().position(|(a, _)| !same || *a == ip) {
                if let Some(n) = q.remove(i).and_then(|(_, w)| w.upgrade()) {
                    n.notify_one();
                }
            }
        };
        while q.iter().filter(|(a, _)| *a == ip).count() >= self.per_address {
            evict_first(&mut q, true);
        }
        while q.len() >= self.total {
            evict_first(&mut q, false);
        }
        q.push_back((ip, Arc::downgrade(&evict)));
        Ticket { evict }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let mut q = self.open.lock().unwrap();
        q.retain(|(_, w)| w.strong_count() > 0);
        q.len()
    }
}

pub struct PerAddress {
    pub max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's slot, given back when dropped.
pub struct Slot {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    pub fn new(max: usize) -> PerAddress {
        PerAddress { max, open: Mutex::new(HashMap::new()) }
    }

    /// A slot for a connection from `ip`, or `None` when it already holds `max`.
    pub fn take(self: Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        drop(open);
        Some(Slot { owner: self, ip })
    }

    #[cfg(test)]
    pub fn held(&self, ip: IpAddr) -> usize {
        self.open.lock().unwrap().get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pending_connections_beyond_the_caps_evict_the_oldest_from_the_same_address_first() {
        let p = Pending::new(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let evicted = |t: &Ticket| {
            let n = t.evict.clone();
            async move { tokio::time::timeout(std::time::Duration::from_millis(20), n.notified()).await.is_ok() }
        };
        let a1 = p.admit(a);
        let b1 = p.admit(b);
        let a2 = p.admit(a);
        // a third from `a`: a1 (a's oldest) goes, not b1
        let a3 = p.admit(a);
        assert!(evicted(&a1).await);
        assert!(!evicted(&b1).await && !evicted(&a2).await);
        // a handshake done (ticket dropped) frees its place
        drop(a2);
        assert_eq!(p.len(), 2);
        // over the total: the oldest of all goes (b1)
        let _c = p.admit("10.0.0.3".parse().unwrap());
        let _d = p.admit("10.0.0.4".parse().unwrap());
        assert!(evicted(&b1).await);
        assert!(!evicted(&a3).await);
    }

    #[test]
    fn slots_are_bounded_per_address_and_given_back() {
        let p = Arc::new(PerAddress::new(2));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let s1 = p.clone().take(a).unwrap();
        let _s2 = p.clone().take(a).unwrap();
        assert!(p.clone().take(a).is_none());
        let _other = p.clone().take(b).expect("another address is not affected");
        drop(s1);
        assert_eq!(p.held(a), 1);
        assert!(p.clone().take(a).is_some());
    }
}
