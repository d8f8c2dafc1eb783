//! The web URLs the API stores for clients to load (a post's media, a profile's avatar): one
//! grammar, used both to validate them and, as the same pattern, in the OpenAPI document.
//!
//! A URL parser alone accepts far more than a browser should be handed (`http://0*`, a bare
//! number as host, `javascript:`), and a document that says "a URI" lets a client send what the
//! service then refuses. So the services check [`PATTERN`] and the document states it: an
//! absolute `http` or `https` URL whose host is DNS labels ending in one that starts with a
//! letter, an optional port, and a path, query and fragment of URL-safe characters. Every URL
//! it matches also parses (both `reqwest::Url` and `http::Uri`; see the tests).

use std::sync::LazyLock;

/// The grammar, as a regular expression valid in Rust, ECMAScript and Python alike.
pub const PATTERN: &str = r"^https?://([A-Za-z0-9]+(-[A-Za-z0-9]+)*\.)*[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*(:[0-9]{1,4})?(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?(\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?(#[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$";

static GRAMMAR: LazyLock<regex::Regex> = LazyLock::new(|| {
    // A constant that the tests compile: it cannot fail at run time.
    #[allow(clippy::unwrap_used)]
    regex::Regex::new(PATTERN).unwrap()
});

/// Whether `url` is a web URL the API accepts.
pub fn is_valid(url: &str) -> bool {
    GRAMMAR.is_match(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_media_urls_match() {
        for good in [
            "https://cdn.example.com/p/1.jpg",
            "http://example.com",
            "https://example.com/a?b=c#d",
            "https://img-1.example.co.uk:8443/a/b%20c.png?w=100&h=100",
            "http://localhost:3000/x",
        ] {
            assert!(is_valid(good), "{good}");
            assert!(reqwest::Url::parse(good).is_ok(), "{good}");
            assert!(good.parse::<axum::http::Uri>().is_ok(), "{good}");
        }
    }

    #[test]
    fn what_a_browser_should_not_be_handed_does_not() {
        for bad in [
            "",
            "http://0*",
            "http://0",
            "http://127.0.0.1/a.jpg",
            "ftp://example.com/a.jpg",
            "javascript:alert(1)",
            "/relative/path.jpg",
            "example.com/a.jpg",
            "https://",
            " https://example.com/a.jpg",
            "https://example.com/a.jpg ",
            "https://exa mple.com",
            "https://xn--a.com",
            "https://example.com/<script>",
            "data:image/png;base64,AAAA",
            "HTTPS://example.com",
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }
}
