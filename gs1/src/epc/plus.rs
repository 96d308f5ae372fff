//! TDS 2.x SGTIN+ (header 0xF7) and DSGTIN+ (0xFB), the "+" schemes that carry the
//! GTIN as 14 BCD digits without a company-prefix partition (layout from the GS1 TDT
//! 2.2 artefacts). Without the GS1 Company Prefix length no `urn:epc:id:sgtin` URI
//! can be formed, so the identity is the canonical GS1 Digital Link and the tag URI is
//! the lossless EPC Raw URI.

use crate::bits;
use crate::check::gs1_check_digit_valid;
use crate::escape::{dl_escape, is_cs82};

pub(crate) struct Plus {
    pub(crate) scheme: &'static str,
    pub(crate) bits: usize,
    pub(crate) filter: u8,
    pub(crate) gtin: String,
    pub(crate) serial: String,
    /// (AI, YYMMDD) for DSGTIN+.
    pub(crate) date: Option<(&'static str, String)>,
}

impl Plus {
    pub(crate) fn identity_link(&self) -> String {
        format!(
            "https://id.gs1.org/01/{}/21/{}",
            self.gtin,
            dl_escape(&self.serial)
        )
    }

    pub(crate) fn digital_link(&self) -> String {
        match &self.date {
            Some((ai, d)) => format!("{}?{ai}={d}", self.identity_link()),
            None => self.identity_link(),
        }
    }

    pub(crate) fn element_string(&self) -> String {
        match &self.date {
            Some((ai, d)) => format!("(01){}({ai}){d}(21){}", self.gtin, self.serial),
            None => format!("(01){}(21){}", self.gtin, self.serial),
        }
    }
}

const DATE_AIS: [&str; 7] = ["11", "13", "15", "16", "17", "7006", "7007"];

/// Bits of a variable-length integer of `n` digits (TDT Table B): the smallest b
/// with 2^b ≥ 10^n.
fn int_bits(n: usize) -> usize {
    let p = 10u128.pow(n as u32);
    (0..128).find(|b| (1u128 << b) >= p).unwrap_or(128)
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub(crate) fn decode(epc: &[u8]) -> Result<Plus, String> {
    let (scheme, dated) = match epc.first() {
        Some(0xF7) => ("sgtin+", false),
        Some(0xFB) => ("dsgtin+", true),
        _ => return Err("not a + scheme".into()),
    };
    let mut pos = 8;
    let mut rd = |n: usize| -> Result<u64, String> {
        let v = bits::read(epc, pos, n).ok_or_else(|| format!("{scheme}: truncated"))?;
        pos += n;
        Ok(v)
    };
    let _additional_ai_data = rd(1)?;
    let filter = rd(3)? as u8;
    let date = if dated {
        let ty = rd(4)? as usize;
        let (yy, mm, dd) = (rd(7)?, rd(4)?, rd(5)?);
        let ai = *DATE_AIS
            .get(ty)
            .ok_or_else(|| format!("{scheme}: date type {ty} is reserved"))?;
        // DD = 00 is GS1's "end of month" convention and stays valid.
        if yy > 99 || !(1..=12).contains(&mm) {
            return Err(format!("{scheme}: invalid date {yy:02}{mm:02}{dd:02}"));
        }
        Some((ai, format!("{yy:02}{mm:02}{dd:02}")))
    } else {
        None
    };
    let mut gtin = String::with_capacity(14);
    for _ in 0..14 {
        let d = rd(4)? as u8;
        if d > 9 {
            return Err(format!("{scheme}: GTIN digit nibble 0x{d:X} is not BCD"));
        }
        gtin.push(char::from(b'0' + d));
    }
    if !gs1_check_digit_valid(&gtin) {
        return Err(format!("{scheme}: GTIN {gtin} has a wrong check digit"));
    }
    let enc = rd(3)?;
    let len = rd(5)? as usize;
    if len == 0 || len > 20 {
        return Err(format!("{scheme}: serial length {len} is outside 1..=20"));
    }
    let serial = match enc {
        0b000 => {
            let n = int_bits(len);
            let v = if n > 64 {
                let hi = u128::from(rd(n - 64)?);
                hi << 64 | u128::from(rd(64)?)
            } else {
                u128::from(rd(n)?)
            };
            if v >= 10u128.pow(len as u32) {
                return Err(format!(
                    "{scheme}: serial integer {v} has more than {len} digits"
                ));
            }
            format!("{v:0len$}")
        }
        0b001 | 0b010 => {
            let table: &[u8; 16] = if enc == 1 {
                b"0123456789ABCDEF"
            } else {
                b"0123456789abcdef"
            };
            (0..len)
                .map(|_| rd(4).map(|v| char::from(table[v as usize])))
                .collect::<Result<String, _>>()?
        }
        0b011 => (0..len)
            .map(|_| rd(6).map(|v| char::from(B64URL[v as usize])))
            .collect::<Result<String, _>>()?,
        0b100 => {
            let mut s = String::with_capacity(len);
            for _ in 0..len {
                let c = rd(7)? as u8;
                if !is_cs82(c) {
                    return Err(format!(
                        "{scheme}: serial character 0x{c:02X} is not in GS1 character set 82"
                    ));
                }
                s.push(char::from(c));
            }
            s
        }
        other => {
            return Err(format!(
                "{scheme}: serial encoding indicator {other:03b} is not supported"
            ))
        }
    };
    Ok(Plus {
        scheme,
        bits: pos,
        filter,
        gtin,
        serial,
        date,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_widths_follow_table_b() {
        let widths: Vec<usize> = (1..=10).map(int_bits).collect();
        assert_eq!(widths, [4, 7, 10, 14, 17, 20, 24, 27, 30, 34]);
        assert_eq!(int_bits(20), 67);
    }
}
