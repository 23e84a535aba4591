//! The generator's ceiling: what the closed-loop generator drove the bare
//! hyper floor to, in the same run, with the same connections. A server
//! measured close to that rate may be faster than the figure says (the
//! generator, not the server, was the limit), so a throughput ratio or
//! verdict is only given when the ceiling is at least [`HEADROOM`] times
//! the gateway's rate; otherwise it is withheld and the reason printed.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::floor;
use crate::loadgen::{self, ThroughputReport};
use crate::{BenchError, REQUEST_TIMEOUT};

/// How much faster than the gateway the generator must have driven bare
/// hyper for a gateway figure to be the gateway's.
pub const HEADROOM: f64 = 1.5;

/// The highest rate the generator reached against bare hyper.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ceiling {
    pub ok_per_s: f64,
    pub connections: usize,
    pub threads: usize,
}

/// A figure judged against the ceiling: measured, or withheld with why.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Judged {
    Measured(f64),
    Withheld(String),
}

impl Ceiling {
    /// The ceiling a closed-loop run against the floor showed.
    pub fn of(floor: &ThroughputReport) -> Ceiling {
        Ceiling {
            ok_per_s: floor.ok_per_s,
            connections: floor.connections,
            threads: floor.threads,
        }
    }

    /// Start a floor server, drive it like the gateway will be driven, and
    /// stop it.
    pub async fn measure(
        body: Bytes,
        connections: usize,
        window: Duration,
    ) -> Result<Ceiling, BenchError> {
        let floor = floor::start().await?;
        let url = format!("http://{}/", floor.addr("floor"));
        eprintln!("bench: the generator's ceiling, bare hyper for {window:?}");
        let report =
            loadgen::run_closed_loop(&url, body, connections, window, REQUEST_TIMEOUT).await?;
        Ok(Ceiling::of(&report))
    }

    /// `value`, a figure computed from gateway rates up to `gateway_per_s`,
    /// unless the generator's ceiling is under [`HEADROOM`] times that rate.
    pub fn judge(&self, value: f64, gateway_per_s: f64) -> Judged {
        if self.ok_per_s >= HEADROOM * gateway_per_s {
            Judged::Measured(value)
        } else {
            Judged::Withheld(format!(
                "withheld: the generator's ceiling ({:.0}/s on bare hyper) is under {HEADROOM}× the gateway's {gateway_per_s:.0}/s, so the figure would be the generator's",
                self.ok_per_s
            ))
        }
    }

    /// For a report line: the ceiling beside a gateway rate.
    pub fn beside(&self, gateway_per_s: f64) -> String {
        format!(
            "generator ceiling {:.0}/s ({} connections, {} threads) = {:.1}× the gateway",
            self.ok_per_s,
            self.connections,
            self.threads,
            self.ok_per_s / gateway_per_s.max(f64::MIN_POSITIVE)
        )
    }
}

impl Judged {
    /// The value with `decimals` decimals, or why it was withheld.
    pub fn value(&self, decimals: usize) -> String {
        match self {
            Judged::Measured(value) => format!("{value:.decimals$}"),
            Judged::Withheld(why) => why.clone(),
        }
    }

    /// `<value>  (target <target>: met|MISSED; <context>)`, the value with
    /// `decimals` decimals, or the reason it was withheld.
    pub fn render(
        &self,
        decimals: usize,
        met: impl Fn(f64) -> bool,
        target: &str,
        context: &str,
    ) -> String {
        match self {
            Judged::Measured(value) => format!(
                "{value:.decimals$}  (target {target}: {}; {context})",
                if met(*value) { "met" } else { "MISSED" }
            ),
            Judged::Withheld(why) => format!("{why} ({context})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceiling(ok_per_s: f64) -> Ceiling {
        Ceiling {
            ok_per_s,
            connections: 64,
            threads: 2,
        }
    }

    #[test]
    fn a_figure_is_given_only_with_headroom_above_the_gateway() {
        assert_eq!(ceiling(150.0).judge(0.2, 100.0), Judged::Measured(0.2));
        assert_eq!(
            ceiling(150_000.0).judge(0.2, 30_000.0),
            Judged::Measured(0.2)
        );
        assert_eq!(
            ceiling(149.0).judge(0.2, 100.0),
            Judged::Withheld(
                "withheld: the generator's ceiling (149/s on bare hyper) is under 1.5× the gateway's 100/s, so the figure would be the generator's".into()
            )
        );
        assert!(matches!(ceiling(0.0).judge(1.0, 1.0), Judged::Withheld(_)));
    }

    #[test]
    fn judged_figures_render_with_their_target_or_why_not() {
        let at_least_half = |v: f64| v >= 0.5;
        assert_eq!(
            Judged::Measured(0.21).render(
                2,
                at_least_half,
                ">= 0.5",
                "median of rounds 0.20, 0.21"
            ),
            "0.21  (target >= 0.5: MISSED; median of rounds 0.20, 0.21)"
        );
        assert_eq!(
            Judged::Measured(0.5).render(2, at_least_half, ">= 0.5", "x"),
            "0.50  (target >= 0.5: met; x)"
        );
        assert_eq!(
            Judged::Measured(49_999.6).render(0, |v| v >= 50_000.0, ">= 50000", "x"),
            "50000  (target >= 50000: MISSED; x)"
        );
        assert_eq!(
            Judged::Withheld("withheld: why".into()).render(2, at_least_half, ">= 0.5", "x"),
            "withheld: why (x)"
        );
        assert_eq!(Judged::Measured(0.254).value(2), "0.25");
        assert_eq!(
            Judged::Withheld("withheld: why".into()).value(2),
            "withheld: why"
        );
        assert_eq!(
            ceiling(90_000.0).beside(30_000.0),
            "generator ceiling 90000/s (64 connections, 2 threads) = 3.0× the gateway"
        );
        let json = serde_json::to_value(Judged::Measured(0.25)).unwrap();
        assert_eq!(json, serde_json::json!({ "measured": 0.25 }));
    }
}
