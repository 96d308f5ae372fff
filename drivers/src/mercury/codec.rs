//! Sans-IO codec for the ThingMagic/JADAK Mercury embedded serial protocol.
//!
//! Frames (all integers big-endian):
//!
//! ```text
//! command : FF | LEN | OPCODE | DATA[LEN] | CRC(2)                 LEN + 5 bytes
//! response: FF | LEN | OPCODE | STATUS(2) | DATA[LEN] | CRC(2)     LEN + 7 bytes
//! ```
//!
//! The CRC covers everything but the `FF` header and the CRC itself, and is
//! ThingMagic's own variant of CRC-16 (see [`crc`]). Nothing here does I/O or
//! reads a clock; [`Decoder`] takes bytes in whatever pieces they arrive and
//! never panics, whatever it is fed.

use std::marker::PhantomData;

use crate::uhf::link::{Decoded, FrameDecoder};
use crate::uhf::{FrameBuffer, Scan};

/// First byte of every frame in both directions.
pub const HEADER: u8 = 0xFF;
/// `TMR_SR_MAX_PACKET_SIZE`: no frame is longer than this.
pub const MAX_FRAME: usize = 255;
/// Largest DATA length of a command (255 − 5 bytes of framing).
pub const MAX_COMMAND_DATA: usize = MAX_FRAME - 5;
/// Largest DATA length of a response (255 − 7 bytes of framing); the Mercury
/// API's receiver uses the same bound (`LEN <= 0xF8`) to resynchronise.
pub const MAX_RESPONSE_DATA: usize = MAX_FRAME - 7;

/// Opcodes (`TMR_SR_OpCode`).
pub mod op {
    pub const WRITE_FLASH: u8 = 0x01;
    pub const READ_FLASH: u8 = 0x02;
    pub const VERSION: u8 = 0x03;
    pub const BOOT_FIRMWARE: u8 = 0x04;
    pub const SET_BAUD_RATE: u8 = 0x06;
    pub const ERASE_FLASH: u8 = 0x07;
    pub const VERIFY_IMAGE_CRC: u8 = 0x08;
    pub const BOOT_BOOTLOADER: u8 = 0x09;
    pub const GET_CURRENT_PROGRAM: u8 = 0x0C;
    pub const HW_VERSION: u8 = 0x10;
    pub const READ_TAG_ID_SINGLE: u8 = 0x21;
    pub const READ_TAG_ID_MULTIPLE: u8 = 0x22;
    pub const WRITE_TAG_ID: u8 = 0x23;
    pub const WRITE_TAG_DATA: u8 = 0x24;
    pub const LOCK_TAG: u8 = 0x25;
    pub const KILL_TAG: u8 = 0x26;
    pub const PASS_THROUGH: u8 = 0x27;
    pub const READ_TAG_DATA: u8 = 0x28;
    pub const GET_TAG_ID_BUFFER: u8 = 0x29;
    pub const CLEAR_TAG_ID_BUFFER: u8 = 0x2A;
    pub const WRITE_TAG_SPECIFIC: u8 = 0x2D;
    pub const ERASE_BLOCK_TAG_SPECIFIC: u8 = 0x2E;
    pub const MULTI_PROTOCOL_TAG_OP: u8 = 0x2F;
    pub const GET_ANTENNA_PORT: u8 = 0x61;
    pub const GET_READ_TX_POWER: u8 = 0x62;
    pub const GET_TAG_PROTOCOL: u8 = 0x63;
    pub const GET_WRITE_TX_POWER: u8 = 0x64;
    pub const GET_FREQ_HOP_TABLE: u8 = 0x65;
    pub const GET_USER_GPIO_INPUTS: u8 = 0x66;
    pub const GET_REGION: u8 = 0x67;
    pub const GET_POWER_MODE: u8 = 0x68;
    pub const GET_USER_MODE: u8 = 0x69;
    pub const GET_READER_OPTIONAL_PARAMS: u8 = 0x6A;
    pub const GET_PROTOCOL_PARAM: u8 = 0x6B;
    pub const GET_READER_STATS: u8 = 0x6C;
    pub const GET_USER_PROFILE: u8 = 0x6D;
    pub const GET_AVAILABLE_PROTOCOLS: u8 = 0x70;
    pub const GET_AVAILABLE_REGIONS: u8 = 0x71;
    pub const GET_TEMPERATURE: u8 = 0x72;
    pub const SET_ANTENNA_PORT: u8 = 0x91;
    pub const SET_READ_TX_POWER: u8 = 0x92;
    pub const SET_TAG_PROTOCOL: u8 = 0x93;
    pub const SET_WRITE_TX_POWER: u8 = 0x94;
    pub const SET_FREQ_HOP_TABLE: u8 = 0x95;
    pub const SET_USER_GPIO_OUTPUTS: u8 = 0x96;
    pub const SET_REGION: u8 = 0x97;
    pub const SET_POWER_MODE: u8 = 0x98;
    pub const SET_USER_MODE: u8 = 0x99;
    pub const SET_READER_OPTIONAL_PARAMS: u8 = 0x9A;
    pub const SET_PROTOCOL_PARAM: u8 = 0x9B;
    pub const SET_USER_PROFILE: u8 = 0x9D;
    pub const SET_PROTOCOL_LICENSEKEY: u8 = 0x9E;
    pub const SET_OPERATING_FREQ: u8 = 0xC1;
    pub const TX_CW_SIGNAL: u8 = 0xC3;

