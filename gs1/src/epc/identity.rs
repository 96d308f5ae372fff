//! A decoded GS1 key in EPC terms and its URI / element string / Digital Link forms.

use crate::check::with_check;
use crate::escape::{push_dl_escaped, push_urn_escaped, urn_unescape};

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
pub(crate) type AiParts<'a> = (&'static str, String, Option<(&'static str, &'a str)>);

/// The fields of an EPC pure identity; strings are unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) family: Family,
    pub(crate) company_prefix: String,
    pub(crate) item_reference: Option<String>,
    pub(crate) serial: String,
}

impl Identity {
    /// The part after `urn:epc:id:<scheme>:`, escaped, appended to `out`.
    ///
    /// Every form below is built into one pre-sized buffer with `push_str`
    /// rather than `format!`: the gateway decodes every arriving tag, and
    /// the formatting machinery and intermediate strings were most of the
    /// decoding's cost.
    pub(crate) fn push_uri_body(&self, out: &mut String) {
        out.push_str(&self.company_prefix);
        out.push('.');
        if let Some(r) = &self.item_reference {
            out.push_str(r);
            out.push('.');
        }
        push_urn_escaped(out, &self.serial);
    }

    fn body_len(&self) -> usize {
        self.company_prefix.len()
            + self.item_reference.as_ref().map_or(0, |r| r.len() + 1)
            + self.serial.len()
            + 8
    }

    /// `urn:epc:id:<scheme>:<body>`.
    pub(crate) fn pure_uri(&self) -> String {
        let mut s = String::with_capacity(16 + self.body_len());
        s.push_str("urn:epc:id:");
        s.push_str(self.family.name());
        s.push(':');
        self.push_uri_body(&mut s);
        s
    }

    /// Company prefix and reference rearranged into the key's digit order (without
    /// the check digit): indicator/extension digit first for SGTIN and SSCC.
    fn key_body(&self) -> String {
        let cp = self.company_prefix.as_str();
        let r = self.item_reference.as_deref().unwrap_or("");
        let (head, tail) = match self.family {
            Family::Sgtin => r.split_at(r.len().min(1)),
            Family::Sscc => {
                let s = self.serial.as_str();
                s.split_at(s.len().min(1))
            }
            Family::Sgln => ("", r),
            Family::Grai => ("0", r),
            Family::Giai => ("", ""),
        };
        // Room for the check digit `with_check` appends.
        let mut out = String::with_capacity(head.len() + cp.len() + tail.len() + 1);
        out.push_str(head);
        out.push_str(cp);
        out.push_str(tail);
        out
    }

    /// (AI, key value) of the primary key plus the optional (AI, value) qualifier.
    pub(crate) fn ai_parts(&self) -> Option<AiParts<'_>> {
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
        Some(self.element_string_of(&self.ai_parts()?))
    }

    /// `(AI)key[suffix][(AI)qualifier]` from parts already computed.
    pub(crate) fn element_string_of(&self, (ai, key, q): &AiParts<'_>) -> String {
        let suffix = self.key_suffix();
        let mut s = String::with_capacity(16 + key.len() + suffix.len() + self.serial.len());
        s.push('(');
        s.push_str(ai);
        s.push(')');
        s.push_str(key);
        s.push_str(suffix);
        if let Some((qai, qv)) = q {
            s.push('(');
            s.push_str(qai);
            s.push(')');
            s.push_str(qv);
        }
        s
    }

    pub(crate) fn digital_link(&self) -> Option<String> {
        Some(self.digital_link_of(&self.ai_parts()?))
    }

    /// `https://id.gs1.org/AI/key[suffix][/AI/qualifier]` from parts already
    /// computed.
    pub(crate) fn digital_link_of(&self, (ai, key, q): &AiParts<'_>) -> String {
        let suffix = self.key_suffix();
        let mut s = String::with_capacity(40 + key.len() + suffix.len() + self.serial.len());
        s.push_str("https://id.gs1.org/");
        s.push_str(ai);
        s.push('/');
        s.push_str(key);
        push_dl_escaped(&mut s, suffix);
        if let Some((qai, qv)) = q {
            s.push('/');
            s.push_str(qai);
            s.push('/');
            push_dl_escaped(&mut s, qv);
        }
        s
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
