//! Event type names (`shop.order.created`) and subscription patterns (`shop.*`, `shop.>`).
//!
//! A name is one or more dot-separated tokens of lowercase ASCII letters, digits, `-`
//! and `_`, starting with a letter. Each name maps to exactly one NATS subject, so a name
//! can never contain NATS wildcards or white space.

use std::fmt;

/// Longest accepted event type name, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 200;

/// Why a name or pattern was refused; `position` is the byte offset of the culprit.
///
/// ```
/// use bus_core::{EventType, EventTypeError};
/// let err = EventType::new("shop.Order").unwrap_err();
/// assert!(matches!(
///     err,
///     EventTypeError::InvalidCharacter { character: 'O', position: 5, .. }
/// ));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventTypeError {
    /// The name is the empty string.
    #[error("event type is empty")]
    Empty,
    #[error("event type is {len} bytes long; the limit is {MAX_EVENT_TYPE_LEN}")]
    /// The name is longer than [`MAX_EVENT_TYPE_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A character other than lowercase ASCII letters, digits, `-`, `_` and the dots
    /// between tokens (and, in a pattern, `*` and `>` as whole tokens).
    #[error(
        "event type {name:?}: character {character:?} at position {position} is not allowed \
         (use lowercase a-z, 0-9, '-' and '_' in dot-separated tokens)"
    )]
    InvalidCharacter {
        /// The refused name.
        name: String,
        /// The character that is not allowed.
        character: char,
        /// Its byte offset in `name`.
        position: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    #[error(
        "event type {name:?}: empty token at position {position} (two dots, or a leading or trailing dot)"
    )]
    EmptyToken {
        /// The refused name.
        name: String,
        /// Byte offset where the empty token starts.
        position: usize,
    },
    /// A token starts with a digit, `-` or `_` instead of a letter.
    #[error("event type {name:?}: token at position {position} must start with a letter")]
    TokenStart {
        /// The refused name.
        name: String,
        /// Byte offset of the token.
        position: usize,
    },
    /// A pattern has `>` somewhere other than as its whole last token.
    #[error("pattern {name:?}: '>' is only allowed as the whole last token")]
    MisplacedTail {
        /// The refused pattern.
        name: String,
    },
}

/// A validated event type name; see [`EventType::new`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(String);

