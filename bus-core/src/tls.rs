//! The one TLS back end: rustls on ring, as async-nats uses it. reqwest is built without
//! a provider of its own (`rustls-no-provider`), so a process installs ring's before it
//! builds an HTTP client; every client the bus builds calls
//! [`install_crypto_provider`] first, and so should a service's own reqwest clients
//! in a process that links the bus.

/// Installs rustls' ring provider as the process default, unless one is installed
/// already (then that one stays). Cheap to call again.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err: another thread installed one meanwhile; it stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
