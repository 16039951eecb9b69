//! Console sign-in through the company's OpenID Connect provider: the authorization code
//! flow with PKCE (RFC 7636, `S256`), `state` and `nonce` (OpenID Connect Core §3.1).
//!
//! [`Oidc::begin`] makes three 256-bit secrets: the `state` (which also goes into a
//! `SameSite=Lax` cookie scoped to `/console/oidc`, so the answer must come back to the
//! browser that started the flow: no login CSRF), the `nonce`, and the PKCE verifier
//! (only its SHA-256 goes to the provider). The flow is kept in memory by the SHA-256 of
//! its state for [`FLOW_TTL`] and is used once. [`Oidc::complete`] takes the provider's
//! answer: the flow is looked up and removed, the cookie compared in constant time, the
//! code exchanged at the token endpoint with the verifier (and the client secret, for a
//! confidential client), and the ID token checked like any trusted issuer's JWT (the
//! configured algorithm allow-list, keys by discovery, `iss`, `aud` = the client ID,
//! `exp`, `iat` at most 10 minutes old), then its `nonce`, `azp`, name and roles. The
//! person's broker roles come from the `roles_claim` through `[console.oidc.roles]`; a
//! person with none is refused. Nothing the provider sends (code, tokens) is logged,
//! recorded or rendered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;

use super::oidc_config::OidcSettings;
use super::session::{digest_hex, same, secret, well_formed};
use crate::authn::Authenticator;
use crate::clock::Clock;
use crate::config::{Admin, AdminMatch, Role, key_fetch_url_allowed};

/// How long a started sign-in may take, seconds.
pub const FLOW_TTL: u64 = 600;
/// The cookie that binds a flow to the browser that started it.
pub const STATE_COOKIE: &str = "broker_console_oidc";
/// Most sign-ins in progress at once (the oldest are dropped past it).
const MAX_FLOWS: usize = 10_000;
/// Largest discovery document or token response read, bytes.
const MAX_RESPONSE: usize = 64 * 1024;
/// How long the discovery document is used before it is fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);
/// Longest name taken from the ID token.
const MAX_NAME: usize = 256;

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone, Deserialize)]
struct Endpoints {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

/// One sign-in in progress.
#[derive(Debug)]
struct Flow {
    verifier: String,
    nonce: String,
    started: u64,
}

/// A started sign-in: where to send the browser, and the cookie binding it.
#[derive(Debug)]
pub struct Begun {
    /// The provider's authorization URL with this flow's parameters.
    pub authorize_url: String,
    /// The `state`, for the binding cookie.
    pub state: String,
}

/// The provider's answer at the callback, as the browser brought it.
#[derive(Debug, Default, Deserialize)]
pub struct Callback {
    /// The authorization code.
    #[serde(default)]
    pub code: Option<String>,
    /// The flow's `state`.
    #[serde(default)]
    pub state: Option<String>,
    /// An OAuth error code instead of a code (`access_denied`, say).
    #[serde(default)]
    pub error: Option<String>,
    /// Its description.
    #[serde(default)]
    pub error_description: Option<String>,
}

/// Someone the provider vouched for, with broker roles.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The admin the session acts as (name from `name_claim`, roles from the mapping).
    pub admin: Admin,
    /// The ID token's `sub`.
    pub subject: String,
    /// The `kid` that signed the ID token.
    pub kid: Option<String>,
}

/// Why a sign-in through the provider was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcRefused {
    /// The callback carries no (well-formed) `state`.
    NoState,
    /// No such flow: never started here, used already, or older than [`FLOW_TTL`].
    UnknownState,
    /// The binding cookie is missing or is another flow's: the answer did not come back
    /// to the browser that started the sign-in.
    NotThisBrowser,
    /// The provider answered with an error.
    Provider(String),
    /// The provider could not be reached or its discovery document is unusable.
    Unavailable(String),
    /// The token endpoint refused the code (or answered without an ID token).
    TokenEndpoint(String),
    /// The ID token failed a check.
    IdToken(String),
    /// The ID token's `nonce` is not this flow's.
    Nonce,
    /// The person holds no group that maps to a broker role.
    NoRole(String),
}

