//! A URL as logs, errors and spans may show it: without what may be a credential. The
//! user and password read `REDACTED` (as the OpenTelemetry conventions want `url.full`),
//! every query value reads `REDACTED` (keys stay: they say what was passed), and the
//! fragment goes. Used for webhook targets (bus-node) and the OTLP collector's endpoint.

use url::Url;

/// `url` without its credentials (see the module).
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() {
        let _ = shown.set_username("REDACTED");
    }
    if shown.password().is_some() {
        let _ = shown.set_password(Some("REDACTED"));
    }
    shown.set_fragment(None);
    if url.query().is_some() {
        let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        let mut query = shown.query_pairs_mut();
        query.clear();
        for k in keys {
            query.append_pair(&k, "REDACTED");
        }
    }
    shown.to_string()
}

/// `text`, a URL from configuration, as [`redacted`] shows it; text that does not parse is
/// shown without its query and without what lies between its scheme's `://` and its last
/// `@`.
pub fn redacted_text(text: &str) -> String {
    if let Ok(url) = Url::parse(text) {
        return redacted(&url);
    }
    let text = match text.find('?') {
        Some(q) => format!("{}?REDACTED", &text[..q]),
        None => text.to_owned(),
    };
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}REDACTED{}", &text[..scheme + 3], &text[at..])
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_query_values_are_redacted_keys_kept() {
        assert_eq!(
            redacted_text("https://key:s3cret@collector:4318/v1/traces?token=abc&x=1#frag"),
            "https://REDACTED:REDACTED@collector:4318/v1/traces?token=REDACTED&x=REDACTED"
        );
        assert_eq!(
            redacted_text("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            redacted_text("http://key:s3cret@bad host"),
            "http://REDACTED@bad host"
        );
        assert_eq!(
            redacted_text("http://bad host/v1/traces?api_key=s3cret"),
            "http://bad host/v1/traces?REDACTED"
        );
    }
}
