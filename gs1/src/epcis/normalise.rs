//! GS1 identifier → constrained canonical GS1 Digital Link, as the CBV 2.0 event hash
//! requires (rule 9 of the pre-hash algorithm). Behaviour follows the reference
//! implementation (RalphTro/epcis-event-hash-generator, dl_normaliser.py): EPC URIs,
//! EPC class URIs and ID pattern URIs are converted structurally; Digital Link URIs
//! are moved to `https://id.gs1.org`, stripped of query strings and of the CPV
//! qualifier; anything else returns `None` and is hashed verbatim.

use crate::check::with_check;

/// The reference's "web URI percent encoder": applied on top of an EPC URI's own
/// escapes, it additionally encodes `! ( ) * + , :`.
fn web(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '!' => out.push_str("%21"),
            '(' => out.push_str("%28"),
            ')' => out.push_str("%29"),
            '*' => out.push_str("%2A"),
            '+' => out.push_str("%2B"),
            ',' => out.push_str("%2C"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    out
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn digits_or_empty(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

fn cp_ok(cp: &str) -> bool {
    (6..=12).contains(&cp.len()) && digits(cp)
}

/// An escaped EPC URI component: character set 82 with the URN escapes.
fn urn_text(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return false;
            }
            i += 3;
        } else if crate::escape::is_cs82(b[i])
            && !matches!(b[i], b'"' | b'%' | b'&' | b'/' | b'<' | b'>' | b'?')
        {
            i += 1;
        } else {
            return false;
        }
        n += 1;
    }
    (1..=max).contains(&n)
}

/// cp.ref with cp + ref == total digits (ref may be empty when total - cp == 0).
fn key(cp: &str, r: &str, total: usize) -> bool {
    cp_ok(cp) && digits_or_empty(r) && cp.len() + r.len() == total
}

fn gtin(cp: &str, item: &str) -> Option<String> {
    if !key(cp, item, 13) {
        return None;
    }
    with_check(&format!("{}{cp}{}", &item[..1], &item[1..]))
}

const ID: &str = "https://id.gs1.org";

