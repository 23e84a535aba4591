//! Arbitrary text into the config loader and the `[verify]` table: each
//! must answer every input with a value or an error, never a panic.
//! Secrets are not resolved here: an arbitrary `{ file = ... }` could name
//! a FIFO and block the fuzzer.

#![no_main]

use std::path::Path;

use hooklane::config::Config;
use hooklane::verify::VerifyConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = Config::parse(text, Path::new("fuzz.toml"), Path::new("."));
    let _ = toml::from_str::<VerifyConfig>(text);
});