    /// Every opcode in the protocol. The decoder only accepts a header
    /// followed by one of these, which makes false headers inside garbage
    /// (and inside the previous frame's payload) much rarer.
    pub const ALL: &[u8] = &[
        WRITE_FLASH,
        READ_FLASH,
        VERSION,
        BOOT_FIRMWARE,
        SET_BAUD_RATE,
        ERASE_FLASH,
        VERIFY_IMAGE_CRC,
        BOOT_BOOTLOADER,
        GET_CURRENT_PROGRAM,
        HW_VERSION,
        READ_TAG_ID_SINGLE,
        READ_TAG_ID_MULTIPLE,
        WRITE_TAG_ID,
        WRITE_TAG_DATA,
        LOCK_TAG,
        KILL_TAG,
        PASS_THROUGH,
        READ_TAG_DATA,
        GET_TAG_ID_BUFFER,
        CLEAR_TAG_ID_BUFFER,
        WRITE_TAG_SPECIFIC,
        ERASE_BLOCK_TAG_SPECIFIC,
        MULTI_PROTOCOL_TAG_OP,
        GET_ANTENNA_PORT,
        GET_READ_TX_POWER,
        GET_TAG_PROTOCOL,
        GET_WRITE_TX_POWER,
        GET_FREQ_HOP_TABLE,
        GET_USER_GPIO_INPUTS,
        GET_REGION,
        GET_POWER_MODE,
        GET_USER_MODE,
        GET_READER_OPTIONAL_PARAMS,
        GET_PROTOCOL_PARAM,
        GET_READER_STATS,
        GET_USER_PROFILE,
        GET_AVAILABLE_PROTOCOLS,
        GET_AVAILABLE_REGIONS,
        GET_TEMPERATURE,
        SET_ANTENNA_PORT,
        SET_READ_TX_POWER,
        SET_TAG_PROTOCOL,
        SET_WRITE_TX_POWER,
        SET_FREQ_HOP_TABLE,
        SET_USER_GPIO_OUTPUTS,
        SET_REGION,
        SET_POWER_MODE,
        SET_USER_MODE,
        SET_READER_OPTIONAL_PARAMS,
        SET_PROTOCOL_PARAM,
        SET_USER_PROFILE,
        SET_PROTOCOL_LICENSEKEY,
        SET_OPERATING_FREQ,
        TX_CW_SIGNAL,
    ];

    pub fn is_known(opcode: u8) -> bool {
        ALL.contains(&opcode)
    }
}

/// Status words (`tmr_status.h`) the driver acts on.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const WRONG_NUMBER_OF_DATA: u16 = 0x0100;
    pub const INVALID_OPCODE: u16 = 0x0101;
    pub const NO_TAGS_FOUND: u16 = 0x0400;
    pub const ANTENNA_NOT_CONNECTED: u16 = 0x0503;
    pub const TEMPERATURE_EXCEEDS_LIMITS: u16 = 0x0504;
    pub const HIGH_RETURN_LOSS: u16 = 0x0505;
    pub const TAG_ID_BUFFER_NOT_ENOUGH_TAGS: u16 = 0x0600;

    /// A short human description of a status word, for logs and health.
    pub fn meaning(code: u16) -> &'static str {
        match code {
            0x0000 => "success",
            0x0100 => "wrong number of data",
            0x0101 => "invalid opcode (or module in bootloader)",
            0x0102 => "unimplemented opcode",
            0x0103 => "power too high",
            0x0104 => "invalid frequency",
            0x0105 => "invalid parameter value",
            0x0106 => "power too low",
            0x0109 => "unimplemented feature",
            0x010A => "invalid baud rate",
            0x010B => "invalid region",
            0x010C => "invalid license key",
            0x0200 | 0x0201 => "bootloader image error",
            0x0300..=0x0306 => "flash error",
            0x0400 => "no tags found",
            0x0401 => "no protocol defined",
            0x0402 => "invalid protocol",
            0x0403 => "write passed, lock failed",
            0x0404 => "no data read",
            0x0405 => "AFE not on",
            0x0406 => "write failed",
            0x0407 => "not implemented for this protocol",
            0x0408 => "invalid write data",
            0x0409 => "invalid address",
            0x040A => "general tag error",
            0x040B => "data too large",
            0x040C => "invalid kill password",
            0x040E => "kill failed",
            0x040F => "bit decoding failed",
            0x0410 => "invalid EPC",
            0x0411 => "invalid num data",
            0x0413 => "invalid tag op",
            0x0420 => "Gen2 other error",
            0x0423 => "Gen2 memory overrun / bad PC",
            0x0424 => "Gen2 memory locked",
            0x042B => "Gen2 insufficient power",
            0x042F => "Gen2 non-specific error",
            0x0430 => "Gen2 unknown error",
            0x0500 => "invalid frequency",
            0x0501 => "channel occupied",
            0x0502 => "transmitter on",
            0x0503 => "antenna not connected",
            0x0504 => "temperature exceeds limits",
            0x0505 => "high return loss",
            0x0507 => "invalid antenna configuration",
            0x0509 => "input voltage exceeds limits",
            0x0600 => "tag-ID buffer: not enough tags",
            0x0601 => "tag-ID buffer full",
            0x0602 => "repeated tag ID",
            0x0603 => "number of tags too large",
            0x7F00 => "system unknown error",
            0x7F01 => "assert failed",
            _ => "unknown status",
        }
    }
}

