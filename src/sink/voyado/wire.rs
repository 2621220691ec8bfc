//! What every Voyado call shares on the wire: values percent-encoded into URLs, ids read
//! from answers, and server text cut to one bounded line before it reaches a log or report.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but unreserved characters is percent-encoded: `+`, `/`, `&`, `#`, `%`, spaces
/// and non-ASCII alike.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The longest server text kept as a row's reason.
const MAX_REASON: usize = 300;

/// Server text as one line of at most `MAX_REASON` characters.
pub fn truncate(s: &str) -> String {
    let s = s.trim().replace(['\n', '\r'], " ");
    if s.chars().count() > MAX_REASON {
        let cut: String = s.chars().take(MAX_REASON).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// Percent-encodes a value for a URL path segment or query parameter.
pub fn encode(v: &str) -> String {
    utf8_percent_encode(v, URL_VALUE).to_string()
}

/// A contactId from a lookup answer: a JSON string, or the bare id.
pub(super) fn parse_id(body: &str) -> Option<String> {
    parse_token(body, &["id", "contactId"], 100, &['-'])
}

/// An id from an answer that carries one: a JSON string, an object with one of `fields`
/// (names matched ignoring case), or the bare text (some clients see ids unquoted).
/// Anything else that is not JSON (a truncated string, an HTML page) is not an id, nor is
/// an id longer than `max_len` or holding characters other than ASCII letters, digits and
/// `extra`.
pub fn parse_token(body: &str, fields: &[&str], max_len: usize, extra: &[char]) -> Option<String> {
    let t = body.trim();
    let id = match serde_json::from_str::<serde_json::Value>(t) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(o)) => fields
            .iter()
            .find_map(|f| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(f))
                    .map(|(_, v)| v)
            })
            .and_then(|v| v.as_str())?
            .to_string(),
        Ok(_) => return None,
        Err(_) if !t.contains(['"', '<', '{', '[', ' ']) => t.to_string(),
        Err(_) => return None,
    };
    let id = id.trim().to_string();
    let plausible = !id.is_empty()
        && id.len() <= max_len
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c));
    plausible.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_values_are_fully_percent_encoded() {
        assert_eq!(encode("+46 70/1&2#3%"), "%2B46%2070%2F1%262%233%25");
        assert_eq!(encode("åsa@x.se"), "%C3%A5sa%40x.se");
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
    }

    #[test]
    fn ids_are_read_quoted_or_bare() {
        assert_eq!(parse_id("\"2e40b702-aa\""), Some("2e40b702-aa".into()));
        assert_eq!(parse_id("2e40b702-aa\n"), Some("2e40b702-aa".into()));
        assert_eq!(parse_id("{\"id\": \"abc\"}"), Some("abc".into()));
        assert_eq!(parse_id("<html>oops</html>"), None);
        assert_eq!(parse_id(""), None);
        assert_eq!(parse_id("{\"name\": 1}"), None);
        assert_eq!(parse_id("\"2e40b7"), None, "truncated JSON is not an id");
        assert_eq!(parse_id("{\"id\": \"2e40"), None);
    }
}
