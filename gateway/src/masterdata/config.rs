//! `[masterdata]`: trusted registry keys, this gateway's market, the size
//! limit, and which checks each read point applies. Parsed once into
//! [`MasterdataConfig`]; config.rs places each problem at FILE:LINE:COL.
//!
//! ```toml
//! [masterdata]
//! trusted_keys = ["/etc/tracegate/registry.pub"]
//! market = "DE"
//! checks = ["unknown_serial", "blocked", "wrong_market", "serial_mismatch", "not_expected"]
//!
//! [masterdata.read_point_checks]
//! returns-desk = ["blocked", "serial_mismatch"]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::format::{parse_public_key, TrustedKeys};
use super::index::Checks;

/// Default payload limit: 128 MiB.
pub const DEFAULT_MAX_DATASET_BYTES: u64 = 128 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMasterdata {
    /// Public key files (`tracegate masterdata keygen` writes them); a
    /// dataset must be signed by one of these.
    pub trusted_keys: Vec<PathBuf>,
    /// This gateway's market, for `wrong_market` (off when absent).
    pub market: Option<String>,
    #[serde(default = "default_max")]
    pub max_dataset_bytes: u64,
    /// Checks for read points not listed below (default: all).
    pub checks: Option<Vec<String>>,
    /// Checks per read point, by read point name.
    #[serde(default)]
    pub read_point_checks: BTreeMap<String, Vec<String>>,
}

fn default_max() -> u64 {
    DEFAULT_MAX_DATASET_BYTES
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterdataConfig {
    pub trusted_key_files: Vec<PathBuf>,
    pub market: Option<String>,
    pub max_dataset_bytes: u64,
    pub default_checks: Checks,
    pub read_point_checks: HashMap<String, Checks>,
}

impl MasterdataConfig {
    pub fn checks_for(&self, read_point: &str) -> Checks {
        self.read_point_checks
            .get(read_point)
            .copied()
            .unwrap_or(self.default_checks)
    }
}

/// A problem, with the table and key it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdProblem {
    pub table: &'static str,
    pub key: String,
    pub message: String,
}

fn checks(names: &[String], table: &'static str, key: &str, out: &mut Vec<MdProblem>) -> Checks {
    let mut c = Checks::NONE;
    for n in names {
        if !c.enable(n) {
            out.push(MdProblem {
                table,
                key: key.to_owned(),
                message: format!(
                    "[{table}] {key}: unknown check {n:?}, expected one of {}",
                    Checks::NAMES.join(", ")
                ),
            });
        }
    }
    c
}

impl RawMasterdata {
    /// Checks the section; `read_points` are the configured read point names.
    pub fn validate(self, read_points: &[&str]) -> Result<MasterdataConfig, Vec<MdProblem>> {
        let mut out = Vec::new();
        if self.trusted_keys.is_empty() {
            out.push(MdProblem {
                table: "masterdata",
                key: "trusted_keys".into(),
                message: "[masterdata] trusted_keys must name at least one public key file".into(),
            });
        }
        if let Some(m) = &self.market {
            if m.is_empty() || m.len() > 64 || m.chars().any(char::is_control) {
                out.push(MdProblem {
                    table: "masterdata",
                    key: "market".into(),
                    message: "[masterdata] market must be 1-64 characters".into(),
                });
            }
        }
        if self.max_dataset_bytes < 1024 {
            out.push(MdProblem {
                table: "masterdata",
                key: "max_dataset_bytes".into(),
                message: "[masterdata] max_dataset_bytes must be at least 1024".into(),
            });
        }
        let default_checks = match &self.checks {
            Some(names) => checks(names, "masterdata", "checks", &mut out),
            None => Checks::ALL,
        };
        let mut per = HashMap::new();
        for (rp, names) in &self.read_point_checks {
            const T: &str = "masterdata.read_point_checks";
            if !read_points.contains(&rp.as_str()) {
                out.push(MdProblem {
                    table: T,
                    key: rp.clone(),
                    message: format!("[{T}] {rp:?} is not a configured read point"),
                });
            }
            per.insert(rp.clone(), checks(names, T, rp, &mut out));
        }
        if !out.is_empty() {
            return Err(out);
        }
        Ok(MasterdataConfig {
            trusted_key_files: self.trusted_keys,
            market: self.market,
            max_dataset_bytes: self.max_dataset_bytes,
            default_checks,
            read_point_checks: per,
        })
    }
}