/// Metadata flags (`TMR_TRD_MetadataFlag`). Fields appear in a tag record in
/// ascending flag order.
pub mod meta {
    pub const READCOUNT: u16 = 0x0001;
    pub const RSSI: u16 = 0x0002;
    pub const ANTENNAID: u16 = 0x0004;
    pub const FREQUENCY: u16 = 0x0008;
    pub const TIMESTAMP: u16 = 0x0010;
    pub const PHASE: u16 = 0x0020;
    pub const PROTOCOL: u16 = 0x0040;
    pub const DATA: u16 = 0x0080;
    pub const GPIO_STATUS: u16 = 0x0100;
    /// Everything up to GPIO: what SparkFun requests, and what this codec
    /// can parse. Higher flags have sizes not pinned down by the reference.
    pub const ALL_SUPPORTED: u16 = 0x01FF;
}

/// Search flags for READ_TAG_ID_MULTIPLE.
pub mod search {
    pub const CONFIGURED_LIST: u16 = 0x0003;
    pub const EMBEDDED_COMMAND: u16 = 0x0004;
    pub const TAG_STREAMING: u16 = 0x0008;
    pub const LARGE_TAG_POPULATION_SUPPORT: u16 = 0x0010;
}

/// Gen2 tag protocol id.
pub const PROTOCOL_GEN2: u8 = 0x05;
/// Singulation option byte flag: metadata flags follow.
pub const OPTION_METADATA: u8 = 0x10;

const CRC_TABLE: [u16; 16] = [
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7, 0x8108, 0x9129, 0xa14a, 0xb16b,
    0xc18c, 0xd1ad, 0xe1ce, 0xf1ef,
];

/// ThingMagic's frame CRC (`tm_crc` in the Mercury API).
///
/// Polynomial 0x1021, register preset 0xFFFF, but the data nibbles are
/// shifted into the low end of the register without augmentation, so it is
/// *not* CRC-16/CCITT-FALSE: over `"123456789"` it gives 0xA69D (CCITT-FALSE
/// gives 0x29B1).
pub fn crc(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc = ((crc << 4) | u16::from(b >> 4)) ^ CRC_TABLE[usize::from(crc >> 12)];
        crc = ((crc << 4) | u16::from(b & 0x0F)) ^ CRC_TABLE[usize::from(crc >> 12)];
    }
    crc
}

/// The Gen2 tag CRC-16 over PC + EPC (CRC-16/GENIBUS: poly 0x1021, preset
/// 0xFFFF, final XOR 0xFFFF). Simulators use it to build realistic records.
pub fn gen2_crc(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    !crc
}

/// A host-to-module frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub opcode: u8,
    pub data: Vec<u8>,
}

/// A module-to-host frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub opcode: u8,
    pub status: u16,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("mercury frame data is {len} bytes, the protocol allows at most {max}")]
    TooLong { len: usize, max: usize },
}

