//! Push tokens: what an `EventSource` (which cannot send headers) carries in its query
//! instead of an API key. A token names the key it was issued to, the type patterns it
//! may read and its expiry, signed with HMAC-SHA256 under `push.token_key_file`, so any
//! node with that key verifies it without a lookup. Format:
//! `bpt1.<base64url JSON claims>.<base64url signature of "bpt1.<claims>">`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "bpt1.";
/// Longest token accepted (a bound on what is decoded before the signature is checked).
pub const MAX_TOKEN_LEN: usize = 8192;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key it was issued to (its name).
    pub key: String,
    /// The type patterns it may read.
    pub types: Vec<String>,
    /// Expiry, unix seconds.
    pub exp: i64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the push token is malformed")]
    Malformed,
    #[error("the push token's signature is not valid")]
    BadSignature,
    #[error("the push token has expired")]
    Expired,
}

/// The signing key.
pub struct TokenKey(Hmac<Sha256>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(key: &[u8]) -> Self {
        // HMAC takes keys of any length.
        Self(Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!()))
    }

    pub fn issue(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = String::with_capacity(PREFIX.len() + json.len() * 2);
        token.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&json, &mut token);
        let mut mac = self.0.clone();
        mac.update(token.as_bytes());
        let signature = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// The token's claims if it is one this key signed and it has not expired at `now`
    /// (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN || !token.starts_with(PREFIX) {
            return Err(TokenError::Malformed);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.0.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims = URL_SAFE_NO_PAD
            .decode(&signed[PREFIX.len()..])
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&claims).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            key: "shop".into(),
            types: vec!["shop.>".into()],
            exp,
        }
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let token = key.issue(&claims(1000));
        assert_eq!(key.verify(&token, 999), Ok(claims(1000)));
        assert_eq!(key.verify(&token, 1000), Err(TokenError::Expired));
    }

    #[test]
    fn a_tampered_token_or_another_key_is_refused() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let token = key.issue(&claims(1000));
        let other = TokenKey::new(b"fedcba9876543210fedcba9876543210");
        assert_eq!(other.verify(&token, 0), Err(TokenError::BadSignature));
        // Claims widened to everything, signature kept.
        let (_, signature) = token.rsplit_once('.').unwrap_or_default();
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"key":"shop","types":[">"],"exp":1000}"#);
        let forged = format!("{PREFIX}{forged_claims}.{signature}");
        assert_eq!(key.verify(&forged, 0), Err(TokenError::BadSignature));
        for bad in [
            "",
            "bpt1.",
            "bpt1.x.y",
            "abc",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(key.verify(bad, 0).is_err(), "{bad:?}");
        }
    }
}