fn urn(uri: &str) -> Option<String> {
    let (kind, rest) = if let Some(r) = uri.strip_prefix("urn:epc:id:") {
        ("id", r)
    } else if let Some(r) = uri.strip_prefix("urn:epc:class:") {
        ("class", r)
    } else if let Some(r) = uri.strip_prefix("urn:epc:idpat:") {
        ("idpat", r)
    } else {
        return None;
    };
    let (scheme, body) = rest.split_once(':')?;
    let f: Vec<&str> = body.split('.').collect();
    // Fields after a fixed number of dot-separated numeric ones may contain dots.
    let tail = |n: usize| -> Option<String> {
        if f.len() > n {
            Some(f[n..].join("."))
        } else {
            None
        }
    };
    match (kind, scheme) {
        ("id", "sgtin") => {
            let s = tail(2)?;
            urn_text(&s, 20).then_some(())?;
            Some(format!("{ID}/01/{}/21/{}", gtin(f[0], f[1])?, web(&s)))
        }
        ("id", "sscc") if f.len() == 2 && key(f[0], f[1], 17) => {
            let sr = f[1];
            Some(format!(
                "{ID}/00/{}",
                with_check(&format!("{}{}{}", &sr[..1], f[0], &sr[1..]))?
            ))
        }
        ("id", "sgln") => {
            let ext = tail(2)?;
            (key(f[0], f[1], 12) && urn_text(&ext, 20)).then_some(())?;
            let gln = with_check(&format!("{}{}", f[0], f[1]))?;
            Some(if ext == "0" {
                format!("{ID}/414/{gln}")
            } else {
                format!("{ID}/414/{gln}/254/{}", web(&ext))
            })
        }
        ("id", "grai") => {
            let s = tail(2)?;
            (key(f[0], f[1], 12) && urn_text(&s, 16)).then_some(())?;
            Some(format!(
                "{ID}/8003/{}{}",
                with_check(&format!("0{}{}", f[0], f[1]))?,
                web(&s)
            ))
        }
        ("id", "giai") => {
            let s = tail(1)?;
            (cp_ok(f[0]) && urn_text(&s, 30 - f[0].len())).then_some(())?;
            Some(format!("{ID}/8004/{}{}", f[0], web(&s)))
        }
        ("id", "gsrn") | ("id", "gsrnp") if f.len() == 2 && key(f[0], f[1], 17) => {
            let ai = if scheme == "gsrn" { "8018" } else { "8017" };
            Some(format!(
                "{ID}/{ai}/{}",
                with_check(&format!("{}{}", f[0], f[1]))?
            ))
        }
        ("id", "gdti") => {
            let s = tail(2)?;
            (key(f[0], f[1], 12) && urn_text(&s, 17)).then_some(())?;
            Some(format!(
                "{ID}/253/{}{}",
                with_check(&format!("{}{}", f[0], f[1]))?,
                web(&s)
            ))
        }
        ("id", "cpi") if f.len() >= 3 => {
            let serial = f[f.len() - 1];
            let r = f[1..f.len() - 1].join(".");
            (cp_ok(f[0]) && digits(serial) && serial.len() <= 12 && cpi_ref(&r)).then_some(())?;
            Some(format!("{ID}/8010/{}{}/8011/{serial}", f[0], web(&r)))
        }
        ("id", "sgcn")
            if f.len() == 3 && key(f[0], f[1], 12) && digits(f[2]) && f[2].len() <= 12 =>
        {
            Some(format!(
                "{ID}/255/{}{}",
                with_check(&format!("{}{}", f[0], f[1]))?,
                f[2]
            ))
        }
        ("id", "ginc") => {
            let s = tail(1)?;
            (cp_ok(f[0]) && urn_text(&s, 30 - f[0].len())).then_some(())?;
            Some(format!("{ID}/401/{}{}", f[0], web(&s)))
        }
        ("id", "gsin") if f.len() == 2 && key(f[0], f[1], 16) => Some(format!(
            "{ID}/402/{}",
            with_check(&format!("{}{}", f[0], f[1]))?
        )),
        ("id", "itip") if f.len() >= 5 => {
            let s = tail(4)?;
            (two(f[2]) && two(f[3]) && urn_text(&s, 20)).then_some(())?;
            Some(format!(
                "{ID}/8006/{}{}{}/21/{}",
                gtin(f[0], f[1])?,
                f[2],
                f[3],
                web(&s)
            ))
        }
        ("id", "upui") => {
            let s = tail(2)?;
            urn_text(&s, 28).then_some(())?;
            Some(format!("{ID}/01/{}/235/{}", gtin(f[0], f[1])?, web(&s)))
        }
        ("id", "pgln") if f.len() == 2 && key(f[0], f[1], 12) => Some(format!(
            "{ID}/417/{}",
            with_check(&format!("{}{}", f[0], f[1]))?
        )),
        ("class", "lgtin") => {
            let s = tail(2)?;
            urn_text(&s, 20).then_some(())?;
            Some(format!("{ID}/01/{}/10/{}", gtin(f[0], f[1])?, web(&s)))
        }
        ("idpat", "sgtin") | ("idpat", "upui") if f.len() == 3 && f[2] == "*" => {
            Some(format!("{ID}/01/{}", gtin(f[0], f[1])?))
        }
        ("idpat", "grai") if f.len() == 3 && f[2] == "*" && key(f[0], f[1], 12) => Some(format!(
            "{ID}/8003/{}",
            with_check(&format!("0{}{}", f[0], f[1]))?
        )),
        ("idpat", "gdti") | ("idpat", "sgcn")
            if f.len() == 3 && f[2] == "*" && key(f[0], f[1], 12) =>
        {
            let ai = if scheme == "gdti" { "253" } else { "255" };
            Some(format!(
                "{ID}/{ai}/{}",
                with_check(&format!("{}{}", f[0], f[1]))?
            ))
        }
        ("idpat", "cpi") if f.len() >= 3 && f[f.len() - 1] == "*" => {
            let r = f[1..f.len() - 1].join(".");
            (cp_ok(f[0]) && cpi_ref(&r)).then_some(())?;
            Some(format!("{ID}/8010/{}{}", f[0], web(&r)))
        }
        ("idpat", "itip") if f.len() == 5 && f[4] == "*" && two(f[2]) && two(f[3]) => {
            Some(format!("{ID}/8006/{}{}{}", gtin(f[0], f[1])?, f[2], f[3]))
        }
        _ => None,
    }
}

