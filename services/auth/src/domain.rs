//! The values a client sends, validated at the edge.
//!
//! Handlers turn raw JSON strings into these types first, so everything past the edge can rely
//! on them: an [`Email`] is shaped like an address, a [`NewPassword`] meets the length policy, a
//! [`Username`] fits the users service's rule. Each `parse` says what is wrong in words a client
//! can act on; the handler answers 400 with that text.

use instaclone_shared::config::Secret;

/// Shortest accepted new password, in characters (the policy; NIST SP 800-63B's minimum).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in characters. Generous (passphrases welcome) but bounded, so a
/// request cannot make us hash megabytes.
pub const MAX_PASSWORD_CHARS: usize = 256;
/// RFC 5321 limits.
const MAX_EMAIL_LEN: usize = 254;
const MAX_LOCAL_PART_LEN: usize = 64;

/// A syntactically valid email address, trimmed, stored as the client typed it (the users
/// service compares emails case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Accepts the common `local@domain.tld` form: ASCII, dot-atom local part (no quoted
    /// strings), a domain of at least two DNS labels. Internationalised domains must be given in
    /// their punycode form.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let email = raw.trim();
        let invalid = || Err("email must be a valid email address".to_owned());
        if email.is_empty() {
            return Err("email should not be empty".to_owned());
        }
        if email.len() > MAX_EMAIL_LEN {
            return Err(format!("email must be at most {MAX_EMAIL_LEN} characters"));
        }
        let Some((local, domain)) = email.split_once('@') else {
            return invalid();
        };
        let local_ok = !local.is_empty()
            && local.len() <= MAX_LOCAL_PART_LEN
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            // The top-level domain is never all digits (that would be an IP address).
            && labels
                .last()
                .is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()));
        if local_ok && domain_ok {
            Ok(Self(email.to_owned()))
        } else {
            invalid()
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form two spellings of one account share (`Ada@X.io` and `ada@x.io`), for keys such
    /// as the per-account login limit.
    pub fn canonical(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// A password chosen at registration: at least [`MIN_PASSWORD_CHARS`] characters.
#[derive(Debug, Clone)]
pub struct NewPassword(Secret<String>);

impl NewPassword {
    pub fn parse(raw: String) -> Result<Self, String> {
        let chars = raw.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(format!(
                "password must be at least {MIN_PASSWORD_CHARS} characters"
            ));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(format!(
                "password must be at most {MAX_PASSWORD_CHARS} characters"
            ));
        }
        Ok(Self(Secret::new(raw)))
    }

    pub fn into_secret(self) -> Secret<String> {
        self.0
    }
}

/// A password presented at login. Only emptiness and the upper bound are checked: a short one
/// simply does not match, and saying "too short" would tell nothing useful to anyone.
#[derive(Debug, Clone)]
pub struct LoginPassword(Secret<String>);

impl LoginPassword {
    pub fn parse(raw: String) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("password should not be empty".to_owned());
        }
        if raw.chars().count() > MAX_PASSWORD_CHARS {
            return Err(format!(
                "password must be at most {MAX_PASSWORD_CHARS} characters"
            ));
        }
        Ok(Self(Secret::new(raw)))
    }

    pub fn into_secret(self) -> Secret<String> {
        self.0
    }
}

/// A requested username: 3 to 30 of `a-z`, `0-9`, `.` and `_` (letters in either case; the users
/// service compares them case-insensitively). Checked here too so a bad one costs no password
/// hash; the users service stays the authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let username = raw;
        let length = username.chars().count();
        if !(3..=30).contains(&length) {
            return Err("username must be 3 to 30 characters".to_owned());
        }
        if !username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        {
            return Err("username may only contain letters, digits, '.' and '_'".to_owned());
        }
        Ok(Self(username.to_owned()))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_addresses_are_accepted_and_trimmed() {
        for raw in [
            "ada@example.com",
            " Ada.Lovelace+tag@mail.example.co.uk ",
            "x_y-z@a-b.io",
            "o'neil@example.org",
        ] {
            let email = Email::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(email.as_str(), raw.trim());
        }
        assert_eq!(
            Email::parse("Ada@Example.COM").unwrap().canonical(),
            "ada@example.com"
        );
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        for raw in [
            "",
            "   ",
            "plainaddress",
            "@example.com",
            "ada@",
            "ada@localhost",
            "ada@@example.com",
            "ada@exa mple.com",
            "a da@example.com",
            ".ada@example.com",
            "ada.@example.com",
            "a..da@example.com",
            "ada@-example.com",
            "ada@example..com",
            "ada@example.com.",
            "ada@1.2.3.4",
            "ada@exämple.com",
            "<ada>@example.com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} was accepted");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse(&long).is_err());
        let longer = format!("a@{}.com", "b".repeat(260));
        assert!(Email::parse(&longer).is_err());
    }

    #[test]
    fn new_passwords_need_eight_characters() {
        assert!(NewPassword::parse("1234567".to_owned()).is_err());
        assert!(NewPassword::parse("12345678".to_owned()).is_ok());
        // Characters, not bytes: seven two-byte characters are still too short.
        assert!(NewPassword::parse("ééééééé".to_owned()).is_err());
        assert!(NewPassword::parse("x".repeat(MAX_PASSWORD_CHARS + 1)).is_err());
    }

    #[test]
    fn login_passwords_must_not_be_empty() {
        assert!(LoginPassword::parse(String::new()).is_err());
        assert!(LoginPassword::parse("short".to_owned()).is_ok());
    }

    #[test]
    fn usernames_follow_the_users_service_rule() {
        assert!(Username::parse("ada.l_99").is_ok());
        assert!(Username::parse("Ada").is_ok());
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse(&"a".repeat(31)).is_err());
        assert!(Username::parse("ada lovelace").is_err());
        assert!(Username::parse("ada-l").is_err());
        assert!(Username::parse("ädä").is_err());
    }
}
