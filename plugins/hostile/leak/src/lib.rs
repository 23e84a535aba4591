//! Leak: keeps what it saw in globals and answers with it, to show what an
//! instance kept between events (`events_per_instance` above 1) carries
//! from one event to the next. It answers `{"events": n, "previous": body,
//! "stored": value}`: how many events this instance has handled, counting
//! this one, the body of the one before (null on a fresh instance), and
//! what the KV key `refused` holds. Some bodies do more first, so a test
//! can see which outcomes keep the instance: `trap` traps, `refuse` writes
//! `refused` and then returns the plugin's own error, `spin` loops until
//! its deadline, `reserve` asks for 1 GiB more memory and answers anyway
//! when that is refused, and `print` writes a line to stdout.

use std::cell::RefCell;

use hooklane_sdk::{json, kv, Action, Campaign, Error, Event};

thread_local! {
    static SEEN: RefCell<(u64, Option<String>)> = const { RefCell::new((0, None)) };
}

struct Leak;

impl Campaign for Leak {
    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        let body = event.text()?.to_owned();
        let (events, previous) = SEEN.with_borrow_mut(|(events, last)| {
            *events += 1;
            (*events, last.replace(body.clone()))
        });
        match body.as_str() {
            "trap" => core::arch::wasm32::unreachable(),
            "refuse" => {
                kv::set("refused", b"written by a refused event", None)?;
                return Err(Error::invalid_input("refused on purpose"));
            }
            "spin" => loop {
                std::hint::black_box(&body);
            },
            "reserve" => {
                let _refused = Vec::<u8>::new().try_reserve(1 << 30);
            }
            "print" => println!("event {events}"),
            _ => {}
        }
        let stored = kv::get("refused")?.map(|value| String::from_utf8_lossy(&value).into_owned());
        Ok(vec![Action::respond_json(
            200,
            &json!({ "events": events, "previous": previous, "stored": stored }),
        )?])
    }
}

hooklane_sdk::export!(Leak);
