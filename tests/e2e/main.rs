//! End-to-end tests: each starts the real `hooklane` binary on loopback
//! ports with real plugins built from `plugins/`, and talks HTTP to it.
//! One test binary (wasmtime's `tests/all` style) so the suite links once.

mod advice;
mod authoring;
mod campaigns;
mod config_errors;
mod console;
mod deploy;
mod docs;
mod durability;
mod edge_faults;
mod events;
mod faults;
mod harness;
mod hostile;
mod instances;
mod kv;
mod lanes;
mod languages;
mod later;
mod limits;
mod metrics;
mod nats;
mod openapi;
mod plugin_faults;
mod reload;
mod schedule;
mod shadow;
mod signatures;
