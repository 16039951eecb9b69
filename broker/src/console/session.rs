//! Who is signed in to the console: one-time login tickets, sessions and their CSRF
//! tokens.
//!
//! `broker console login --admin NAME` writes a ticket into `<state dir>/console-tickets/`:
//! the file is named by the SHA-256 of a 256-bit random secret and holds only the admin's
//! name and the ticket's expiry; the secret itself goes once to the operator's terminal,
//! inside the login link, and is stored nowhere. Opening the link consumes the ticket
//! (the file is removed before the session exists, so a second use finds nothing) and
//! starts a session: another 256-bit secret in an `HttpOnly`, `SameSite=Strict` cookie,
//! kept in memory by its SHA-256 only, with a CSRF token that every form posts back.
//! Sessions end after [`IDLE`] without a request, after [`LIFETIME`] in any case, at
//! sign-out, and with the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::ids::RandomError;

/// A session ends this long after its last request, seconds.
pub const IDLE: u64 = 30 * 60;
/// A session ends this long after sign-in whatever happens, seconds.
pub const LIFETIME: u64 = 8 * 3600;
/// The longest a login ticket may be valid, seconds.
pub const MAX_TICKET_TTL: u64 = 3600;
/// The session cookie's name.
pub const COOKIE: &str = "broker_console";
/// Length of a base64url-encoded 256-bit secret.
const SECRET_LEN: usize = 43;

/// The directory of login tickets under the state directory.
pub fn ticket_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("console-tickets")
}