impl Command {
    pub fn new(opcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Self {
            opcode,
            data: data.into(),
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let len = u8::try_from(self.data.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_COMMAND_DATA)
            .ok_or(EncodeError::TooLong {
                len: self.data.len(),
                max: MAX_COMMAND_DATA,
            })?;
        let start = out.len();
        out.push(HEADER);
        out.push(len);
        out.push(self.opcode);
        out.extend_from_slice(&self.data);
        let c = crc(&out[start + 1..]);
        out.extend_from_slice(&c.to_be_bytes());
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.data.len() + 5);
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

impl Response {
    pub fn new(opcode: u8, status: u16, data: impl Into<Vec<u8>>) -> Self {
        Self {
            opcode,
            status,
            data: data.into(),
        }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let len = u8::try_from(self.data.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_RESPONSE_DATA)
            .ok_or(EncodeError::TooLong {
                len: self.data.len(),
                max: MAX_RESPONSE_DATA,
            })?;
        let start = out.len();
        out.push(HEADER);
        out.push(len);
        out.push(self.opcode);
        out.extend_from_slice(&self.status.to_be_bytes());
        out.extend_from_slice(&self.data);
        let c = crc(&out[start + 1..]);
        out.extend_from_slice(&c.to_be_bytes());
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.data.len() + 7);
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

/// The two frame shapes, so one decoder serves the driver (responses) and
/// the simulator (commands).
pub trait FrameKind: Sized {
    /// Bytes of framing around DATA.
    const OVERHEAD: usize;
    const MAX_DATA: usize;
    /// Builds the frame from a complete, CRC-checked frame.
    fn from_frame(frame: &[u8]) -> Option<Self>;
}

impl FrameKind for Command {
    const OVERHEAD: usize = 5;
    const MAX_DATA: usize = MAX_COMMAND_DATA;
    fn from_frame(frame: &[u8]) -> Option<Self> {
        let opcode = *frame.get(2)?;
        let data = frame.get(3..frame.len().checked_sub(2)?)?.to_vec();
        Some(Self { opcode, data })
    }
}

impl FrameKind for Response {
    const OVERHEAD: usize = 7;
    const MAX_DATA: usize = MAX_RESPONSE_DATA;
    fn from_frame(frame: &[u8]) -> Option<Self> {
        let opcode = *frame.get(2)?;
        let status = u16::from_be_bytes([*frame.get(3)?, *frame.get(4)?]);
        let data = frame.get(5..frame.len().checked_sub(2)?)?.to_vec();
        Some(Self {
            opcode,
            status,
            data,
        })
    }
}

/// What the decoder found next in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<F> {
    /// A frame whose CRC checked out.
    Frame(F),
    /// Something shaped like a frame whose CRC did not match. The decoder
    /// moves on by one byte, so a corrupted LEN cannot swallow good frames.
    BadCrc { opcode: u8, len: usize },
    /// Bytes discarded while looking for the next header (one resync).
    Skipped(usize),
}

/// Incremental frame decoder with resynchronisation.
///
/// Push bytes as they arrive, then call [`Decoder::next_event`] until it
/// returns `None` (more bytes needed). Memory use is bounded by what you push
/// between calls plus one frame.
#[derive(Debug)]
pub struct Decoder<F> {
    bytes: FrameBuffer,
    _kind: PhantomData<fn() -> F>,
}

impl<F: FrameKind> Default for Decoder<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: FrameKind> Decoder<F> {
    pub fn new() -> Self {
        Self {
            bytes: FrameBuffer::with_capacity(2 * MAX_FRAME),
            _kind: PhantomData,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes.push(bytes);
    }

    /// Bytes held waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.bytes.buffered()
    }

    /// Drops everything buffered (after a port reopen).
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Gives up on the partial frame at the front (see
    /// [`FrameBuffer::skip_stale`]). Returns whether anything was skipped.
    pub fn skip_stale(&mut self) -> bool {
        self.bytes.skip_stale()
    }

    fn plausible_header(w: &[u8]) -> bool {
        w.first() == Some(&HEADER)
            && w.get(1).is_none_or(|&len| usize::from(len) <= F::MAX_DATA)
            && w.get(2).is_none_or(|&opcode| op::is_known(opcode))
    }

    pub fn next_event(&mut self) -> Option<Event<F>> {
        let frame = match self.bytes.scan(F::OVERHEAD, Self::plausible_header)? {
            Scan::Skipped(n) => return Some(Event::Skipped(n)),
            Scan::Frame(frame) => frame,
        };
        let total = frame.len();
        let len = total - F::OVERHEAD;
        let body = frame.get(1..total - 2)?;
        let got = u16::from_be_bytes([*frame.get(total - 2)?, *frame.get(total - 1)?]);
        if crc(body) == got {
            let f = F::from_frame(frame);
            self.bytes.advance(total);
            match f {
                Some(f) => Some(Event::Frame(f)),
                // Unreachable given the length checks above, but a decoder
                // that cannot panic reports it rather than asserting it.
                None => Some(Event::BadCrc { opcode: 0, len }),
            }
        } else {
            let opcode = frame.get(2).copied().unwrap_or(0);
            self.bytes.advance(1);
            Some(Event::BadCrc { opcode, len })
        }
    }
}

impl<F: FrameKind> FrameDecoder for Decoder<F> {
    type Frame = F;
    fn push(&mut self, bytes: &[u8]) {
        Decoder::push(self, bytes);
    }
    fn buffered(&self) -> usize {
        Decoder::buffered(self)
    }
    fn skip_stale(&mut self) -> bool {
        Decoder::skip_stale(self)
    }
    fn next_decoded(&mut self) -> Option<Decoded<F>> {
        Some(match self.next_event()? {
            Event::Frame(f) => Decoded::Frame(f),
            Event::BadCrc { opcode, len } => Decoded::BadCheck { code: opcode, len },
            Event::Skipped(n) => Decoded::Skipped(n),
        })
    }
}

/// Why a frame's DATA could not be interpreted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("mercury {what}: data ends after {at} bytes, expected more")]
    Truncated { what: &'static str, at: usize },
    #[error("mercury {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, at: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let s = self
            .buf
            .get(self.at..self.at.saturating_add(n))
            .ok_or(ParseError::Truncated {
                what: self.what,
                at: self.at,
            })?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Result<u32, ParseError> {
        let b = self.take(3)?;
        Ok(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.at..).unwrap_or(&[])
    }
}

/// VERSION / BOOT_FIRMWARE reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub bootloader: [u8; 4],
    pub hardware: [u8; 4],
    pub fw_date: [u8; 4],
    pub fw_version: [u8; 4],
    pub protocols: u32,
}

impl VersionInfo {
    pub fn parse(data: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(data, "version reply");
        let mut four = || -> Result<[u8; 4], ParseError> {
            let b = r.take(4)?;
            Ok([b[0], b[1], b[2], b[3]])
        };
        let bootloader = four()?;
        let hardware = four()?;
        let fw_date = four()?;
        let fw_version = four()?;
        let protocols = r.u32()?;
        Ok(Self {
            bootloader,
            hardware,
            fw_date,
            fw_version,
            protocols,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(20);
        v.extend_from_slice(&self.bootloader);
        v.extend_from_slice(&self.hardware);
        v.extend_from_slice(&self.fw_date);
        v.extend_from_slice(&self.fw_version);
        v.extend_from_slice(&self.protocols.to_be_bytes());
        v
    }

    /// Firmware version as printed by ThingMagic tools, e.g. `02.01.06.08`.
    pub fn firmware(&self) -> String {
        let v = self.fw_version;
        format!("{:02X}.{:02X}.{:02X}.{:02X}", v[0], v[1], v[2], v[3])
    }

    pub fn model(&self) -> &'static str {
        match self.hardware[0] {
            0x00 => "M5e",
            0x01 => "M5e-Compact",
            0x02 => "M5e-I",
            0x03 => "M4e",
            0x18 => "M6e",
            0x19 => "M6e-I",
            0x20 => "M6e-Micro",
            0x30 => "M6e-Nano",
            0x38 => "M7e (unverified id 0x38)",
            0x80 => "M3e",
            _ => "unknown",
        }
    }

    pub fn supports_gen2(&self) -> bool {
        self.protocols & (1 << (PROTOCOL_GEN2 - 1)) != 0
    }
}

/// One tag record with its metadata (`TMR_SR_parseMetadataFromMessage`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TagRecord {
    pub read_count: Option<u8>,
    pub rssi_dbm: Option<i8>,
    /// Raw antenna byte: `tx << 4 | rx`.
    pub antenna: Option<u8>,
    pub frequency_khz: Option<u32>,
    pub timestamp_ms: Option<u32>,
    pub phase_deg: Option<u16>,
    pub protocol: Option<u8>,
    /// Embedded tag-operation data (e.g. the TID read alongside the EPC).
    pub data: Option<Vec<u8>>,
    /// Error code when the embedded operation failed (bit length 0x8000).
    pub data_error: Option<u16>,
    pub gpio: Option<u8>,
    pub pc: u16,
    /// XPC_W1 and, if its MSB is set, XPC_W2.
    pub xpc: Vec<u16>,
    pub epc: Vec<u8>,
    pub tag_crc: u16,
}

impl TagRecord {
    /// Antenna port (1-based) the tag was received on.
    pub fn rx_antenna(&self) -> Option<u8> {
        self.antenna.map(|a| a & 0x0F)
    }

    /// Parses one record whose metadata fields are those in `flags`.
    /// Returns the record and the number of bytes it took.
    pub fn parse(flags: u16, buf: &[u8]) -> Result<(Self, usize), ParseError> {
        if flags & !meta::ALL_SUPPORTED != 0 {
            return Err(ParseError::Invalid {
                what: "tag record",
                detail: format!(
                    "metadata flags 0x{flags:04X} include fields this driver cannot parse (supported: 0x{:04X})",
                    meta::ALL_SUPPORTED
                ),
            });
        }
        let mut r = Reader::new(buf, "tag record");
        let mut t = TagRecord::default();
        if flags & meta::READCOUNT != 0 {
            t.read_count = Some(r.u8()?);
        }
        if flags & meta::RSSI != 0 {
            t.rssi_dbm = Some(r.u8()? as i8);
        }
        if flags & meta::ANTENNAID != 0 {
            t.antenna = Some(r.u8()?);
        }
        if flags & meta::FREQUENCY != 0 {
            t.frequency_khz = Some(r.u24()?);
        }
        if flags & meta::TIMESTAMP != 0 {
            t.timestamp_ms = Some(r.u32()?);
        }
        if flags & meta::PHASE != 0 {
            t.phase_deg = Some(r.u16()?);
        }
        if flags & meta::PROTOCOL != 0 {
            t.protocol = Some(r.u8()?);
        }
        if flags & meta::DATA != 0 {
            let bits = r.u16()?;
            if bits == 0x8000 {
                t.data_error = Some(r.u16()?);
            } else {
                let bytes = usize::from(bits).div_ceil(8);
                let d = r.take(bytes)?;
                if !d.is_empty() {
                    t.data = Some(d.to_vec());
                }
            }
        }
        if flags & meta::GPIO_STATUS != 0 {
            t.gpio = Some(r.u8()?);
        }
        let epc_bits = usize::from(r.u16()?);
        if epc_bits % 8 != 0 {
            return Err(ParseError::Invalid {
                what: "tag record",
                detail: format!("EPC bit length {epc_bits} is not a whole number of bytes"),
            });
        }
        let mut remaining = (epc_bits / 8)
            .checked_sub(4)
            .ok_or_else(|| ParseError::Invalid {
                what: "tag record",
                detail: format!("EPC bit length {epc_bits} is shorter than PC + CRC"),
            })?;
        t.pc = r.u16()?;
        if t.pc & 0x0200 != 0 {
            let w1 = r.u16()?;
            t.xpc.push(w1);
            remaining = remaining
                .checked_sub(2)
                .ok_or_else(|| ParseError::Invalid {
                    what: "tag record",
                    detail: "XPC flagged but no room for it".into(),
                })?;
            if w1 & 0x8000 != 0 {
                t.xpc.push(r.u16()?);
                remaining = remaining
                    .checked_sub(2)
                    .ok_or_else(|| ParseError::Invalid {
                        what: "tag record",
                        detail: "XPC_W2 flagged but no room for it".into(),
                    })?;
            }
        }
        t.epc = r.take(remaining)?.to_vec();
        t.tag_crc = r.u16()?;
        Ok((t, r.at))
    }

    /// Encodes the record with the fields in `flags` (absent ones as zero).
    pub fn encode_into(&self, flags: u16, out: &mut Vec<u8>) {
        if flags & meta::READCOUNT != 0 {
            out.push(self.read_count.unwrap_or(1));
        }
        if flags & meta::RSSI != 0 {
            out.push(self.rssi_dbm.unwrap_or(0) as u8);
        }
        if flags & meta::ANTENNAID != 0 {
            out.push(self.antenna.unwrap_or(0x11));
        }
        if flags & meta::FREQUENCY != 0 {
            out.extend_from_slice(&self.frequency_khz.unwrap_or(0).to_be_bytes()[1..]);
        }
        if flags & meta::TIMESTAMP != 0 {
            out.extend_from_slice(&self.timestamp_ms.unwrap_or(0).to_be_bytes());
        }
        if flags & meta::PHASE != 0 {
            out.extend_from_slice(&self.phase_deg.unwrap_or(0).to_be_bytes());
        }
        if flags & meta::PROTOCOL != 0 {
            out.push(self.protocol.unwrap_or(PROTOCOL_GEN2));
        }
        if flags & meta::DATA != 0 {
            if let Some(code) = self.data_error {
                out.extend_from_slice(&0x8000u16.to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
            } else {
                let d = self.data.as_deref().unwrap_or(&[]);
                let bits = u16::try_from(d.len() * 8).unwrap_or(0);
                out.extend_from_slice(&bits.to_be_bytes());
                out.extend_from_slice(&d[..usize::from(bits / 8)]);
            }
        }
        if flags & meta::GPIO_STATUS != 0 {
            out.push(self.gpio.unwrap_or(0));
        }
        let bytes = 4 + 2 * self.xpc.len() + self.epc.len();
        let bits = u16::try_from(bytes * 8).unwrap_or(0);
        out.extend_from_slice(&bits.to_be_bytes());
        out.extend_from_slice(&self.pc.to_be_bytes());
        for w in &self.xpc {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&self.epc);
        out.extend_from_slice(&self.tag_crc.to_be_bytes());
    }

    /// A Gen2 record for `epc` with a matching PC word and tag CRC.
    pub fn gen2(epc: &[u8]) -> Self {
        let words = u16::try_from(epc.len().div_ceil(2)).unwrap_or(0) & 0x1F;
        let pc = words << 11;
        let mut crc_input = pc.to_be_bytes().to_vec();
        crc_input.extend_from_slice(epc);
        Self {
            pc,
            epc: epc.to_vec(),
            tag_crc: gen2_crc(&crc_input),
            protocol: Some(PROTOCOL_GEN2),
            ..Self::default()
        }
    }
}

/// Parameters of a READ_TAG_ID_MULTIPLE command (sync, or the sub-command of
/// a continuous-read start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMultiple {
    pub search_flags: u16,
    pub timeout_ms: u16,
    pub metadata: u16,
    /// Embedded Gen2 read `(bank, word address, word count)`, e.g. TID.
    pub embedded_read: Option<(u8, u32, u8)>,
}

/// Gen2 memory bank of the TID.
pub const BANK_TID: u8 = 0x02;

impl ReadMultiple {
    /// `[opt][searchFlags][timeout][metadata][embedded…]` (no opcode).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![OPTION_METADATA];
        let mut flags = self.search_flags;
        if self.embedded_read.is_some() {
            flags |= search::EMBEDDED_COMMAND;
        }
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&self.timeout_ms.to_be_bytes());
        v.extend_from_slice(&self.metadata.to_be_bytes());
        if let Some((bank, addr, words)) = self.embedded_read {
            // count, length (after the opcode), READ_TAG_DATA, timeout,
            // option, bank, address, word count.
            v.extend_from_slice(&[1, 9, op::READ_TAG_DATA]);
            v.extend_from_slice(&self.timeout_ms.to_be_bytes());
            v.push(0);
            v.push(bank);
            v.extend_from_slice(&addr.to_be_bytes());
            v.push(words);
        }
        v
    }

