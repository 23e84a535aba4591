//! hooklane: a webhook gateway that runs each campaign's follow-up logic as a
//! sandboxed WebAssembly component, in lanes that keep slow campaigns away
//! from fast ones.
//!
//! Modules follow the path of an event: [`ingress`] → [`router`] →
//! [`dispatch`] (through the [`lanes`]) → [`runtime`] → [`actions`] →
//! [`delivery`], with [`store`] underneath, [`campaigns`] swapping in
//! deploys and reloads (with [`versions`] keeping every plugin version),
//! [`gateway`] tying them together and [`admin`] (with its [`console`] and
//! the [`advice`] of which lane fits a campaign) for operators, and
//! [`shadow`] runs of a new version on a campaign's recent events.

pub mod actions;
pub mod admin;
pub mod advice;
pub mod campaigns;
pub mod config;
pub mod console;
pub mod delivery;
pub mod dispatch;
pub mod error;
pub mod event;
pub mod gateway;
pub mod guard;
pub mod ingress;
pub mod lanes;
pub mod plugin_test;
pub mod progress;
pub mod recent;
mod redact;
pub mod retry;
pub mod router;
pub mod runtime;
pub mod schedule;
pub mod server;
pub mod shadow;
pub mod store;
pub mod telemetry;
pub mod verify;
pub mod versions;
