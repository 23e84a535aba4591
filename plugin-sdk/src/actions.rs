//! Building [`Action`]s.

use serde::Serialize;

use crate::{Action, Delivery, Emission, Error, KvWrite, Response};

const JSON: &str = "application/json";

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::internal(format!("cannot encode JSON: {e}")))
}

fn json_headers() -> Vec<(String, String)> {
    vec![("content-type".into(), JSON.into())]
}

impl Action {
    /// Answer the caller with `status` and a raw body.
    pub fn respond(status: u16, headers: Vec<(String, String)>, body: impl Into<Vec<u8>>) -> Self {
        Action::Respond(Response {
            status,
            headers,
            body: body.into(),
        })
    }

    /// Answer the caller with `status` and `value` as JSON.
    pub fn respond_json<T: Serialize + ?Sized>(status: u16, value: &T) -> Result<Self, Error> {
        Ok(Self::respond(status, json_headers(), to_json(value)?))
    }

    /// Send `value` as JSON to the configured `destination`.
    pub fn deliver_json<T: Serialize + ?Sized>(
        destination: &str,
        value: &T,
    ) -> Result<Self, Error> {
        Ok(Action::Deliver(Delivery {
            destination: destination.into(),
            headers: json_headers(),
            body: to_json(value)?,
        }))
    }

    /// Store `value` under `key` once the event succeeds.
    pub fn kv_set(key: &str, value: impl Into<Vec<u8>>, ttl_seconds: Option<u32>) -> Self {
        Action::KvSet(KvWrite {
            key: key.into(),
            value: value.into(),
            ttl_seconds,
        })
    }

    /// Store `value` as JSON under `key` once the event succeeds.
    pub fn kv_set_json<T: Serialize + ?Sized>(
        key: &str,
        value: &T,
        ttl_seconds: Option<u32>,
    ) -> Result<Self, Error> {
        Ok(Self::kv_set(key, to_json(value)?, ttl_seconds))
    }

    /// Remove `key` once the event succeeds.
    pub fn kv_delete(key: &str) -> Self {
        Action::KvDelete(key.into())
    }

    /// Hand `value` as a JSON event to the configured campaign `campaign`.
    pub fn emit_json<T: Serialize + ?Sized>(campaign: &str, value: &T) -> Result<Self, Error> {
        Ok(Action::Emit(Emission {
            campaign: campaign.into(),
            body: to_json(value)?,
            content_type: Some(JSON.into()),
        }))
    }
}