    pub fn parse(data: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(data, "read-multiple command");
        let mut opt = r.u8()?;
        if opt & 0x80 != 0 {
            // BAP / read-after-write / multi-select prefix.
            opt = r.u8()?;
        }
        let search_flags = r.u16()?;
        let timeout_ms = r.u16()?;
        let metadata = if opt & OPTION_METADATA != 0 {
            r.u16()?
        } else {
            0
        };
        let embedded_read = if search_flags & search::EMBEDDED_COMMAND != 0 {
            let _count = r.u8()?;
            let _len = r.u8()?;
            let opcode = r.u8()?;
            if opcode != op::READ_TAG_DATA {
                return Err(ParseError::Invalid {
                    what: "read-multiple command",
                    detail: format!("embedded opcode 0x{opcode:02X} is not READ_TAG_DATA"),
                });
            }
            let _timeout = r.u16()?;
            let _opt = r.u8()?;
            let bank = r.u8()?;
            let addr = r.u32()?;
            let words = r.u8()?;
            Some((bank, addr, words))
        } else {
            None
        };
        Ok(Self {
            search_flags,
            timeout_ms,
            metadata,
            embedded_read,
        })
    }
}

/// Builders for the commands the driver sends.
pub mod cmd {
    use super::*;

    pub fn version() -> Command {
        Command::new(op::VERSION, [])
    }
    pub fn get_current_program() -> Command {
        Command::new(op::GET_CURRENT_PROGRAM, [])
    }
    pub fn boot_firmware() -> Command {
        Command::new(op::BOOT_FIRMWARE, [])
    }
    pub fn set_tag_protocol_gen2() -> Command {
        Command::new(op::SET_TAG_PROTOCOL, [0x00, PROTOCOL_GEN2])
    }
    /// Logical antenna search list: each port transmits and receives on itself.
    pub fn set_antenna_list(ports: &[u8]) -> Command {
        let mut d = vec![0x02];
        for &p in ports {
            d.extend_from_slice(&[p, p]);
        }
        Command::new(op::SET_ANTENNA_PORT, d)
    }
    pub fn set_region(region: u8) -> Command {
        Command::new(op::SET_REGION, [region])
    }
    pub fn set_read_power(cdbm: i16) -> Command {
        Command::new(op::SET_READ_TX_POWER, cdbm.to_be_bytes())
    }
    /// Turns the module's duplicate filter off so every singulation is reported.
    pub fn read_filter_off() -> Command {
        Command::new(op::SET_READER_OPTIONAL_PARAMS, [0x01, 0x0C, 0x00])
    }
    pub fn gen2_session(session: u8) -> Command {
        Command::new(op::SET_PROTOCOL_PARAM, [PROTOCOL_GEN2, 0x00, session])
    }
    pub fn read_multiple(rm: &ReadMultiple) -> Command {
        Command::new(op::READ_TAG_ID_MULTIPLE, rm.encode())
    }
    /// `2F 0000 01 22 0000 05 subLen [22 …]`: start continuous reading.
    pub fn start_continuous(rm: &ReadMultiple) -> Command {
        let sub = rm.encode();
        let mut d = vec![0x00, 0x00, 0x01, op::READ_TAG_ID_MULTIPLE, 0x00, 0x00];
        d.push(PROTOCOL_GEN2);
        d.push(u8::try_from(sub.len()).unwrap_or(u8::MAX));
        d.push(op::READ_TAG_ID_MULTIPLE);
        d.extend_from_slice(&sub);
        Command::new(op::MULTI_PROTOCOL_TAG_OP, d)
    }
    pub fn stop_continuous() -> Command {
        Command::new(op::MULTI_PROTOCOL_TAG_OP, [0x00, 0x00, 0x02])
    }
    /// `29 [metadata u16] [readOptions 00]`: the next records from the read
    /// index on (the module moves the index past them).
    pub fn get_tag_buffer(metadata: u16) -> Command {
        let m = metadata.to_be_bytes();
        Command::new(op::GET_TAG_ID_BUFFER, [m[0], m[1], 0x00])
    }
    /// `29 [metadata u16] [readOptions 01]`: the records of the previous
    /// fetch again (the Mercury API's `resend`; see [`super::tag_buffer`]).
    pub fn get_tag_buffer_resend(metadata: u16) -> Command {
        let m = metadata.to_be_bytes();
        Command::new(
            op::GET_TAG_ID_BUFFER,
            [m[0], m[1], super::tag_buffer::READ_OPTION_RESEND],
        )
    }
    /// `29` with no data: the buffer's read and write indices.
    pub fn get_tag_buffer_indices() -> Command {
        Command::new(op::GET_TAG_ID_BUFFER, [])
    }
    pub fn clear_tag_buffer() -> Command {
        Command::new(op::CLEAR_TAG_ID_BUFFER, [])
    }
}