/// Reads one public key file.
pub fn load_key(path: &Path) -> Result<ed25519_dalek::VerifyingKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse_public_key(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads every trusted key file (check-config, start and reload).
pub fn load_trusted_keys(cfg: &MasterdataConfig) -> Result<TrustedKeys, Vec<String>> {
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for path in &cfg.trusted_key_files {
        match load_key(path) {
            Ok(k) => keys.push(k),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(TrustedKeys::new(keys))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load, load_and_check_files, parse};
    use crate::masterdata::format::public_key_text;

    const BASE: &str = r#"[gateway]
id = "gw1"
site = "site1"
data_dir = "/tmp/x"

[[readers]]
name = "sim1"
kind = "sim"

[[read_points]]
name = "door"
reader = "sim1"

[[read_points]]
name = "desk"
reader = "sim1"
"#;

    #[test]
    fn a_masterdata_section_gives_checks_per_read_point() {
        let text = format!(
            "{BASE}\n[masterdata]\ntrusted_keys = [\"/k.pub\"]\nmarket = \"DE\"\n\
             checks = [\"blocked\"]\n\n[masterdata.read_point_checks]\ndesk = [\"serial_mismatch\", \"blocked\"]\n"
        );
        let c = parse(&text, "t.toml").unwrap();
        let md = c.masterdata.unwrap();
        assert_eq!(md.market.as_deref(), Some("DE"));
        let door = md.checks_for("door");
        assert!(door.blocked && !door.unknown_serial && !door.serial_mismatch);
        let desk = md.checks_for("desk");
        assert!(desk.serial_mismatch && desk.blocked && !desk.not_expected);
        assert!(parse(BASE, "t.toml").unwrap().masterdata.is_none());
    }

    #[test]
    fn bad_masterdata_settings_are_reported_at_their_line() {
        let text = format!(
            "{BASE}\n[masterdata]\ntrusted_keys = []\nchecks = [\"blocked\", \"psychic\"]\n\n\
             [masterdata.read_point_checks]\nnowhere = [\"blocked\"]\n"
        );
        let err = parse(&text, "t.toml").unwrap_err().to_string();
        for needle in [
            "t.toml:19:1: [masterdata] trusted_keys must name",
            "t.toml:20:1: [masterdata] checks: unknown check \"psychic\"",
            "t.toml:23:1: [masterdata.read_point_checks] \"nowhere\" is not a configured read point",
        ] {
            assert!(err.contains(needle), "{needle:?} missing from:\n{err}");
        }
        let unknown = format!("{BASE}\n[masterdata]\ntrusted_keys = [\"/k\"]\ncolour = 1\n");
        let err = parse(&unknown, "t.toml").unwrap_err().to_string();
        assert!(err.contains("t.toml:20:1: unknown field `colour`"), "{err}");
    }

    #[test]
    fn check_config_opens_the_trusted_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.pub");
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        std::fs::write(&good, public_key_text(&key.verifying_key())).unwrap();
        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, "hello").unwrap();
        let missing = dir.path().join("missing.pub");
        let text =
            format!("{BASE}\n[masterdata]\ntrusted_keys = [{good:?}, {bad:?}, {missing:?}]\n");
        let path = dir.path().join("t.toml");
        std::fs::write(&path, &text).unwrap();
        load(&path).unwrap();
        let err = load_and_check_files(&path).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 2, "{err}");
        assert!(
            err.contains(":19:1: [masterdata] trusted_keys: ")
                && err.contains("bad.pub: not a public key file"),
            "{err}"
        );
        assert!(err.contains("missing.pub: cannot read"), "{err}");
    }
}
