//! A small OpenID Connect provider on loopback for the console's sign-in tests: discovery,
//! an authorization endpoint that signs in whoever the test says is at the keyboard and
//! redirects straight back with a code, a token endpoint that checks the client secret,
//! the redirect URI and the PKCE verifier (RFC 7636 `S256`) like a real provider, and the
//! fixture JWKS. ID tokens are ES256 with the fixture EC key ([`IssuerKey::Ec`]); knobs
//! make them wrong in one way each.
//!
//! Its issuer is `http://localhost:PORT` while the broker listens on `127.0.0.1`, so the
//! redirects between them are cross-site, as with a real provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SecureRandom as _;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::{IssuerKey, issuer_jwks, now_secs, sign, unsigned, with_bad_signature};

/// The console's client ID at the test provider.
pub const CLIENT_ID: &str = "broker-console";
/// The console's client secret at the test provider.
pub const CLIENT_SECRET: &str = "console-secret-4f1c9a";
/// The group that [`console_oidc_toml`] maps to the `admin` role.
pub const ADMIN_GROUP: &str = "secops";
/// The group that [`console_oidc_toml`] maps to `break_glass_approve`.
pub const APPROVER_GROUP: &str = "oncall-approvers";

/// The person signed in at the provider.
#[derive(Debug, Clone)]
pub struct IdpUser {
    /// `sub`.
    pub subject: String,
    /// `email` (the console's `name_claim`).
    pub email: String,
    /// `groups` (the console's `roles_claim`).
    pub groups: Vec<String>,
}

impl IdpUser {
    /// A person with `groups`; `sub` and `email` derived from `name`.
    pub fn new(name: &str, groups: &[&str]) -> Self {
        Self {
            subject: format!("00u-{name}"),
            email: format!("{name}@example.com"),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }
}

/// How the next ID tokens are spoiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tamper {
    /// Well-formed and correctly signed.
    #[default]
    None,
    /// Another flow's `nonce`.
    WrongNonce,
    /// `alg: none`, no signature.
    Unsigned,
    /// A signature that does not verify.
    BadSignature,
    /// `aud` is another client.
    OtherAudience,
}

/// A code the provider handed out, waiting for the token request.
#[derive(Debug, Clone)]
struct Grant {
    redirect_uri: String,
    challenge: String,
    nonce: String,
    user: IdpUser,
}

#[derive(Default)]
struct Provider {
    issuer: String,
    user: Option<IdpUser>,
    tamper: Tamper,
    codes: HashMap<String, Grant>,
    /// Every code, ID token and access token handed out (to prove none is recorded).
    secrets: Vec<String>,
    /// The token endpoint's refusals, as `error: description`.
    token_refusals: Vec<String>,
}

type Shared = Arc<Mutex<Provider>>;

/// The running provider; stops when dropped.
pub struct TestIdp {
    issuer: String,
    provider: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn random_token() -> String {
    let mut b = [0u8; 24];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("random bytes");
    URL_SAFE_NO_PAD.encode(b)
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn discovery(State(p): State<Shared>) -> Response {
    let issuer = p.lock().unwrap().issuer.clone();
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    }))
    .into_response()
}

async fn jwks() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        issuer_jwks().to_owned(),
    )
        .into_response()
}

