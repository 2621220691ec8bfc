//! Voyado's standard contact attributes and the value rules Engage enforces, written from
//! the documentation (not shared with the sink, which is built to the same text).

use serde_json::Value;

/// Attributes an integration may write.
pub(crate) const WRITABLE: &[&str] = &[
    "firstName",
    "lastName",
    "street",
    "zipCode",
    "city",
    "careOf",
    "email",
    "mobilePhone",
    "socialSecurityNumber",
    "externalId",
    "countryCode",
    "country",
    "birthDay",
    "gender",
    "createdInStore",
    "store",
];

/// Attributes Engage computes or generates; writes to them are dropped.
pub(crate) const READ_ONLY: &[&str] = &["memberNumber", "age", "rfm", "nps", "id"];

/// Attributes that can identify the contacts of a contact type.
pub(crate) const KEY_ATTRIBUTES: &[&str] =
    &["email", "mobilePhone", "externalId", "socialSecurityNumber"];

/// True for `null`, `""` and whitespace-only strings: values a client should not send
/// unless it means to clear the attribute.
pub(crate) fn is_empty_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// A plausible address: one `@`, a non-empty local part, a dotted domain, no whitespace.
pub(crate) fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && s.len() <= 254
        && !domain.contains('@')
        && !s.chars().any(char::is_whitespace)
        && domain.split('.').count() >= 2
        && domain.split('.').all(|part| !part.is_empty())
}

/// `+` then 7 to 15 digits, spaces and hyphens allowed between digits. A number without its
/// `+` (or with a space in its place, the mark of a client that did not percent-encode it)
/// is invalid.
pub(crate) fn valid_phone(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('+') else {
        return false;
    };
    let digits = rest.chars().filter(char::is_ascii_digit).count();
    rest.starts_with(|c: char| c.is_ascii_digit())
        && rest
            .chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
        && (7..=15).contains(&digits)
}

/// Swedish (`YYMMDD-NNNN`, `YYYYMMDDNNNN`, ...) or Finnish (`DDMMYY-NNNC`) personal numbers.
pub(crate) fn valid_ssn(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: &[u8]| r.iter().all(u8::is_ascii_digit);
    let swedish = match b.len() {
        10 | 12 => digits(b),
        11 | 13 => {
            let cut = b.len() - 5;
            digits(&b[..cut]) && matches!(b[cut], b'-' | b'+') && digits(&b[cut + 1..])
        }
        _ => false,
    };
    let finnish = b.len() == 11
        && digits(&b[..6])
        && matches!(b[6], b'-' | b'+' | b'A')
        && digits(&b[7..10])
        && b[10].is_ascii_alphanumeric();
    swedish || finnish
}

fn valid_date(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10
}

/// The form two values of a key attribute are compared in: emails ignore case, phones
/// ignore separators, personal numbers ignore the hyphen.
pub(crate) fn normalize_key(attribute: &str, value: &str) -> String {
    match attribute {
        "email" => value.to_lowercase(),
        "mobilePhone" => value
            .chars()
            .filter(|c| *c == '+' || c.is_ascii_digit())
            .collect(),
        "socialSecurityNumber" => value
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_uppercase(),
        _ => value.to_string(),
    }
}

/// Why a non-empty value of a standard attribute would be refused (422 ValidationError).
pub(crate) fn value_problem(attribute: &str, value: &Value) -> Option<String> {
    if is_empty_value(value) {
        return None;
    }
    let custom = !WRITABLE.contains(&attribute);
    if custom {
        return match value {
            Value::Array(_) | Value::Object(_) => {
                Some(format!("{attribute} must be a single value"))
            }
            _ => None,
        };
    }
    let Value::String(s) = value else {
        return Some(format!("{attribute} must be a string"));
    };
    let ok = match attribute {
        "email" => valid_email(s),
        "mobilePhone" => valid_phone(s),
        "socialSecurityNumber" => valid_ssn(s),
        "birthDay" => valid_date(s),
        "gender" => matches!(s.as_str(), "Male" | "Female" | "Other"),
        "countryCode" => s.len() == 2 && s.chars().all(|c| c.is_ascii_uppercase()),
        _ => true,
    };
    (!ok).then(|| format!("{attribute} has an invalid value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn emails() {
        assert!(valid_email("a.b+c@example.co.uk"));
        for bad in ["", "a", "a@b", "@b.se", "a b@c.se", "a@@b.se", "a@b..se"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn phones_need_their_plus() {
        assert!(valid_phone("+46701234567"));
        assert!(valid_phone("+46 70-123 45 67"));
        for bad in ["46701234567", " 46701234567", "+", "+46abc", "+123"] {
            assert!(!valid_phone(bad), "{bad}");
        }
    }

    #[test]
    fn personal_numbers() {
        for ok in [
            "8112189876",
            "198112189876",
            "811218-9876",
            "19811218-9876",
            "131052-308T",
        ] {
            assert!(valid_ssn(ok), "{ok}");
        }
        for bad in ["", "811218", "81121898766", "abcdefghij"] {
            assert!(!valid_ssn(bad), "{bad}");
        }
    }

    #[test]
    fn empty_values() {
        assert!(is_empty_value(&json!(null)));
        assert!(is_empty_value(&json!("  ")));
        assert!(!is_empty_value(&json!(0)));
        assert!(!is_empty_value(&json!(false)));
    }

    #[test]
    fn value_rules() {
        assert!(value_problem("birthDay", &json!("1990-02-30")).is_some());
        assert!(value_problem("birthDay", &json!("1990-02-28")).is_none());
        assert!(value_problem("gender", &json!("male")).is_some());
        assert!(value_problem("firstName", &json!(12)).is_some());
        assert!(value_problem("loyaltyPoints", &json!(12)).is_none());
        assert!(value_problem("email", &json!("")).is_none());
    }
}
