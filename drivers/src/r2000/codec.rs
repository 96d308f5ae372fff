//! Sans-IO codec for the Impinj-Indy-R2000 "CMD" serial protocol.
//!
//! One frame shape in both directions:
//!
//! ```text
//! A0 | LEN | ADDR | CMD | DATA[n] | CHECK        LEN = n + 3, total LEN + 2 bytes
//! ```
//!
//! CHECK is the two's complement of the 8-bit sum of every byte before it,
//! header included, so a valid frame sums to 0 mod 256. Replies have no
//! status field: a one-byte DATA reply is a result code (0x10 = success).

use crate::uhf::link::{Decoded, FrameDecoder};
use crate::uhf::{FrameBuffer, Scan};

/// First byte of every frame.
pub const HEADER: u8 = 0xA0;
/// Public (broadcast) reader address.
pub const BROADCAST: u8 = 0xFF;
/// Smallest LEN: ADDR + CMD + CHECK.
pub const MIN_LEN: usize = 3;
/// Largest DATA a LEN byte can describe.
pub const MAX_DATA: usize = 255 - MIN_LEN;

/// Command codes (pyImpinj `enums.py`, vendor Java SDK `CMD.java`).
pub mod cmd {
    pub const READ_GPIO: u8 = 0x60;
    pub const WRITE_GPIO: u8 = 0x61;
    pub const SET_ANT_CONNECTION_DETECTOR: u8 = 0x62;
    pub const GET_ANT_CONNECTION_DETECTOR: u8 = 0x63;
    pub const SET_TEMPORARY_OUTPUT_POWER: u8 = 0x66;
    pub const SET_READER_IDENTIFIER: u8 = 0x67;
    pub const GET_READER_IDENTIFIER: u8 = 0x68;
    pub const SET_RF_LINK_PROFILE: u8 = 0x69;
    pub const GET_RF_LINK_PROFILE: u8 = 0x6A;
    pub const RESET: u8 = 0x70;
    pub const SET_UART_BAUDRATE: u8 = 0x71;
    pub const GET_FIRMWARE_VERSION: u8 = 0x72;
    pub const SET_READER_ADDRESS: u8 = 0x73;
    pub const SET_WORK_ANTENNA: u8 = 0x74;
    pub const GET_WORK_ANTENNA: u8 = 0x75;
    pub const SET_OUTPUT_POWER: u8 = 0x76;
    pub const GET_OUTPUT_POWER: u8 = 0x77;
    pub const SET_FREQUENCY_REGION: u8 = 0x78;
    pub const GET_FREQUENCY_REGION: u8 = 0x79;
    pub const SET_BEEPER_MODE: u8 = 0x7A;
    pub const GET_READER_TEMPERATURE: u8 = 0x7B;
    pub const GET_RF_PORT_RETURN_LOSS: u8 = 0x7E;
    pub const INVENTORY: u8 = 0x80;
    pub const READ_TAG: u8 = 0x81;
    pub const WRITE_TAG: u8 = 0x82;
    pub const LOCK_TAG: u8 = 0x83;
    pub const KILL_TAG: u8 = 0x84;
    pub const SET_ACCESS_EPC_MATCH: u8 = 0x85;
    pub const GET_ACCESS_EPC_MATCH: u8 = 0x86;
    pub const REAL_TIME_INVENTORY: u8 = 0x89;
    pub const FAST_SWITCH_ANT_INVENTORY: u8 = 0x8A;
    pub const CUSTOMIZED_SESSION_TARGET_INVENTORY: u8 = 0x8B;
    pub const SET_IMPINJ_FAST_TID: u8 = 0x8C;
    pub const SET_AND_SAVE_IMPINJ_FAST_TID: u8 = 0x8D;
    pub const GET_IMPINJ_FAST_TID: u8 = 0x8E;
    pub const GET_INVENTORY_BUFFER: u8 = 0x90;
    pub const GET_AND_RESET_INVENTORY_BUFFER: u8 = 0x91;
    pub const GET_INVENTORY_BUFFER_TAG_COUNT: u8 = 0x92;
    pub const RESET_INVENTORY_BUFFER: u8 = 0x93;
    pub const WRITE_BLOCK: u8 = 0x94;
    pub const GET_OUTPUT_POWER_8P: u8 = 0x97;
    pub const OPERATE_TAG_MASK: u8 = 0x98;

