//! Log output: journald native fields under systemd, human-readable on a
//! terminal, JSON lines on request.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use super::OpsError;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// journald when stderr is the journal, otherwise human.
    #[default]
    Auto,
    /// One line per event, colours only on a terminal.
    Human,
    /// One JSON object per line (for log shippers).
    Json,
    /// journald's native protocol: every tracing field becomes a journal field.
    Journald,
}

/// Sets the global subscriber. The filter is `level` when given (the
/// `--log-level` flag, any `EnvFilter` directive), else `RUST_LOG`, else
/// `info`. Returns the format in use (Auto resolved; Journald falls back to
/// Human when the journal socket cannot be opened).
pub fn init_logging(format: LogFormat, level: Option<&str>) -> Result<LogFormat, OpsError> {
    let filter = build_filter(level, std::env::var("RUST_LOG").ok().as_deref())?;
    let stderr = std::io::stderr();
    let mut resolved = resolve_format(
        format,
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        stat_fd(stderr.as_raw_fd()),
    );
    let mut journald_error = None;
    let journald = if resolved == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(l) => Some(l.with_syslog_identifier("tracegate".to_owned())),
            Err(e) => {
                journald_error = Some(e);
                resolved = LogFormat::Human;
                None
            }
        }
    } else {
        None
    };
    let json = (resolved == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    let human = (resolved == LogFormat::Human).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(stderr.is_terminal())
            .with_target(true)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(json)
        .with(human)
        .try_init()
        .map_err(|_| OpsError::LoggingAlreadySet)?;
    if let Some(e) = journald_error {
        tracing::warn!(error = %e, "journald socket unavailable, logging to stderr instead");
    }
    Ok(resolved)
}

fn build_filter(level: Option<&str>, rust_log: Option<&str>) -> Result<EnvFilter, OpsError> {
    let directive = level
        .filter(|s| !s.trim().is_empty())
        .or(rust_log.filter(|s| !s.trim().is_empty()))
        .unwrap_or("info");
    EnvFilter::try_new(directive).map_err(|e| OpsError::LogFilter {
        filter: directive.to_owned(),
        reason: e.to_string(),
    })
}

/// `(st_dev, st_ino)` of an open descriptor, as systemd writes them into
/// `JOURNAL_STREAM`.
fn stat_fd(fd: i32) -> Option<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// systemd sets `JOURNAL_STREAM=dev:inode` for a service whose stderr goes
/// to the journal. The variable is inherited by children whose stderr may
/// be redirected elsewhere, so it only counts when it names our stderr.
fn stderr_is_journal(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(v), Some(actual)) = (journal_stream, stderr) else {
        return false;
    };
    let Some((dev, ino)) = v.trim().split_once(':') else {
        return false;
    };
    match (dev.parse::<u64>(), ino.parse::<u64>()) {
        (Ok(d), Ok(i)) => (d, i) == actual,
        _ => false,
    }
}

fn resolve_format(
    requested: LogFormat,
    journal_stream: Option<&str>,
    stderr: Option<(u64, u64)>,
) -> LogFormat {
    match requested {
        LogFormat::Auto if stderr_is_journal(journal_stream, stderr) => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Human,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_of(f: &std::fs::File) -> (u64, u64) {
        stat_fd(f.as_raw_fd()).unwrap()
    }

    #[test]
    fn auto_picks_journald_only_when_journal_stream_names_our_stderr() {
        let a = tempfile::tempfile().unwrap();
        let b = tempfile::tempfile().unwrap();
        let (dev, ino) = stat_of(&a);
        let env = format!("{dev}:{ino}");
        assert_eq!(
            resolve_format(LogFormat::Auto, Some(&env), Some(stat_of(&a))),
            LogFormat::Journald
        );
        // Inherited from a parent whose stderr was the journal, but ours is not.
        assert_eq!(
            resolve_format(LogFormat::Auto, Some(&env), Some(stat_of(&b))),
            LogFormat::Human
        );
        assert_eq!(
            resolve_format(LogFormat::Auto, None, Some(stat_of(&a))),
            LogFormat::Human
        );
        assert_eq!(
            resolve_format(LogFormat::Auto, Some("garbage"), Some(stat_of(&a))),
            LogFormat::Human
        );
    }

    #[test]
    fn an_explicit_format_wins_over_the_environment() {
        let a = tempfile::tempfile().unwrap();
        let (dev, ino) = stat_of(&a);
        let env = format!("{dev}:{ino}");
        assert_eq!(
            resolve_format(LogFormat::Json, Some(&env), Some(stat_of(&a))),
            LogFormat::Json
        );
        assert_eq!(
            resolve_format(LogFormat::Journald, None, None),
            LogFormat::Journald
        );
    }

    #[test]
    fn log_level_flag_beats_rust_log_and_bad_directives_are_reported() {
        let f = build_filter(Some("debug"), Some("error")).unwrap();
        assert_eq!(
            f.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::DEBUG)
        );
        let f = build_filter(None, Some("error")).unwrap();
        assert_eq!(
            f.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::ERROR)
        );
        let f = build_filter(None, None).unwrap();
        assert_eq!(
            f.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::INFO)
        );
        let e = build_filter(Some("tracegate=loud"), None).unwrap_err();
        assert!(e.to_string().contains("tracegate=loud"), "{e}");
    }
}