fn two(s: &str) -> bool {
    s.len() == 2 && digits(s)
}

/// CPI component reference: digits, uppercase letters, '-', and the escapes %23 (#) and %2F (/).
fn cpi_ref(r: &str) -> bool {
    let b = r.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match b.get(i + 1..i + 3) {
                Some(h) if h.eq_ignore_ascii_case(b"23") || h.eq_ignore_ascii_case(b"2F") => i += 3,
                _ => return false,
            }
        } else if b[i].is_ascii_digit() || b[i].is_ascii_uppercase() || b[i] == b'-' {
            i += 1;
        } else {
            return false;
        }
        n += 1;
    }
    (1..=24).contains(&n)
}

const PRIMARY: [(&str, &str); 14] = [
    ("01", "gtin"),
    ("8006", "itip"),
    ("8010", "cpid"),
    ("414", "gln"),
    ("417", "party"),
    ("8017", "gsrnp"),
    ("8018", "gsrn"),
    ("255", "gcn"),
    ("00", "sscc"),
    ("253", "gdti"),
    ("401", "ginc"),
    ("402", "gsin"),
    ("8003", "grai"),
    ("8004", "giai"),
];

fn qualifier_ai(s: &str) -> &str {
    match s {
        "cpv" => "22",
        "lot" => "10",
        "ser" => "21",
        other => PRIMARY
            .iter()
            .find(|(_, n)| *n == other)
            .map_or(other, |(ai, _)| ai),
    }
}

/// Characters the reference accepts in a normalised DL value (no '%': a DL carrying
/// percent-escapes is hashed verbatim, as the reference does).
fn dl_text(s: &str, max: usize) -> bool {
    s.len() <= max
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'"' | b'\'' | b'-' | b'.' | b';' | b'<' | b'=' | b'>' | b'?' | b'_'
                )
        })
}

fn n_digits(s: &str, n: usize) -> bool {
    s.len() == n && digits(s)
}