/// Parses the sub-command out of a continuous-start (0x2F option 01) command.
pub fn parse_start_continuous(data: &[u8]) -> Result<ReadMultiple, ParseError> {
    let mut r = Reader::new(data, "continuous-start command");
    let _timeout = r.u16()?;
    let option = r.u8()?;
    if option != 0x01 {
        return Err(ParseError::Invalid {
            what: "continuous-start command",
            detail: format!("option 0x{option:02X} is not 'start'"),
        });
    }
    let _sub_opcode = r.u8()?;
    let _flags = r.u16()?;
    let _protocol = r.u8()?;
    let sub_len = usize::from(r.u8()?);
    let _opcode = r.u8()?;
    let sub = r.take(sub_len)?;
    ReadMultiple::parse(sub)
}

/// What a streamed 0x22 frame carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    Tag(TagRecord),
    /// Per-cycle "no tags" keep-alive (LEN 0, status 0x0400).
    KeepAlive,
    /// End-of-cycle summary with the number of tags found.
    CycleSummary {
        tags: u32,
    },
    /// Status/statistics report (response type 0x02).
    StatusReport,
    /// Response type 0x00: the module ended the stream.
    EndOfStream,
}

/// Interprets a 0x22 frame received while continuous reading is on.
/// Non-zero statuses other than "no tags" are for the caller to report.
pub fn parse_stream_frame(resp: &Response) -> Result<StreamItem, ParseError> {
    if resp.status == status::NO_TAGS_FOUND {
        return Ok(StreamItem::KeepAlive);
    }
    let d = &resp.data;
    if matches!(d.len(), 4 | 5 | 7 | 8) {
        return Ok(StreamItem::CycleSummary {
            tags: parse_read_multiple_count(d)?,
        });
    }
    let mut r = Reader::new(d, "streamed tag frame");
    let mut opt = r.u8()?;
    if opt & 0x80 != 0 {
        opt = r.u8()?;
    }
    let _search = r.u16()?;
    let flags = if opt & OPTION_METADATA != 0 {
        r.u16()?
    } else {
        0
    };
    match r.u8()? {
        0x01 => {
            let (rec, _) = TagRecord::parse(flags, r.rest())?;
            Ok(StreamItem::Tag(rec))
        }
        0x02 => Ok(StreamItem::StatusReport),
        0x00 => Ok(StreamItem::EndOfStream),
        other => Err(ParseError::Invalid {
            what: "streamed tag frame",
            detail: format!("unknown response type 0x{other:02X}"),
        }),
    }
}

