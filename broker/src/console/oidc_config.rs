//! `[console.oidc]`: console sign-in through the company's OpenID Connect provider, as
//! written in the config file and as validated.
//!
//! ```toml
//! [console.oidc]
//! issuer = "https://login.example.com"        # discovery: {issuer}/.well-known/openid-configuration
//! client_id = "token-broker-console"
//! client_secret_file = "console-oidc.secret"  # optional (mode 0600): a confidential client
//! redirect_uri = "https://broker.example.com/console/oidc/callback"
//! algorithms = ["RS256"]                      # the ID tokens' allow-list
//! roles_claim = "groups"                      # the claim with the person's groups
//! name_claim = "email"                        # the audit actor (default "sub")
//!
//! [console.oidc.roles]                        # group -> broker roles
//! "token-broker-admins" = ["admin"]
//! "secops-oncall" = ["break_glass_approve", "read_audit"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{
    ACCEPTABLE_ISSUER_ALGORITHMS, JwksSource, Role, TrustedIssuer, key_fetch_url_allowed,
    parse_duration,
};

/// Where the provider sends the browser back to: the broker's callback route.
pub const CALLBACK_PATH: &str = "/console/oidc/callback";

/// `[console]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleFile {
    /// `[console.oidc]`.
    #[serde(default)]
    pub oidc: Option<OidcFile>,
}

/// `[console.oidc]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    /// The provider's issuer (`iss` of its ID tokens); its discovery document is fetched
    /// from `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The console's client ID at the provider (the ID tokens' `aud`).
    pub client_id: String,
    /// File holding the client secret (a confidential client, `client_secret_basic`);
    /// without it the console is a public client and PKCE alone binds the code.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The callback URL registered at the provider: `https://<broker>/console/oidc/callback`.
    pub redirect_uri: String,
    /// The algorithms the provider's ID tokens may be signed with (`none` and HMAC never).
    pub algorithms: Vec<String>,
    /// Scopes asked for (default `["openid"]`; `openid` is always asked for).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// The ID-token claim holding the person's groups or roles (a string or an array).
    pub roles_claim: String,
    /// The ID-token claim naming the person in the audit log (default `sub`).
    #[serde(default)]
    pub name_claim: Option<String>,
    /// Group (a value of `roles_claim`) to broker roles.
    pub roles: BTreeMap<String, Vec<String>>,
    /// PEM CA bundle for the provider's HTTPS endpoints.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Clock-skew leeway for the ID token's times (default `30s`, at most `5m`).
    #[serde(default)]
    pub leeway: Option<String>,
    /// The provider's name on the sign-in button (default "your identity provider").
    #[serde(default)]
    pub display_name: Option<String>,
}

/// The client secret: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// The secret, for the token request's `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// `[console.oidc]`, validated.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The provider's issuer.
    pub issuer: String,
    /// The console's client ID.
    pub client_id: String,
    /// The client secret, for a confidential client.
    pub client_secret: Option<ClientSecret>,
    /// The registered callback URL.
    pub redirect_uri: String,
    /// Scopes asked for, `openid` first.
    pub scopes: Vec<String>,
    /// The claim with the person's groups.
    pub roles_claim: String,
    /// The claim naming the person.
    pub name_claim: String,
    /// Group to roles.
    pub roles: BTreeMap<String, Vec<Role>>,
    /// How ID tokens are checked: the provider as a trusted issuer whose only audience is
    /// the client ID, keys by discovery, the configured algorithms.
    pub id_tokens: TrustedIssuer,
    /// The provider's name on the sign-in button.
    pub display_name: String,
}

/// Longest an ID token may live (`exp - iat`).
const MAX_ID_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Oldest `iat` accepted: the token comes straight from the token endpoint.
const MAX_ID_TOKEN_AGE: Duration = Duration::from_secs(10 * 60);

fn scope_token_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

