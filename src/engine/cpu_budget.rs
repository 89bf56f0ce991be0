//! How many CPU threads may compute at once in this process. ggml's threadpool waits at its
//! per-operation barriers by spinning, which is fast while every thread has a core and very slow
//! once the threads of several stages (or models) outnumber the cores: a spinning thread burns
//! the time slice the thread it waits for needs. Each decode therefore takes as many units as it
//! has threads from a budget of the machine's cores, and waits while that would overcommit them.
//! Stages that fit side by side (1-thread stages on a 2-core machine) still overlap.

use std::sync::{Condvar, Mutex, OnceLock};

pub(super) struct CpuBudget {
    total: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// Units held by one decode; returned on drop.
pub(super) struct Grant<'a> {
    budget: &'a CpuBudget,
    units: usize,
}

impl CpuBudget {
    pub fn new(total: usize) -> CpuBudget {
        CpuBudget { total: total.max(1), used: Mutex::new(0), freed: Condvar::new() }
    }

    /// The process-wide budget: the cores this process may use.
    pub fn global() -> &'static CpuBudget {
        static B: OnceLock<CpuBudget> = OnceLock::new();
        B.get_or_init(|| CpuBudget::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
    }

    /// Blocks until `threads` units are free (a request for more than the whole budget runs
    /// alone).
    pub fn acquire(&self, threads: usize) -> Grant<'_> {
        let units = threads.clamp(1, self.total);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + units > self.total {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += units;
        Grant { budget: self, units }
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.units;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn never_more_units_in_use_than_the_budget() {
        let b = Arc::new(CpuBudget::new(2));
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = [1usize, 2, 1, 1, 2, 8]
            .into_iter()
            .map(|want| {
                let (b, now, peak) = (b.clone(), now.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let g = b.acquire(want);
                        let n = now.fetch_add(g.units, Ordering::SeqCst) + g.units;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        now.fetch_sub(g.units, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(*b.used.lock().unwrap(), 0);
    }
}