/// Builds a streamed tag frame's DATA (as a module sends it).
pub fn encode_stream_tag(search_flags: u16, flags: u16, rec: &TagRecord) -> Vec<u8> {
    let mut d = vec![OPTION_METADATA];
    d.extend_from_slice(&search_flags.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    d.push(0x01);
    rec.encode_into(flags, &mut d);
    d
}

/// Tag count from a sync READ_TAG_ID_MULTIPLE reply (`TMR_SR_cmdReadTagMultiple`).
pub fn parse_read_multiple_count(d: &[u8]) -> Result<u32, ParseError> {
    let mut r = Reader::new(d, "read-multiple reply");
    match d.len() {
        4 => {
            r.take(3)?;
            Ok(u32::from(r.u8()?))
        }
        5 => {
            r.take(4)?;
            Ok(u32::from(r.u8()?))
        }
        7 => {
            r.take(3)?;
            r.u32()
        }
        8 => {
            r.take(4)?;
            r.u32()
        }
        n => Err(ParseError::Invalid {
            what: "read-multiple reply",
            detail: format!("unexpected length {n}"),
        }),
    }
}

/// The module's tag buffer as GET_TAG_ID_BUFFER without arguments reports
/// it (`TMR_SR_cmdGetTagsRemaining`: read index at frame offset 5, write
/// index at offset 7).
pub mod tag_buffer {
    /// Read option of `29 [metadata] [option]`: send the previous fetch's
    /// records again (the Java Mercury API's `cmdGetTagBuffer(…, resend)`).
    pub const READ_OPTION_RESEND: u8 = 0x01;
    /// The indices are u16 on the wire, so the buffer never holds more.
    pub const MAX_RECORDS: u32 = u16::MAX as u32;
    /// The shortest record: EPC bit length, PC and tag CRC, no metadata.
    pub const MIN_RECORD_BYTES: usize = 6;
}

/// Read and write index of the module's tag buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferIndices {
    /// Records before it were already fetched (since the last clear).
    pub read: u16,
    /// Records before it are in the buffer.
    pub write: u16,
}