impl OidcRefused {
    /// For the audit record and the log (never a code or a token).
    pub fn reason(&self) -> String {
        match self {
            OidcRefused::NoState => "OIDC callback without a state".into(),
            OidcRefused::UnknownState => {
                "OIDC callback for no sign-in in progress (never started here, used already, or expired)".into()
            }
            OidcRefused::NotThisBrowser => {
                "OIDC callback in a browser that did not start this sign-in (state cookie missing or different)".into()
            }
            OidcRefused::Provider(e) => format!("the identity provider answered: {e}"),
            OidcRefused::Unavailable(e) => format!("identity provider unavailable: {e}"),
            OidcRefused::TokenEndpoint(e) => format!("token endpoint: {e}"),
            OidcRefused::IdToken(e) => format!("ID token refused: {e}"),
            OidcRefused::Nonce => "ID token nonce is not this sign-in's".into(),
            OidcRefused::NoRole(e) => e.clone(),
        }
    }

    /// The audit record's rule.
    pub fn rule(&self) -> &'static str {
        match self {
            OidcRefused::NoState | OidcRefused::UnknownState | OidcRefused::NotThisBrowser => {
                "console_oidc_state"
            }
            OidcRefused::Provider(_) => "console_oidc_provider_error",
            OidcRefused::Unavailable(_) => "console_oidc_unavailable",
            OidcRefused::TokenEndpoint(_) => "console_oidc_code_refused",
            OidcRefused::IdToken(_) | OidcRefused::Nonce => "console_oidc_id_token",
            OidcRefused::NoRole(_) => "console_oidc_no_role",
        }
    }

    /// What the browser is told.
    pub fn page_message(&self) -> &'static str {
        match self {
            OidcRefused::NoState | OidcRefused::UnknownState | OidcRefused::NotThisBrowser => {
                "This sign-in is not valid here: it expired, it was used already, or it was started in another browser. Start again."
            }
            OidcRefused::Provider(_) => {
                "The identity provider did not sign you in. Start again, or ask your identity team."
            }
            OidcRefused::Unavailable(_) => {
                "The identity provider cannot be reached right now. Try again later."
            }
            OidcRefused::TokenEndpoint(_) | OidcRefused::IdToken(_) | OidcRefused::Nonce => {
                "The identity provider's answer could not be verified, so you are not signed in. Start again."
            }
            OidcRefused::NoRole(_) => {
                "You are signed in at the identity provider, but none of your groups gives access to the broker console."
            }
        }
    }

    /// The HTTP status of the refusal page.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            OidcRefused::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            OidcRefused::NoRole(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// The PKCE `S256` challenge of `verifier` (RFC 7636 §4.2).
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// The console's OpenID Connect client.
pub struct Oidc {
    /// The validated `[console.oidc]`.
    pub settings: OidcSettings,
    http: reqwest::Client,
    id_tokens: Authenticator,
    endpoints: tokio::sync::Mutex<Option<(Instant, Endpoints)>>,
    flows: Mutex<HashMap<String, Flow>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.settings.issuer)
            .field("client_id", &self.settings.client_id)
            .finish_non_exhaustive()
    }
}

impl Oidc {
    /// The client of `settings` (nothing is fetched yet).
    pub fn new(settings: OidcSettings, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let http = crate::authn::issuers::http_client(settings.id_tokens.ca_file.as_deref())
            .map_err(|e| format!("console.oidc: {e}"))?;
        let id_tokens = Authenticator::new(
            std::slice::from_ref(&settings.id_tokens),
            Arc::clone(&clock),
        )
        .map_err(|e| format!("console.oidc: {e}"))?;
        Ok(Self {
            settings,
            http,
            id_tokens,
            endpoints: tokio::sync::Mutex::new(None),
            flows: Mutex::new(HashMap::new()),
            clock,
        })
    }

