mod harness_selftest;
mod sdk_broadcast;
mod sdk_dead_letters;
mod sdk_failover;
mod sdk_groups;
mod sdk_interop;
mod support;
