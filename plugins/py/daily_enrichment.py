"""`daily-enrichment`, in Python: a scheduled care campaign. Its config gives
it `schedule = "0 3 * * *"` (say); at every slot it pages through the
customer profiles in KV (`profile:<customer_id>`, kept by `daily-enrich`),
asks the enrichment service (setting `enrichment_url`) for fresh attributes
of each page of customers, and merges them into the profiles. Every write is
committed with the run, so a failed run leaves no profile half-enriched and
runs again."""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, kv, outbound_http
from wit_world.imports.types import PluginError_InvalidInput, PluginError_Unavailable

PAGE = 100


class WitWorld(wit_world.WitWorld):
    def handle(self, event):
        slot = json.loads(event.body).get("slot", "")
        url = config.get("enrichment_url")
        if url is None:
            raise Err(PluginError_InvalidInput("setting `enrichment_url` is missing"))
        cursor = None
        while True:
            keys, cursor = kv.list("profile:", cursor, PAGE)
            if keys:
                enrich(url, keys, slot)
            if cursor is None:
                return []


def enrich(url, keys, slot):
    """Ask the service about one page of profiles and merge its answer in."""
    customers = [key.removeprefix("profile:") for key in keys]
    body = json.dumps({"customer_ids": customers}).encode()
    request = outbound_http.Request("POST", url, [("content-type", "application/json")], body, None)
    try:
        answer = outbound_http.fetch(request)
    except Err as e:
        reason = f"{type(e.value).__name__} {getattr(e.value, 'value', '')}"
        raise Err(PluginError_Unavailable(f"enrichment fetch failed: {reason.strip()}"))
    if not 200 <= answer.status <= 299:
        raise Err(PluginError_Unavailable(f"enrichment service answered {answer.status}"))
    attributes = json.loads(answer.body).get("attributes", {})
    for customer, fresh in attributes.items():
        key = f"profile:{customer}"
        stored = kv.get(key)
        if stored is None:
            continue  # deleted since the page was listed
        profile = json.loads(stored)
        profile.update(fresh)
        profile["enriched_at"] = slot
        kv.set(key, json.dumps(profile).encode(), None)
