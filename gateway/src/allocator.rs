//! The allocator's settings for the daemon, set once at start.
//!
//! mimalloc (the global allocator, main.rs) keeps memory it freed resident
//! for `purge_delay` (1 s by default) before it hands it back to the OS.
//! Under overload the event path frees a commit group's worth of events,
//! JSON and read batches many times a second, so with the default RSS held
//! most of a second of that churn on top of what is live: 120 MiB peak at
//! saturation where about 60 MiB was in use (BENCHMARKS.md, "Memory at
//! saturation"). A shorter delay keeps RSS near what is live; freed pages
//! are still reused without a round trip to the OS while the churn lasts
//! less than the delay.

/// How long freed memory stays resident before it goes back to the OS.
pub const PURGE_DELAY_MS: i64 = 10;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (libmimalloc-sys
/// exports only some of the options as constants; a test checks this one
/// against its documented default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies the daemon's allocator settings. Harmless when mimalloc is not
/// the global allocator (unit tests): it then tunes mimalloc's own unused
/// heap.
// The FFI calls here are the daemon's only unsafe code: the mimalloc
// crate has no safe wrapper for options or for a collect.
#[allow(unsafe_code)]
pub fn configure() {
    // SAFETY: mi_option_set takes plain integers and may be called at any
    // time; purge_delay is read each time a purge is considered.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

/// Collects the calling thread's heap and purges every arena's freed
/// memory now.
///
/// Building a master-data index over 10 million unrelated serials
/// allocates and frees far more than the index keeps (the builder's
/// batches, each compaction's new set, the received chunks). Purging is
/// otherwise checked only by a later arena operation, which the event
/// path's small allocations rarely make, so those blocks stayed resident
/// (+60 MiB RSS with a ~30 MiB index, BENCHMARKS.md). Called once per
/// dataset applied or loaded, never per event. Harmless when mimalloc is
/// not the global allocator (unit tests): it then collects mimalloc's own
/// empty heap.
#[allow(unsafe_code)]
pub fn release_freed() {
    // SAFETY: mi_collect takes no pointers and may be called from any
    // thread at any time; it only returns memory nothing owns any more.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn the_option_set_is_the_purge_delay() {
        // SAFETY: reads an option's value.
        let (before, arena_reserve_kib) = unsafe {
            (
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(23),
            )
        };
        // purge_delay defaults to 1,000 ms; no other option has that default
        // (and a neighbour, arena_reserve, is 1 GiB in KiB).
        if before != PURGE_DELAY_MS {
            assert_eq!(before, 1_000);
        }
        assert_eq!(arena_reserve_kib, 1024 * 1024);
        configure();
        // SAFETY: as above.
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(after, PURGE_DELAY_MS);
    }
}
