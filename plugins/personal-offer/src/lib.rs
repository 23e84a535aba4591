//! `personal-offer` (segmentation lane): a page asks what to show a customer.
//! The plugin reads the customer's profile from KV (kept up to date by
//! `daily-enrich`), asks the external recommendation service (setting
//! `recommendation_url`) for candidate offers for the customer's segment,
//! scores every candidate against the customer's variables and answers with
//! the best one.

use hooklane_sdk::{config, http, json, kv, Action, Campaign, Error, Event};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct OfferRequest {
    customer_id: String,
}

/// The customer variables the score uses; every one is optional so a new or
/// partly enriched customer still gets an offer.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Profile {
    age: Option<u32>,
    country: Option<String>,
    lifetime_value: f64,
    orders: u32,
    days_since_last_order: Option<u32>,
    avg_order_value: f64,
    newsletter: bool,
    loyalty_tier: Option<String>,
    preferred_category: Option<String>,
    visits_30d: u32,
    cart_abandonments: u32,
    churn_risk: f64,
    device: Option<String>,
}

#[derive(Deserialize, Serialize, Clone)]
struct Candidate {
    id: String,
    title: String,
    category: String,
    price: f64,
    #[serde(default)]
    discount_pct: f64,
    #[serde(default)]
    base_score: f64,
    #[serde(default)]
    min_age: Option<u32>,
    #[serde(default)]
    countries: Vec<String>,
    #[serde(default)]
    mobile_only: bool,
}

#[derive(Deserialize)]
struct Recommendations {
    candidates: Vec<Candidate>,
}

struct PersonalOffer;

impl Campaign for PersonalOffer {
    fn handle(event: Event) -> Result<Vec<Action>, Error> {
        let request: OfferRequest = event.json()?;
        let profile: Profile =
            kv::get_json(&format!("profile:{}", request.customer_id))?.unwrap_or_default();
        let segment = segment(&profile);
        let url = config::require("recommendation_url")?;
        let answer = http::post_json(
            &url,
            &json!({ "customer_id": request.customer_id, "segment": segment }),
        )?;
        if !answer.is_success() {
            return Err(Error::unavailable(format!(
                "recommendation service answered {}",
                answer.status
            )));
        }
        let recommendations: Recommendations = answer.json()?;
        let best = recommendations
            .candidates
            .into_iter()
            .filter_map(|c| score(&profile, segment, &c).map(|s| (s, c)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let body = match best {
            Some((score, offer)) => json!({
                "customer_id": request.customer_id,
                "segment": segment,
                "offer": offer,
                "score": (score * 1000.0).round() / 1000.0,
            }),
            None => {
                json!({ "customer_id": request.customer_id, "segment": segment, "offer": null })
            }
        };
        Ok(vec![Action::respond_json(200, &body)?])
    }
}

fn segment(p: &Profile) -> &'static str {
    if p.orders == 0 {
        "new"
    } else if p.churn_risk > 0.6 || p.days_since_last_order.is_some_and(|d| d > 90) {
        "at-risk"
    } else if p.lifetime_value >= 1000.0 || p.loyalty_tier.as_deref() == Some("gold") {
        "vip"
    } else {
        "regular"
    }
}

/// The candidate's fit for this customer, or `None` if it may not be shown
/// (age or country restrictions, device).
fn score(p: &Profile, segment: &str, c: &Candidate) -> Option<f64> {
    if c.min_age
        .is_some_and(|min| p.age.is_none_or(|age| age < min))
    {
        return None;
    }
    if !c.countries.is_empty()
        && !p
            .country
            .as_ref()
            .is_some_and(|country| c.countries.contains(country))
    {
        return None;
    }
    let mobile = p.device.as_deref() == Some("mobile");
    if c.mobile_only && !mobile {
        return None;
    }
    let mut score = c.base_score;
    if p.preferred_category.as_deref() == Some(c.category.as_str()) {
        score += 3.0;
    }
    // Offers priced near what the customer usually spends convert best.
    if p.avg_order_value > 0.0 {
        score += 2.0 * (1.0 - ((c.price - p.avg_order_value).abs() / p.avg_order_value).min(1.0));
    }
    // Discounts win back customers who are drifting away or left carts.
    let discount_appetite = p.churn_risk + 0.2 * p.cart_abandonments.min(5) as f64;
    score += discount_appetite * c.discount_pct / 10.0;
    // Loyal, high-value customers get the premium end.
    let tier_bonus = match p.loyalty_tier.as_deref() {
        Some("gold") => 1.5,
        Some("silver") => 0.75,
        _ => 0.0,
    };
    score += tier_bonus * (c.price / 100.0).min(2.0);
    score += (p.lifetime_value / 1000.0).min(2.0) * (c.price / 200.0).min(1.0);
    score += 0.1 * p.visits_30d.min(20) as f64 * if c.discount_pct > 0.0 { 0.5 } else { 1.0 };
    if p.newsletter {
        score += 0.5;
    }
    if mobile && c.mobile_only {
        score += 1.0;
    }
    if p.orders > 10 && c.discount_pct == 0.0 {
        score += 0.5;
    }
    if segment == "new" && c.price < 30.0 {
        score += 1.0;
    }
    Some(score)
}

hooklane_sdk::export!(PersonalOffer);
