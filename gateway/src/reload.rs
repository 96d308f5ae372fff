//! SIGHUP reloads the configuration: the new file is validated first; if it
//! is invalid the running configuration stays and the error is logged. A
//! valid change restarts the gateway's components in-process with an ordered
//! shutdown, so everything in flight is committed before the new config
//! takes over (readers pause for the restart, typically well under a second).
//!
//! systemd hears RELOADING=1 on every SIGHUP and READY=1 when the reload is
//! over, whatever its outcome; a rejected file is named in the status line.

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::RunError;

/// What a reload request led to.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new file is valid and differs: restart with it.
    Apply,
    /// The file is valid but identical: nothing to do.
    Unchanged,
    /// The file is invalid: keep running the current config.
    Rejected(String),
}

/// Validates the file at `path` (and opens every file it names) against
/// the running config.
pub fn check_reload(path: &std::path::Path, running: &Config) -> (ReloadOutcome, Option<Config>) {
    match config::load_and_check_files(path) {
        Ok(new) if new.hash == running.hash => (ReloadOutcome::Unchanged, None),
        Ok(new) => (ReloadOutcome::Apply, Some(new)),
        Err(e) => (ReloadOutcome::Rejected(e.to_string()), None),
    }
}

/// Runs the gateway from `path` until `shutdown`, reloading on SIGHUP.
pub async fn run_with_reload(
    path: PathBuf,
    mut config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(event = "config.reload_unavailable", error = %e, "cannot listen for SIGHUP; reload disabled");
            None
        }
    };
    loop {
        let generation = shutdown.child_token();
        let mut task = tokio::spawn(crate::run(config.clone(), generation.clone()));
        loop {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                joined = &mut task => {
                    return joined.unwrap_or_else(|e| Err(RunError::Writer(format!("gateway task failed: {e}"))));
                }
                _ = hup_recv => {}
            }
            crate::ops::notify_reloading();
            let (outcome, new) = check_reload(&path, &config);
            match outcome {
                ReloadOutcome::Unchanged => {
                    tracing::info!(event = "config.reload_unchanged", path = %path.display(), "SIGHUP: configuration unchanged");
                    crate::ops::notify_reload_finished(None);
                }
                ReloadOutcome::Rejected(error) => {
                    tracing::error!(event = "config.reload_rejected", path = %path.display(), %error, "SIGHUP: new configuration is invalid; keeping the running one");
                    crate::ops::notify_reload_finished(Some(&error));
                }
                ReloadOutcome::Apply => {
                    tracing::info!(event = "config.reloading", path = %path.display(), "SIGHUP: applying the new configuration");
                    // `run` sends READY=1 once the new components are up.
                    generation.cancel();
                    task.await.unwrap_or_else(|e| {
                        Err(RunError::Writer(format!("gateway task failed: {e}")))
                    })?;
                    if let Some(new) = new {
                        config = new;
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "[gateway]\nid = \"g\"\nsite = \"s\"\n[[readers]]\nname = \"r\"\nkind = \"sim\"\n";

    #[test]
    fn an_invalid_file_is_rejected_and_an_identical_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, GOOD).unwrap();
        let running = config::load(&path).unwrap();
        assert_eq!(check_reload(&path, &running).0, ReloadOutcome::Unchanged);
        std::fs::write(&path, format!("{GOOD}bogus = 1\n")).unwrap();
        match check_reload(&path, &running).0 {
            ReloadOutcome::Rejected(msg) => assert!(msg.contains("unknown field `bogus`"), "{msg}"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, GOOD.replace("id = \"g\"", "id = \"g2\"")).unwrap();
        let (outcome, new) = check_reload(&path, &running);
        assert_eq!(outcome, ReloadOutcome::Apply);
        assert_eq!(new.unwrap().gateway_id, "g2");
    }
}
