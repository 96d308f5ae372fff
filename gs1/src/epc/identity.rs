//! A decoded GS1 key in EPC terms and its URI / element string / Digital Link forms.

use crate::check::with_check;
use crate::escape::{dl_escape, urn_escape, urn_unescape};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Sgtin,
    Sscc,
    Sgln,
    Grai,
    Giai,
}

impl Family {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::Sgtin => "sgtin",
            Family::Sscc => "sscc",
            Family::Sgln => "sgln",
            Family::Grai => "grai",
            Family::Giai => "giai",
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<Family> {
        Some(match s {
            "sgtin" => Family::Sgtin,
            "sscc" => Family::Sscc,
            "sgln" => Family::Sgln,
            "grai" => Family::Grai,
            "giai" => Family::Giai,
            _ => return None,
        })
    }

    /// Digits of company prefix + the reference field (TDS §6.3).
    fn key_digits(self) -> usize {
        match self {
            Family::Sgtin => 13,
            Family::Sscc => 17,
            Family::Sgln | Family::Grai => 12,
            Family::Giai => 0,
        }
    }

    pub(crate) fn has_item_reference(self) -> bool {
        matches!(self, Family::Sgtin | Family::Sgln | Family::Grai)
    }
}

/// Primary key AI, its value, and the optional (AI, value) qualifier.
type AiParts<'a> = (&'static str, String, Option<(&'static str, &'a str)>);

/// The fields of an EPC pure identity; strings are unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) family: Family,
    pub(crate) company_prefix: String,
    pub(crate) item_reference: Option<String>,
    pub(crate) serial: String,
}

impl Identity {
    /// The part after `urn:epc:id:<scheme>:`, escaped.
    pub(crate) fn uri_body(&self) -> String {
        match &self.item_reference {
            Some(r) => format!("{}.{}.{}", self.company_prefix, r, urn_escape(&self.serial)),
            None => format!("{}.{}", self.company_prefix, urn_escape(&self.serial)),
        }
    }

    pub(crate) fn pure_uri(&self) -> String {
        format!("urn:epc:id:{}:{}", self.family.name(), self.uri_body())
    }

    /// Company prefix and reference rearranged into the key's digit order (without
    /// the check digit): indicator/extension digit first for SGTIN and SSCC.
    fn key_body(&self) -> String {
        let cp = &self.company_prefix;
        let r = self.item_reference.as_deref().unwrap_or("");
        match self.family {
            Family::Sgtin => {
                let (ind, rest) = r.split_at(r.len().min(1));
                format!("{ind}{cp}{rest}")
            }
            Family::Sscc => {
                let s = &self.serial;
                let (ext, rest) = s.split_at(s.len().min(1));
                format!("{ext}{cp}{rest}")
            }
            Family::Sgln => format!("{cp}{r}"),
            Family::Grai => format!("0{cp}{r}"),
            Family::Giai => cp.clone(),
        }
    }

    pub(crate) fn gtin(&self) -> Option<String> {
        match self.family {
            Family::Sgtin => with_check(&self.key_body()),
            _ => None,
        }
    }

