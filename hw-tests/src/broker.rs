//! A real mosquitto for end-to-end tests: its own directory and config on a
//! free loopback port, stopped and started again on that port, killed on
//! drop. Whether one is installed: [`mosquitto_available`].

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::{peer_available, wait_for};

/// The mosquitto binary, where Debian and others install it (sbin is often
/// not on a user's PATH).
fn mosquitto_bin() -> Result<PathBuf, String> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or_else(|| {
        "mosquitto is not installed (apt-get install -y mosquitto; .ci/mqtt-setup.sh)".to_owned()
    })
}

/// Whether a test that needs a real broker can run; see [`peer_available`]
/// (`TRACEGATE_REQUIRE_MOSQUITTO=1` turns a missing broker into a failure).
pub fn mosquitto_available() -> bool {
    peer_available("TRACEGATE_REQUIRE_MOSQUITTO", mosquitto_bin().map(|_| ()))
}

/// A mosquitto process listening on 127.0.0.1:`port`.
#[derive(Debug)]
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    /// Starts one and waits until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?) == 0;
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n\
                 log_dest file {}\nlog_type error\nlog_type warning\nlog_type notice\n{}",
                dir.path().join("mosquitto.log").display(),
                // As root, mosquitto would drop to its own user and could
                // not write its log in our private directory.
                if root { "user root\n" } else { "" }
            ),
        )?;
        let mut b = Self {
            port,
            dir,
            child: None,
        };
        b.start_again()?;
        Ok(b)
    }

    /// `mqtt://127.0.0.1:PORT`, for a gateway's `[mqtt] url`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Starts it (again) on the same port.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("mosquitto already runs on {}", self.port);
        }
        let bin = mosquitto_bin().map_err(anyhow::Error::msg)?;
        let conf: &Path = &self.dir.path().join("mosquitto.conf");
        self.child = Some(
            Command::new(bin)
                .arg("-c")
                .arg(conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start mosquitto")?,
        );
        let port = self.port;
        if wait_for(Duration::from_secs(10), || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()
        })
        .is_none()
        {
            bail!("mosquitto did not listen on {port}; log:\n{}", self.log());
        }
        Ok(())
    }

    /// Stops it (SIGTERM, then SIGKILL after 10 s); the port stays ours to
    /// start it on again.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if wait_for(Duration::from_secs(10), || c.try_wait().ok().flatten()).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
