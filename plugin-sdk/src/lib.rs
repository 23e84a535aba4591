//! # hooklane-sdk
//!
//! Write a hooklane campaign plugin in Rust: implement [`Campaign`] for a type
//! and call [`export!`] once. The gateway calls your `handle` for every event
//! routed to your campaign and carries out the [`Action`]s you return.
//!
//! ```ignore
//! use hooklane_sdk::{Action, Campaign, Error, Event};
//!
//! struct Hello;
//!
//! impl Campaign for Hello {
//!     fn handle(event: Event) -> Result<Vec<Action>, Error> {
//!         Ok(vec![Action::respond_json(200, &serde_json::json!({"hello": event.source}))?])
//!     }
//! }
//!
//! hooklane_sdk::export!(Hello);
//! ```
//!
//! The crate README is the full tutorial. Everything here is a thin layer over
//! the bindings generated from `wit/plugin.wit`, which stay reachable through
//! [`bindings`] for anything the helpers do not cover.

#![deny(missing_docs)]

/// Bindings generated from the `hooklane:plugin/campaign` world.
#[allow(missing_docs, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "campaign",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_campaign",
        default_bindings_module: "hooklane_sdk::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

mod actions;
mod event;
pub mod http;
pub mod kv;
pub mod later;
mod log;

pub use bindings::hooklane::plugin::types::{
    Action, Delivery, Emission, Event, Headers, KvWrite, PluginError as Error, Response,
};

/// Re-exported so plugins can use `hooklane_sdk::json!` without naming
/// serde_json themselves.
pub use serde_json::json;

/// A campaign's follow-up logic: the one function a plugin implements.
pub trait Campaign {
    /// Handle one event. Returning `Err` fails the event: a synchronous caller
    /// gets an error answer, an asynchronous event follows its lane's policy.
    fn handle(event: Event) -> Result<Vec<Action>, Error>;
}

/// Export a [`Campaign`] implementation as the plugin's `handle` function.
///
/// Call it exactly once, at the top level of the plugin crate.
#[macro_export]
macro_rules! export {
    ($campaign:ty) => {
        const _: () = {
            struct HooklaneExport;

            impl $crate::bindings::Guest for HooklaneExport {
                fn handle(
                    event: $crate::Event,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::Action>, $crate::Error>
                {
                    <$campaign as $crate::Campaign>::handle(event)
                }
            }

    $crate::bindings::__export_campaign!(HooklaneExport with_types_in $crate::bindings);
        };
    };
}

/// The campaign's own settings, as written under `[campaigns.NAME.settings]`
/// in the gateway config.
pub mod config {
    use crate::Error;

    /// The setting named `key`, if the campaign has one.
    pub fn get(key: &str) -> Option<String> {
        crate::bindings::hooklane::plugin::config::get(key)
    }

    /// The setting named `key`, or an [`Error::Internal`] naming the missing key.
    pub fn require(key: &str) -> Result<String, Error> {
        get(key).ok_or_else(|| Error::Internal(format!("setting `{key}` is not configured")))
    }
}

/// Wall-clock time from the host.
pub mod clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        crate::bindings::hooklane::plugin::clock::now()
    }
}

impl Error {
    /// The event is malformed or unacceptable; a synchronous caller gets 422.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// A dependency failed; the event is worth retrying.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable(message.into())
    }

    /// A bug or unexpected state in the plugin.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }
}

/// Declare every setting the plugin reads, so the gateway refuses a
/// campaign config that sets any other (a typo, most likely) instead of
/// running with it ignored. Call it once, at the top level of the plugin
/// crate: `hooklane_sdk::settings!("discount", "destination");` (no keys:
/// the plugin reads no settings). Without it, any settings are accepted.
#[macro_export]
macro_rules! settings {
    ($($key:literal),* $(,)?) => {
        const _: () = {
            const KEYS: &str = concat!($($key, "\n"),*);
            // A custom section the gateway reads when it loads the component.
            #[used]
            #[link_section = "hooklane-settings"]
            static DECLARED: [u8; KEYS.len()] = $crate::__settings_section(KEYS);
        };
    };
}

/// The bytes of [`settings!`]'s custom section.
#[doc(hidden)]
pub const fn __settings_section<const N: usize>(keys: &str) -> [u8; N] {
    let bytes = keys.as_bytes();
    let mut section = [0; N];
    let mut i = 0;
    while i < N {
        section[i] = bytes[i];
        i += 1;
    }
    section
}
