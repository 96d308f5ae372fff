//! EPC pattern URIs (TDS §8, §13) for read-point filters:
//! `urn:epc:pat:sgtin-96:3.0614141.*.*` (tag pattern, filter first) and
//! `urn:epc:idpat:sgtin:0614141.*.*` (identity pattern, any bit length).
//! Each field is `*`, an exact (URI-escaped) value, or a decimal range `[lo-hi]`.

use crate::epc::{scheme_by_name, Family};
use crate::escape::urn_unescape;
use crate::Decoded;

/// Error from [`EpcPattern::parse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid EPC pattern {pattern:?}: {reason} (example: urn:epc:pat:sgtin-96:3.0614141.*.* or urn:epc:idpat:sscc:0614141.*)")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Any,
    Exact(String),
    Range(u128, u128),
}

impl Field {
    fn parse(s: &str) -> Result<Field, String> {
        if s == "*" {
            return Ok(Field::Any);
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let (lo, hi) = inner.split_once('-').ok_or("range must be [lo-hi]")?;
            let num = |t: &str| {
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("range bound {t:?} is not a decimal number"));
                }
                t.parse::<u128>()
                    .map_err(|_| format!("range bound {t:?} is too large"))
            };
            let (lo, hi) = (num(lo)?, num(hi)?);
            if lo > hi {
                return Err(format!("range [{lo}-{hi}] is empty"));
            }
            return Ok(Field::Range(lo, hi));
        }
        urn_unescape(s)
            .map(Field::Exact)
            .ok_or_else(|| format!("bad %-escape in {s:?}"))
    }

    fn matches(&self, v: Option<&str>) -> bool {
        match (self, v) {
            (Field::Any, _) => true,
            (Field::Exact(e), Some(v)) => e == v,
            (Field::Range(lo, hi), Some(v)) => {
                // A range covers decimal integers only; "0123" is a string serial, not 123.
                let canonical = v == "0" || !v.starts_with('0');
                canonical
                    && v.bytes().all(|b| b.is_ascii_digit())
                    && v.parse::<u128>().is_ok_and(|n| (*lo..=*hi).contains(&n))
            }
            _ => false,
        }
    }
}

/// A parsed EPC pattern; match decoded reads with [`EpcPattern::matches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpcPattern {
    /// `Some("sgtin-96")` for a tag pattern, `None` for an identity pattern.
    scheme: Option<&'static str>,
    family: Family,
    filter: Field,
    fields: Vec<Field>,
    source: String,
}

