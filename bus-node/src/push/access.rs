//! Who a push client is and what it may read: an API key's `read` patterns (from its
//! headers), or a push token's (from the `token` query, for clients that cannot send
//! headers). A client asks for type patterns; each must lie within what it may read, or
//! the request is refused with 403 naming the pattern, so that a key scoped to `shop.*`
//! never receives a `billing.*` event. Asking for nothing means everything it may read.

use std::net::IpAddr;

use axum::http::{HeaderMap, StatusCode};
use bus_core::EventPattern;
use bus_core::subject_filters::covers;

use super::token::TokenError;
use crate::app::App;
use crate::http::problem::Problem;

/// Most patterns one client may ask for.
pub const MAX_PATTERNS: usize = 64;

/// A push client's identity and reach.
#[derive(Debug, Clone)]
pub struct Reader {
    /// The key's name (for logs: never the key or the token).
    pub name: String,
    /// What it may read; `None`: anything.
    may_read: Option<Vec<EventPattern>>,
}

impl Reader {
    /// Who presents these headers or this token.
    pub fn identify(
        app: &App,
        headers: &HeaderMap,
        token: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Self, Problem> {
        if let Some(token) = token {
            let Some(key) = app.push_token_key() else {
                return Err(unauthenticated(
                    "this node issues no push tokens (push.token_key_file is not set)",
                ));
            };
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let claims = key.verify(token, now).map_err(|e| match e {
                TokenError::Expired => {
                    unauthenticated("the push token has expired: ask for a new one")
                }
                other => unauthenticated(&other.to_string()),
            })?;
            let may_read = claims
                .types
                .iter()
                .map(|t| EventPattern::new(t.as_str()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| unauthenticated("the push token is malformed"))?;
            return Ok(Self {
                name: claims.key,
                may_read: Some(may_read),
            });
        }
        let principal = app.auth.authenticate(headers, client)?;
        Ok(Self {
            name: principal.name().to_owned(),
            may_read: principal.readable().map(<[EventPattern]>::to_vec),
        })
    }

    /// Whether every event `pattern` takes is one this reader may read.
    pub fn may_read(&self, pattern: &EventPattern) -> bool {
        match &self.may_read {
            None => true,
            Some(allowed) => allowed.iter().any(|a| covers(a.as_str(), pattern.as_str())),
        }
    }

    /// The patterns asked for (`types=a.b,c.*`), each checked; none asked: everything
    /// this reader may read (403 when that is nothing).
    pub fn patterns(&self, types: Option<&str>) -> Result<Vec<EventPattern>, Problem> {
        let asked = parse_patterns(types.unwrap_or(""))?;
        if asked.is_empty() {
            return match &self.may_read {
                None => Ok(EventPattern::new(">").into_iter().collect()),
                Some(allowed) if !allowed.is_empty() => Ok(allowed.clone()),
                Some(_) => Err(forbidden(format!(
                    "API key {:?} may read no event types (its \"read\" is empty)",
                    self.name
                ))),
            };
        }
        self.check(&asked)?;
        Ok(asked)
    }

    /// 403 naming the first of `patterns` this reader may not read.
    pub fn check(&self, patterns: &[EventPattern]) -> Result<(), Problem> {
        match patterns.iter().find(|p| !self.may_read(p)) {
            None => Ok(()),
            Some(p) => Err(forbidden(format!(
                "{:?} may not read {p} (it may read {})",
                self.name,
                self.reach()
            ))),
        }
    }

    /// What it may read, as text for errors and tokens.
    pub fn reach(&self) -> String {
        match &self.may_read {
            None => ">".to_owned(),
            Some(a) if a.is_empty() => "nothing".to_owned(),
            Some(a) => a
                .iter()
                .map(EventPattern::as_str)
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// `a.b,c.*` as patterns (empty text: none); 400 naming a bad one.
pub fn parse_patterns(text: &str) -> Result<Vec<EventPattern>, Problem> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let pattern = EventPattern::new(part)
            .map_err(|e| Problem::bad_request("invalid-types", format!("types: {e}")))?;
        if !out.contains(&pattern) {
            out.push(pattern);
        }
    }
    if out.len() > MAX_PATTERNS {
        return Err(Problem::bad_request(
            "invalid-types",
            format!("types: at most {MAX_PATTERNS} patterns"),
        ));
    }
    Ok(out)
}

fn unauthenticated(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        detail.to_owned(),
    )
}

fn forbidden(detail: String) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(may: &[&str]) -> Reader {
        Reader {
            name: "k".into(),
            may_read: Some(
                may.iter()
                    .filter_map(|p| EventPattern::new(*p).ok())
                    .collect(),
            ),
        }
    }

    #[test]
    fn a_pattern_is_readable_only_within_the_keys_patterns() {
        let r = reader(&["shop.*", "audit.>"]);
        for ok in [
            "shop.created",
            "shop.*",
            "audit.x.y",
            "audit.>",
            "audit.*.z",
        ] {
            assert!(r.patterns(Some(ok)).is_ok(), "{ok}");
        }
        for refused in ["billing.*", ">", "shop.>", "shop.a.b", "*.created", "audit"] {
            let e = r.patterns(Some(refused));
            assert!(
                matches!(&e, Err(p) if p.status == StatusCode::FORBIDDEN),
                "{refused}"
            );
        }
        let all = r.patterns(None).unwrap_or_default();
        assert_eq!(all.len(), 2);
        assert!(reader(&[]).patterns(None).is_err());
        assert!(
            matches!(r.patterns(Some("shop..x")), Err(p) if p.status == StatusCode::BAD_REQUEST)
        );
    }
}
