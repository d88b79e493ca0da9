//! What `bus-sdk` and `bus-node` share: the event envelope and its NATS mapping,
//! event type names and their subjects, configuration, and the JetStream topology.
//!
//! Architecture invariant: nothing here starts a task or holds a connection. The only
//! network calls are the one-shot JetStream admin requests in [`topology`], made on a
//! context the caller owns.

pub mod attribute_format;
pub mod binary_mode;
pub mod config;
pub mod event;
pub mod event_type;
pub mod group_name;
mod header_map;
pub mod headers;
pub mod partition;
pub mod redacted_url;
pub mod retry;
pub mod secret_file;
pub mod server_trace;
pub mod structured;
pub mod subject_filters;
pub mod subjects;
pub mod telemetry;
pub mod tls;
pub mod topology;

pub use binary_mode::{DecodeError, EncodeError};
pub use config::{
    BusConfig, ConfigError, NatsConfig, NatsCredentials, Secret, StreamsConfig, SubjectsConfig,
};
pub use event::{Event, EventBuilder, SPEC_VERSION};
pub use event_type::{EventPattern, EventType, EventTypeError};
pub use group_name::{GroupName, GroupNameError};
pub use subjects::Subjects;
pub use topology::{Topology, TopologyError};
// `telemetry::Pipeline::layer` returns its layer type.
pub use tracing_opentelemetry;
