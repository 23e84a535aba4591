//! What a plugin's actions come to: checked against what its campaign's
//! config allows, then planned — the answer to a synchronous caller, and
//! the KV changes, deliveries and emitted events to commit with the
//! event's acknowledgement (carried out by the dispatcher's commit and by
//! [`crate::delivery`]). Pure: must never run plugins nor touch the store.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::config::CampaignConfig;
use crate::event::{now_ms, Action, Event, Headers, EVENT_ID_HEADER};
use crate::runtime::{Output, PluginFailure};
use crate::store::{KvChange, NewDelivery, NewWebhook, Outcome, MAX_KEY_BYTES};

/// Response headers only the gateway may set: those about the caller's
/// connection and the message's framing (hyper owns both, and a plugin's
/// `content-length` or `connection` would break the caller's connection),
/// and the gateway's own event id.
const GATEWAY_HEADERS: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    EVENT_ID_HEADER,
];

/// A plugin's answer to a synchronous caller, checked to be sendable as it
/// is ([`response_head`]).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Check what campaign `name`'s run on `event` asked for — its returned
/// actions and the deliveries and emits it asked for later (after a
/// delay) — then add it to `outcome`, the KV writes made while it ran
/// before its actions', and return the answer for a synchronous caller, if
/// it gave one. Ids derive from the event and the
/// action's index (the later ones numbered after the returned ones), so a
/// re-run of the event plans the very same deliveries and emits: a
/// destination deduplicates by `webhook-id`, the queue by event id.
pub fn plan(
    name: &str,
    config: &CampaignConfig,
    event: &Event,
    output: Output,
    outcome: &mut Outcome,
) -> Result<Option<Reply>, PluginFailure> {
    let Output {
        actions,
        later,
        kv_writes,
        kv_expected,
    } = output;
    check(
        config,
        name,
        actions.iter().chain(later.iter().map(|(a, _)| a)),
    )?;
    outcome.kv.extend(kv_writes);
    outcome.kv_expected.extend(kv_expected);
    let now = now_ms();
    let at_once = actions.into_iter().map(|action| (action, 0));
    let delayed = later
        .into_iter()
        .map(|(action, delay)| (action, now + delay.as_millis() as u64));
    let mut reply = None;
    for (index, (action, not_before_ms)) in at_once.chain(delayed).enumerate() {
        match action {
            Action::Respond {
                status,
                headers,
                body,
            } => {
                let (status, headers) = response_head(status, &headers)?;
                reply = Some(Reply {
                    status,
                    headers,
                    body,
                })
            }
            Action::KvSet {
                key,
                value,
                ttl_seconds,
            } => outcome.kv.push(KvChange::Set {
                key,
                value,
                ttl: ttl_seconds.map(|s| Duration::from_secs(s.into())),
            }),
            Action::KvDelete { key } => outcome.kv.push(KvChange::Delete { key }),
            Action::Deliver {
                destination,
                headers,
                body,
            } => outcome.deliveries.push(NewDelivery {
                id: format!("msg_{}_{index}", event.id),
                campaign: name.into(),
                event_id: event.id.clone(),
                destination,
                headers,
                body,
                not_before_ms,
            }),
            Action::Emit {
                campaign,
                body,
                content_type,
            } => {
                let mut webhook = emitted(name, event, index, campaign, body, content_type);
                webhook.not_before_ms = not_before_ms;
                outcome.emitted.push(webhook)
            }
        }
    }
    Ok(reply)
}

/// The event campaign `by` emitted to `campaign` as its action `index`.
/// Its id derives from the parent's, so a re-run of the parent emits the
/// same event again, recognisably.
fn emitted(
    by: &str,
    parent: &Event,
    index: usize,
    campaign: String,
    body: Bytes,
    content_type: Option<String>,
) -> NewWebhook {
    let headers = vec![
        ("hooklane-emitted-by".to_owned(), by.to_owned()),
        ("hooklane-parent-event".to_owned(), parent.id.clone()),
    ];
    let event = Event {
        id: format!("{}.{index}", parent.id),
        source: format!("campaign:{by}"),
        received_at_ms: now_ms(),
        headers,
        body,
        content_type,
    };
    NewWebhook {
        event,
        campaigns: vec![campaign],
        dedup: None,
        not_before_ms: 0,
    }
}