    /// Whether `c` is a command code of this protocol. The decoder only
    /// accepts headers followed by one, since 0xA0 is common inside EPCs.
    pub fn is_known(c: u8) -> bool {
        matches!(c, 0x60..=0x63 | 0x66..=0x6A | 0x70..=0x7B | 0x7E | 0x80..=0x86 | 0x89..=0x8E | 0x90..=0x94 | 0x97 | 0x98 | 0xB0..=0xB4)
    }
}

/// Result / error codes (pyImpinj `ImpinjR2KGlobalErrors`).
pub mod code {
    pub const SUCCESS: u8 = 0x10;
    pub const FAIL: u8 = 0x11;
    pub const ANTENNA_MISSING: u8 = 0x22;
    pub const NO_TAG: u8 = 0x36;

    pub fn meaning(c: u8) -> &'static str {
        match c {
            0x10 => "success",
            0x11 => "fail",
            0x20 => "MCU reset error",
            0x21 => "CW on error",
            0x22 => "antenna missing",
            0x23 => "write flash error",
            0x24 => "read flash error",
            0x25 => "set output power error",
            0x31 => "tag inventory error",
            0x32 => "tag read error",
            0x33 => "tag write error",
            0x34 => "tag lock error",
            0x35 => "tag kill error",
            0x36 => "no tag",
            0x37 => "inventory OK but access fail",
            0x38 => "buffer empty",
            0x3C => "NXP custom command fail",
            0x40 => "access/password error",
            0x41 => "parameter invalid",
            0x42 => "word count too long",
            0x43 => "mem bank out of range",
            0x44 => "lock region out of range",
            0x45 => "lock action out of range",
            0x46 => "reader address invalid",
            0x47 => "antenna id out of range",
            0x48 => "output power out of range",
            0x49 => "frequency region out of range",
            0x4A => "baud rate out of range",
            0x4B => "beeper mode out of range",
            0x4C => "EPC match length too long",
            0x4D => "EPC match length error",
            0x4E => "invalid EPC match mode",
            0x4F => "invalid frequency range",
            0x50 => "failed to get RN16 from tag",
            0x51 => "invalid DRM mode",
            0x52 => "PLL lock fail",
            0x53 => "RF chip failed to respond",
            0x54 => "failed to achieve desired output power",
            0x55 => "copyright authentication fail",
            0x56 => "spectrum regulation error",
            0x57 => "output power too low",
            _ => "unknown error code",
        }
    }
}

/// LRC: two's complement of the byte sum.
pub fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    (!sum).wrapping_add(1)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub address: u8,
    pub cmd: u8,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("r2000 frame data is {len} bytes, the protocol allows at most {max}")]
    TooLong { len: usize, max: usize },
}

impl Frame {
    pub fn new(address: u8, cmd: u8, data: impl Into<Vec<u8>>) -> Self {
        Self {
            address,
            cmd,
            data: data.into(),
        }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let len = u8::try_from(self.data.len() + MIN_LEN).map_err(|_| EncodeError::TooLong {
            len: self.data.len(),
            max: MAX_DATA,
        })?;
        let start = out.len();
        out.extend_from_slice(&[HEADER, len, self.address, self.cmd]);
        out.extend_from_slice(&self.data);
        let c = checksum(&out[start..]);
        out.push(c);
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut v = Vec::with_capacity(self.data.len() + 5);
        self.encode_into(&mut v)?;
        Ok(v)
    }

