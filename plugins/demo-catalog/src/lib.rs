//! `demo-catalog`: a stand-in recommendation service for the demo config, so
//! `personal-offer` has something to call without any third party. Answers
//! every request with the same candidate offers.

use hooklane_sdk::{json, Action, Campaign, Error, Event};

struct DemoCatalog;

impl Campaign for DemoCatalog {
    fn handle(_event: Event) -> Result<Vec<Action>, Error> {
        let catalog = json!({ "candidates": [
            { "id": "espresso-kit", "title": "Espresso starter kit", "category": "coffee", "price": 49.0, "base_score": 1.0 },
            { "id": "grinder-pro", "title": "Pro burr grinder", "category": "coffee", "price": 249.0, "base_score": 0.5 },
            { "id": "tea-sampler", "title": "Tea sampler, 20% off", "category": "tea", "price": 19.0, "discount_pct": 20.0, "base_score": 0.8 },
            { "id": "whisky-tasting", "title": "Whisky tasting", "category": "spirits", "price": 89.0, "min_age": 18, "countries": ["DE", "AT"], "base_score": 0.7 },
            { "id": "app-coupon", "title": "10% off in the app", "category": "any", "price": 0.0, "discount_pct": 10.0, "mobile_only": true, "base_score": 0.6 }
        ]});
        Ok(vec![Action::respond_json(200, &catalog)?])
    }
}

hooklane_sdk::export!(DemoCatalog);
