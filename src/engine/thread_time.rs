//! CPU time of the calling thread: what a piece of work costs, whatever else the machine runs
//! (wall time on a loaded machine counts the time the thread waited for a core).

use std::time::Duration;

/// A point in the calling thread's CPU time (wall time where the platform has no thread clock).
#[derive(Clone, Copy, Debug)]
pub struct ThreadTime(Option<Duration>, std::time::Instant);

impl ThreadTime {
    pub fn now() -> ThreadTime {
        ThreadTime(thread_cpu(), std::time::Instant::now())
    }

    /// CPU time the calling thread spent since `self` (taken on the same thread).
    pub fn elapsed(&self) -> Duration {
        match (self.0, thread_cpu()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => self.1.elapsed(),
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
fn thread_cpu() -> Option<Duration> {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: std::ffi::c_int, ts: *mut Timespec) -> std::ffi::c_int;
    }
    #[cfg(target_os = "linux")]
    const CLOCK_THREAD_CPUTIME_ID: std::ffi::c_int = 3;
    #[cfg(target_os = "macos")]
    const CLOCK_THREAD_CPUTIME_ID: std::ffi::c_int = 16;
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec (64-bit time_t and long on the 64-bit targets
    // this builds for); clock_gettime writes it and touches nothing else.
    let r = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (r == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn thread_cpu() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeping_costs_no_cpu_and_spinning_does() {
        let t = ThreadTime::now();
        std::thread::sleep(Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        let t = ThreadTime::now();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(t.elapsed() >= Duration::from_millis(20), "{:?}", t.elapsed());
    }
}