    /// The result code of a one-byte reply.
    pub fn result_code(&self) -> Option<u8> {
        match self.data.as_slice() {
            [c] => Some(*c),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Frame(Frame),
    /// A frame-shaped run of bytes whose checksum did not match; the decoder
    /// moves on by one byte.
    BadChecksum {
        cmd: u8,
        len: usize,
    },
    /// Bytes discarded while looking for a header (one resync).
    Skipped(usize),
}

/// Incremental decoder with resynchronisation. Never panics.
#[derive(Debug, Default)]
pub struct Decoder {
    bytes: FrameBuffer,
    address: Option<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Only accept frames from (or to) this address; makes false headers
    /// inside payloads rarer.
    pub fn with_address(address: u8) -> Self {
        Self {
            address: Some(address),
            ..Self::default()
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes.push(bytes);
    }

    pub fn buffered(&self) -> usize {
        self.bytes.buffered()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Gives up on the partial frame at the front (see
    /// [`FrameBuffer::skip_stale`]). Returns whether anything was skipped.
    pub fn skip_stale(&mut self) -> bool {
        self.bytes.skip_stale()
    }

    pub fn next_event(&mut self) -> Option<Event> {
        let address = self.address;
        let plausible = |w: &[u8]| {
            w.first() == Some(&HEADER)
                && w.get(1).is_none_or(|&len| usize::from(len) >= MIN_LEN)
                && w.get(2)
                    .is_none_or(|&addr| address.is_none_or(|want| addr == want))
                && w.get(3).is_none_or(|&c| cmd::is_known(c))
        };
        let frame = match self.bytes.scan(2, plausible)? {
            Scan::Skipped(n) => return Some(Event::Skipped(n)),
            Scan::Frame(frame) => frame,
        };
        let total = frame.len();
        let len = total - 2;
        let sum = frame.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        if sum == 0 {
            let f = Frame {
                address: *frame.get(2)?,
                cmd: *frame.get(3)?,
                data: frame.get(4..total - 1)?.to_vec(),
            };
            self.bytes.advance(total);
            Some(Event::Frame(f))
        } else {
            let c = frame.get(3).copied().unwrap_or(0);
            self.bytes.advance(1);
            Some(Event::BadChecksum { cmd: c, len })
        }
    }
}

impl FrameDecoder for Decoder {
    type Frame = Frame;
    fn push(&mut self, bytes: &[u8]) {
        Decoder::push(self, bytes);
    }
    fn buffered(&self) -> usize {
        Decoder::buffered(self)
    }
    fn skip_stale(&mut self) -> bool {
        Decoder::skip_stale(self)
    }
    fn next_decoded(&mut self) -> Option<Decoded<Frame>> {
        Some(match self.next_event()? {
            Event::Frame(f) => Decoded::Frame(f),
            Event::BadChecksum { cmd, len } => Decoded::BadCheck { code: cmd, len },
            Event::Skipped(n) => Decoded::Skipped(n),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("r2000 {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

/// One tag singulation from a 0x89 / 0x8A / 0x8B frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRead {
    /// 0-based antenna id (0..=7).
    pub antenna_id: u8,
    /// Index into the region's frequency table.
    pub freq_index: u8,
    pub pc: u16,
    pub epc: Vec<u8>,
    /// RSSI as sent (without the 8-port antenna bit).
    pub rssi_raw: u8,
    pub phase: Option<u16>,
}

impl TagRead {
    /// pyImpinj's conversion.
    pub fn rssi_dbm(&self) -> i16 {
        i16::from(self.rssi_raw) - 129
    }

    /// Carrier frequency for the system regions (FCC, ETSI, CHN).
    pub fn frequency_khz(&self) -> u32 {
        frequency_khz(self.freq_index)
    }

    /// Encodes as a module would (`[FreqAnt][PC][EPC][RSSI][phase]`).
    pub fn encode(&self, eight_ports: bool) -> Vec<u8> {
        let mut d = vec![(self.freq_index << 2) | (self.antenna_id & 0x03)];
        d.extend_from_slice(&self.pc.to_be_bytes());
        d.extend_from_slice(&self.epc);
        let hi = if eight_ports && self.antenna_id >= 4 {
            0x80
        } else {
            0
        };
        d.push((self.rssi_raw & 0x7F) | hi);
        if let Some(p) = self.phase {
            d.extend_from_slice(&p.to_be_bytes());
        }
        d
    }
}

/// Index 0–6: 865.0 + 0.5·i MHz; 7–59: 902.0 + 0.5·(i − 7) MHz.
pub fn frequency_khz(index: u8) -> u32 {
    let i = u32::from(index);
    if i < 7 {
        865_000 + 500 * i
    } else {
        902_000 + 500 * (i - 7)
    }
}

/// What an inventory reply frame carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryItem {
    Tag(TagRead),
    /// 0x89/0x8B end of round.
    RoundEnd {
        antenna_id: u8,
        read_rate: u16,
        total_reads: u32,
    },
    /// 0x8A end of the whole switching cycle.
    FastSwitchEnd {
        total_reads: u32,
        duration_ms: u32,
    },
    /// 0x8A per-antenna error (0x22 = antenna missing).
    AntennaError {
        antenna_id: u8,
        code: u8,
    },
    /// Error for the whole command (0x22 antenna missing, 0x36 no tag...).
    Error(u8),
}

/// Interprets a 0x89 / 0x8A / 0x8B reply. `eight_ports` applies the 8-port
/// readers' convention: RSSI bit 7 is the antenna id's high bit.
pub fn parse_inventory(frame: &Frame, eight_ports: bool) -> Result<InventoryItem, ParseError> {
    let d = frame.data.as_slice();
    let invalid = |detail: String| ParseError::Invalid {
        what: "inventory reply",
        detail,
    };
    match (frame.cmd, d.len()) {
        (_, 1) => Ok(InventoryItem::Error(d[0])),
        (cmd::FAST_SWITCH_ANT_INVENTORY, 2) => Ok(InventoryItem::AntennaError {
            antenna_id: d[0],
            code: d[1],
        }),
        (cmd::FAST_SWITCH_ANT_INVENTORY, 7) => Ok(InventoryItem::FastSwitchEnd {
            total_reads: u32::from_be_bytes([0, d[0], d[1], d[2]]),
            duration_ms: u32::from_be_bytes([d[3], d[4], d[5], d[6]]),
        }),
        (_, 7) => Ok(InventoryItem::RoundEnd {
            antenna_id: d[0],
            read_rate: u16::from_be_bytes([d[1], d[2]]),
            total_reads: u32::from_be_bytes([d[3], d[4], d[5], d[6]]),
        }),
        (_, n) if n >= 4 => {
            let freq_ant = d[0];
            let pc = u16::from_be_bytes([d[1], d[2]]);
            let pc_bytes = usize::from(pc >> 11) * 2;
            // Trust LEN; the PC decides only whether 2 phase bytes follow RSSI.
            let (epc_end, phase) = if n == 4 + pc_bytes + 2 {
                (n - 3, Some(u16::from_be_bytes([d[n - 2], d[n - 1]])))
            } else {
                (n - 1, None)
            };
            let epc = d
                .get(3..epc_end)
                .ok_or_else(|| invalid(format!("tag frame of {n} bytes is too short")))?
                .to_vec();
            let rssi = d[epc_end];
            let (antenna_id, rssi_raw) = if eight_ports {
                ((freq_ant & 0x03) | ((rssi >> 5) & 0x04), rssi & 0x7F)
            } else {
                (freq_ant & 0x03, rssi)
            };
            Ok(InventoryItem::Tag(TagRead {
                antenna_id,
                freq_index: freq_ant >> 2,
                pc,
                epc,
                rssi_raw,
                phase,
            }))
        }
        (c, n) => Err(invalid(format!(
            "command 0x{c:02X} reply of {n} data bytes is no known inventory frame"
        ))),
    }
}

/// Builders for the commands the driver sends.
pub mod build {
    use super::{cmd, Frame};

    pub fn reset(addr: u8) -> Frame {
        Frame::new(addr, cmd::RESET, [])
    }
    pub fn get_firmware_version(addr: u8) -> Frame {
        Frame::new(addr, cmd::GET_FIRMWARE_VERSION, [])
    }
    pub fn set_work_antenna(addr: u8, antenna_id: u8) -> Frame {
        Frame::new(addr, cmd::SET_WORK_ANTENNA, [antenna_id])
    }
    pub fn set_output_power(addr: u8, dbm: u8) -> Frame {
        Frame::new(addr, cmd::SET_OUTPUT_POWER, [dbm])
    }
    pub fn set_output_power_per_port(addr: u8, dbm: [u8; 4]) -> Frame {
        Frame::new(addr, cmd::SET_OUTPUT_POWER, dbm)
    }
    pub fn get_output_power(addr: u8) -> Frame {
        Frame::new(addr, cmd::GET_OUTPUT_POWER, [])
    }
    pub fn set_frequency_region(addr: u8, region: u8, start: u8, end: u8) -> Frame {
        Frame::new(addr, cmd::SET_FREQUENCY_REGION, [region, start, end])
    }
    pub fn get_frequency_region(addr: u8) -> Frame {
        Frame::new(addr, cmd::GET_FREQUENCY_REGION, [])
    }
    pub fn real_time_inventory(addr: u8, repeat: u8) -> Frame {
        Frame::new(addr, cmd::REAL_TIME_INVENTORY, [repeat])
    }
    pub fn session_inventory(addr: u8, session: u8, target: u8, repeat: u8) -> Frame {
        Frame::new(
            addr,
            cmd::CUSTOMIZED_SESSION_TARGET_INVENTORY,
            [session, target, repeat],
        )
    }
    /// Four `(antenna id, stay rounds)` slots; an id > 3 skips the slot.
    pub fn fast_switch(addr: u8, slots: [(u8, u8); 4], interval_ms: u8, repeat: u8) -> Frame {
        let mut d = Vec::with_capacity(10);
        for (a, s) in slots {
            d.push(a);
            d.push(s);
        }
        d.push(interval_ms);
        d.push(repeat);
        Frame::new(addr, cmd::FAST_SWITCH_ANT_INVENTORY, d)
    }
}

#[cfg(test)]
mod tests;
