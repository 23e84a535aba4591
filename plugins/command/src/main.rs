//! `command`: an ordinary WASI program (`wasi:cli/command` world), a valid
//! component that does not implement `hooklane:plugin/campaign`. Tests
//! deploy it to check that the gateway refuses it and says why.

fn main() {
    println!("I am not a campaign");
}
