//! Consumer group names (`billing`, `email-sender`): 1 to [`MAX_GROUP_NAME_LEN`] ASCII
//! letters, digits, `-` and `_`. A group name is a JetStream durable consumer name and
//! one token of the dead-letter and redrive subjects, so it can never hold a dot, a
//! wildcard or white space.

use std::fmt;

/// Longest accepted group name, in bytes.
pub const MAX_GROUP_NAME_LEN: usize = 64;

/// Why a group name was refused.
///
/// ```
/// use bus_core::{GroupName, GroupNameError};
/// let err = GroupName::new("billing.eu").unwrap_err();
/// assert!(matches!(
///     err,
///     GroupNameError::InvalidCharacter { character: '.', position: 7, .. }
/// ));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupNameError {
    /// The name is the empty string.
    #[error("group name is empty")]
    Empty,
    /// The name is longer than [`MAX_GROUP_NAME_LEN`] bytes.
    #[error("group name is {len} bytes long; the limit is {MAX_GROUP_NAME_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A character other than ASCII letters, digits, `-` and `_`.
    #[error(
        "group name {name:?}: character {character:?} at position {position} is not allowed \
         (use letters, digits, '-' and '_')"
    )]
    InvalidCharacter {
        /// The refused name.
        name: String,
        /// The character that is not allowed.
        character: char,
        /// Its byte offset in `name`.
        position: usize,
    },
}

/// A validated consumer group name.
///
/// ```
/// use bus_core::GroupName;
/// assert!(GroupName::new("billing").is_ok());
/// assert!(GroupName::new("billing.eu").is_err());
/// ```
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct GroupName(String);

impl GroupName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, GroupNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(GroupNameError::Empty);
        }
        if name.len() > MAX_GROUP_NAME_LEN {
            return Err(GroupNameError::TooLong { len: name.len() });
        }
        if let Some((position, character)) = name
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(GroupNameError::InvalidCharacter {
                name,
                character,
                position,
            });
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for GroupName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<GroupName> for String {
    fn from(g: GroupName) -> Self {
        g.0
    }
}

impl TryFrom<String> for GroupName {
    type Error = GroupNameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl std::str::FromStr for GroupName {
    type Err = GroupNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: Result<(), GroupNameError>) {
        assert_eq!(GroupName::new(name).map(|_| ()), expected, "{name:?}");
    }

    #[test]
    fn accepts_letters_digits_dash_and_underscore() {
        check("billing", Ok(()));
        check("Billing-EU_2", Ok(()));
        check(&"g".repeat(MAX_GROUP_NAME_LEN), Ok(()));
    }

    #[test]
    fn refuses_names_that_cannot_be_a_subject_token_naming_the_culprit() {
        check("", Err(GroupNameError::Empty));
        check(
            &"g".repeat(MAX_GROUP_NAME_LEN + 1),
            Err(GroupNameError::TooLong {
                len: MAX_GROUP_NAME_LEN + 1,
            }),
        );
        for (name, character, position) in [
            ("billing.eu", '.', 7),
            ("a*", '*', 1),
            ("a>", '>', 1),
            ("a b", ' ', 1),
            ("é", 'é', 0),
        ] {
            check(
                name,
                Err(GroupNameError::InvalidCharacter {
                    name: name.to_owned(),
                    character,
                    position,
                }),
            );
        }
    }
}
