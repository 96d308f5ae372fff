//! UTC timestamp formatting and ISO 8601 parsing without a calendar dependency.

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch: exactly three
/// fractional digits and `Z`, the form EPCIS consumers and the CBV hash agree on.
pub fn format_utc_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Rounds microseconds to milliseconds half-to-even (as the reference hash
/// implementation does) and formats the result.
pub(crate) fn format_utc_micros(us: i64) -> String {
    let mut ms = us.div_euclid(1000);
    let rem = us.rem_euclid(1000);
    if rem > 500 || (rem == 500 && ms % 2 != 0) {
        ms += 1;
    }
    format_utc_ms(ms)
}

/// `+HH:MM` / `-HH:MM` for an offset in minutes, as `eventTimeZoneOffset` requires.
/// `None` outside the schema's range of -14:00..=+14:00.
pub fn format_tz_offset(minutes: i32) -> Option<String> {
    if !(-14 * 60..=14 * 60).contains(&minutes) {
        return None;
    }
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.unsigned_abs();
    Some(format!("{sign}{:02}:{:02}", m / 60, m % 60))
}

/// True if `s` matches the EPCIS 2.0 schema pattern for `eventTimeZoneOffset`,
/// `^([+]|[-])((0[0-9]|1[0-3]):([0-5][0-9])|14:00)$`.
pub fn valid_tz_offset(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 6 || !matches!(b[0], b'+' | b'-') || b[3] != b':' {
        return false;
    }
    let num = |i: usize| -> Option<u32> {
        let (x, y) = (b[i], b[i + 1]);
        (x.is_ascii_digit() && y.is_ascii_digit())
            .then(|| u32::from(x - b'0') * 10 + u32::from(y - b'0'))
    };
    match (num(1), num(4)) {
        (Some(h), Some(m)) => (h <= 13 && m <= 59) || (h == 14 && m == 0),
        _ => false,
    }
}

fn take_digits(s: &[u8], i: &mut usize, n: usize) -> Option<i64> {
    let part = s.get(*i..*i + n)?;
    if !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    *i += n;
    Some(part.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0')))
}

fn expect(s: &[u8], i: &mut usize, c: u8) -> Option<()> {
    (s.get(*i) == Some(&c)).then(|| *i += 1)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.f+][Z|±HH:MM|±HHMM|±HH]` into UTC microseconds since
/// the epoch (digits beyond microseconds are truncated; no offset means UTC).
pub(crate) fn parse_timestamp_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let mut i = 0;
    let y = take_digits(b, &mut i, 4)?;
    expect(b, &mut i, b'-')?;
    let mo = take_digits(b, &mut i, 2)?;
    expect(b, &mut i, b'-')?;
    let d = take_digits(b, &mut i, 2)?;
    if !matches!(b.get(i), Some(b'T' | b't' | b' ')) {
        return None;
    }
    i += 1;
    let h = take_digits(b, &mut i, 2)?;
    expect(b, &mut i, b':')?;
    let mi = take_digits(b, &mut i, 2)?;
    expect(b, &mut i, b':')?;
    let sec = take_digits(b, &mut i, 2)?;
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59
    {
        return None;
    }
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..6 {
            micros *= 10;
        }
    }
    let offset_min = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) => {
            i += 1;
            let oh = take_digits(b, &mut i, 2)?;
            if b.get(i) == Some(&b':') {
                i += 1;
            }
            let om = if i < b.len() {
                take_digits(b, &mut i, 2)?
            } else {
                0
            };
            if i != b.len() || oh > 23 || om > 59 {
                return None;
            }
            let v = oh * 60 + om;
            if c == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_three_decimals() {
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_ms(1_714_557_600_000), "2024-05-01T10:00:00.000Z");
        assert_eq!(format_utc_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_utc_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_offsets_and_rounds_half_even() {
        let p = |s: &str| parse_timestamp_micros(s).map(format_utc_micros);
        assert_eq!(
            p("2022-02-16T20:33:31.116000-06:00").as_deref(),
            Some("2022-02-17T02:33:31.116Z")
        );
        assert_eq!(
            p("2023-02-02T11:04:03.1415Z").as_deref(),
            Some("2023-02-02T11:04:03.142Z")
        );
        assert_eq!(
            p("2023-02-02T11:04:03.1425Z").as_deref(),
            Some("2023-02-02T11:04:03.142Z")
        );
        assert_eq!(
            p("2023-12-31T23:59:59.9995Z").as_deref(),
            Some("2024-01-01T00:00:00.000Z")
        );
        assert_eq!(
            p("2020-04-01T15:00:00+01:00").as_deref(),
            Some("2020-04-01T14:00:00.000Z")
        );
        assert_eq!(p("2020-02-30T15:00:00Z"), None);
        assert_eq!(p("2020-04-01T15:00:00+01:00x"), None);
        assert_eq!(p("not a time"), None);
    }

    #[test]
    fn tz_offsets_follow_the_schema_pattern() {
        assert_eq!(format_tz_offset(120).as_deref(), Some("+02:00"));
        assert_eq!(format_tz_offset(-330).as_deref(), Some("-05:30"));
        assert_eq!(format_tz_offset(15 * 60), None);
        assert!(valid_tz_offset("+14:00") && valid_tz_offset("-00:00"));
        assert!(
            !valid_tz_offset("+14:30") && !valid_tz_offset("02:00") && !valid_tz_offset("+2:00")
        );
    }
}
