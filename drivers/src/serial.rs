//! Opening serial ports, and pseudo-terminal pairs for simulators.
//!
//! # Stable device paths
//!
//! USB serial adapters get `/dev/ttyUSB0`, `/dev/ttyACM0`... in the order the
//! kernel enumerates them, which changes across reboots and re-plugs. Point
//! `port` at the stable link udev creates instead:
//!
//! ```text
//! $ ls -l /dev/serial/by-id/
//! usb-FTDI_FT231X_USB_UART_DN05XXXX-if00-port0 -> ../../ttyUSB0     # SparkFun M6e Nano / M7e
//! usb-1a86_USB_Serial-if00-port0 -> ../../ttyUSB1                    # CH340 behind an R2000 reader
//! ```
//!
//! The `by-id` name contains the adapter's serial number, so it survives
//! re-plugging and follows the reader to another USB port. Two adapters
//! without serial numbers (many CH340s) get the same `by-id` name; use
//! `/dev/serial/by-path/...` (tied to the physical USB port) for those. The
//! link disappears while the reader is unplugged: the driver then fails to
//! open the port and the supervisor retries with backoff until it returns.
//! The user running tracegate needs to be in the `dialout` group.
//!
//! # Pseudo-terminals
//!
//! Simulators serve the master side of a pty pair ([`open_pty`]); the driver
//! opens the slave by path, exactly as it would a real device. Both sides are
//! put in raw mode: a cooked pty would translate CR/LF, swallow XON/XOFF and
//! interpret ^C inside binary frames. [`PluggablePty`] adds a symlink that can
//! be removed and re-created to simulate unplugging and re-plugging a reader.

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Opens a real serial device (or a pty slave) in raw 8N1 mode without flow
/// control, and discards whatever the kernel buffered before we opened it.
pub fn open(port: &str, baud: u32) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
    use tokio_serial::{SerialPort, SerialPortBuilderExt};
    let stream = tokio_serial::new(port, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()?;
    // Stale bytes from before the open (a module still streaming after our
    // last run) would only confuse the start-up handshake.
    if let Err(e) = stream.clear(tokio_serial::ClearBuffer::Input) {
        tracing::debug!(port, error = %e, "could not flush serial input buffer");
    }
    Ok(stream)
}

/// The master side of a raw-mode pseudo-terminal, as an async byte stream.
///
/// It also holds the slave open, so the master does not see EIO while no
/// driver has the slave open (between a driver's failure and its restart).
/// Dropping it closes both: a driver reading the slave then gets EIO/EOF,
/// just as when a USB adapter is unplugged.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
    _slave: OwnedFd,
}

impl fmt::Debug for PtyMaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PtyMaster")
            .field("fd", &self.fd.get_ref().as_raw_fd())
            .finish()
    }
}

fn make_raw(fd: &OwnedFd) -> io::Result<()> {
    let mut t = tcgetattr(fd)?;
    cfmakeraw(&mut t);
    tcsetattr(fd, SetArg::TCSANOW, &t)?;
    Ok(())
}

