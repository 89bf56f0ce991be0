//! The API's accept loop (in place of `axum::serve`, which has no timeouts or caps): nobody can
//! hold the API with half-open connections (slowloris).
//!
//! - Headers must arrive within [`HEADER_TIMEOUT`]; hyper applies the same limit to an idle
//!   keep-alive connection waiting for its next request.
//! - At most [`MAX_CONNS`] connections; at the cap the loop stops accepting (the kernel queues).
//! - At most [`MAX_PENDING`] connections that no request has yet been *admitted* on (passed the
//!   Host/Origin checks and the API key when there is one, see [`Admission`]); a new connection
//!   beyond that closes the oldest such one, so a flood of silent connections cannot keep a
//!   client with the key out.
//! - Accept errors (e.g. out of file descriptors) back off instead of spinning.
//! - Bodies: see [`super::body`].

use axum::extract::Request;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;

/// Longest wait for a request's headers, and for the next request on a kept-alive connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections served at once.
pub const MAX_CONNS: usize = 512;
/// Connections with no admitted request yet.
pub const MAX_PENDING: usize = 64;
/// Longest wait for running connections once shutdown began.
const DRAIN: Duration = Duration::from_secs(30);

/// Limits of one accept loop (tests use small ones).
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    pub header_timeout: Duration,
    pub max_conns: usize,
    pub max_pending: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits { header_timeout: HEADER_TIMEOUT, max_conns: MAX_CONNS, max_pending: MAX_PENDING }
    }
}

/// Carried by every request of a connection; [`Admission::admit`] once a request passed the
/// access checks takes the connection off the pending list.
#[derive(Clone)]
pub struct Admission(Arc<ConnState>);

struct ConnState {
    admitted: AtomicBool,
    evict: Notify,
}

impl Admission {
    pub fn admit(&self) {
        self.0.admitted.store(true, Ordering::Relaxed);
    }

    /// Marks the connection of `req`, if it came through this loop.
    pub fn admit_request(req: &Request) {
        if let Some(a) = req.extensions().get::<Admission>() {
            a.admit();
        }
    }
}

/// Connections not yet admitted, oldest first.
#[derive(Default)]
struct Pending(Mutex<VecDeque<Weak<ConnState>>>);

impl Pending {
    /// Registers `c`; beyond `cap` pending ones, evicts the oldest.
    fn push(&self, c: &Arc<ConnState>, cap: usize) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.retain(|w| w.upgrade().is_some_and(|c| !c.admitted.load(Ordering::Relaxed)));
        while q.len() >= cap.max(1) {
            if let Some(old) = q.pop_front().and_then(|w| w.upgrade()) {
                old.evict.notify_one();
            }
        }
        q.push_back(Arc::downgrade(c));
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains running connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_conns.max(1)));
    let pending = Arc::new(Pending::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => {
                    backoff = Duration::ZERO;
                    s
                }
                Err(e) => {
                    // EMFILE and friends: retrying at once spins a core and starves the rest
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    if backoff == Duration::from_millis(10) {
                        tracing::warn!(error = %e, "cannot accept API connections; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let state = Arc::new(ConnState { admitted: AtomicBool::new(false), evict: Notify::new() });
        pending.push(&state, limits.max_pending);
        let admission = Admission(state.clone());
        let app = app.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(admission.clone());
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "API connection ended");
                },
                _ = state.evict.notified() => tracing::debug!("closed a connection with no admitted request (too many pending)"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("API connections still open after {DRAIN:?}; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_connections_beyond_the_cap_evict_the_oldest_and_admitted_ones_leave_the_list() {
        let p = Pending::default();
        let conns: Vec<Arc<ConnState>> =
            (0..4).map(|_| Arc::new(ConnState { admitted: AtomicBool::new(false), evict: Notify::new() })).collect();
        p.push(&conns[0], 2);
        p.push(&conns[1], 2);
        // admitted: no longer pending, so the third fits without evicting anyone
        Admission(conns[1].clone()).admit();
        p.push(&conns[2], 2);
        assert_eq!(p.0.lock().unwrap().len(), 2);
        // the fourth evicts the oldest pending one (conns[0]), not the admitted one
        p.push(&conns[3], 2);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let evicted = |c: &Arc<ConnState>| {
                let c = c.clone();
                async move { tokio::time::timeout(Duration::from_millis(20), c.evict.notified()).await.is_ok() }
            };
            assert!(evicted(&conns[0]).await);
            assert!(!evicted(&conns[1]).await);
            assert!(!evicted(&conns[2]).await);
        });
    }
}
