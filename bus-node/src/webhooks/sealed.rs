//! Webhook secrets sealed at rest: each subscription's secrets are stored in the
//! subscriptions bucket only as XChaCha20-Poly1305 ciphertext under the node's sealing
//! key (`webhooks.secret_key_file`: 32 bytes, as base64 or 64 hex digits; every node of
//! a cluster has the same file), with a fresh random 24-byte nonce per sealing and the
//! subscription id as associated data (a sealed secret copied to another subscription
//! does not open). A bucket read without the key yields nothing usable.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The sealing key. Never printed.
#[derive(Clone)]
pub struct SealingKey(XChaCha20Poly1305);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(redacted)")
    }
}

/// Why sealing or opening failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the sealing key is 32 bytes, as base64 or 64 hex digits")]
    BadKey,
    #[error("a sealed secret is base64 of a 24-byte nonce and its ciphertext")]
    Malformed,
    #[error(
        "the secret does not open with this node's key (another key, or another subscription's)"
    )]
    WrongKey,
}

impl SealingKey {
    /// Reads the key file's text: base64 of 32 bytes, or 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| SealError::BadKey)?
        } else {
            STANDARD.decode(text).map_err(|_| SealError::BadKey)?
        };
        if bytes.len() != 32 {
            return Err(SealError::BadKey);
        }
        XChaCha20Poly1305::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| SealError::BadKey)
    }

    /// A fresh random key, as `webhooks.secret_key_file` text (`dev` makes one).
    pub fn generate_text() -> String {
        STANDARD.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
    }

    /// `plain` sealed for subscription `id`: base64 of nonce + ciphertext.
    pub fn seal(&self, id: &str, plain: &[u8]) -> Result<String, SealError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| SealError::Malformed)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(STANDARD.encode(out))
    }

    /// Opens what [`SealingKey::seal`] made for subscription `id`.
    pub fn open(&self, id: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| SealError::Malformed)?;
        if bytes.len() < 24 + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(24);
        self.0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| SealError::WrongKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SealingKey {
        SealingKey::parse(&SealingKey::generate_text()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_its_subscription() {
        let (k, other) = (key(), key());
        let sealed = k
            .seal("wh-1", b"whsec_abc")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(k.open("wh-1", &sealed), Ok(b"whsec_abc".to_vec()));
        assert_eq!(k.open("wh-2", &sealed), Err(SealError::WrongKey));
        assert_eq!(other.open("wh-1", &sealed), Err(SealError::WrongKey));
        assert_ne!(
            sealed,
            k.seal("wh-1", b"whsec_abc").unwrap_or_default(),
            "fresh nonce"
        );
        assert_eq!(k.open("wh-1", "AAAA"), Err(SealError::Malformed));
    }

    #[test]
    fn the_key_is_32_bytes_as_base64_or_hex() {
        assert!(SealingKey::parse(&"ab".repeat(32)).is_ok());
        assert!(SealingKey::parse(&format!("{}\n", STANDARD.encode([7u8; 32]))).is_ok());
        assert_eq!(SealingKey::parse("short").err(), Some(SealError::BadKey));
        assert_eq!(
            SealingKey::parse(&STANDARD.encode([7u8; 16])).err(),
            Some(SealError::BadKey)
        );
    }
}
