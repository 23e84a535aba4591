//! Checking what a plugin asked for against what its campaign's config
//! allows, before any of it is carried out (by the gateway's commit and by
//! [`crate::delivery`]), and turning a checked answer into HTTP. Must never
//! run plugins.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::config::CampaignConfig;
use crate::event::{Action, Headers, EVENT_ID_HEADER};
use crate::runtime::PluginFailure;
use crate::store::MAX_KEY_BYTES;

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

/// Refuse actions the campaign's config does not allow, before any of them
/// is carried out.
pub fn check(
    campaign: &CampaignConfig,
    name: &str,
    actions: &[Action],
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
