//! Opening connections: pragmas, integrity check, forward migrations, and
//! moving a corrupt database aside.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::StoreError;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

/// `MIGRATIONS[i]` takes a database from `user_version = i` to `i + 1`.
/// Each step runs in its own transaction together with the version bump, so a
/// crash mid-migration leaves the previous version intact. Append only: a
/// released step is never edited.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: events and the key/value meta table (store_id, last_seq,
    // published_upto, dropped_total, overflow_pending).
    "CREATE TABLE IF NOT EXISTS meta (
         key   TEXT PRIMARY KEY NOT NULL,
         value
     ) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS events (
         seq          INTEGER PRIMARY KEY NOT NULL,
         id           TEXT    NOT NULL,
         event_type   TEXT    NOT NULL,
         event_utc_ms INTEGER NOT NULL,
         payload      TEXT    NOT NULL
     );",
    // 1 -> 2: NTAG 424 SUN read counters (replay protection).
    "CREATE TABLE IF NOT EXISTS sun_counters (
         uid     BLOB    PRIMARY KEY NOT NULL,
         counter INTEGER NOT NULL
     ) WITHOUT ROWID;",
];

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;

/// How long a connection waits for the other connection's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why opening failed: corruption (the file gets moved aside) or anything
/// else (permissions, locks, a newer schema: the file is left alone).
pub enum OpenFailure {
    Corrupt(String),
    Other(StoreError),
}

fn classify(context: &'static str, path: &Path, e: rusqlite::Error) -> OpenFailure {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            OpenFailure::Corrupt(format!("{context}: {e}"))
        }
        // An existing file on a read-only mount opens, and the first write
        // fails: say what is wrong, not only SQLite's words.
        Some(ErrorCode::ReadOnly) => OpenFailure::Other(StoreError::ReadOnly {
            path: path.to_path_buf(),
            why: format!("{context}: {e}"),
        }),
        _ => OpenFailure::Other(StoreError::sqlite(context, path, e)),
    }
}

/// `path` for an SQLite `file:` URI: '%', '?' and '#' escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// Whether an I/O failure means the place is not writable for us.
fn is_read_only(e: &std::io::Error) -> bool {
    use nix::libc::{EACCES, EPERM, EROFS};
    matches!(e.raw_os_error(), Some(EROFS | EACCES | EPERM))
}

/// Creates an empty database file readable by tracegate's user only (0600)
/// when there is none, before SQLite would create it 0644; SQLite gives the
/// `-wal` and `-shm` files the mode of the database file.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens (creating if needed) the writer connection and brings the schema up
/// to date. Returns the connection and the store id.
pub fn open_writer(path: &Path) -> Result<(Connection, String), OpenFailure> {
    let c = |ctx: &'static str| move |e: rusqlite::Error| classify(ctx, path, e);
    // Check the header before SQLite sees the file: on a file that is not a
    // database, SQLite would still open (and on close delete) a `-wal` next
    // to it, and that WAL may hold the only copy of committed events.
    check_header(path)?;
    create_private_file(path).map_err(|source| {
        OpenFailure::Other(if is_read_only(&source) {
            StoreError::ReadOnly {
                path: path.to_path_buf(),
                why: source.to_string(),
            }
        } else {
            StoreError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    })?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(c("opening the database file"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(c("setting busy_timeout"))?;
    // Every statement of the commit path is cached (parsing cost more than
    // running most of them); rusqlite's default of 16 would evict some.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);

    // The first statement that reads the header: "file is not a database"
    // shows up here for garbage files.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(c("switching to WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenFailure::Other(StoreError::Pragma {
            path: path.to_path_buf(),
            what: format!("journal_mode is {mode:?}, expected \"wal\""),
        }));
    }
    set_common_pragmas(&conn, path).map_err(OpenFailure::Other)?;
    // The WAL's bound (journal_size_limit, autocheckpoint) depends on
    // max_bytes: set by `Store::from_conn` (budget.rs).

    quick_check(&conn).map_err(|e| match e {
        QuickCheck::Failed(msg) => OpenFailure::Corrupt(format!("quick_check: {msg}")),
        QuickCheck::Sqlite(e) => classify("running quick_check", path, e),
    })?;

    let version = user_version(&conn).map_err(c("reading user_version"))?;
    if !(0..=SCHEMA_VERSION).contains(&version) {
        return Err(OpenFailure::Other(StoreError::SchemaMismatch {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        }));
    }
    migrate(&conn, version).map_err(c("migrating the schema"))?;

    let store_id = init_meta(&conn).map_err(c("initialising the meta table"))?;
    Ok((conn, store_id))
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

fn check_header(path: &Path) -> Result<(), OpenFailure> {
    use std::io::Read;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(OpenFailure::Other(StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            }))
        }
    };
    let mut head = Vec::with_capacity(100);
    f.by_ref().take(100).read_to_end(&mut head).map_err(|e| {
        OpenFailure::Other(StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    })?;
    if head.is_empty() {
        return Ok(()); // a new, empty database
    }
    if head.len() < 100 || &head[..16] != SQLITE_MAGIC {
        return Err(OpenFailure::Corrupt(
            "file is not a database (no SQLite header)".into(),
        ));
    }
    Ok(())
}

/// Opens an existing store as a second connection (the daemon's reader
/// thread, the CLI, tests). It never creates or migrates the file.
pub fn open_second(path: &Path) -> Result<(Connection, String), StoreError> {
    open_existing(path, false)
}

