"""`personal-offer`, in Python (plugins/py/README.md shows this file verbatim,
and a test keeps the two identical). A page asks what to show a customer: the
plugin reads the customer's profile from KV (kept up to date by
`daily-enrich`), asks the recommendation service (setting
`recommendation_url`) for candidate offers for the customer's segment, scores
every candidate against the profile and answers with the best one. It
remembers the offer it made, so the next answer can say what came before."""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, kv, outbound_http
from wit_world.imports.types import (
    Action_KvSet,
    Action_Respond,
    KvWrite,
    PluginError_InvalidInput,
    PluginError_Unavailable,
    Response,
)


class WitWorld(wit_world.WitWorld):
    def handle(self, event):
        # Refusals are raised as `Err(plugin-error)`. Any other exception is
        # a bug: the gateway fails the event with cause `panic` and the last
        # line of the traceback.
        try:
            request = json.loads(event.body)
        except ValueError as e:
            raise Err(PluginError_InvalidInput(f"the body is not JSON: {e}"))
        customer = request["customer_id"].strip()

        # A KV read: the profile `daily-enrich` keeps; absent for a new customer.
        stored = kv.get(f"profile:{customer}")
        profile = json.loads(stored) if stored is not None else {}
        seg = segment(profile)

        # Outbound HTTP goes through the gateway: only to `allowed_hosts`.
        url = config.get("recommendation_url")
        if url is None:
            raise Err(PluginError_InvalidInput("setting `recommendation_url` is missing"))
        body = json.dumps({"customer_id": customer, "segment": seg}).encode()
        try:
            answer = outbound_http.fetch(
                outbound_http.Request(
                    "POST", url, [("content-type", "application/json")], body, None
                )
            )
        except Err as e:
            # A refused or failed fetch, e.g. `FetchError_NotAllowed(host)`.
            reason = f"{type(e.value).__name__} {getattr(e.value, 'value', '')}"
            raise Err(PluginError_Unavailable(f"http fetch failed: {reason.strip()}"))
        if not 200 <= answer.status <= 299:
            raise Err(
                PluginError_Unavailable(f"recommendation service answered {answer.status}")
            )
        candidates = json.loads(answer.body)["candidates"]

        best = None
        for candidate in candidates:
            fit = score(profile, seg, candidate)
            if fit is not None and (best is None or fit > best[0]):
                best = (fit, candidate)
        previous = kv.get(f"last-offer:{customer}")
        reply = {
            "customer_id": customer,
            "segment": seg,
            "offer": best and best[1],
            "score": best and round(best[0], 3),
            "previous_offer": previous.decode() if previous is not None else None,
        }
        actions = [
            Action_Respond(
                Response(
                    200,
                    [("content-type", "application/json")],
                    json.dumps(reply).encode(),
                )
            )
        ]
        if best:
            # Written by the gateway only if this call succeeds; kept 30 days.
            key = f"last-offer:{customer}"
            actions.append(Action_KvSet(KvWrite(key, best[1]["id"].encode(), 30 * 86400)))
        return actions


def segment(p):
    if not p.get("orders"):
        return "new"
    if p.get("churn_risk", 0) > 0.6 or (p.get("days_since_last_order") or 0) > 90:
        return "at-risk"
    if p.get("lifetime_value", 0) >= 1000 or p.get("loyalty_tier") == "gold":
        return "vip"
    return "regular"


def score(p, segment, c):
    """The candidate's fit for this customer, or None if it may not be shown
    (age or country restrictions, device)."""
    if c.get("min_age") is not None and (p.get("age") is None or p["age"] < c["min_age"]):
        return None
    if c.get("countries") and p.get("country") not in c["countries"]:
        return None
    mobile = p.get("device") == "mobile"
    if c.get("mobile_only") and not mobile:
        return None

    price = c["price"]
    discount = c.get("discount_pct", 0)
    avg_order = p.get("avg_order_value", 0)
    s = c.get("base_score", 0)
    if p.get("preferred_category") == c["category"]:
        s += 3
    # Offers priced near what the customer usually spends convert best.
    if avg_order > 0:
        s += 2 * (1 - min(abs(price - avg_order) / avg_order, 1))
    # Discounts win back customers who are drifting away or left carts.
    appetite = p.get("churn_risk", 0) + 0.2 * min(p.get("cart_abandonments", 0), 5)
    s += appetite * discount / 10
    # Loyal, high-value customers get the premium end.
    tier_bonus = {"gold": 1.5, "silver": 0.75}.get(p.get("loyalty_tier"), 0)
    s += tier_bonus * min(price / 100, 2)
    s += min(p.get("lifetime_value", 0) / 1000, 2) * min(price / 200, 1)
    s += 0.1 * min(p.get("visits_30d", 0), 20) * (0.5 if discount > 0 else 1)
    if p.get("newsletter"):
        s += 0.5
    if mobile and c.get("mobile_only"):
        s += 1
    if p.get("orders", 0) > 10 and discount == 0:
        s += 0.5
    if segment == "new" and price < 30:
        s += 1
    return s