/// `GET /authorize`: checks the request as a provider would, then redirects back with a
/// code for the signed-in person (or `access_denied` when nobody is).
async fn authorize(State(p): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let redirect_uri = get("redirect_uri");
    if get("client_id") != CLIENT_ID || !redirect_uri.ends_with("/console/oidc/callback") {
        return (StatusCode::BAD_REQUEST, "unknown client or redirect_uri").into_response();
    }
    let state = get("state");
    let mut back = reqwest::Url::parse(&redirect_uri).expect("redirect_uri");
    let problem = if get("response_type") != "code" {
        Some("unsupported_response_type")
    } else if get("code_challenge_method") != "S256" || get("code_challenge").len() != 43 {
        Some("invalid_request")
    } else if !get("scope").split(' ').any(|s| s == "openid") || get("nonce").is_empty() {
        Some("invalid_scope")
    } else {
        None
    };
    let mut provider = p.lock().unwrap();
    match (problem, provider.user.clone()) {
        (Some(e), _) => {
            back.query_pairs_mut()
                .append_pair("error", e)
                .append_pair("state", &state);
        }
        (None, None) => {
            back.query_pairs_mut()
                .append_pair("error", "access_denied")
                .append_pair("error_description", "nobody signed in")
                .append_pair("state", &state);
        }
        (None, Some(user)) => {
            let code = random_token();
            provider.secrets.push(code.clone());
            provider.codes.insert(
                code.clone(),
                Grant {
                    redirect_uri: redirect_uri.clone(),
                    challenge: get("code_challenge"),
                    nonce: get("nonce"),
                    user,
                },
            );
            back.query_pairs_mut()
                .append_pair("code", &code)
                .append_pair("state", &state);
        }
    }
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

fn client_authenticated(headers: &HeaderMap) -> bool {
    let want = format!(
        "Basic {}",
        STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == want)
}

/// `POST /token`: the authorization-code grant with PKCE, one use per code.
async fn token(
    State(p): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let mut provider = p.lock().unwrap();
    fn refuse(p: &mut Provider, status: StatusCode, error: &str, desc: &str) -> Response {
        p.token_refusals.push(format!("{error}: {desc}"));
        oauth_error(status, error, desc)
    }
    if !client_authenticated(&headers) {
        return refuse(
            &mut provider,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "bad client secret",
        );
    }
    if get("grant_type") != "authorization_code" {
        return refuse(
            &mut provider,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "",
        );
    }
    let Some(grant) = provider.codes.remove(&get("code")) else {
        return refuse(
            &mut provider,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown or used code",
        );
    };
    if grant.redirect_uri != get("redirect_uri") {
        return refuse(
            &mut provider,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "redirect_uri differs",
        );
    }
    let verifier = get("code_verifier");
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    if verifier.len() < 43 || challenge != grant.challenge {
        return refuse(
            &mut provider,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "PKCE verification failed",
        );
    }
    let now = now_secs();
    let mut claims = json!({
        "iss": provider.issuer,
        "sub": grant.user.subject,
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "auth_time": now,
        "nonce": grant.nonce,
        "email": grant.user.email,
        "groups": grant.user.groups,
    });
    let id_token = match provider.tamper {
        Tamper::None => sign(IssuerKey::Ec, &claims),
        Tamper::WrongNonce => {
            claims["nonce"] = Value::from(random_token());
            sign(IssuerKey::Ec, &claims)
        }
        Tamper::Unsigned => unsigned(&claims),
        Tamper::BadSignature => with_bad_signature(&sign(IssuerKey::Ec, &claims)),
        Tamper::OtherAudience => {
            claims["aud"] = Value::from("another-app");
            sign(IssuerKey::Ec, &claims)
        }
    };
    let access_token = random_token();
    provider.secrets.push(id_token.clone());
    provider.secrets.push(access_token.clone());
    axum::Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": id_token,
    }))
    .into_response()
}

impl TestIdp {
    /// Starts the provider on a free loopback port; nobody is signed in yet.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let issuer = format!("http://localhost:{port}");
        let provider: Shared = Arc::new(Mutex::new(Provider {
            issuer: issuer.clone(),
            ..Provider::default()
        }));
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(discovery),
            )
            .route("/jwks", axum::routing::get(jwks))
            .route("/authorize", axum::routing::get(authorize))
            .route("/token", axum::routing::post(token))
            .with_state(Arc::clone(&provider));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            issuer,
            provider,
            server,
        }
    }

    /// The issuer, `http://localhost:PORT`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Who the provider signs in from now on (`None`: it answers `access_denied`).
    pub fn sign_in_as(&self, user: Option<IdpUser>) {
        self.provider.lock().unwrap().user = user;
    }

    /// How the next ID tokens are spoiled.
    pub fn tamper(&self, t: Tamper) {
        self.provider.lock().unwrap().tamper = t;
    }

    /// Every code, ID token and access token the provider handed out.
    pub fn secrets(&self) -> Vec<String> {
        self.provider.lock().unwrap().secrets.clone()
    }

    /// The token endpoint's refusals so far.
    pub fn token_refusals(&self) -> Vec<String> {
        self.provider.lock().unwrap().token_refusals.clone()
    }
}

/// `[console.oidc]` for a broker at `broker_base` (`http://127.0.0.1:PORT`) signing in
/// through `idp`, with the client secret in `console-oidc.secret` (written by the caller,
/// mode 0600): [`ADMIN_GROUP`] is `admin`, [`APPROVER_GROUP`] is `break_glass_approve`.
pub fn console_oidc_toml(idp: &TestIdp, broker_base: &str) -> String {
    format!(
        r#"
[console.oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "console-oidc.secret"
redirect_uri = "{broker_base}/console/oidc/callback"
algorithms = ["ES256"]
scopes = ["openid", "email", "groups"]
roles_claim = "groups"
name_claim = "email"
display_name = "Example SSO"

[console.oidc.roles]
"{ADMIN_GROUP}" = ["admin"]
"{APPROVER_GROUP}" = ["break_glass_approve"]
"#,
        issuer = idp.issuer()
    )
}
