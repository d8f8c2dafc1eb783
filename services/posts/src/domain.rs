//! Validated values of the posts domain, parsed once at the edge.
//!
//! Handlers turn raw request input into these types before touching the store, so a bad caption,
//! URL, id or page size is refused with a message saying what is wrong and nothing is written.
//! Lengths are counted in characters (Unicode scalar values), not bytes: a 2,200-character
//! caption in Japanese or emoji is as valid as one in ASCII.

use mongodb::bson::oid::ObjectId;

/// Longest caption, in characters.
pub const MAX_CAPTION_CHARS: usize = 2_200;
/// Longest media URL, in characters.
pub const MAX_MEDIA_URL_CHARS: usize = 2_048;
/// Page size when the client does not ask for one.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Hard maximum page size of every list.
pub const MAX_PAGE_SIZE: u32 = 100;

/// Why a value was refused; the message is shown to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

fn invalid(message: impl Into<String>) -> ValidationError {
    ValidationError(message.into())
}

/// A post caption: at most [`MAX_CAPTION_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption(String);

impl Caption {
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        let length = raw.chars().count();
        if length > MAX_CAPTION_CHARS {
            return Err(invalid(format!(
                "caption must be at most {MAX_CAPTION_CHARS} characters (got {length})"
            )));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Where the post's media lives: an absolute `http` or `https` URL with a host, at most
/// [`MAX_MEDIA_URL_CHARS`] characters. Stored exactly as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaUrl(String);

impl MediaUrl {
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        let length = raw.chars().count();
        if length == 0 {
            return Err(invalid("mediaUrl must not be empty"));
        }
        if length > MAX_MEDIA_URL_CHARS {
            return Err(invalid(format!(
                "mediaUrl must be at most {MAX_MEDIA_URL_CHARS} characters (got {length})"
            )));
        }
        if raw.trim() != raw {
            return Err(invalid(
                "mediaUrl must not have leading or trailing whitespace",
            ));
        }
        if !instaclone_shared::web_url::is_valid(&raw) {
            return Err(invalid(
                "mediaUrl must be an http or https URL with a DNS host name and URL-safe \
                 characters only",
            ));
        }
        let url = reqwest::Url::parse(&raw)
            .map_err(|e| invalid(format!("mediaUrl is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "mediaUrl must be an http or https URL (got scheme `{}`)",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("mediaUrl must name a host"));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A post's id: a MongoDB ObjectId written as 24 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostId(ObjectId);

impl PostId {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        ObjectId::parse_str(raw)
            .map(Self)
            .map_err(|_| invalid(format!("`{raw}` is not a valid post id (24 hex digits)")))
    }

    pub fn new(id: ObjectId) -> Self {
        Self(id)
    }

    pub fn object_id(self) -> ObjectId {
        self.0
    }
}

impl std::fmt::Display for PostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_hex())
    }
}

/// One page of a list: at most `limit` posts older than `before` (exclusive), newest first.
///
/// Lists are ordered by `_id` descending. An ObjectId starts with its creation second, so this is
/// newest first; and as `_id` is unique, "older than the last id seen" is a keyset cursor that
/// neither skips nor repeats a post across pages, however many posts are inserted meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub before: Option<PostId>,
}

impl PageRequest {
    pub fn parse(limit: Option<u32>, before: Option<&str>) -> Result<Self, ValidationError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(invalid(format!(
                "limit must be between 1 and {MAX_PAGE_SIZE} (got {limit})"
            )));
        }
        let before = match before {
            None => None,
            Some(raw) => Some(
                PostId::parse(raw)
                    .map_err(|_| invalid(format!("before must be a post id (got `{raw}`)")))?,
            ),
        };
        Ok(Self { limit, before })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_measured_in_characters_not_bytes() {
        // Four bytes per character: 8,800 bytes, yet exactly at the limit.
        let emoji = "📸".repeat(MAX_CAPTION_CHARS);
        assert!(Caption::parse(emoji).is_ok());
        let error = Caption::parse("é".repeat(MAX_CAPTION_CHARS + 1)).unwrap_err();
        assert!(error.0.contains("2200"), "{error}");
        assert!(Caption::parse(String::new()).is_ok());
    }

    #[test]
    fn media_urls_must_be_absolute_http_or_https() {
        for good in [
            "https://cdn.example.com/p/1.jpg",
            "http://example.com",
            "https://example.com/a?b=c#d",
        ] {
            assert!(MediaUrl::parse(good.to_owned()).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ftp://example.com/a.jpg",
            "javascript:alert(1)",
            "/relative/path.jpg",
            "example.com/a.jpg",
            "https://",
            " https://example.com/a.jpg",
            "data:image/png;base64,AAAA",
            "file:///etc/passwd",
        ] {
            assert!(MediaUrl::parse(bad.to_owned()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn media_url_length_is_capped() {
        let prefix = "https://example.com/";
        let at_limit = format!("{prefix}{}", "a".repeat(MAX_MEDIA_URL_CHARS - prefix.len()));
        assert!(MediaUrl::parse(at_limit.clone()).is_ok());
        let error = MediaUrl::parse(format!("{at_limit}a")).unwrap_err();
        assert!(error.0.contains("2048"), "{error}");
    }

    #[test]
    fn post_ids_are_24_hex_digits() {
        let id = ObjectId::new();
        assert_eq!(PostId::parse(&id.to_hex()).unwrap().object_id(), id);
        for bad in ["", "123", "zzzzzzzzzzzzzzzzzzzzzzzz", "../../etc", "me"] {
            assert!(PostId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn page_requests_have_a_default_and_a_hard_maximum() {
        assert_eq!(
            PageRequest::parse(None, None).unwrap().limit,
            DEFAULT_PAGE_SIZE
        );
        assert!(PageRequest::parse(Some(MAX_PAGE_SIZE), None).is_ok());
        assert!(PageRequest::parse(Some(MAX_PAGE_SIZE + 1), None).is_err());
        assert!(PageRequest::parse(Some(0), None).is_err());
        assert!(PageRequest::parse(None, Some("nope")).is_err());
    }
}
