//! Files holding secrets (SUN keys, MQTT passwords, TLS private keys): a
//! warning when other users can read them.
//!
//! The daemon still reads such a file (refusing would turn a permissions slip
//! into a dock door that stops working), but says so at every load: anyone who
//! can read a SUN key can forge every tag of the product, and anyone with
//! the broker password can publish as the gateway.

use std::path::Path;

/// Permission bits that let a user other than the owner read the file.
const READABLE_BY_OTHERS: u32 = 0o044;

/// Whether `mode` lets the group or everyone read the file.
pub fn readable_by_others(mode: u32) -> bool {
    mode & READABLE_BY_OTHERS != 0
}

/// Logs a warning naming `path` (never its content) when its group or
/// everyone may read it; `what` says which secret it holds.
pub fn warn_if_readable_by_others(path: &Path, what: &str) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if readable_by_others(mode) {
            tracing::warn!(
                event = "secret_file.readable",
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the {what} file is readable by its group or by everyone; chmod 600 it (owned by the service user)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owner_only_modes_are_quiet() {
        assert!(!readable_by_others(0o100600));
        assert!(!readable_by_others(0o400));
        assert!(readable_by_others(0o640), "group-readable");
        assert!(readable_by_others(0o604), "world-readable");
        assert!(readable_by_others(0o644));
    }
}