/// Refuse actions the campaign's config does not allow, before any of them
/// is carried out.
pub fn check<'a>(
    campaign: &CampaignConfig,
    name: &str,
    actions: impl IntoIterator<Item = &'a Action>,
) -> Result<(), PluginFailure> {
    let bad = |what: String| Err(PluginFailure::BadOutput(what));
    let mut responses = 0;
    for action in actions {
        match action {
            Action::Respond {
                status, headers, ..
            } => {
                responses += 1;
                if responses > 1 {
                    return bad("more than one respond action".into());
                }
                response_head(*status, headers)?;
            }
            Action::Deliver { destination, .. } => {
                if !campaign.destinations.contains(destination) {
                    return bad(format!(
                        "deliver to `{destination}`, which is not in campaigns.{name}.destinations"
                    ));
                }
            }
            Action::Emit {
                campaign: target, ..
            } => {
                if !campaign.emits.contains(target) {
                    return bad(format!(
                        "emit to `{target}`, which is not in campaigns.{name}.emits"
                    ));
                }
            }
            Action::KvSet { key, .. } | Action::KvDelete { key } => {
                if key.is_empty() || key.len() > MAX_KEY_BYTES {
                    return bad(format!(
                        "kv key of {} bytes (1-{MAX_KEY_BYTES} allowed)",
                        key.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A respond action's status and headers as HTTP, refused as bad output
/// unless hyper can send them as they are: a final status (200-599), valid
/// header names and values, none of [`GATEWAY_HEADERS`].
pub fn response_head(
    status: u16,
    headers: &Headers,
) -> Result<(StatusCode, HeaderMap), PluginFailure> {
    let bad = |what: String| PluginFailure::BadOutput(what);
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .ok_or_else(|| bad(format!("respond with status {status}, outside 200-599")))?;
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let header = HeaderName::try_from(name.as_str()).map_err(|_| {
            bad(format!(
                "respond with header name {name:?}, not a valid HTTP header name"
            ))
        })?;
        if GATEWAY_HEADERS.contains(&header.as_str()) {
            return Err(bad(format!(
                "respond with header `{name}`, which only the gateway may set"
            )));
        }
        let value = HeaderValue::try_from(value.as_str()).map_err(|_| {
            bad(format!(
                "respond with header `{name}` whose value is not valid HTTP (control characters)"
            ))
        })?;
        map.append(header, value);
    }
    Ok((status, map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign() -> CampaignConfig {
        toml::from_str(
            "source = \"s\"\nlane = \"speed\"\nplugin = \"p.wasm\"\ndestinations = [\"sms\"]",
        )
        .unwrap()
    }

    fn respond(status: u16, headers: &[(&str, &str)]) -> Action {
        Action::Respond {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: "{}".into(),
        }
    }

    fn refusal(action: Action) -> String {
        match check(&campaign(), "offer", &[action]) {
            Err(PluginFailure::BadOutput(what)) => what,
            other => panic!("not refused as bad output: {other:?}"),
        }
    }

    #[test]
    fn an_ordinary_answer_passes() {
        let action = respond(
            201,
            &[
                ("content-type", "application/json"),
                ("Set-Cookie", "a=1"),
                ("set-cookie", "b=2"),
            ],
        );
        assert_eq!(check(&campaign(), "offer", &[action]), Ok(()));
        let (status, headers) = response_head(
            201,
            &vec![
                ("set-cookie".into(), "a=1".into()),
                ("Set-Cookie".into(), "b=2".into()),
            ],
        )
        .unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn statuses_outside_200_to_599_are_refused() {
        for status in [0, 99, 100, 101, 103, 199, 600, 999] {
            assert_eq!(
                refusal(respond(status, &[])),
                format!("respond with status {status}, outside 200-599")
            );
        }
        for status in [200, 204, 302, 404, 599] {
            assert_eq!(check(&campaign(), "offer", &[respond(status, &[])]), Ok(()));
        }
    }

    #[test]
    fn connection_framing_and_gateway_headers_are_refused_in_any_case() {
        for name in GATEWAY_HEADERS
            .iter()
            .map(|n| n.to_string())
            .chain(["Content-Length".into(), "TRANSFER-ENCODING".into()])
        {
            assert_eq!(
                refusal(respond(
                    200,
                    &[("content-type", "text/plain"), (&name, "1")]
                )),
                format!("respond with header `{name}`, which only the gateway may set")
            );
        }
    }

    #[test]
    fn header_names_and_values_that_are_not_http_are_refused() {
        assert_eq!(
            refusal(respond(200, &[("bad name", "1")])),
            "respond with header name \"bad name\", not a valid HTTP header name"
        );
        assert_eq!(
            refusal(respond(200, &[("", "1")])),
            "respond with header name \"\", not a valid HTTP header name"
        );
        assert_eq!(
            refusal(respond(200, &[("x-note", "a\r\nset-cookie: b=2")])),
            "respond with header `x-note` whose value is not valid HTTP (control characters)"
        );
    }

    #[test]
    fn actions_the_config_does_not_allow_are_refused() {
        let deliver = Action::Deliver {
            destination: "crm".into(),
            headers: vec![],
            body: "{}".into(),
        };
        assert_eq!(
            refusal(deliver),
            "deliver to `crm`, which is not in campaigns.offer.destinations"
        );
        let emit = Action::Emit {
            campaign: "other".into(),
            body: "{}".into(),
            content_type: None,
        };
        assert_eq!(
            refusal(emit),
            "emit to `other`, which is not in campaigns.offer.emits"
        );
        assert_eq!(
            refusal(Action::KvDelete { key: String::new() }),
            format!("kv key of 0 bytes (1-{MAX_KEY_BYTES} allowed)")
        );
    }

    #[test]
    fn a_plan_answers_and_commits_what_the_actions_ask_for_with_ids_from_the_event() {
        let mut config = campaign();
        config.emits = vec!["care".into()];
        let event = Event::new("shop".into(), vec![], "{}".into(), None);
        let actions = vec![
            Action::KvSet {
                key: "seen".into(),
                value: "1".into(),
                ttl_seconds: Some(60),
            },
            respond(202, &[("content-type", "application/json")]),
            Action::Deliver {
                destination: "sms".into(),
                headers: vec![],
                body: "hi".into(),
            },
            Action::Emit {
                campaign: "care".into(),
                body: "later".into(),
                content_type: None,
            },
            Action::KvDelete { key: "old".into() },
        ];
        let reminder = Action::Emit {
            campaign: "care".into(),
            body: "tomorrow".into(),
            content_type: None,
        };
        let output = Output {
            actions,
            later: vec![(reminder, Duration::from_secs(3600))],
            kv_writes: vec![KvChange::Delete {
                key: "during".into(),
            }],
            kv_expected: vec![],
        };
        let mut outcome = Outcome {
            ack: Some(7),
            ..Outcome::default()
        };
        let planned_at = now_ms();
        let reply = plan("offer", &config, &event, output, &mut outcome).unwrap();
        let reply = reply.expect("the respond action answers");
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(outcome.ack, Some(7));
        let keys: Vec<&str> = outcome.kv.iter().map(KvChange::key).collect();
        assert_eq!(keys, ["during", "seen", "old"]);
        assert!(
            matches!(&outcome.kv[1], KvChange::Set { ttl: Some(ttl), .. } if ttl.as_secs() == 60)
        );
        let [delivery] = &outcome.deliveries[..] else {
            panic!("one delivery: {:?}", outcome.deliveries)
        };
        assert_eq!(delivery.id, format!("msg_{}_2", event.id));
        assert_eq!(
            (delivery.campaign.as_str(), delivery.destination.as_str()),
            ("offer", "sms")
        );
        assert_eq!(delivery.not_before_ms, 0, "at once");
        let [emit, later] = &outcome.emitted[..] else {
            panic!("two emits: {:?}", outcome.emitted)
        };
        assert_eq!(emit.event.id, format!("{}.3", event.id));
        assert_eq!(emit.not_before_ms, 0, "at once");
        assert_eq!(
            later.event.id,
            format!("{}.5", event.id),
            "numbered after the actions"
        );
        assert!(later.not_before_ms >= planned_at + 3_600_000);
        assert_eq!(emit.event.source, "campaign:offer");
        assert_eq!(emit.campaigns, ["care"]);
        assert!(emit
            .event
            .headers
            .contains(&("hooklane-parent-event".into(), event.id.clone())));
    }

    #[test]
    fn a_plan_with_a_refused_action_plans_nothing() {
        let event = Event::new("shop".into(), vec![], "{}".into(), None);
        let actions = vec![
            Action::KvDelete { key: "a".into() },
            Action::Deliver {
                destination: "crm".into(),
                headers: vec![],
                body: "{}".into(),
            },
        ];
        let mut outcome = Outcome::default();
        let output = Output {
            actions,
            later: vec![],
            kv_writes: vec![],
            kv_expected: vec![],
        };
        let refused = plan("offer", &campaign(), &event, output, &mut outcome);
        assert!(
            matches!(refused, Err(PluginFailure::BadOutput(_))),
            "{refused:?}"
        );
        assert!(outcome.kv.is_empty() && outcome.deliveries.is_empty());
        // What it asks for later is checked like what it returns.
        let emit_later = Action::Emit {
            campaign: "other".into(),
            body: "{}".into(),
            content_type: None,
        };
        let output = Output {
            actions: vec![],
            later: vec![(emit_later, Duration::from_secs(60))],
            kv_writes: vec![],
            kv_expected: vec![],
        };
        let refused = plan("offer", &campaign(), &event, output, &mut outcome);
        assert_eq!(
            refused.unwrap_err(),
            PluginFailure::BadOutput(
                "emit to `other`, which is not in campaigns.offer.emits".into()
            )
        );
        assert!(outcome.emitted.is_empty());
    }

    #[test]
    fn a_second_answer_is_refused() {
        let two = [respond(200, &[]), respond(200, &[])];
        assert_eq!(
            check(&campaign(), "offer", &two),
            Err(PluginFailure::BadOutput(
                "more than one respond action".into()
            ))
        );
    }
}