/// Opens an existing store only to read it (`tracegate events`): nothing is
/// written, not even a pragma, so a store on a read-only mount or a file
/// moved aside after corruption can be read. A WAL database whose `-shm`
/// cannot be created (read-only mount after a clean stop) is opened as
/// immutable: nobody can be writing to it there.
pub fn open_read_only(path: &Path) -> Result<(Connection, String), StoreError> {
    open_existing(path, true)
}

fn open_existing(path: &Path, read_only: bool) -> Result<(Connection, String), StoreError> {
    if !path.exists() {
        return Err(StoreError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let conn = if read_only {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let probe = Connection::open_with_flags(path, flags).and_then(|c| {
            c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?;
            Ok(c)
        });
        match probe {
            Ok(c) => c,
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::CannotOpen) => {
                let uri = format!("file:{}?immutable=1", uri_path(path));
                Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
                    .map_err(|e| StoreError::sqlite("opening the database file", path, e))?
            }
            Err(e) => return Err(StoreError::sqlite("opening the database file", path, e)),
        }
    } else {
        Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::sqlite("opening the database file", path, e))?
    };
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| StoreError::sqlite("setting busy_timeout", path, e))?;
    if !read_only {
        set_common_pragmas(&conn, path)?;
    }
    let version =
        user_version(&conn).map_err(|e| StoreError::sqlite("reading user_version", path, e))?;
    if version == 0 {
        // Created but not yet initialised by the writer.
        return Err(StoreError::NotFound {
            path: path.to_path_buf(),
        });
    }
    if version != SCHEMA_VERSION {
        return Err(StoreError::SchemaMismatch {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let store_id: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| StoreError::sqlite("reading store_id", path, e))?;
    let store_id = store_id.ok_or_else(|| StoreError::Pragma {
        path: path.to_path_buf(),
        what: "meta has no store_id (database not initialised by the gateway)".into(),
    })?;
    Ok((conn, store_id))
}

fn set_common_pragmas(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| StoreError::sqlite("setting synchronous=FULL", path, e))?;
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(|e| StoreError::sqlite("reading synchronous", path, e))?;
    // 2 = FULL: each commit fsyncs the WAL, so a power cut loses nothing
    // committed (NORMAL would lose the last commits of a power cut in WAL mode).
    if sync != 2 {
        return Err(StoreError::Pragma {
            path: path.to_path_buf(),
            what: format!("synchronous is {sync}, expected 2 (FULL)"),
        });
    }
    Ok(())
}

enum QuickCheck {
    Failed(String),
    Sqlite(rusqlite::Error),
}

fn quick_check(conn: &Connection) -> Result<(), QuickCheck> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(QuickCheck::Sqlite)?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(QuickCheck::Sqlite)?
        .collect::<Result<_, _>>()
        .map_err(QuickCheck::Sqlite)?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(QuickCheck::Failed(rows.join("; ")))
    }
}

pub fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn migrate(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    let mut version = from;
    while version < SCHEMA_VERSION {
        let idx = usize::try_from(version).unwrap_or(usize::MAX);
        let Some(step) = MIGRATIONS.get(idx) else {
            break;
        };
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        tracing::info!(from = version, to = version + 1, "store schema migrated");
        version += 1;
    }
    Ok(())
}

fn init_meta(conn: &Connection) -> rusqlite::Result<String> {
    let tx = conn.unchecked_transaction()?;
    let fresh_id = hex::encode(rand::random::<[u8; 8]>());
    tx.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?1)",
        [&fresh_id],
    )?;
    for key in ["last_seq", "published_upto", "dropped_total"] {
        tx.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, 0)",
            [key],
        )?;
    }
    // A database created before last_seq was tracked would restart at 0 and
    // reuse seqs; start above the highest row instead.
    tx.execute(
        "UPDATE meta SET value = max(value, (SELECT coalesce(max(seq), 0) FROM events))
         WHERE key = 'last_seq'",
        [],
    )?;
    let store_id: String = tx.query_row(
        "SELECT CAST(value AS TEXT) FROM meta WHERE key = 'store_id'",
        [],
        |r| r.get(0),
    )?;
    tx.commit()?;
    Ok(store_id)
}

/// Renames `path` and its `-wal`/`-shm` companions to
/// `{path}.corrupt-{UTC timestamp}[-wal|-shm]`. Returns the new main path.
pub fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let base = format!("{}.corrupt-{stamp}", path.display());
    let target = PathBuf::from(&base);
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{base}{suffix}"));
            std::fs::rename(&from, &to).map_err(|e| StoreError::MoveAside {
                path: from.clone(),
                source: e,
            })?;
        }
    }
    if path.exists() {
        std::fs::rename(path, &target).map_err(|e| StoreError::MoveAside {
            path: path.to_path_buf(),
            source: e,
        })?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_check_accepts_new_and_sqlite_files_and_flags_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.db");
        assert!(check_header(&missing).is_ok());
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        assert!(check_header(&empty).is_ok());
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, [0x42u8; 4096]).unwrap();
        assert!(matches!(
            check_header(&garbage),
            Err(OpenFailure::Corrupt(_))
        ));
        let short = dir.path().join("short.db");
        std::fs::write(&short, SQLITE_MAGIC).unwrap();
        assert!(matches!(check_header(&short), Err(OpenFailure::Corrupt(_))));
        let real = dir.path().join("real.db");
        Connection::open(&real)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(check_header(&real).is_ok());
    }

    #[test]
    fn every_schema_version_has_a_migration_step() {
        assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
    }
}