    /// (AI, key value) of the primary key plus the optional (AI, value) qualifier.
    fn ai_parts(&self) -> Option<AiParts<'_>> {
        let s = self.serial.as_str();
        Some(match self.family {
            Family::Sgtin => ("01", with_check(&self.key_body())?, Some(("21", s))),
            Family::Sscc => ("00", with_check(&self.key_body())?, None),
            Family::Sgln => {
                let q = if s == "0" { None } else { Some(("254", s)) };
                ("414", with_check(&self.key_body())?, q)
            }
            Family::Grai => ("8003", with_check(&self.key_body())?, None),
            Family::Giai => ("8004", self.key_body(), None),
        })
    }

    /// Serial-like data appended directly to the key (GRAI, GIAI).
    fn key_suffix(&self) -> &str {
        match self.family {
            Family::Grai | Family::Giai => &self.serial,
            _ => "",
        }
    }

    pub(crate) fn element_string(&self) -> Option<String> {
        let (ai, key, q) = self.ai_parts()?;
        let mut s = format!("({ai}){key}{}", self.key_suffix());
        if let Some((qai, qv)) = q {
            s.push_str(&format!("({qai}){qv}"));
        }
        Some(s)
    }

    pub(crate) fn digital_link(&self) -> Option<String> {
        let (ai, key, q) = self.ai_parts()?;
        let mut s = format!(
            "https://id.gs1.org/{ai}/{key}{}",
            dl_escape(self.key_suffix())
        );
        if let Some((qai, qv)) = q {
            s.push_str(&format!("/{qai}/{}", dl_escape(qv)));
        }
        Some(s)
    }

    /// Parses the fields after `urn:epc:id:<family>:` (or a tag URI's fields after the
    /// filter), checking the digit-count rules of TDS §6.3.
    pub(crate) fn parse_body(family: Family, body: &str) -> Result<Identity, String> {
        let parts: Vec<&str> = if family.has_item_reference() {
            body.splitn(3, '.').collect()
        } else {
            body.splitn(2, '.').collect()
        };
        let want = if family.has_item_reference() { 3 } else { 2 };
        if parts.len() != want {
            return Err(format!(
                "{} URI needs {want} dot-separated fields",
                family.name()
            ));
        }
        let cp = parts[0];
        if !(6..=12).contains(&cp.len()) || !cp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("company prefix {cp:?} must be 6 to 12 digits"));
        }
        let serial_raw = parts[want - 1];
        let serial =
            urn_unescape(serial_raw).ok_or_else(|| format!("bad %-escape in {serial_raw:?}"))?;
        if serial.is_empty() {
            return Err("serial / reference field is empty".into());
        }
        if !serial.bytes().all(crate::escape::is_cs82) {
            return Err(format!(
                "{serial:?} has characters outside GS1 character set 82"
            ));
        }
        let item_reference = if family.has_item_reference() {
            let r = parts[1];
            if !r.bytes().all(|b| b.is_ascii_digit()) || cp.len() + r.len() != family.key_digits() {
                return Err(format!(
                    "reference {r:?} must be digits making {} digits with the company prefix",
                    family.key_digits()
                ));
            }
            Some(r.to_string())
        } else {
            None
        };
        if family == Family::Sscc
            && (!serial.bytes().all(|b| b.is_ascii_digit()) || cp.len() + serial.len() != 17)
        {
            return Err(
                "SSCC serial reference must be digits making 17 with the company prefix".into(),
            );
        }
        Ok(Identity {
            family,
            company_prefix: cp.to_string(),
            item_reference,
            serial,
        })
    }

    /// Parses `urn:epc:id:<sgtin|sscc|sgln|grai|giai>:...`.
    pub(crate) fn parse_pure_uri(uri: &str) -> Result<Identity, String> {
        let rest = uri
            .strip_prefix("urn:epc:id:")
            .ok_or_else(|| format!("{uri:?} is not an EPC pure identity URI (urn:epc:id:...)"))?;
        let (fam, body) = rest.split_once(':').ok_or("missing scheme")?;
        let family =
            Family::from_name(fam).ok_or_else(|| format!("unsupported EPC scheme {fam:?}"))?;
        Identity::parse_body(family, body)
    }
}

/// Converts an EPC pure identity URI (SGTIN, SSCC, SGLN, GRAI, GIAI) to its GS1
/// element string, e.g. `(01)80614141123458(21)6789`.
pub fn pure_uri_to_element_string(uri: &str) -> Option<String> {
    Identity::parse_pure_uri(uri).ok()?.element_string()
}

/// Converts an EPC pure identity URI (SGTIN, SSCC, SGLN, GRAI, GIAI) to its canonical
/// GS1 Digital Link URI on `https://id.gs1.org`.
pub fn pure_uri_to_digital_link(uri: &str) -> Option<String> {
    Identity::parse_pure_uri(uri).ok()?.digital_link()
}
