//! Secrets that travel inside URLs — userinfo (`user:pass@`) and query
//! strings (`?api_key=…`) — kept out of every error text and log line that
//! names a URL. Must never hand back the part of a URL it cannot vouch for.

use url::Url;

/// `url` without userinfo and fragment, its query (if any) replaced by
/// `?<redacted>`: enough to tell which endpoint failed, nothing to log in
/// with.
pub(crate) fn redacted(url: &Url) -> String {
    if url.cannot_be_a_base() {
        // `mailto:`, `data:` and the like: everything after the scheme may
        // be the secret.
        return format!("{}:<redacted>", url.scheme());
    }
    let mut shown = url.clone();
    // These fail only where a URL cannot carry userinfo in the first place.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    shown.set_query(None);
    let mut text = String::from(shown);
    if url.query().is_some() {
        text.push_str("?<redacted>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::redacted;

    fn shown(url: &str) -> String {
        redacted(&url.parse().unwrap())
    }

    #[test]
    fn userinfo_query_and_fragment_are_hidden() {
        assert_eq!(
            shown("http://user:pass@127.0.0.1:8080/x/y?api_key=SECRET&a=1#frag"),
            "http://127.0.0.1:8080/x/y?<redacted>"
        );
        assert_eq!(
            shown("https://token@api.example.com/v1?"),
            "https://api.example.com/v1?<redacted>"
        );
    }

    #[test]
    fn a_url_without_secrets_is_shown_as_it_is() {
        assert_eq!(
            shown("https://api.example.com/v1/items"),
            "https://api.example.com/v1/items"
        );
    }

    #[test]
    fn a_url_without_a_host_shows_only_its_scheme() {
        assert_eq!(
            shown("mailto:someone:secret@example.com"),
            "mailto:<redacted>"
        );
    }
}
