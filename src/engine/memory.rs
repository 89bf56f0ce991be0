//! Memory given back to the system once a stage is gone: glibc keeps freed heap pages in its
//! arenas, so a node that unloaded its stages stayed near its high-water mark (109-120 MB vs
//! 17 MB at start) until `malloc_trim` returns them.

/// Returns free heap memory to the system (glibc); nothing elsewhere. `EXO_MEMORY_TRIM=0` turns
/// it off, to measure what it gives back (tests/memory_trim.rs).
pub fn trim() {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ON.get_or_init(|| std::env::var("EXO_MEMORY_TRIM").map_or(true, |v| v != "0")) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim has no preconditions; it only releases free pages of the heap.
        unsafe {
            malloc_trim(0);
        }
    }
}
