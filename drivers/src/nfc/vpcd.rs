//! Puts an [`EmulatedCard`] into vsmartcard's virtual reader (vpcd), so a
//! real pcscd, and the driver through it, sees a card.
//!
//! vpcd (the pcscd reader driver from `vsmartcard-vpcd`) listens on TCP
//! 35963 for slot "Virtual PCD 00 00" and 35964 for "Virtual PCD 00 01". A
//! connected client *is* the card: connecting inserts it, closing the
//! socket removes it. Frames are a 2-byte big-endian length and a payload;
//! a 1-byte payload is a control message (00 power off, 01 power on,
//! 02 reset, 04 get ATR: only the last expects a reply, the ATR), anything
//! longer is a command APDU answered by the response APDU. An empty reply
//! makes vpcd eject the card, so replies are never empty.
//!
//! Never probe 35963 to see whether vpcd is up: the probe is a card insertion.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::emu::EmulatedCard;

/// vpcd's first slot ("Virtual PCD 00 00").
pub const VPCD_SLOT0: &str = "127.0.0.1:35963";
/// vpcd's second slot ("Virtual PCD 00 01").
pub const VPCD_SLOT1: &str = "127.0.0.1:35964";

/// A card currently in the virtual reader. Dropping it removes the card.
#[derive(Debug)]
pub struct InsertedCard<C: EmulatedCard + 'static> {
    stream: TcpStream,
    thread: Option<JoinHandle<C>>,
}

/// Inserts `card` into the vpcd slot at `addr`, retrying refused
/// connections for up to `wait` (pcscd may still be starting).
pub fn insert<C: EmulatedCard + 'static>(
    addr: impl ToSocketAddrs,
    card: C,
    wait: Duration,
) -> io::Result<InsertedCard<C>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let deadline = Instant::now() + wait;
    let stream = loop {
        match TcpStream::connect(&addrs[..]) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline && e.kind() == io::ErrorKind::ConnectionRefused => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                    "cannot reach vpcd at {addrs:?} ({e}); is pcscd running with vsmartcard-vpcd?"
                ),
                ))
            }
        }
    };
    stream.set_nodelay(true)?;
    let io = stream.try_clone()?;
    let thread = std::thread::Builder::new()
        .name("vpcd-card".into())
        .spawn(move || serve(io, card))?;
    Ok(InsertedCard {
        stream,
        thread: Some(thread),
    })
}

impl<C: EmulatedCard + 'static> InsertedCard<C> {
    /// Takes the card out of the reader and hands it back (with its state,
    /// e.g. an NTAG 424's read counter, so it can be inserted again).
    pub fn remove(mut self) -> io::Result<C> {
        let _ = self.stream.shutdown(Shutdown::Both);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(card)) => Ok(card),
            _ => Err(io::Error::other("the emulated card's thread panicked")),
        }
    }
}

impl<C: EmulatedCard + 'static> Drop for InsertedCard<C> {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers vpcd until the connection ends; returns the card.
fn serve<C: EmulatedCard>(mut s: TcpStream, mut card: C) -> C {
    loop {
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).is_err() {
            return card;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if s.read_exact(&mut msg).is_err() {
            return card;
        }
        let reply = match msg.as_slice() {
            [0x00] | [0x01] | [0x02] => {
                card.reset();
                continue;
            }
            [0x04] => card.atr(),
            [_] => continue,
            apdu => card.apdu(apdu),
        };
        let reply = if reply.is_empty() {
            vec![0x6F, 0x00]
        } else {
            reply
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return card;
        };
        let mut frame = n.to_be_bytes().to_vec();
        frame.extend_from_slice(&reply);
        if s.write_all(&frame).is_err() {
            return card;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfc::emu::Ntag21x;
    use std::net::TcpListener;

    /// Plays vpcd's side of the protocol against the emulator over loopback.
    #[test]
    fn emulator_speaks_vpcds_framing() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let tag = Ntag21x::ntag215_with_uri([4, 1, 2, 3, 4, 5, 6], "https://a.example/");
        let inserted = insert(addr, tag, Duration::from_secs(1)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.write_all(&[0, 1, 1]).unwrap(); // power on: no reply expected
        let mut roundtrip = |payload: &[u8]| -> Vec<u8> {
            let mut f = (payload.len() as u16).to_be_bytes().to_vec();
            f.extend_from_slice(payload);
            s.write_all(&f).unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut r).unwrap();
            r
        };
        assert_eq!(roundtrip(&[4])[..2], [0x3B, 0x8F]);
        assert_eq!(
            roundtrip(&[0xFF, 0xCA, 0, 0, 0]),
            [4, 1, 2, 3, 4, 5, 6, 0x90, 0x00]
        );
        let card = inserted.remove().unwrap();
        assert_eq!(card.uid(), [4, 1, 2, 3, 4, 5, 6]);
        // Removal closed the socket: vpcd sees EOF.
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).unwrap(), 0);
    }
}