impl OidcSettings {
    /// Validates `file` (paths relative to the config via `resolve`); `broker_issuer` is
    /// the broker's own `iss`, which cannot be the provider.
    pub fn from_file(
        file: Option<&OidcFile>,
        resolve: &dyn Fn(&Path) -> PathBuf,
        broker_issuer: &str,
    ) -> Result<Option<OidcSettings>, String> {
        let Some(f) = file else { return Ok(None) };
        let at = "console.oidc";
        if f.issuer.is_empty() {
            return Err(format!("{at}.issuer must not be empty"));
        }
        key_fetch_url_allowed(&f.issuer).map_err(|e| format!("{at}.issuer: {e}"))?;
        if f.issuer.trim_end_matches('/') == broker_issuer.trim_end_matches('/') {
            return Err(format!(
                "{at}.issuer: the broker cannot be its own console's identity provider"
            ));
        }
        if f.client_id.is_empty()
            || f.client_id.len() > 255
            || !f.client_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "{at}.client_id must be 1 to 255 printable ASCII characters"
            ));
        }
        let redirect = reqwest::Url::parse(&f.redirect_uri)
            .map_err(|e| format!("{at}.redirect_uri {:?}: {e}", f.redirect_uri))?;
        let loopback = redirect.host_str().is_some_and(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if !(redirect.scheme() == "https" || (redirect.scheme() == "http" && loopback)) {
            return Err(format!(
                "{at}.redirect_uri {:?}: the authorization code comes back over https only (plain http only to a loopback address)",
                f.redirect_uri
            ));
        }
        if redirect.path() != CALLBACK_PATH
            || redirect.query().is_some()
            || redirect.fragment().is_some()
        {
            return Err(format!(
                "{at}.redirect_uri {:?}: must be the broker's {CALLBACK_PATH}, with no query or fragment",
                f.redirect_uri
            ));
        }
        if f.algorithms.is_empty() {
            return Err(format!(
                "{at}.algorithms must list the ID tokens' algorithms"
            ));
        }
        for a in &f.algorithms {
            if !ACCEPTABLE_ISSUER_ALGORITHMS.contains(&a.as_str()) {
                return Err(format!(
                    "{at}.algorithms: {a:?} is not accepted (allowed: {}; `none` and HMAC never are)",
                    ACCEPTABLE_ISSUER_ALGORITHMS.join(", ")
                ));
            }
        }
        let mut scopes = vec!["openid".to_owned()];
        for s in f.scopes.iter().flatten() {
            if !scope_token_ok(s) {
                return Err(format!("{at}.scopes: {s:?} is not a scope token"));
            }
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        if f.roles_claim.is_empty() {
            return Err(format!("{at}.roles_claim must name a claim"));
        }
        let name_claim = f.name_claim.clone().unwrap_or_else(|| "sub".into());
        if name_claim.is_empty() {
            return Err(format!("{at}.name_claim must name a claim"));
        }
        if f.roles.is_empty() {
            return Err(format!(
                "{at}.roles must map at least one group to broker roles"
            ));
        }
        let mut roles = BTreeMap::new();
        for (group, names) in &f.roles {
            if names.is_empty() {
                return Err(format!("{at}.roles.{group:?}: give at least one role"));
            }
            let mut parsed = Vec::new();
            for n in names {
                parsed.push(Role::parse(n).ok_or_else(|| {
                    format!(
                        "{at}.roles.{group:?}: unknown role {n:?} (revoke, read_audit, break_glass_approve, admin)"
                    )
                })?);
            }
            roles.insert(group.clone(), parsed);
        }
        let leeway = match &f.leeway {
            None => Duration::from_secs(30),
            Some(l) => parse_duration(l).map_err(|e| format!("{at}.leeway: {e}"))?,
        };
        if leeway > Duration::from_secs(300) {
            return Err(format!("{at}.leeway must be at most 5m"));
        }
        let client_secret = match &f.client_secret_file {
            None => None,
            Some(p) => Some(read_secret(&resolve(p)).map_err(|e| format!("{at}: {e}"))?),
        };
        let mut id_tokens = TrustedIssuer::with_defaults(
            &f.issuer,
            &[f.client_id.as_str()],
            &f.algorithms.iter().map(String::as_str).collect::<Vec<_>>(),
            JwksSource::Discovery,
        );
        id_tokens.leeway = leeway;
        id_tokens.ca_file = f.ca_file.as_deref().map(resolve);
        id_tokens.max_lifetime = MAX_ID_TOKEN_LIFETIME;
        id_tokens.max_age = Some(MAX_ID_TOKEN_AGE);
        Ok(Some(OidcSettings {
            issuer: f.issuer.clone(),
            client_id: f.client_id.clone(),
            client_secret,
            redirect_uri: f.redirect_uri.clone(),
            scopes,
            roles_claim: f.roles_claim.clone(),
            name_claim,
            roles,
            id_tokens,
            display_name: f
                .display_name
                .clone()
                .unwrap_or_else(|| "your identity provider".into()),
        }))
    }
}

