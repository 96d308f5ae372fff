//! Who may use the HTTP endpoint (the page, `/status`, `/metrics`,
//! `/healthz`) when it listens beyond loopback.
//!
//! On a loopback address the endpoint is open, as it always was: only
//! processes on the gateway reach it. Any other address requires the
//! credentials of `[ops] credentials_file`: either a bearer token or a user
//! and password. The file holds one of:
//!
//! ```text
//! token = 3f0c…            # Authorization: Bearer 3f0c…  (Prometheus: authorization.credentials_file)
//! ```
//! ```text
//! user = technician        # HTTP Basic (what a browser asks for)
//! password = …
//! ```
//!
//! A browser can also use the token: Basic with any user name and the token
//! as password. Secrets never reach the TOML, the log or an error message:
//! parse errors name the line, never its content. Comparison is constant
//! time over SHA-256 digests, so neither content nor length leaks.

use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a request must present.
#[derive(Clone)]
pub enum Credentials {
    Token([u8; 32]),
    UserPassword { user: [u8; 32], password: [u8; 32] },
}

/// Never prints a secret.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::Token(_) => "Credentials::Token(..)",
            Credentials::UserPassword { .. } => "Credentials::UserPassword(..)",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}:{line}: expected `token = …`, `user = …` or `password = …`")]
    Syntax { path: String, line: usize },
    #[error("{path}: {what}")]
    Content { path: String, what: &'static str },
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// The file's values, before hashing: only for the client side.
enum Plain {
    Token(String),
    UserPassword(String, String),
}

impl Credentials {
    /// Parses the file's text; `path` is only used in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, CredentialsError> {
        Ok(match parse_plain(text, path)? {
            Plain::Token(t) => Credentials::Token(digest(&t)),
            Plain::UserPassword(u, p) => Credentials::UserPassword {
                user: digest(&u),
                password: digest(&p),
            },
        })
    }

    /// The `Authorization` header value a client (`tracegate status`)
    /// sends, from the same file the daemon reads.
    pub fn client_authorization(path: &Path) -> Result<String, CredentialsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CredentialsError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        Ok(match parse_plain(&text, &shown)? {
            Plain::Token(t) => format!("Bearer {t}"),
            Plain::UserPassword(u, p) => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            ),
        })
    }

    /// Reads and parses the file, warning when others can read it.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CredentialsError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        tracegate_drivers::secret_file::warn_if_readable_by_others(path, "HTTP credentials");
        Self::parse(&text, &shown)
    }

    /// Whether an `Authorization` header value grants access.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization.and_then(|v| std::str::from_utf8(v).ok()) else {
            return false;
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return match self {
                Credentials::Token(t) => bool::from(digest(rest).ct_eq(t)),
                Credentials::UserPassword { .. } => false,
            };
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return false;
        };
        let Ok(pair) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((u, p)) = pair.split_once(':') else {
            return false;
        };
        match self {
            // A browser cannot send a bearer token: any user, token as password.
            Credentials::Token(t) => bool::from(digest(p).ct_eq(t)),
            Credentials::UserPassword { user, password } => {
                // Both compared, always, so timing does not tell which failed.
                let u_ok = digest(u).ct_eq(user);
                let p_ok = digest(p).ct_eq(password);
                bool::from(u_ok & p_ok)
            }
        }
    }
}

fn parse_plain(text: &str, path: &str) -> Result<Plain, CredentialsError> {
    let (mut token, mut user, mut password) = (None, None, None);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(CredentialsError::Syntax {
                path: path.into(),
                line: i + 1,
            });
        };
        let value = value.trim();
        // Quotes are optional, as in an environment file.
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let slot = match key.trim() {
            "token" => &mut token,
            "user" => &mut user,
            "password" => &mut password,
            _ => {
                return Err(CredentialsError::Syntax {
                    path: path.into(),
                    line: i + 1,
                })
            }
        };
        *slot = Some(value.to_owned());
    }
    let content = |what| CredentialsError::Content {
        path: path.into(),
        what,
    };
    match (token, user, password) {
        (Some(t), None, None) if t.len() >= 16 => Ok(Plain::Token(t)),
        (Some(_), None, None) => Err(content("the token must be at least 16 characters")),
        (None, Some(u), Some(p)) if !u.is_empty() && !u.contains(':') && p.len() >= 8 => {
            Ok(Plain::UserPassword(u, p))
        }
        (None, Some(_), Some(_)) => Err(content(
            "the user must be non-empty without `:` and the password at least 8 characters",
        )),
        (None, None, None) => Err(content("no `token` and no `user`/`password`")),
        _ => Err(content("give either `token` or both `user` and `password`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pass: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
        .into_bytes()
    }

    #[test]
    fn a_token_file_allows_the_bearer_and_basic_with_the_token_as_password() {
        let c =
            Credentials::parse("# page access\ntoken = \"0123456789abcdef0123\"\n", "c").unwrap();
        assert!(c.allows(Some(b"Bearer 0123456789abcdef0123")));
        assert!(c.allows(Some(&basic("anyone", "0123456789abcdef0123"))));
        assert!(!c.allows(Some(b"Bearer 0123456789abcdef012")));
        assert!(!c.allows(None));
        assert!(!c.allows(Some(b"Digest x")));
    }

    #[test]
    fn a_user_password_file_allows_only_that_pair() {
        let c = Credentials::parse("user = tech\npassword = s3cret-pw\n", "c").unwrap();
        assert!(c.allows(Some(&basic("tech", "s3cret-pw"))));
        assert!(!c.allows(Some(&basic("tech", "s3cret-px"))));
        assert!(!c.allows(Some(&basic("admin", "s3cret-pw"))));
        assert!(!c.allows(Some(b"Bearer s3cret-pw")));
        assert!(!c.allows(Some(b"Basic !!notbase64")));
    }

    #[test]
    fn bad_files_are_rejected_without_echoing_their_content() {
        for text in [
            "",
            "token = short",
            "user = u\n",
            "token = 0123456789abcdef0123\nuser = u\npassword = 12345678\n",
            "user = a:b\npassword = 12345678\n",
            "hunter2-secret-line\n",
            "pass = hunter2-secret-line\n",
        ] {
            let e = Credentials::parse(text, "/etc/tracegate/page.cred")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("/etc/tracegate/page.cred"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = Credentials::parse("x\n", "p").unwrap_err();
        assert_eq!(
            e,
            CredentialsError::Syntax {
                path: "p".into(),
                line: 1
            }
        );
    }

    #[test]
    fn debug_never_shows_a_digest() {
        let c = Credentials::parse("token = 0123456789abcdef0123", "c").unwrap();
        assert_eq!(format!("{c:?}"), "Credentials::Token(..)");
    }
}
