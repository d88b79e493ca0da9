//! The node's configuration: built-in defaults < TOML file < `BUS__*` environment
//! variables (`BUS__HTTP__LISTEN` is `http.listen`). Loading refuses unknown keys and
//! wrong types, and `validate` checks every value, naming the key, before anything binds.

mod api_keys_file;
#[cfg(test)]
mod file_key_tests;
mod load;
mod sections;

pub use load::{Profile, load};
pub use sections::*;
