//! How `max_bytes` is shared between the files of the store (sans-IO).
//!
//! `max_bytes` bounds everything the store keeps in its directory: the
//! database, its write-ahead log (`-wal`), the WAL index (`-shm`) and the
//! space reserve (`-reserve`). Each file other than the database gets a
//! fixed share, computed here from `max_bytes` and the page size; the
//! database's pages in use are held to what is left (the size check in
//! `append.rs`), the WAL to its share by checkpoints (`wal_autocheckpoint`
//! at half the share, `journal_size_limit`, and a TRUNCATE checkpoint after
//! any commit that leaves the file above its share).
//!
//! What can still pass the bound is the WAL frames of one commit: a commit
//! is written whole before the checkpoint after it runs. That margin is
//! documented as "one commit's pages" (events plus a few table and index
//! pages).

/// Bytes SQLite adds to each page in the WAL (the frame header).
const FRAME_HEADER: u64 = 24;
/// The WAL file's own header.
const WAL_HEADER: u64 = 32;
/// The WAL index maps the WAL in blocks of 32 KiB; the first covers 4,062
/// frames, every later one 4,096 (the first holds the index header).
const SHM_BLOCK: u64 = 32 * 1024;
const SHM_FIRST_BLOCK_FRAMES: u64 = 4062;
const SHM_BLOCK_FRAMES: u64 = 4096;

/// The WAL's share is an eighth of `max_bytes`, between these many frames:
/// enough for a few commits between checkpoints on a small store, and on a
/// large one about what SQLite's default autocheckpoint (1,000 pages) lets
/// the WAL reach anyway, so group commit costs what it did.
const MIN_WAL_FRAMES: u64 = 16;
const MAX_WAL_FRAMES: u64 = 2048;

/// The database must keep at least this many pages for events, or the
/// configuration is refused (a page size far larger than the default).
pub const MIN_DB_PAGES: u64 = 16;

/// The shares of one store, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskBudget {
    pub max_bytes: u64,
    pub page_size: u64,
    /// Frames the WAL may hold: its share.
    pub wal_frames: u64,
}

impl DiskBudget {
    pub fn new(max_bytes: u64, page_size: u64) -> Self {
        let page_size = page_size.max(512);
        let frame = page_size + FRAME_HEADER;
        let wal_frames = (max_bytes / 8 / frame).clamp(MIN_WAL_FRAMES, MAX_WAL_FRAMES);
        DiskBudget {
            max_bytes,
            page_size,
            wal_frames,
        }
    }

    /// The WAL file's share, bytes.
    pub fn wal_bytes(&self) -> u64 {
        WAL_HEADER + self.wal_frames * (self.page_size + FRAME_HEADER)
    }

    /// `PRAGMA wal_autocheckpoint`: a PASSIVE checkpoint once the WAL holds
    /// half its share, so the file normally stays near half of it and the
    /// other half is room for commits while a reader holds a checkpoint back.
    pub fn autocheckpoint_frames(&self) -> u64 {
        (self.wal_frames / 2).max(1)
    }

    /// The WAL index at the WAL's share plus a commit of the same size
    /// (the index grows with frames and shrinks only when the last
    /// connection closes).
    pub fn shm_bytes(&self) -> u64 {
        let frames = self.wal_frames * 2;
        let later = frames.saturating_sub(SHM_FIRST_BLOCK_FRAMES);
        SHM_BLOCK * (1 + later.div_ceil(SHM_BLOCK_FRAMES))
    }

    /// The reserve file kept beside the database: deleted when the disk is
    /// full so a checkpoint can always copy the WAL into the database
    /// (which may need that many new pages) and truncate it.
    pub fn reserve_bytes(&self) -> u64 {
        self.wal_bytes()
    }

    /// What the database's pages in use may reach (overflow records
    /// included): `max_bytes` less the other files' shares.
    pub fn db_max(&self) -> u64 {
        self.max_bytes
            .saturating_sub(self.wal_bytes() + self.shm_bytes() + self.reserve_bytes())
    }

    /// What ordinary events may fill: [`Self::db_max`] less the headroom
    /// kept for `overflow` records.
    pub fn db_limit(&self) -> u64 {
        self.db_max()
            .saturating_sub(super::HEADROOM_PAGES * self.page_size)
    }

    /// Whether the database keeps a useful share at this page size.
    pub fn is_usable(&self) -> bool {
        self.db_limit() >= MIN_DB_PAGES * self.page_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_smallest_store_keeps_room_for_events() {
        let b = DiskBudget::new(super::super::MIN_MAX_BYTES, 4096);
        assert!(b.is_usable(), "{b:?}: db_limit {}", b.db_limit());
        assert_eq!(b.shm_bytes(), 32 * 1024);
    }

    #[test]
    fn a_large_store_checkpoints_about_as_often_as_sqlite_by_default() {
        let b = DiskBudget::new(512 << 20, 4096);
        assert_eq!(b.autocheckpoint_frames(), 1024);
        // The WAL, index and reserve take under 4 % of the bound.
        let others = b.max_bytes - b.db_max();
        assert!(others * 25 < b.max_bytes, "{others}");
    }

    #[test]
    fn a_huge_page_size_is_not_usable_at_the_minimum() {
        assert!(!DiskBudget::new(super::super::MIN_MAX_BYTES, 65536).is_usable());
    }

    proptest! {
        #[test]
        fn the_shares_add_up_to_max_bytes(
            max in super::super::MIN_MAX_BYTES..(1u64 << 40),
            shift in 9u32..=16,
        ) {
            let b = DiskBudget::new(max, 1 << shift);
            prop_assert!(b.db_limit() <= b.db_max());
            if b.is_usable() {
                prop_assert_eq!(
                    b.db_max() + b.wal_bytes() + b.shm_bytes() + b.reserve_bytes(),
                    max
                );
            }
            // The index covers the frames the WAL can hold.
            let frames = b.wal_frames * 2;
            let covered = SHM_FIRST_BLOCK_FRAMES
                + (b.shm_bytes() / SHM_BLOCK - 1) * SHM_BLOCK_FRAMES;
            prop_assert!(covered >= frames);
            prop_assert!(b.autocheckpoint_frames() * 2 <= b.wal_frames);
        }
    }
}
