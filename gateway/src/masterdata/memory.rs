//! Hands the memory an apply freed back to the OS.
//!
//! Building an index over 10 million unrelated serials allocates and frees
//! far more than the index keeps (1M-run batches of 16 MiB, each
//! compaction's new set, the received chunks). mimalloc (the daemon's
//! global allocator, main.rs) returns freed arena memory to the OS only
//! after `purge_delay` (1 s), and only when a later arena operation happens
//! to check: the event path's small allocations rarely do, so the freed
//! blocks stayed resident (+60 MiB RSS with a ~30 MiB index, BENCHMARKS.md).
//! A forced collect after an apply or a start-up load purges them at once.
//! The cost (a walk of this thread's heap and the arenas) is paid once per
//! dataset applied, never per event.

/// Collects the calling thread's heap and purges every arena's freed
/// memory now. Harmless when mimalloc is not the global allocator (unit
/// tests): it then collects mimalloc's own empty heap.
// The one FFI call: the mimalloc crate has no safe wrapper for it.
#[allow(unsafe_code)]
pub fn release_freed() {
    // SAFETY: mi_collect takes no pointers and may be called from any
    // thread at any time; it only returns memory nothing owns any more.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