    /// Starts a sign-in: a new flow and the provider's authorization URL for it.
    pub async fn begin(&self) -> Result<Begun, OidcRefused> {
        let ep = self.endpoints().await?;
        let random = |_| OidcRefused::Unavailable("the system random generator failed".into());
        let state = secret().map_err(random)?;
        let nonce = secret().map_err(random)?;
        let verifier = secret().map_err(random)?;
        let mut url = reqwest::Url::parse(&ep.authorization_endpoint)
            .map_err(|e| OidcRefused::Unavailable(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", &self.settings.redirect_uri)
            .append_pair("scope", &self.settings.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &s256_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        let now = self.clock.unix_secs();
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        flows.retain(|_, f| now < f.started.saturating_add(FLOW_TTL));
        if flows.len() >= MAX_FLOWS
            && let Some(oldest) = flows
                .iter()
                .min_by_key(|(_, f)| f.started)
                .map(|(k, _)| k.clone())
        {
            flows.remove(&oldest);
        }
        flows.insert(
            digest_hex(&state),
            Flow {
                verifier,
                nonce,
                started: now,
            },
        );
        Ok(Begun {
            authorize_url: url.into(),
            state,
        })
    }

    /// Finishes a sign-in from the provider's answer `cb` in the browser whose binding
    /// cookie is `cookie_state`.
    pub async fn complete(
        &self,
        cb: &Callback,
        cookie_state: Option<&str>,
    ) -> Result<SignedIn, OidcRefused> {
        let state = cb
            .state
            .as_deref()
            .filter(|s| well_formed(s))
            .ok_or(OidcRefused::NoState)?;
        let now = self.clock.unix_secs();
        // Removed before anything else: a flow is answered once, whatever the outcome.
        let flow = self
            .flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&digest_hex(state))
            .filter(|f| now < f.started.saturating_add(FLOW_TTL))
            .ok_or(OidcRefused::UnknownState)?;
        if !cookie_state.is_some_and(|c| same(c, state)) {
            return Err(OidcRefused::NotThisBrowser);
        }
        if let Some(e) = &cb.error {
            let desc = cb.error_description.as_deref().unwrap_or("");
            return Err(OidcRefused::Provider(crate::authn::truncate(
                &format!("{e} {desc}"),
                300,
            )));
        }
        let code = cb
            .code
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 2048)
            .ok_or_else(|| OidcRefused::Provider("no authorization code".into()))?;
        let id_token = self.redeem(code, &flow.verifier).await?;
        self.check_id_token(&id_token, &flow.nonce).await
    }

    /// The code and verifier for an ID token, at the token endpoint.
    async fn redeem(&self, code: &str, verifier: &str) -> Result<String, OidcRefused> {
        let ep = self.endpoints().await?;
        let s = &self.settings;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", s.redirect_uri.as_str()),
            ("code_verifier", verifier),
        ];
        let mut req = self.http.post(&ep.token_endpoint);
        match &s.client_secret {
            // RFC 6749 §2.3.1: both parts form-encoded, then Basic.
            Some(secret) => {
                let enc = |v: &str| form_urlencoded(v);
                req = req.basic_auth(enc(&s.client_id), Some(enc(secret.expose())));
            }
            None => form.push(("client_id", s.client_id.as_str())),
        }
        let resp = req
            .form(&form)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| OidcRefused::Unavailable(format!("token endpoint: {e}")))?;
        let status = resp.status();
        let body = read_bounded(resp)
            .await
            .map_err(|e| OidcRefused::Unavailable(format!("token endpoint: {e}")))?;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let error = json["error"].as_str().unwrap_or("no error code");
            let desc = json["error_description"].as_str().unwrap_or("");
            return Err(OidcRefused::TokenEndpoint(crate::authn::truncate(
                &format!("HTTP {}: {error} {desc}", status.as_u16()),
                300,
            )));
        }
        json["id_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| OidcRefused::TokenEndpoint("the answer has no id_token".into()))
    }

    /// The ID token's signature and claims, its nonce, and who it names.
    async fn check_id_token(&self, token: &str, nonce: &str) -> Result<SignedIn, OidcRefused> {
        let v = self
            .id_tokens
            .authenticate_jwt(token)
            .await
            .map_err(|e| OidcRefused::IdToken(e.to_string()))?;
        let s = &self.settings;
        if !v.claims["nonce"].as_str().is_some_and(|n| same(n, nonce)) {
            return Err(OidcRefused::Nonce);
        }
        // OpenID Connect Core §3.1.3.7: with several audiences, `azp` must be us; when
        // present, it must be us anyway.
        let several = v.claims["aud"].as_array().is_some_and(|a| a.len() > 1);
        match v.claims.get("azp").map(|a| a.as_str()) {
            Some(Some(azp)) if azp == s.client_id => {}
            None if !several => {}
            _ => {
                return Err(OidcRefused::IdToken(format!(
                    "azp is not {:?} (the token names several audiences or another party)",
                    s.client_id
                )));
            }
        }
        let name = v.claims[s.name_claim.as_str()]
            .as_str()
            .filter(|n| !n.is_empty() && n.len() <= MAX_NAME && !n.chars().any(char::is_control))
            .ok_or_else(|| {
                OidcRefused::IdToken(format!(
                    "claim {:?} (the console's name_claim) is missing or not a name",
                    s.name_claim
                ))
            })?
            .to_owned();
        let groups: Vec<&str> = match &v.claims[s.roles_claim.as_str()] {
            Value::String(g) => vec![g.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut roles: Vec<Role> = Vec::new();
        for g in &groups {
            for r in s.roles.get(*g).into_iter().flatten() {
                if !roles.contains(r) {
                    roles.push(*r);
                }
            }
        }
        if roles.is_empty() {
            return Err(OidcRefused::NoRole(crate::authn::truncate(
                &format!(
                    "{name} holds no group in claim {:?} that [console.oidc.roles] maps to a broker role (holds: {})",
                    s.roles_claim,
                    if groups.is_empty() {
                        "none".to_owned()
                    } else {
                        groups.join(", ")
                    }
                ),
                400,
            )));
        }
        Ok(SignedIn {
            admin: Admin {
                name,
                roles,
                matcher: AdminMatch::Jwt {
                    issuer: v.issuer.clone(),
                    subject: v.subject.clone(),
                },
            },
            subject: v.subject.clone(),
            kid: v.kid.clone(),
        })
    }

    /// The provider's endpoints: the cached discovery document, or a fresh one (the last
    /// good one is kept when a refresh fails).
    async fn endpoints(&self) -> Result<Endpoints, OidcRefused> {
        let mut cached = self.endpoints.lock().await;
        if let Some((at, ep)) = &*cached
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(ep.clone());
        }
        match self.discover().await {
            Ok(ep) => {
                *cached = Some((Instant::now(), ep.clone()));
                Ok(ep)
            }
            Err(e) => match &*cached {
                Some((_, ep)) => {
                    tracing::warn!(error = %e.reason(), "OIDC discovery failed; keeping the last good document");
                    Ok(ep.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn discover(&self) -> Result<Endpoints, OidcRefused> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let unavailable = |m: String| OidcRefused::Unavailable(format!("{url}: {m}"));
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("HTTP {}", resp.status())));
        }
        let body = read_bounded(resp).await.map_err(unavailable)?;
        let ep: Endpoints =
            serde_json::from_slice(&body).map_err(|e| unavailable(e.to_string()))?;
        if ep.issuer != self.settings.issuer {
            return Err(unavailable(format!(
                "the document is for issuer {:?}, not {:?}",
                ep.issuer, self.settings.issuer
            )));
        }
        for (what, u) in [
            ("authorization_endpoint", &ep.authorization_endpoint),
            ("token_endpoint", &ep.token_endpoint),
        ] {
            key_fetch_url_allowed(u).map_err(|e| unavailable(format!("{what}: {e}")))?;
        }
        if let Some(m) = &ep.code_challenge_methods_supported
            && !m.iter().any(|m| m == "S256")
        {
            return Err(unavailable(
                "the provider does not support PKCE with S256 (code_challenge_methods_supported)"
                    .into(),
            ));
        }
        Ok(ep)
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_urlencoded(v: &str) -> String {
    serde_urlencoded::to_string([("", v)])
        .map(|s| s.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

/// The body of `resp`, at most [`MAX_RESPONSE`] bytes.
async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(format!("answer larger than {MAX_RESPONSE} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_rfc_7636s_s256() {
        // RFC 7636 Appendix B.
        assert_eq!(
            s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn client_credentials_are_form_encoded_before_basic() {
        assert_eq!(form_urlencoded("a b:c/ü"), "a+b%3Ac%2F%C3%BC");
        assert_eq!(form_urlencoded("plain-id"), "plain-id");
    }

    #[test]
    fn every_refusal_says_why_without_the_providers_secrets() {
        for r in [
            OidcRefused::NoState,
            OidcRefused::UnknownState,
            OidcRefused::NotThisBrowser,
            OidcRefused::Provider("access_denied".into()),
            OidcRefused::Unavailable("x".into()),
            OidcRefused::TokenEndpoint("HTTP 400: invalid_grant".into()),
            OidcRefused::IdToken("bad".into()),
            OidcRefused::Nonce,
            OidcRefused::NoRole("alice holds no group".into()),
        ] {
            assert!(!r.reason().is_empty() && !r.page_message().is_empty());
            assert!(r.rule().starts_with("console_oidc_"));
            assert!(r.status().is_client_error() || r.status().is_server_error());
        }
    }
}
