//! Bounds on what peers that have not (yet) proven anything can hold: inbound connections per
//! remote address, handshaking or established, each holding a slot until it closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Inbound peer connections one address may hold at once. A real peer holds one or two; the
/// headroom covers several nodes behind one address (NAT, or all on one machine in tests).
pub const MAX_CONNS_PER_ADDRESS: usize = 32;

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
