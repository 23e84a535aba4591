// `personal-offer`, in JavaScript (plugins/js/README.md shows this file
// verbatim, and a test keeps the two identical). A page asks what to show a
// customer: the plugin reads the customer's profile from KV (kept up to date
// by `daily-enrich`), asks the recommendation service (setting
// `recommendation_url`) for candidate offers for the customer's segment,
// scores every candidate against the profile and answers with the best one.
// It remembers the offer it made, so the next answer can say what came before.

import { get as setting } from 'hooklane:plugin/config@0.1.1';
import { fetch } from 'hooklane:plugin/outbound-http@0.1.1';
import * as kv from 'hooklane:plugin/kv@0.1.1';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Refusals are thrown as `plugin-error` values. Anything else thrown is a
// bug: the gateway fails the event with cause `panic` and the message.
const invalidInput = (message) => ({ tag: 'invalid-input', val: message });
const unavailable = (message) => ({ tag: 'unavailable', val: message });

export function handle(event) {
  let request;
  try {
    request = JSON.parse(decoder.decode(event.body));
  } catch (e) {
    throw invalidInput(`the body is not JSON: ${e.message}`);
  }
  const customer = request.customer_id.trim();

  // A KV read: the profile `daily-enrich` keeps; absent for a new customer.
  const stored = kv.get(`profile:${customer}`);
  const profile = stored ? JSON.parse(decoder.decode(stored)) : {};
  const seg = segment(profile);

  // Outbound HTTP goes through the gateway: only to `allowed_hosts`.
  const url = setting('recommendation_url');
  if (url === undefined) throw invalidInput('setting `recommendation_url` is missing');
  let answer;
  try {
    answer = fetch({
      method: 'POST',
      url,
      headers: [['content-type', 'application/json']],
      body: encoder.encode(JSON.stringify({ customer_id: customer, segment: seg })),
      timeoutMs: undefined,
    });
  } catch (e) {
    // A refused or failed fetch is a `fetch-error` variant, e.g. `not-allowed`.
    const reason = e.payload ?? e;
    throw unavailable(`http fetch failed: ${reason.tag} ${reason.val ?? ''}`.trim());
  }
  if (answer.status < 200 || answer.status > 299) {
    throw unavailable(`recommendation service answered ${answer.status}`);
  }
  const { candidates } = JSON.parse(decoder.decode(answer.body));

  let best = null;
  for (const candidate of candidates) {
    const fit = score(profile, seg, candidate);
    if (fit !== null && (best === null || fit > best.score)) {
      best = { score: fit, offer: candidate };
    }
  }
  const previous = kv.get(`last-offer:${customer}`);
  const body = {
    customer_id: customer,
    segment: seg,
    offer: best && best.offer,
    score: best && Math.round(best.score * 1000) / 1000,
    previous_offer: previous ? decoder.decode(previous) : null,
  };
  const actions = [
    {
      tag: 'respond',
      val: {
        status: 200,
        headers: [['content-type', 'application/json']],
        body: encoder.encode(JSON.stringify(body)),
      },
    },
  ];
  if (best) {
    // Written by the gateway only if this call succeeds; kept for 30 days.
    actions.push({
      tag: 'kv-set',
      val: { key: `last-offer:${customer}`, value: encoder.encode(best.offer.id), ttlSeconds: 30 * 86400 },
    });
  }
  return actions;
}

function segment(p) {
  if (!p.orders) return 'new';
  if ((p.churn_risk ?? 0) > 0.6 || (p.days_since_last_order ?? 0) > 90) return 'at-risk';
  if ((p.lifetime_value ?? 0) >= 1000 || p.loyalty_tier === 'gold') return 'vip';
  return 'regular';
}

// The candidate's fit for this customer, or null if it may not be shown (age
// or country restrictions, device).
function score(p, segment, c) {
  if (c.min_age != null && (p.age == null || p.age < c.min_age)) return null;
  if (c.countries?.length && !c.countries.includes(p.country)) return null;
  const mobile = p.device === 'mobile';
  if (c.mobile_only && !mobile) return null;

  const price = c.price;
  const discount = c.discount_pct ?? 0;
  const avgOrder = p.avg_order_value ?? 0;
  const lifetime = p.lifetime_value ?? 0;
  let s = c.base_score ?? 0;
  if (p.preferred_category === c.category) s += 3;
  // Offers priced near what the customer usually spends convert best.
  if (avgOrder > 0) s += 2 * (1 - Math.min(Math.abs(price - avgOrder) / avgOrder, 1));
  // Discounts win back customers who are drifting away or left carts.
  const appetite = (p.churn_risk ?? 0) + 0.2 * Math.min(p.cart_abandonments ?? 0, 5);
  s += (appetite * discount) / 10;
  // Loyal, high-value customers get the premium end.
  const tierBonus = { gold: 1.5, silver: 0.75 }[p.loyalty_tier] ?? 0;
  s += tierBonus * Math.min(price / 100, 2);
  s += Math.min(lifetime / 1000, 2) * Math.min(price / 200, 1);
  s += 0.1 * Math.min(p.visits_30d ?? 0, 20) * (discount > 0 ? 0.5 : 1);
  if (p.newsletter) s += 0.5;
  if (mobile && c.mobile_only) s += 1;
  if ((p.orders ?? 0) > 10 && discount === 0) s += 0.5;
  if (segment === 'new' && price < 30) s += 1;
  return s;
}
