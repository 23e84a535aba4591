//! End-to-end tests: each starts the real `hooklane` binary on loopback
//! ports with real plugins built from `plugins/`, and talks HTTP to it.
//! One test binary (wasmtime's `tests/all` style) so the suite links once.

mod authoring;
mod bench;
mod campaigns;
mod config_errors;
mod deploy;
mod docs;
mod durability;
mod edge_faults;
mod faults;
mod harness;
mod hostile;
mod lanes;
mod languages;
mod limits;
mod metrics;
mod openapi;
mod plugin_faults;
mod reload;
mod schedule;
mod signatures;
