//! Standard Webhooks' asymmetric signatures, optional per subscription: the bus keeps an
//! Ed25519 signing key (sealed at rest like the secrets) and adds `v1a,<base64 Ed25519
//! signature of "{id}.{timestamp}.{body}">` to `webhook-signature`, beside the HMAC
//! ones; the receiver gets only the public key, `whpk_<base64 of its 32 bytes>`, so a
//! leaked copy of it lets nobody forge a delivery.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use ed25519_dalek::{Signer, SigningKey};

/// The prefix of a public key's text form.
pub const PUBLIC_PREFIX: &str = "whpk_";

/// A subscription's Ed25519 signing key. `Debug` shows only the public key.
#[derive(Clone)]
pub struct SigningPair {
    key: SigningKey,
}

impl std::fmt::Debug for SigningPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningPair({}, secret redacted)", self.public_text())
    }
}

/// A seed that is not 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an Ed25519 seed is 32 bytes")]
pub struct BadSeed;

impl SigningPair {
    /// A new key from the system's random source.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The key of a stored seed.
    pub fn from_seed(seed: &[u8]) -> Result<Self, BadSeed> {
        let seed: [u8; 32] = seed.try_into().map_err(|_| BadSeed)?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The seed, to be sealed and stored.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// `whpk_<base64>`: what receivers verify with.
    pub fn public_text(&self) -> String {
        format!(
            "{PUBLIC_PREFIX}{}",
            STANDARD.encode(self.key.verifying_key().to_bytes())
        )
    }

    /// `v1a,<base64 signature of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut message = Vec::with_capacity(id.len() + 22 + body.len());
        message.extend_from_slice(id.as_bytes());
        message.push(b'.');
        message.extend_from_slice(timestamp.to_string().as_bytes());
        message.push(b'.');
        message.extend_from_slice(body);
        format!(
            "v1a,{}",
            STANDARD.encode(self.key.sign(&message).to_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    use super::*;

    #[test]
    fn a_v1a_signature_verifies_with_the_public_key_only() {
        let pair = SigningPair::generate();
        let header = pair.sign("msg_1", 1614265330, br#"{"test": 1}"#);
        let sig = STANDARD
            .decode(header.trim_start_matches("v1a,"))
            .unwrap_or_default();
        let public = STANDARD
            .decode(pair.public_text().trim_start_matches(PUBLIC_PREFIX))
            .unwrap_or_default();
        let key = VerifyingKey::from_bytes(&public.try_into().unwrap_or([0; 32]))
            .unwrap_or_else(|e| panic!("{e}"));
        let sig = Signature::from_slice(&sig).unwrap_or_else(|e| panic!("{e}"));
        assert!(key.verify(br#"msg_1.1614265330.{"test": 1}"#, &sig).is_ok());
        assert!(
            key.verify(br#"msg_1.1614265330.{"test": 2}"#, &sig)
                .is_err()
        );
        let again = SigningPair::from_seed(&pair.seed()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.public_text(), pair.public_text());
        assert!(!format!("{pair:?}").contains(&STANDARD.encode(pair.seed())));
        assert_eq!(SigningPair::from_seed(&[1, 2]).map(|_| ()), Err(BadSeed));
    }
}