impl EventType {
    /// Validates `name`.
    ///
    /// ```
    /// use bus_core::EventType;
    /// assert!(EventType::new("shop.order.created").is_ok());
    /// assert!(EventType::new("Shop.order").is_err());
    /// ```
    pub fn new(name: impl Into<String>) -> Result<Self, EventTypeError> {
        let name = name.into();
        check(&name, false)?;
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EventType {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A subscription pattern: an event type whose tokens may be `*` (one token) and whose
/// last token may be `>` (one or more tokens), as in NATS.
///
/// ```
/// use bus_core::{EventPattern, EventType};
/// let created = EventPattern::new("shop.*.created")?;
/// assert!(created.matches(&EventType::new("shop.order.created")?));
/// let line_created = EventType::new("shop.order.line.created")?;
/// assert!(!created.matches(&line_created));
/// assert!(EventPattern::new("shop.>")?.matches(&line_created));
/// # Ok::<(), bus_core::EventTypeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventPattern(String);

impl EventPattern {
    /// Validates `pattern`: an event type name whose tokens may also be `*`, and whose last
    /// token may be `>` (example on [`EventPattern`]).
    pub fn new(pattern: impl Into<String>) -> Result<Self, EventTypeError> {
        let pattern = pattern.into();
        check(&pattern, true)?;
        Ok(Self(pattern))
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `event_type` matches this pattern (example on [`EventPattern`]).
    pub fn matches(&self, event_type: &EventType) -> bool {
        let mut names = event_type.as_str().split('.');
        for token in self.0.split('.') {
            match (token, names.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (t, Some(n)) if t == n => {}
                _ => return false,
            }
        }
        names.next().is_none()
    }
}

impl From<EventType> for EventPattern {
    fn from(t: EventType) -> Self {
        Self(t.0)
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check(name: &str, pattern: bool) -> Result<(), EventTypeError> {
    if name.is_empty() {
        return Err(EventTypeError::Empty);
    }
    if name.len() > MAX_EVENT_TYPE_LEN {
        return Err(EventTypeError::TooLong { len: name.len() });
    }
    if !pattern && is_valid_name(name.as_bytes()) {
        return Ok(());
    }
    culprit(name, pattern)
}

/// Whether `name` is a valid event type name, in one pass over its bytes:
/// every event published and every delivery decoded checks its type, and splitting it
/// into tokens cost ~750 instructions per check (BENCHMARKS.md, "Profile, sixth round").
/// [`culprit`] says what is wrong with a name this refuses.
fn is_valid_name(name: &[u8]) -> bool {
    let mut token_start = true;
    for &b in name {
        if token_start {
            if !b.is_ascii_lowercase() {
                return false;
            }
            token_start = false;
        } else if b == b'.' {
            token_start = true;
        } else if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return false;
        }
    }
    !token_start
}

/// Checks `name` token by token, naming what is wrong: the first error found.
fn culprit(name: &str, pattern: bool) -> Result<(), EventTypeError> {
    let mut next = 0usize;
    for token in name.split('.') {
        let start = next;
        next += token.len() + 1;
        let is_last = next > name.len();
        if token.is_empty() {
            return Err(EventTypeError::EmptyToken {
                name: name.to_owned(),
                position: start,
            });
        }
        if pattern && token == "*" {
            continue;
        }
        if pattern && token == ">" {
            if is_last {
                continue;
            }
            return Err(EventTypeError::MisplacedTail {
                name: name.to_owned(),
            });
        }
        for (j, c) in token.char_indices() {
            let ok = c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
            if !ok {
                if pattern && c == '>' {
                    return Err(EventTypeError::MisplacedTail {
                        name: name.to_owned(),
                    });
                }
                return Err(EventTypeError::InvalidCharacter {
                    name: name.to_owned(),
                    character: c,
                    position: start + j,
                });
            }
        }
        if !token.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(EventTypeError::TokenStart {
                name: name.to_owned(),
                position: start,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_type(input: &str, expected: Result<(), EventTypeError>) {
        assert_eq!(
            EventType::new(input).map(|_| ()),
            expected,
            "input {input:?}"
        );
    }

    #[test]
    fn the_one_pass_check_agrees_with_the_token_by_token_check() {
        // Every string of up to 4 characters from an alphabet with each kind of byte.
        let alphabet = ['a', 'z', '0', '-', '_', '.', 'A', '*', '>', ' ', 'é'];
        let mut names = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..4 {
            names = names
                .iter()
                .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
                .collect();
            all.extend(names.iter().cloned());
        }
        for name in &all {
            assert_eq!(
                is_valid_name(name.as_bytes()),
                culprit(name, false).is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn names_are_validated_and_the_culprit_is_named() {
        check_type("shop.order.created", Ok(()));
        check_type("a", Ok(()));
        check_type("a1.b-c.d_e", Ok(()));
        check_type("", Err(EventTypeError::Empty));
        check_type(
            "shop.Order",
            Err(EventTypeError::InvalidCharacter {
                name: "shop.Order".into(),
                character: 'O',
                position: 5,
            }),
        );
        check_type(
            "shop order",
            Err(EventTypeError::InvalidCharacter {
                name: "shop order".into(),
                character: ' ',
                position: 4,
            }),
        );
        check_type(
            "shop.*",
            Err(EventTypeError::InvalidCharacter {
                name: "shop.*".into(),
                character: '*',
                position: 5,
            }),
        );
        check_type(
            "shop..x",
            Err(EventTypeError::EmptyToken {
                name: "shop..x".into(),
                position: 5,
            }),
        );
        check_type(
            "shop.",
            Err(EventTypeError::EmptyToken {
                name: "shop.".into(),
                position: 5,
            }),
        );
        check_type(
            "shop.1x",
            Err(EventTypeError::TokenStart {
                name: "shop.1x".into(),
                position: 5,
            }),
        );
        check_type(
            &"a".repeat(MAX_EVENT_TYPE_LEN + 1),
            Err(EventTypeError::TooLong {
                len: MAX_EVENT_TYPE_LEN + 1,
            }),
        );
    }

    #[test]
    fn the_error_message_says_which_character_is_wrong() {
        let err = EventType::new("shop.Order").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "event type \"shop.Order\": character 'O' at position 5 is not allowed \
                 (use lowercase a-z, 0-9, '-' and '_' in dot-separated tokens)"
            )
        );
    }

    #[test]
    fn patterns_match_like_nats_subjects() {
        let t = |s: &str| EventType::new(s).ok().unwrap_or_else(|| panic!("{s}"));
        let p = |s: &str| EventPattern::new(s).ok().unwrap_or_else(|| panic!("{s}"));
        assert!(p("shop.*").matches(&t("shop.order")));
        assert!(!p("shop.*").matches(&t("shop.order.created")));
        assert!(p("shop.>").matches(&t("shop.order.created")));
        assert!(!p("shop.>").matches(&t("shop")));
        assert!(p("shop.order").matches(&t("shop.order")));
        assert!(!p("shop.order").matches(&t("shop.orders")));
        assert!(EventPattern::new("shop.>.x").is_err());
        assert!(EventPattern::new("shop.a>").is_err());
    }
}
