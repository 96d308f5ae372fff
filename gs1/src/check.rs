//! GS1 mod-10 check digit (GS1 General Specifications §7.9.1).

/// Check digit for a string of decimal digits that does not yet carry one.
/// Returns `None` if `digits` is empty or holds anything other than ASCII digits.
pub fn gs1_check_digit(digits: &str) -> Option<u8> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Weights 3,1,3,... start at the rightmost data digit.
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    Some(((10 - sum % 10) % 10) as u8)
}

/// True if the last digit of `digits` is the correct GS1 check digit for the rest.
pub fn gs1_check_digit_valid(digits: &str) -> bool {
    if digits.len() < 2 {
        return false;
    }
    let (body, last) = digits.split_at(digits.len() - 1);
    match (gs1_check_digit(body), last.bytes().next()) {
        (Some(c), Some(l)) if l.is_ascii_digit() => c == l - b'0',
        _ => false,
    }
}

/// Appends the check digit; `None` if `digits` is not all-decimal.
pub(crate) fn with_check(digits: &str) -> Option<String> {
    let c = gs1_check_digit(digits)?;
    let mut s = String::with_capacity(digits.len() + 1);
    s.push_str(digits);
    s.push(char::from(b'0' + c));
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digits_match_gs1_examples() {
        assert_eq!(gs1_check_digit("8061414112345"), Some(8));
        assert_eq!(gs1_check_digit("0950600013435"), Some(2));
        assert_eq!(gs1_check_digit("7061414112345"), Some(1));
        assert_eq!(gs1_check_digit("10614141234567890"), Some(8));
        assert_eq!(gs1_check_digit("061414112345"), Some(2));
        assert_eq!(gs1_check_digit("0061414107346"), Some(7));
        assert_eq!(gs1_check_digit("1061414107346"), Some(4));
    }

    #[test]
    fn check_digit_rejects_non_digits() {
        assert_eq!(gs1_check_digit(""), None);
        assert_eq!(gs1_check_digit("12a4"), None);
        assert!(gs1_check_digit_valid("09506000134352"));
        assert!(!gs1_check_digit_valid("09506000134353"));
        assert!(!gs1_check_digit_valid("7"));
    }
}
