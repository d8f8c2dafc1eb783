//! Validated values. Everything a client or another service sends is parsed into one of these at
//! the edge, so the store and the handlers only ever see valid data.

use axum::http::Uri;
use rand::Rng;

use crate::error::UsersError;

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 30;
pub const EMAIL_MAX: usize = 254;
pub const DISPLAY_NAME_MAX: usize = 50;
pub const BIO_MAX: usize = 150;
pub const AVATAR_URL_MAX: usize = 2048;
pub const PASSWORD_HASH_MAX: usize = 1024;
pub const SEARCH_QUERY_MAX: usize = 100;

/// An email address: one `@`, a non-empty local part, a dotted domain, no whitespace. Its case is
/// kept; uniqueness ignores case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, UsersError> {
        let email = raw.trim();
        let invalid = || UsersError::Invalid("email must be a valid email address".to_owned());
        let refused = |c: char| c.is_whitespace() || c.is_control();
        if email.is_empty() || email.len() > EMAIL_MAX || email.chars().any(refused) {
            return Err(invalid());
        }
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if local.is_empty() || !domain_ok {
            return Err(invalid());
        }
        Ok(Self(email.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The local part, the seed of a generated username.
    fn local_part(&self) -> &str {
        self.0.split('@').next().unwrap_or_default()
    }
}

/// 3 to 30 of `[a-z0-9._]`. Upper-case input is accepted and lower-cased, which is what makes
/// usernames case-insensitively unique; surrounding spaces are refused like any other character
/// outside the set (as the OpenAPI pattern says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, UsersError> {
        let username = raw.to_lowercase();
        let length = username.chars().count();
        if !(USERNAME_MIN..=USERNAME_MAX).contains(&length) {
            return Err(UsersError::Invalid(format!(
                "username must be {USERNAME_MIN} to {USERNAME_MAX} characters"
            )));
        }
        if !username.chars().all(is_username_char) {
            return Err(UsersError::Invalid(
                "username may only contain a-z, 0-9, '.' and '_'".to_owned(),
            ));
        }
        Ok(Self(username))
    }

    /// A username derived from the email's local part (invalid characters dropped, padded to the
    /// minimum length, cut to leave room for a suffix).
    pub fn from_email(email: &Email) -> Self {
        let mut base: String = email
            .local_part()
            .to_lowercase()
            .chars()
            .filter(|c| is_username_char(*c))
            .take(USERNAME_MAX - SUFFIX_ROOM)
            .collect();
        if base.is_empty() {
            base.push_str("user");
        }
        while base.len() < USERNAME_MIN {
            base.push('_');
        }
        Self(base)
    }

    /// This username with a random numeric suffix, for when the plain one is taken.
    pub fn with_random_suffix(&self) -> Self {
        let suffix: u32 = rand::thread_rng().gen_range(1000..1_000_000);
        let suffix = suffix.to_string();
        let keep = USERNAME_MAX.saturating_sub(suffix.len() + 1);
        let base: String = self.0.chars().take(keep).collect();
        Self(format!("{base}_{suffix}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Characters a generated username leaves free for `_<suffix>`.
const SUFFIX_ROOM: usize = 8;

fn is_username_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_'
}

/// An argon2 (or other PHC-format) hash made by the auth service; stored as given.
#[derive(Debug, Clone)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn parse(raw: &str) -> Result<Self, UsersError> {
        if raw.is_empty() || raw.len() > PASSWORD_HASH_MAX || raw.chars().any(char::is_whitespace) {
            return Err(UsersError::Invalid(
                "passwordHash must be a non-empty hash string".to_owned(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Optional free text: at most `max` characters as sent, no control characters other than
/// newlines; stored trimmed, and empty (after trimming) means "none".
pub fn optional_text(
    field: &str,
    raw: Option<&str>,
    max: usize,
) -> Result<Option<String>, UsersError> {
    if raw.is_some_and(|raw| raw.chars().count() > max) {
        return Err(UsersError::Invalid(format!(
            "{field} must be at most {max} characters"
        )));
    }
    if raw.is_some_and(|raw| raw.chars().any(|c| c.is_control() && c != '\n')) {
        return Err(UsersError::Invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(raw
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(str::to_owned))
}

/// An absolute http(s) URL of [`instaclone_shared::web_url`]'s grammar, or none (absent or
/// empty).
pub fn optional_avatar_url(raw: Option<&str>) -> Result<Option<String>, UsersError> {
    let Some(url) = raw.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let invalid = || UsersError::Invalid("avatarUrl must be an absolute http(s) URL".to_owned());
    if url.len() > AVATAR_URL_MAX {
        return Err(UsersError::Invalid(format!(
            "avatarUrl must be at most {AVATAR_URL_MAX} characters"
        )));
    }
    if !instaclone_shared::web_url::is_valid(url) {
        return Err(invalid());
    }
    let uri: Uri = url.parse().map_err(|_| invalid())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    if !scheme_ok || !host_ok {
        return Err(invalid());
    }
    Ok(Some(url.to_owned()))
}

/// A search query: at most 100 characters as sent, no control characters (PostgreSQL cannot
/// even hold a NUL), then trimmed and lower-cased, not empty.
#[derive(Debug, Clone)]
pub struct SearchQuery(String);

impl SearchQuery {
    pub fn parse(raw: &str) -> Result<Self, UsersError> {
        if raw.chars().any(char::is_control) {
            return Err(UsersError::Invalid(
                "q must not contain control characters".to_owned(),
            ));
        }
        let query = raw.trim().to_lowercase();
        if query.is_empty() {
            return Err(UsersError::Invalid("q must not be empty".to_owned()));
        }
        if raw.chars().count() > SEARCH_QUERY_MAX {
            return Err(UsersError::Invalid(format!(
                "q must be at most {SEARCH_QUERY_MAX} characters"
            )));
        }
        Ok(Self(query))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `LIKE` pattern matching values that start with the query, its wildcards escaped.
    pub fn prefix_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.0.len() + 2);
        for c in self.0.chars() {
            if matches!(c, '\\' | '%' | '_') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        pattern
    }
}

/// A page size: absent means `default`, above `max` is cut to `max`, zero is refused.
pub fn page_limit(requested: Option<u32>, default: u32, max: u32) -> Result<i64, UsersError> {
    match requested {
        None => Ok(i64::from(default.min(max))),
        Some(0) => Err(UsersError::Invalid("limit must be at least 1".to_owned())),
        Some(n) => Ok(i64::from(n.min(max))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_lower_cased_and_checked() {
        assert_eq!(Username::parse("Ada.L_1").unwrap().as_str(), "ada.l_1");
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse(&"a".repeat(31)).is_err());
        assert!(Username::parse("ada lovelace").is_err());
        assert!(Username::parse("ada-l").is_err());
        assert!(Username::parse("adé").is_err());
        // As the OpenAPI pattern says: nothing outside the set, spaces included.
        assert!(Username::parse(" ada").is_err());
        assert_eq!(
            optional_text("bio", Some("  hi  "), 150)
                .unwrap()
                .as_deref(),
            Some("hi")
        );
        assert!(optional_text("bio", Some(&format!(" {}", "a".repeat(150))), 150).is_err());
        assert!(optional_avatar_url(Some(" https://cdn.example.com/a.png")).is_err());
    }

    #[test]
    fn generated_usernames_are_valid() {
        for email in [
            "Ada.Lovelace+x@example.com",
            "a@b.co",
            "--@b.co",
            &format!("{}@b.co", "x".repeat(60)),
        ] {
            let email = Email::parse(email).unwrap();
            let username = Username::from_email(&email);
            assert!(Username::parse(username.as_str()).is_ok(), "{username:?}");
            let suffixed = username.with_random_suffix();
            assert!(Username::parse(suffixed.as_str()).is_ok(), "{suffixed:?}");
        }
        let email = Email::parse("Ada.Lovelace+x@example.com").unwrap();
        assert_eq!(Username::from_email(&email).as_str(), "ada.lovelacex");
    }

    #[test]
    fn emails_are_checked() {
        assert!(Email::parse("ada@example.com").is_ok());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "a@b@c.com",
            "ada@.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queries_and_emails_with_control_characters_are_refused() {
        assert!(SearchQuery::parse("ada\0").is_err());
        assert!(SearchQuery::parse("a\tb").is_err());
        assert!(SearchQuery::parse(" ada ").is_ok());
        assert!(Email::parse("a\0@example.com").is_err());
    }

    #[test]
    fn like_wildcards_are_escaped() {
        let query = SearchQuery::parse("a_b%c\\").unwrap();
        assert_eq!(query.prefix_pattern(), "a\\_b\\%c\\\\%");
    }

    #[test]
    fn avatar_urls_must_be_http() {
        assert!(
            optional_avatar_url(Some("https://cdn.example.com/a.png"))
                .unwrap()
                .is_some()
        );
        assert!(optional_avatar_url(Some("")).unwrap().is_none());
        assert!(optional_avatar_url(Some("javascript:alert(1)")).is_err());
        assert!(optional_avatar_url(Some("/relative.png")).is_err());
    }

    #[test]
    fn page_limits_are_capped() {
        assert_eq!(page_limit(None, 20, 100).unwrap(), 20);
        assert_eq!(page_limit(Some(500), 20, 100).unwrap(), 100);
        assert!(page_limit(Some(0), 20, 100).is_err());
    }
}