/// Opens a pty pair in raw mode. Returns the master (for the simulator) and
/// the slave's device path (e.g. `/dev/pts/7`, for the driver).
pub fn open_pty() -> io::Result<(PtyMaster, PathBuf)> {
    let pair = nix::pty::openpty(None, None)?;
    // Not inherited by processes spawned later (a gateway under test): a
    // child holding a copy of the master would keep the line up after
    // `unplug`, and the driver would see a silent reader, not a hang-up.
    for fd in [&pair.master, &pair.slave] {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    make_raw(&pair.slave)?;
    make_raw(&pair.master)?;
    let path = nix::unistd::ttyname(&pair.slave)?;
    let flags = OFlag::from_bits_truncate(fcntl(pair.master.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        pair.master.as_raw_fd(),
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )?;
    // `AsyncFd::new` is deprecated because a caller could close the fd while
    // it is registered; we move the OwnedFd in, so nobody else can, and the
    // sound replacement (`register`) is `unsafe`, which this crate denies.
    #[allow(deprecated)]
    let fd = AsyncFd::new(pair.master)?;
    Ok((
        PtyMaster {
            fd,
            _slave: pair.slave,
        },
        path,
    ))
}

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A boxed future returned by a [`PluggablePty`]'s serve function.
pub type ServeFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;
type ServeFn = Arc<dyn Fn(PtyMaster, CancellationToken) -> ServeFuture + Send + Sync>;

/// A simulated reader behind a stable symlink that can be unplugged and
/// re-plugged, like a USB adapter under `/dev/serial/by-id/`.
///
/// `plug` opens a fresh pty, points the symlink at its slave and starts the
/// serve function on the master. `unplug` stops serving, closes the pty
/// (the driver's reads fail) and removes the symlink (re-opening fails with
/// ENOENT until the next `plug`).
pub struct PluggablePty {
    link: PathBuf,
    serve: ServeFn,
    current: Option<(CancellationToken, JoinHandle<io::Result<()>>, PathBuf)>,
}

impl fmt::Debug for PluggablePty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluggablePty")
            .field("link", &self.link)
            .field("plugged", &self.current.as_ref().map(|c| &c.2))
            .finish()
    }
}

impl PluggablePty {
    /// `serve` is called once per `plug` with the new master; it should run
    /// until the token is cancelled.
    pub fn new<F, Fut>(link: impl Into<PathBuf>, serve: F) -> Self
    where
        F: Fn(PtyMaster, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        Self {
            link: link.into(),
            serve: Arc::new(move |m, c| Box::pin(serve(m, c))),
            current: None,
        }
    }

    /// The stable path to give the driver.
    pub fn link(&self) -> &Path {
        &self.link
    }

    /// Plugs the simulated reader in. Returns the slave path the link points at.
    pub fn plug(&mut self) -> io::Result<PathBuf> {
        if let Some((_, _, slave)) = &self.current {
            return Ok(slave.clone());
        }
        let (master, slave) = open_pty()?;
        replace_symlink(&slave, &self.link)?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn((self.serve)(master, cancel.clone()));
        self.current = Some((cancel, task, slave.clone()));
        Ok(slave)
    }

    /// Unplugs it: stops the simulator, closes the pty, removes the link.
    /// Returns what the serve function returned.
    pub async fn unplug(&mut self) -> io::Result<()> {
        let result = match self.current.take() {
            Some((cancel, task, _)) => {
                cancel.cancel();
                match task.await {
                    Ok(r) => r,
                    Err(e) => Err(io::Error::other(e)),
                }
            }
            None => Ok(()),
        };
        match std::fs::remove_file(&self.link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        result
    }
}

impl Drop for PluggablePty {
    fn drop(&mut self) {
        if let Some((cancel, task, _)) = self.current.take() {
            cancel.cancel();
            task.abort();
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

/// Atomically points `link` at `target` (create a temp link, rename over).
pub fn replace_symlink(target: &Path, link: &Path) -> io::Result<()> {
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(".tmp-link");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn every_byte_value_crosses_the_pty_unchanged_in_both_directions() {
        let (mut master, path) = open_pty().unwrap();
        let mut slave = open(path.to_str().unwrap(), 115_200).unwrap();
        let all: Vec<u8> = (0..=255u8).collect();

        master.write_all(&all).await.unwrap();
        let mut got = vec![0u8; 256];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            slave.read_exact(&mut got),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, all);

        slave.write_all(&all).await.unwrap();
        let mut got = vec![0u8; 256];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            master.read_exact(&mut got),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, all);
    }

    #[tokio::test]
    async fn closing_the_master_makes_slave_reads_fail_or_end() {
        let (master, path) = open_pty().unwrap();
        let mut slave = open(path.to_str().unwrap(), 115_200).unwrap();
        drop(master);
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), slave.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "got {r:?}");
    }
}