fn dl(uri: &str) -> Option<String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))?;
    let rest = rest.split('#').next()?;
    let path_and_host = rest.split('?').next()?;
    let (_host, path) = path_and_host.split_once('/')?;
    let segs: Vec<&str> = path.split('/').collect();
    let segs: Vec<&str> = match segs.split_last() {
        Some((&"", init)) => init.to_vec(),
        _ => segs,
    };
    // The primary key with at most one qualifier pair must end the path.
    let start = segs.iter().enumerate().position(|(i, s)| {
        let primary = PRIMARY.iter().any(|(ai, name)| s == ai || s == name);
        let value_ok = segs
            .get(i + 1)
            .is_some_and(|v| v.len() > 4 && v.bytes().take(4).all(|b| b.is_ascii_digit()));
        primary && value_ok && (segs.len() == i + 2 || segs.len() == i + 4)
    })?;
    let ai = qualifier_ai(segs[start]);
    let mut value = segs[start + 1].to_string();
    let mut q = segs
        .get(start + 2..start + 4)
        .map(|p| (qualifier_ai(p[0]), p[1]));
    if ai == "01" {
        value = match value.len() {
            13 => format!("0{value}"),
            12 => format!("00{value}"),
            8 => format!("000000{value}"),
            _ => value,
        };
    }
    if matches!(ai, "01" | "8006") && matches!(q, Some(("22", _))) {
        q = None;
    }
    let v = value.as_str();
    let ok = match (ai, q) {
        ("00", None) => n_digits(v, 18),
        ("01", None) => n_digits(v, 14),
        ("01", Some(("21" | "10", s))) => n_digits(v, 14) && dl_text(s, 20),
        ("01", Some(("235", s))) => n_digits(v, 14) && dl_text(s, 28),
        ("253", None) => split_digits(v, 13).is_some_and(|r| dl_text(r, 17)),
        ("255", None) => v.len() >= 13 && v.len() <= 25 && digits(v),
        ("401" | "8004", None) => dl_text(v, 30),
        ("402", None) => n_digits(v, 17),
        ("414", None) | ("417", None) => n_digits(v, 13),
        ("414", Some(("254", s))) => n_digits(v, 13) && dl_text(s, 20),
        ("8003", None) => split_digits(v, 14).is_some_and(|r| dl_text(r, 16)),
        ("8006", None) => n_digits(v, 18),
        ("8006", Some(("21" | "10", s))) => n_digits(v, 18) && dl_text(s, 20),
        ("8010", None) => cpid_text(v),
        ("8010", Some(("8011", s))) => cpid_text(v) && s.len() <= 12 && digits_or_empty(s),
        ("8017" | "8018", None) => n_digits(v, 18),
        _ => false,
    };
    if !ok {
        return None;
    }
    Some(match q {
        Some((qai, s)) => format!("{ID}/{ai}/{value}/{qai}/{s}"),
        None => format!("{ID}/{ai}/{value}"),
    })
}

/// The rest of `v` after `n` leading decimal digits.
fn split_digits(v: &str, n: usize) -> Option<&str> {
    let (head, rest) = (v.get(..n)?, v.get(n..)?);
    digits(head).then_some(rest)
}

fn cpid_text(s: &str) -> bool {
    s.len() <= 30
        && s.bytes()
            .all(|b| matches!(b, b'#' | b'-' | b'/' | b'0'..=b'9' | b'A'..=b'Z'))
}

/// Normalises an EPC URI / class URI / ID pattern URI / GS1 Digital Link to the
/// constrained canonical Digital Link; `None` if the value is not a GS1 identifier.
pub fn canonical_gs1_uri(value: &str) -> Option<String> {
    if value.starts_with("urn:epc:") {
        urn(value)
    } else {
        dl(value)
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_gs1_uri as c;

    #[test]
    fn urns_become_canonical_links() {
        assert_eq!(
            c("urn:epc:id:sgtin:0614141.812345.6789%2F%26%25%22!%3F()").as_deref(),
            Some("https://id.gs1.org/01/80614141123458/21/6789%2F%26%25%22%21%3F%28%29")
        );
        assert_eq!(
            c("urn:epc:id:sgln:4012345.00005.0").as_deref(),
            Some("https://id.gs1.org/414/4012345000054")
        );
        assert_eq!(
            c("urn:epc:id:pgln:999999999999.").as_deref(),
            Some("https://id.gs1.org/417/9999999999994")
        );
        assert_eq!(
            c("urn:epc:id:gdti:987659999999..9").as_deref(),
            Some("https://id.gs1.org/253/98765999999929")
        );
        assert_eq!(c("urn:epc:id:sgtin:0614141.812345"), None);
    }

    #[test]
    fn links_move_to_id_gs1_org() {
        assert_eq!(
            c("https://example.com/gtin/09780345418913/21/765tz?abc=211121").as_deref(),
            Some("https://id.gs1.org/01/09780345418913/21/765tz")
        );
        assert_eq!(
            c("https://id.gs1.org/gtin/9780345418913").as_deref(),
            Some("https://id.gs1.org/01/09780345418913")
        );
        assert_eq!(c("http://transaction.acme.com/po/12345678"), None);
        assert_eq!(c("http://www.opengis.net/def/crs/EPSG/0/27700"), None);
    }
}
