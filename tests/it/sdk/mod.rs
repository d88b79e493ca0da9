//! The SDK suites: `bus-sdk` against real nats-server processes and clusters, as a
//! service uses it (groups, fetching, failover, dead letters, broadcast, interop with a
//! plain NATS client, presence, rolling deploys).

mod broadcast;
mod dead_letters;
mod failover;
mod fetch;
mod groups;
mod intact;
mod interop;
mod ordered;
mod presence;
mod rolling_deploy;