impl EpcPattern {
    pub fn parse(pattern: &str) -> Result<EpcPattern, PatternError> {
        let err = |reason: String| PatternError {
            pattern: pattern.to_string(),
            reason,
        };
        let (scheme, family, body) = if let Some(rest) = pattern.strip_prefix("urn:epc:pat:") {
            let (name, body) = rest
                .split_once(':')
                .ok_or_else(|| err("missing scheme".into()))?;
            let def =
                scheme_by_name(name).ok_or_else(|| err(format!("unsupported scheme {name:?}")))?;
            (Some(def.name), def.family, body)
        } else if let Some(rest) = pattern.strip_prefix("urn:epc:idpat:") {
            let (name, body) = rest
                .split_once(':')
                .ok_or_else(|| err("missing scheme".into()))?;
            let family = Family::from_name(name)
                .ok_or_else(|| err(format!("unsupported scheme {name:?}")))?;
            (None, family, body)
        } else {
            return Err(err("must start with urn:epc:pat: or urn:epc:idpat:".into()));
        };
        let mut parts: Vec<String> = body.split('.').map(str::to_string).collect();
        let filter = if scheme.is_some() {
            if parts.len() < 2 {
                return Err(err("missing filter field".into()));
            }
            let f = Field::parse(&parts.remove(0)).map_err(err)?;
            if let Field::Exact(v) = &f {
                if !matches!(v.as_str(), "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7") {
                    return Err(err(format!("filter {v:?} is not 0-7")));
                }
            }
            f
        } else {
            Field::Any
        };
        let want = if family.has_item_reference() { 3 } else { 2 };
        // The last field may itself contain dots (e.g. a GIAI); rejoin any excess.
        if parts.len() > want {
            let tail = parts.split_off(want - 1).join(".");
            parts.push(tail);
        }
        if parts.len() != want {
            return Err(err(format!(
                "{} patterns have {want} fields after the filter",
                family.name()
            )));
        }
        let fields = parts
            .iter()
            .map(|p| Field::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(EpcPattern {
            scheme,
            family,
            filter,
            fields,
            source: pattern.to_string(),
        })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True if the decoded EPC falls under the pattern. Raw EPCs never match.
    pub fn matches(&self, d: &Decoded) -> bool {
        if d.is_raw() {
            return false;
        }
        let scheme_ok = match self.scheme {
            Some(s) => d.scheme == s,
            None => d.scheme.split('-').next() == Some(self.family.name()),
        };
        if !scheme_ok {
            return false;
        }
        let filter = d.filter.map(|f| f.to_string());
        if !self.filter.matches(filter.as_deref()) {
            return false;
        }
        let mut values = vec![d.company_prefix.as_deref()];
        if self.family.has_item_reference() {
            values.push(d.item_reference.as_deref());
        }
        values.push(d.serial.as_deref());
        self.fields.iter().zip(values).all(|(f, v)| f.matches(v))
    }
}

impl std::str::FromStr for EpcPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EpcPattern::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_epc_hex;

    #[test]
    fn tag_and_identity_patterns_match_the_tds_sgtin() {
        let d = decode_epc_hex("3074257BF7194E4000001A85").unwrap();
        for p in [
            "urn:epc:pat:sgtin-96:3.0614141.*.*",
            "urn:epc:pat:sgtin-96:*.0614141.812345.6789",
            "urn:epc:pat:sgtin-96:3.0614141.812345.[6000-7000]",
            "urn:epc:idpat:sgtin:0614141.*.*",
            "urn:epc:idpat:sgtin:*.*.*",
        ] {
            assert!(EpcPattern::parse(p).unwrap().matches(&d), "{p}");
        }
        for p in [
            "urn:epc:pat:sgtin-96:2.0614141.*.*",
            "urn:epc:pat:sgtin-198:3.0614141.*.*",
            "urn:epc:pat:sgtin-96:3.0614142.*.*",
            "urn:epc:pat:sgtin-96:3.0614141.812345.[1-6788]",
            "urn:epc:idpat:sscc:0614141.*",
        ] {
            assert!(!EpcPattern::parse(p).unwrap().matches(&d), "{p}");
        }
    }

    #[test]
    fn escaped_exact_values_and_raw_reads() {
        let d = decode_epc_hex("3674257BF6B7A659B2C2BF100000000000000000000000000000").unwrap();
        assert!(
            EpcPattern::parse("urn:epc:idpat:sgtin:0614141.712345.32a%2Fb")
                .unwrap()
                .matches(&d)
        );
        let raw = decode_epc_hex("E2000019060C02090690D3C2").unwrap();
        assert!(!EpcPattern::parse("urn:epc:idpat:sgtin:*.*.*")
            .unwrap()
            .matches(&raw));
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_reason() {
        for p in [
            "urn:epc:id:sgtin:0614141.812345.6789",
            "urn:epc:pat:gid-96:1.2.3",
            "urn:epc:pat:sgtin-96:9.*.*.*",
            "urn:epc:pat:sgtin-96:3.*.*",
            "urn:epc:idpat:sgtin:*.*.[5-1]",
            "urn:epc:idpat:sgtin:*.*.[a-b]",
        ] {
            let e = EpcPattern::parse(p).unwrap_err();
            assert!(!e.reason.is_empty(), "{p}");
        }
    }
}
