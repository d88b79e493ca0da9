//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): a secret is
//! `whsec_` and the base64 of its key bytes; a delivery carries `webhook-id`,
//! `webhook-timestamp` (Unix seconds) and `webhook-signature`, which is `v1,` and the
//! base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the key, one per secret,
//! space-separated (during a secret rotation, old and new both sign). A receiver checks
//! it with any Standard Webhooks library (Svix's among them).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest key bytes a secret may have (Standard Webhooks: 24 to 64).
pub const MIN_KEY_BYTES: usize = 24;
/// Most key bytes a secret may have.
pub const MAX_KEY_BYTES: usize = 64;

/// A webhook secret's key. Never printed: `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.key.len())
    }
}

/// Why a secret's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with {SECRET_PREFIX:?}")]
    NoPrefix,
    #[error("a webhook secret is {SECRET_PREFIX:?} and base64 (standard alphabet, padded)")]
    NotBase64,
    #[error("a webhook secret holds {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes; this one {0}")]
    Length(usize),
}

impl Secret {
    /// A secret of `key` bytes.
    pub fn from_key(key: Vec<u8>) -> Result<Self, SecretError> {
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Self { key })
    }

    /// Reads `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::NoPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        Self::from_key(key)
    }

    /// The text form, `whsec_<base64>`: shown to the subscriber once, stored encrypted.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length (RustCrypto's `new_from_slice` never fails for
        // it); `from_key` bounded the length anyway.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of every length")
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` value: one signature per secret, space-separated, in the
/// order given (the newest secret first during a rotation), and the Ed25519 one
/// (`v1a,`) last when the subscription has a signing key.
pub fn signature_header(
    secrets: &[Secret],
    asymmetric: Option<&super::asymmetric::SigningPair>,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .chain(asymmetric.map(|k| k.sign(id, timestamp, body)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Svix's Standard Webhooks libraries: the same secret, id,
    /// timestamp and body give the same signature in every language.
    #[test]
    fn signs_the_standard_webhooks_example_as_every_library_does() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let secret = secret.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_rotation_signs_with_both_secrets() {
        let a = Secret::from_key(vec![1; 32]).unwrap_or_else(|e| panic!("{e}"));
        let b = Secret::from_key(vec![2; 32]).unwrap_or_else(|e| panic!("{e}"));
        let h = signature_header(&[b.clone(), a.clone()], None, "id", 1, b"{}");
        assert_eq!(
            h,
            format!("{} {}", b.sign("id", 1, b"{}"), a.sign("id", 1, b"{}"))
        );
        assert_ne!(a.sign("id", 1, b"{}"), b.sign("id", 1, b"{}"));
    }

    #[test]
    fn refuses_secrets_that_are_not_whsec_base64_of_24_to_64_bytes() {
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::NoPrefix)
        );
        assert_eq!(
            Secret::parse("whsec_not base64!"),
            Err(SecretError::NotBase64)
        );
        assert_eq!(Secret::parse("whsec_AAAA"), Err(SecretError::Length(3)));
        let long = format!("whsec_{}", STANDARD.encode([0u8; 65]));
        assert_eq!(Secret::parse(&long), Err(SecretError::Length(65)));
        let s = Secret::from_key(vec![7; 32]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Secret::parse(&s.expose()), Ok(s.clone()));
        assert!(
            !format!("{s:?}").contains(&s.expose()[6..]),
            "Debug never shows the key"
        );
    }
}