/// Reads the client secret file: one line, readable by its owner only.
fn read_secret(path: &Path) -> Result<ClientSecret, String> {
    crate::config::read_secret_file(path, "client_secret_file").map(|s| ClientSecret(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> OidcFile {
        OidcFile {
            issuer: "https://login.example.com".into(),
            client_id: "console".into(),
            client_secret_file: None,
            redirect_uri: "https://broker.example.com/console/oidc/callback".into(),
            algorithms: vec!["RS256".into()],
            scopes: Some(vec!["groups".into(), "openid".into()]),
            roles_claim: "groups".into(),
            name_claim: None,
            roles: [("secops".to_owned(), vec!["admin".to_owned()])].into(),
            ca_file: None,
            leeway: None,
            display_name: None,
        }
    }

    fn check(f: &OidcFile) -> Result<Option<OidcSettings>, String> {
        OidcSettings::from_file(Some(f), &|p| p.to_path_buf(), "https://broker.example.com")
    }

    #[test]
    fn a_valid_section_checks_id_tokens_like_a_trusted_issuer_for_the_client_id() {
        let s = check(&file()).unwrap().unwrap();
        assert_eq!(s.scopes, ["openid", "groups"]);
        assert_eq!(s.name_claim, "sub");
        assert_eq!(s.roles["secops"], [Role::Admin]);
        assert_eq!(s.id_tokens.audiences, ["console"]);
        assert_eq!(s.id_tokens.algorithms, ["RS256"]);
        assert!(matches!(s.id_tokens.jwks, JwksSource::Discovery));
        assert_eq!(s.id_tokens.max_age, Some(MAX_ID_TOKEN_AGE));
        assert!(
            OidcSettings::from_file(None, &|p| p.to_path_buf(), "x")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn unsafe_or_unclear_settings_are_refused_with_the_key_named() {
        type Edit = Box<dyn Fn(&mut OidcFile)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|f| f.issuer = "http://login.example.com".into()),
                "plain http",
            ),
            (
                Box::new(|f| f.issuer = "https://broker.example.com/".into()),
                "its own",
            ),
            (
                Box::new(|f| f.algorithms = vec!["none".into()]),
                "never are",
            ),
            (
                Box::new(|f| f.algorithms = vec!["HS256".into()]),
                "never are",
            ),
            (Box::new(|f| f.algorithms.clear()), "algorithms must list"),
            (
                Box::new(|f| {
                    f.redirect_uri = "http://broker.example.com/console/oidc/callback".into()
                }),
                "https only",
            ),
            (
                Box::new(|f| f.redirect_uri = "https://broker.example.com/elsewhere".into()),
                "/console/oidc/callback",
            ),
            (Box::new(|f| f.client_id = String::new()), "client_id"),
            (Box::new(|f| f.roles.clear()), "roles must map"),
            (
                Box::new(|f| {
                    f.roles.insert("x".into(), vec!["root".into()]);
                }),
                "unknown role \"root\"",
            ),
            (
                Box::new(|f| f.scopes = Some(vec!["a b".into()])),
                "not a scope token",
            ),
            (Box::new(|f| f.leeway = Some("10m".into())), "at most 5m"),
        ];
        for (edit, want) in cases {
            let mut f = file();
            edit(&mut f);
            let e = check(&f).unwrap_err();
            assert!(e.contains(want), "{want:?} in {e:?}");
        }
        // Loopback plain http is fine (tests, a provider on the same host).
        let mut f = file();
        f.issuer = "http://localhost:8080".into();
        f.redirect_uri = "http://127.0.0.1:9/console/oidc/callback".into();
        assert!(check(&f).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn the_client_secret_file_must_be_private_and_is_never_printed() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        crate::config::tests::write_file_with_mode(&p, "s3cr3t-value\n", 0o644);
        let mut f = file();
        f.client_secret_file = Some(p.clone());
        assert!(check(&f).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = check(&f).unwrap().unwrap();
        assert_eq!(s.client_secret.as_ref().unwrap().expose(), "s3cr3t-value");
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }
}
