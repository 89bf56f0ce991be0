//! Finding peers on the LAN with mDNS (the only user of mdns-sd): each node announces
//! `_exo._tcp.local.` with its id, namespace, protocol version and cluster key id (never the
//! secret) in the TXT record, and browses for others; a peer in another namespace, of another
//! cluster or speaking another version is ignored (never dialed).

use crate::transport::Hello;
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

pub const SERVICE: &str = "_exo._tcp.local.";

#[derive(Debug, thiserror::Error)]
#[error("mDNS discovery: {0}")]
pub struct DiscoveryError(String);

/// Announces this node and reports the peer addresses of matching nodes (repeatedly: whenever
/// they announce). Stops when dropped.
pub struct Discovery {
    daemon: ServiceDaemon,
}

impl Discovery {
    pub fn start(
        hello: &Hello,
        key_id: crate::secret::KeyId,
        peer_port: u16,
        found: impl Fn(String) + Send + 'static,
    ) -> Result<Discovery, DiscoveryError> {
        let e = |x: mdns_sd::Error| DiscoveryError(x.to_string());
        let daemon = ServiceDaemon::new().map_err(e)?;
        let key = key_id.to_string();
        let props = [
            ("id", hello.node_id.as_str()),
            ("k", key.as_str()),
            ("ns", hello.namespace.as_str()),
            ("v", &hello.version.to_string()),
            ("name", hello.node_name.as_str()),
        ];
        let host = format!("exo-{}.local.", hello.node_id);
        let info =
            ServiceInfo::new(SERVICE, &hello.node_id, &host, "", peer_port, &props[..]).map_err(e)?.enable_addr_auto();
        daemon.register(info).map_err(e)?;
        let events = daemon.browse(SERVICE).map_err(e)?;
        let ours =
            Announced { id: hello.node_id.clone(), ns: hello.namespace.clone(), v: hello.version.to_string(), key };
        std::thread::Builder::new()
            .name("exo-discovery".into())
            .spawn(move || {
                while let Ok(ev) = events.recv() {
                    if let ServiceEvent::ServiceResolved(info) = ev {
                        let prop = |k: &str| info.get_property_val_str(k).unwrap_or("").to_string();
                        let theirs = Announced { id: prop("id"), ns: prop("ns"), v: prop("v"), key: prop("k") };
                        if !ours.dials(&theirs) {
                            tracing::debug!(peer = %prop("name"), key_id = %theirs.key, "not dialing: another node id, namespace, version or cluster");
                            continue;
                        }
                        for a in info.get_addresses_v4() {
                            found(format!("{a}:{}", info.get_port()));
                        }
                    }
                }
            })
            .map_err(|x| DiscoveryError(x.to_string()))?;
        Ok(Discovery { daemon })
    }
}

/// What a node announces that decides whether others dial it.
#[derive(Clone, Debug, PartialEq)]
struct Announced {
    id: String,
    ns: String,
    v: String,
    /// The cluster's key id (never the secret).
    key: String,
}

impl Announced {
    /// Only another node of the same cluster, namespace and protocol version is dialed.
    fn dials(&self, other: &Announced) -> bool {
        other.id != self.id && other.ns == self.ns && other.v == self.v && other.key == self.key
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::Announced;

    #[test]
    fn only_nodes_of_this_cluster_namespace_and_version_are_dialed() {
        let me = Announced { id: "a".into(), ns: "default".into(), v: "2".into(), key: "00ff".into() };
        let peer = Announced { id: "b".into(), ..me.clone() };
        assert!(me.dials(&peer));
        assert!(!me.dials(&me), "not itself");
        assert!(!me.dials(&Announced { key: "11ee".into(), ..peer.clone() }), "another cluster");
        assert!(!me.dials(&Announced { key: String::new(), ..peer.clone() }), "no key id (an old node)");
        assert!(!me.dials(&Announced { ns: "x".into(), ..peer.clone() }));
        assert!(!me.dials(&Announced { v: "1".into(), ..peer }));
    }
}