/// 256 random bits, base64url.
pub(super) fn secret() -> Result<String, RandomError> {
    let mut b = [0u8; 32];
    SystemRandom::new().fill(&mut b).map_err(|_| RandomError)?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// SHA-256 of `secret`, hex: how tickets and sessions are looked up (the secret is never
/// kept).
pub(super) fn digest_hex(secret: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    crate::hex::to_hex(d.as_ref())
}

/// Whether `s` looks like one of our secrets (bounded, base64url): anything else is
/// refused before it touches the file system or the session map.
pub(super) fn well_formed(s: &str) -> bool {
    s.len() == SECRET_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Equal in constant time (for the CSRF token; lengths are public).
pub(super) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What a ticket file holds.
#[derive(Debug, Serialize, Deserialize)]
struct TicketFile {
    admin: String,
    expires: u64,
}

/// Why a ticket cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    /// The random generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The ticket could not be written.
    #[error("writing the login ticket into {dir}: {source}")]
    Write {
        /// The ticket directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes a login ticket for `admin`, valid until `expires` (unix seconds); returns the
/// secret for the link. The file is readable by the broker's user only.
pub fn issue_ticket(state_dir: &Path, admin: &str, expires: u64) -> Result<String, TicketError> {
    let dir = ticket_dir(state_dir);
    let write_err = |source| TicketError::Write {
        dir: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(write_err)?;
    let secret = secret()?;
    let body = serde_json::to_vec(&TicketFile {
        admin: admin.to_owned(),
        expires,
    })
    .map_err(|e| write_err(std::io::Error::other(e)))?;
    let path = dir.join(digest_hex(&secret));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    use std::io::Write as _;
    let mut f = opts.open(&path).map_err(write_err)?;
    f.write_all(&body).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    Ok(secret)
}

/// Why a login link was refused (the reason goes to the audit record; the browser gets
/// one plain message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginRefused {
    /// Not one of our secrets.
    Malformed,
    /// No such ticket (never issued, or used already).
    Unknown,
    /// The ticket expired.
    Expired,
}

impl LoginRefused {
    /// For the audit record.
    pub fn reason(&self) -> &'static str {
        match self {
            LoginRefused::Malformed => "malformed login ticket",
            LoginRefused::Unknown => "no such login ticket (never issued, or used already)",
            LoginRefused::Expired => "the login ticket expired",
        }
    }
}

/// Consumes the ticket `secret`: the admin it names, once.
pub fn redeem_ticket(state_dir: &Path, secret: &str, now: u64) -> Result<String, LoginRefused> {
    if !well_formed(secret) {
        return Err(LoginRefused::Malformed);
    }
    let path = ticket_dir(state_dir).join(digest_hex(secret));
    let bytes = std::fs::read(&path).map_err(|_| LoginRefused::Unknown)?;
    // Removed before it is honoured: of two concurrent uses, one removes it.
    std::fs::remove_file(&path).map_err(|_| LoginRefused::Unknown)?;
    let t: TicketFile = serde_json::from_slice(&bytes).map_err(|_| LoginRefused::Unknown)?;
    if now >= t.expires {
        return Err(LoginRefused::Expired);
    }
    Ok(t.admin)
}

/// One signed-in admin.
#[derive(Debug, Clone)]
pub struct Session {
    /// The admin's name (looked up in the config on every request: a removed admin's
    /// session stops working at once).
    pub admin: String,
    /// The CSRF token forms must carry.
    pub csrf: String,
    /// The outcome of the last action, shown once on the next page.
    pub flash: Option<crate::console::html::Flash>,
    /// For a sign-in through the identity provider: the admin as the ID token made them
    /// (name and roles, fixed for the session); `None` for a configured `[[admin]]`.
    pub oidc: Option<crate::config::Admin>,
    started: u64,
    last_seen: u64,
}

impl Session {
    /// Whether `token` is this session's CSRF token.
    pub fn csrf_ok(&self, token: &str) -> bool {
        same(&self.csrf, token)
    }
}

/// The live sessions, by the SHA-256 of their cookie.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// Most sessions kept at once (the oldest are dropped past it).
const MAX_SESSIONS: usize = 1000;

impl Sessions {
    /// Starts a session for the configured admin `admin` at `now`; returns the cookie
    /// value.
    pub fn start(&self, admin: &str, now: u64) -> Result<String, RandomError> {
        self.insert(admin, None, now)
    }

    /// Starts a session for `admin` as the identity provider's ID token made them.
    pub fn start_oidc(&self, admin: crate::config::Admin, now: u64) -> Result<String, RandomError> {
        let name = admin.name.clone();
        self.insert(&name, Some(admin), now)
    }

    fn insert(
        &self,
        admin: &str,
        oidc: Option<crate::config::Admin>,
        now: u64,
    ) -> Result<String, RandomError> {
        let cookie = secret()?;
        let session = Session {
            admin: admin.to_owned(),
            csrf: secret()?,
            flash: None,
            oidc,
            started: now,
            last_seen: now,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(digest_hex(&cookie), session);
        Ok(cookie)
    }

    /// The session of `cookie` at `now`, its idle time restarted; `None` if there is none
    /// or it ended.
    pub fn touch(&self, cookie: &str, now: u64) -> Option<Session> {
        if !well_formed(cookie) {
            return None;
        }
        let key = digest_hex(cookie);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&key) {
            Some(s) if live(s, now) => {
                s.last_seen = now;
                let seen = s.clone();
                s.flash = None;
                Some(seen)
            }
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Keeps `flash` for the next page of the session of `cookie`.
    pub fn set_flash(&self, cookie: &str, flash: crate::console::html::Flash) {
        if well_formed(cookie) {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = map.get_mut(&digest_hex(cookie)) {
                s.flash = Some(flash);
            }
        }
    }

    /// Ends the session of `cookie`.
    pub fn end(&self, cookie: &str) {
        if well_formed(cookie) {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.remove(&digest_hex(cookie));
        }
    }
}

fn live(s: &Session, now: u64) -> bool {
    now < s.started.saturating_add(LIFETIME) && now < s.last_seen.saturating_add(IDLE)
}

/// The session cookie's value in a `Cookie` header, if any.
pub fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .map(str::trim)
        .find_map(|kv| kv.strip_prefix(COOKIE)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_redeemed_once_and_stores_no_secret() {
        let d = tempfile::tempdir().unwrap();
        let secret = issue_ticket(d.path(), "secops", 1_000).unwrap();
        let files: Vec<_> = std::fs::read_dir(ticket_dir(d.path()))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].path()).unwrap();
        assert!(!text.contains(&secret), "{text}");
        assert!(!files[0].file_name().to_string_lossy().contains(&secret));
        assert_eq!(redeem_ticket(d.path(), &secret, 999), Ok("secops".into()));
        assert_eq!(
            redeem_ticket(d.path(), &secret, 999),
            Err(LoginRefused::Unknown),
            "used once"
        );
    }

    #[test]
    fn expired_forged_and_malformed_tickets_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let secret = issue_ticket(d.path(), "secops", 1_000).unwrap();
        assert_eq!(
            redeem_ticket(d.path(), &secret, 1_000),
            Err(LoginRefused::Expired)
        );
        let forged = "A".repeat(SECRET_LEN);
        assert_eq!(
            redeem_ticket(d.path(), &forged, 10),
            Err(LoginRefused::Unknown)
        );
        for bad in ["", "../../etc/passwd", &"A".repeat(SECRET_LEN + 1)] {
            assert_eq!(
                redeem_ticket(d.path(), bad, 10),
                Err(LoginRefused::Malformed)
            );
        }
    }

    #[test]
    fn sessions_end_when_idle_at_their_lifetime_and_at_sign_out() {
        let s = Sessions::default();
        let c = s.start("secops", 100).unwrap();
        let got = s.touch(&c, 100 + IDLE - 1).expect("live");
        assert_eq!(got.admin, "secops");
        assert!(got.csrf_ok(&got.csrf) && !got.csrf_ok("nope"));
        assert!(s.touch(&c, 100 + 2 * IDLE).is_none(), "idle too long");

        let c = s.start("secops", 100).unwrap();
        let mut t = 100;
        while t < 100 + LIFETIME - IDLE {
            t += IDLE - 1;
            assert!(s.touch(&c, t).is_some());
        }
        assert!(s.touch(&c, 100 + LIFETIME).is_none(), "past its lifetime");

        let c = s.start("secops", 100).unwrap();
        s.end(&c);
        assert!(s.touch(&c, 101).is_none(), "signed out");
        assert!(s.touch("short", 101).is_none());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(cookie_value("a=1; broker_console=xyz; b=2"), Some("xyz"));
        assert_eq!(cookie_value("broker_console_x=1"), None);
        assert_eq!(cookie_value("a=1"), None);
    }
}