impl BufferIndices {
    /// Records not fetched yet.
    pub fn remaining(&self) -> u16 {
        self.write.saturating_sub(self.read)
    }

    /// Parses `[readIndex u16][writeIndex u16]`. A read index past the
    /// write index is rejected rather than wrapped into a huge count.
    pub fn parse(d: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(d, "tag-buffer indices");
        let read = r.u16()?;
        let write = r.u16()?;
        if read > write {
            return Err(ParseError::Invalid {
                what: "tag-buffer indices",
                detail: format!("read index {read} is past write index {write}"),
            });
        }
        Ok(Self { read, write })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut d = self.read.to_be_bytes().to_vec();
        d.extend_from_slice(&self.write.to_be_bytes());
        d
    }
}

/// Records from a GET_TAG_ID_BUFFER reply:
/// `[metadataFlags u16][readOptions u8][count u8][records…]`.
/// The count is checked against the bytes that follow before anything is
/// allocated for it.
pub fn parse_tag_buffer(d: &[u8]) -> Result<Vec<TagRecord>, ParseError> {
    let mut r = Reader::new(d, "tag-buffer reply");
    let flags = r.u16()?;
    let _options = r.u8()?;
    let count = r.u8()?;
    let mut rest = r.rest();
    if usize::from(count) > rest.len() / tag_buffer::MIN_RECORD_BYTES {
        return Err(ParseError::Invalid {
            what: "tag-buffer reply",
            detail: format!("{count} records cannot fit in {} bytes", rest.len()),
        });
    }
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (rec, used) = TagRecord::parse(flags, rest)?;
        rest = rest.get(used..).unwrap_or(&[]);
        out.push(rec);
    }
    Ok(out)
}

/// Encodes a GET_TAG_ID_BUFFER reply's DATA.
pub fn encode_tag_buffer(flags: u16, recs: &[TagRecord]) -> Vec<u8> {
    let mut d = flags.to_be_bytes().to_vec();
    d.push(0x00);
    d.push(u8::try_from(recs.len()).unwrap_or(u8::MAX));
    for rec in recs {
        rec.encode_into(flags, &mut d);
    }
    d
}

#[cfg(test)]
mod tests;
