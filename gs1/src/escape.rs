//! URI escaping of GS1 AI character-set-82 strings.

/// Escapes a component for an EPC URN (TDS §5, GS3A3Component): the characters
/// `" % & / < > ?` become `%22 %25 %26 %2F %3C %3E %3F`; everything else stays literal.
pub fn urn_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_urn_escaped(&mut out, s);
    out
}

/// [`urn_escape`] appended to `out` (decoding builds several URIs per tag:
/// one buffer each, no intermediate strings).
pub(crate) fn push_urn_escaped(out: &mut String, s: &str) {
    // Serials are almost always plain: copy them whole.
    if !s
        .bytes()
        .any(|b| matches!(b, b'"' | b'%' | b'&' | b'/' | b'<' | b'>' | b'?'))
    {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("%22"),
            '%' => out.push_str("%25"),
            '&' => out.push_str("%26"),
            '/' => out.push_str("%2F"),
            '<' => out.push_str("%3C"),
            '>' => out.push_str("%3E"),
            '?' => out.push_str("%3F"),
            c => out.push(c),
        }
    }
}

/// Escapes a GS1 Digital Link path value: everything outside `[A-Za-z0-9._-]` is
/// percent-encoded with uppercase hex (GS1 DL Table 7-1 plus the URN-unsafe set).
pub fn dl_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_dl_escaped(&mut out, s);
    out
}

/// [`dl_escape`] appended to `out`.
pub(crate) fn push_dl_escaped(out: &mut String, s: &str) {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if s.bytes().all(plain) {
        out.push_str(s);
        return;
    }
    for b in s.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            push_pct(out, b);
        }
    }
}

/// Appends `v` in decimal, left-padded with zeros to at least `width` digits
/// (what `format!("{v:0width$}")` gives, without the formatting machinery:
/// every decoded EPC writes its company prefix, reference and serial).
pub(crate) fn push_decimal(out: &mut String, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = v;
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    for _ in (buf.len() - i)..width {
        out.push('0');
    }
    // ASCII digits only.
    out.extend(
        buf.get(i..)
            .unwrap_or_default()
            .iter()
            .map(|&b| char::from(b)),
    );
}

pub(crate) fn push_pct(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xF)]));
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%HH` escapes. Returns `None` on a malformed escape or if the result is
/// not valid UTF-8.
pub fn urn_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_val(*bytes.get(i + 1)?)?;
            let lo = hex_val(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The GS1 AI encodable character set 82 (TDS Table A-1), the only characters a
/// 7-bit "String" field may carry.
pub(crate) fn is_cs82(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'!' | b'"'
                | b'%'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'-'
                | b'.'
                | b'/'
                | b':'
                | b';'
                | b'<'
                | b'='
                | b'>'
                | b'?'
                | b'_'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urn_escape_covers_exactly_the_tds_set() {
        assert_eq!(urn_escape("32a/b"), "32a%2Fb");
        assert_eq!(urn_escape(".%:.13&"), ".%25:.13%26");
        assert_eq!(
            urn_escape("\"<>?!'()*+,-.:;=_"),
            "%22%3C%3E%3F!'()*+,-.:;=_"
        );
    }

    #[test]
    fn dl_escape_keeps_only_unreserved() {
        assert_eq!(dl_escape(".%:.13&"), ".%25%3A.13%26");
        assert_eq!(dl_escape("A/-BC"), "A%2F-BC");
    }

    #[test]
    fn unescape_round_trips_and_rejects_bad_escapes() {
        assert_eq!(urn_unescape("32a%2Fb").as_deref(), Some("32a/b"));
        assert_eq!(urn_unescape("%2f").as_deref(), Some("/"));
        assert_eq!(urn_unescape("%2"), None);
        assert_eq!(urn_unescape("%zz"), None);
        let all: String = (0u8..128).filter(|c| is_cs82(*c)).map(char::from).collect();
        assert_eq!(all.len(), 82);
        assert_eq!(
            urn_unescape(&urn_escape(&all)).as_deref(),
            Some(all.as_str())
        );
    }

    proptest::proptest! {
        #[test]
        fn push_decimal_matches_format(v: u64, width in 0usize..25) {
            let mut out = String::from("x");
            push_decimal(&mut out, v, width);
            proptest::prop_assert_eq!(out, format!("x{v:0width$}"));
        }

        #[test]
        fn plain_text_fast_paths_escape_like_the_byte_by_byte_rules(s in "[ -~]{0,12}") {
            // The rules spelled out one byte at a time (all of `s` is ASCII).
            let mut urn = String::new();
            let mut dl = String::new();
            for b in s.bytes() {
                match b {
                    b'"' | b'%' | b'&' | b'/' | b'<' | b'>' | b'?' => push_pct(&mut urn, b),
                    _ => urn.push(char::from(b)),
                }
                if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                    dl.push(char::from(b));
                } else {
                    push_pct(&mut dl, b);
                }
            }
            let mut out = String::from("x");
            push_urn_escaped(&mut out, &s);
            push_dl_escaped(&mut out, &s);
            proptest::prop_assert_eq!(out, format!("x{urn}{dl}"));
        }
    }
}
