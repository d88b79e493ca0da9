//! The formats CloudEvents gives some attributes, checked before an event is stored (by
//! [`binary_mode::encode`](crate::binary_mode::encode), so in the SDK's publish and the
//! node's ingress alike): `dataschema` is an absolute URI (RFC 3986), and `traceparent`
//! is a W3C Trace Context `traceparent` (the CloudEvents distributed tracing extension).

/// Whether `value` is an absolute URI: a scheme (a letter, then letters, digits, `+`,
/// `-`, `.`), a colon, and only characters a URI may hold (unreserved, reserved, and
/// `%` followed by two hex digits).
pub fn is_absolute_uri(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once(':') else {
        return false;
    };
    let mut s = scheme.bytes();
    let scheme_ok = s.next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    scheme_ok && is_uri_text(rest)
}

/// Whether every character of `text` may appear in a URI, `%` only as `%HH`.
fn is_uri_text(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            c if c.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b':' | b'/' | b'?' | b'#' | b'[' | b']' | b'@' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// Whether `value` is a W3C `traceparent`: `version-traceid-parentid-flags` in lowercase
/// hex, version not `ff`, trace id and parent id not all zeros; version `00` has exactly
/// these four fields, a later version may add fields after a `-`.
pub fn is_traceparent(value: &str) -> bool {
    let b = value.as_bytes();
    if b.len() < 55 {
        return false;
    }
    let hex = |from: usize, to: usize| {
        b[from..to]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let zeros = |from: usize, to: usize| b[from..to].iter().all(|c| *c == b'0');
    let shape = hex(0, 2)
        && b[2] == b'-'
        && hex(3, 35)
        && b[35] == b'-'
        && hex(36, 52)
        && b[52] == b'-'
        && hex(53, 55);
    if !shape || &b[0..2] == b"ff" || zeros(3, 35) || zeros(36, 52) {
        return false;
    }
    if &b[0..2] == b"00" {
        b.len() == 55
    } else {
        b.len() == 55 || b[55] == b'-'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dataschema_must_be_an_absolute_uri() {
        for ok in [
            "https://schemas.example.com/order/v1.json",
            "urn:example:order:v1",
            "http://h/p?q=a%20b#frag",
            "tag:example.com,2026:order",
        ] {
            assert!(is_absolute_uri(ok), "{ok}");
        }
        for bad in [
            "order.json",
            "/schemas/order",
            "1http://x",
            "https://ex ample.com",
            "https://example.com/%zz",
            "https://example.com/\"quoted\"",
            ":nothing",
            "",
        ] {
            assert!(!is_absolute_uri(bad), "{bad}");
        }
    }

    #[test]
    fn a_traceparent_must_be_w3c() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_traceparent(good));
        assert!(is_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"
        ));
        for bad in [
            "not-a-traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!is_traceparent(bad), "{bad}");
        }
    }
}
