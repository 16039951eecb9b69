//! Stage 1, parse: the HTTP body to [`Params`], every parameter checked and bounded.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use broker_client::types::{
    GRANT_TYPE_CLIENT_CREDENTIALS, GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_JWT,
};

use super::refusal::Refusal;
use crate::audit::event::AuditEvent;

/// The form parameters the broker reads. Unknown parameters are ignored (RFC 6749 §3.2);
/// a repeated parameter is an error. No `Debug`: it holds the subject token.
#[derive(Default)]
struct TokenForm {
    grant_type: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    requested_token_type: Option<String>,
    actor_token: Option<String>,
    actor_token_type: Option<String>,
    task: Option<String>,
    audience: Option<String>,
    resource: Option<String>,
    scope: Option<String>,
    requested_ttl: Option<String>,
    client_id: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

/// How the caller proves who it is.
pub enum Credential {
    /// RFC 8693: a workload JWT (never logged).
    SubjectToken(String),
    /// `client_credentials`: the client authentication (a TLS client certificate or an
    /// RFC 7523 client assertion) is the credential, with an optional `client_id`.
    ClientCredentials {
        /// `client_id`, which must then name the authenticated identity.
        client_id: Option<String>,
    },
}

/// A checked token request. No `Debug`: it may hold the subject token.
pub struct Params {
    /// The credential.
    pub credential: Credential,
    /// RFC 8693 delegation: the actor's workload JWT (never logged).
    pub actor_token: Option<String>,
    /// An RFC 7523 client assertion (a workload JWT whose `aud` names this broker),
    /// authenticating the client (never logged).
    pub client_assertion: Option<String>,
    /// The task asked for.
    pub task: String,
    /// `audience` (or `resource`).
    pub audience: Option<String>,
    /// `scope`, split.
    pub scopes: Option<Vec<String>>,
    /// `requested_ttl`.
    pub requested_ttl: Option<Duration>,
}

/// Reads the body: its size, its content type, the form, then every parameter. What is
/// known goes into `ev` (bounded), so a refusal's record says what was asked.
pub fn parse(
    content_type: Option<&str>,
    body: Result<Bytes, BytesRejection>,
    ev: &mut AuditEvent,
) -> Result<Params, Refusal> {
    let form = form(content_type, body)?;
    let credential = credential(&form)?;
    let actor_token = actor_token(&form, &credential)?;
    let client_assertion = client_assertion(
        form.client_assertion_type.as_deref(),
        form.client_assertion.as_deref(),
    )?;
    let Some(task) = form.task.filter(|t| !t.is_empty()) else {
        return Err(Refusal::missing(
            "task is required: name the task of your identity's policy this token is for",
        ));
    };
    ev.task = Some(clip(&task));
    let audience = match (form.audience, form.resource) {
        (Some(a), Some(r)) if a != r => return Err(Refusal::audience_conflict()),
        (Some(a), _) | (None, Some(a)) => Some(a),
        (None, None) => None,
    };
    if let Some(a) = &audience {
        ev.audience = Some(clip(a));
    }
    let scopes: Option<Vec<String>> = form
        .scope
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split_whitespace().map(str::to_owned).collect());
    if let Some(s) = &scopes {
        ev.scopes = Some(recorded_scopes(s));
    }
    let requested_ttl = match form.requested_ttl.as_deref() {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n > 0 => Some(Duration::from_secs(n)),
            _ => return Err(Refusal::bad_ttl(s)),
        },
    };
    Ok(Params {
        credential,
        actor_token,
        client_assertion,
        task,
        audience,
        scopes,
        requested_ttl,
    })
}

/// The body as a form: within the size limit, `application/x-www-form-urlencoded`.
fn form(
    content_type: Option<&str>,
    body: Result<Bytes, BytesRejection>,
) -> Result<TokenForm, Refusal> {
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::body_too_large()
        } else {
            Refusal::body_unreadable()
        }
    })?;
    let form_type = content_type.is_some_and(|v| {
        v.split(';').next().is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    });
    if !form_type {
        return Err(Refusal::not_a_form());
    }
    TokenForm::read(&body).map_err(Refusal::malformed_form)
}

impl TokenForm {
    /// The known parameters of a form body ([`super::form::pairs`]); the error names a
    /// parameter given twice.
    fn read(body: &[u8]) -> Result<Self, String> {
        let mut form = Self::default();
        for (name, value) in super::form::pairs(body) {
            let slot = match name.as_ref() {
                "grant_type" => &mut form.grant_type,
                "subject_token" => &mut form.subject_token,
                "subject_token_type" => &mut form.subject_token_type,
                "requested_token_type" => &mut form.requested_token_type,
                "actor_token" => &mut form.actor_token,
                "actor_token_type" => &mut form.actor_token_type,
                "task" => &mut form.task,
                "audience" => &mut form.audience,
                "resource" => &mut form.resource,
                "scope" => &mut form.scope,
                "requested_ttl" => &mut form.requested_ttl,
                "client_id" => &mut form.client_id,
                "client_assertion_type" => &mut form.client_assertion_type,
                "client_assertion" => &mut form.client_assertion,
                _ => continue,
            };
            if slot.is_some() {
                return Err(format!("duplicate field `{name}`"));
            }
            *slot = Some(value.into_owned());
        }
        Ok(form)
    }
}

/// The grant type and its credential parameters.
fn credential(form: &TokenForm) -> Result<Credential, Refusal> {
    match form.grant_type.as_deref() {
        Some(GRANT_TYPE_TOKEN_EXCHANGE) => exchange_params(form).map(Credential::SubjectToken),
        Some(GRANT_TYPE_CLIENT_CREDENTIALS) => Ok(Credential::ClientCredentials {
            client_id: form.client_id.clone(),
        }),
        Some(other) => Err(Refusal::unsupported_grant_type(other)),
        None => Err(Refusal::missing("grant_type is required")),
    }
}

/// The RFC 7523 §2.2 client assertion, if one was sent: both parameters or neither.
pub fn client_assertion(
    assertion_type: Option<&str>,
    assertion: Option<&str>,
) -> Result<Option<String>, Refusal> {
    match (assertion_type, assertion) {
        (None, None) => Ok(None),
        (Some(crate::authn::CLIENT_ASSERTION_TYPE_JWT_BEARER), Some(a)) if !a.is_empty() => {
            Ok(Some(a.to_owned()))
        }
        (Some(crate::authn::CLIENT_ASSERTION_TYPE_JWT_BEARER), _) => Err(Refusal::missing(
            "client_assertion is required with client_assertion_type (RFC 7523 §2.2)",
        )),
        (Some(other), _) => Err(Refusal::unsupported_client_assertion_type(other)),
        (None, Some(_)) => Err(Refusal::unsupported_client_assertion_type("")),
    }
}

/// The RFC 8693 parameters; returns the subject token.
fn exchange_params(form: &TokenForm) -> Result<String, Refusal> {
    match form.subject_token_type.as_deref() {
        Some(TOKEN_TYPE_JWT) | Some("urn:ietf:params:oauth:token-type:id_token") => {}
        Some(other) => return Err(Refusal::unsupported_subject_token_type(other)),
        None => return Err(Refusal::missing("subject_token_type is required")),
    }
    if let Some(t) = form.requested_token_type.as_deref()
        && t != TOKEN_TYPE_ACCESS_TOKEN
        && t != TOKEN_TYPE_JWT
    {
        return Err(Refusal::unsupported_requested_token_type(t));
    }
    form.subject_token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Refusal::missing("subject_token is required"))
}

/// The RFC 8693 §2.1 actor token, if one was sent: with its type (a JWT), and only in a
/// token exchange.
fn actor_token(form: &TokenForm, credential: &Credential) -> Result<Option<String>, Refusal> {
    let token = form.actor_token.as_deref().filter(|t| !t.is_empty());
    match (token, form.actor_token_type.as_deref()) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(Refusal::missing(
            "actor_token_type is required with actor_token (RFC 8693 §2.1)",
        )),
        (None, Some(_)) => Err(Refusal::missing(
            "actor_token is required with actor_token_type (RFC 8693 §2.1)",
        )),
        (Some(_), Some(t)) if t != TOKEN_TYPE_JWT => Err(Refusal::unsupported_actor_token_type(t)),
        (Some(_), Some(_)) if !matches!(credential, Credential::SubjectToken(_)) => {
            Err(Refusal::delegation_needs_exchange())
        }
        (Some(t), Some(_)) => Ok(Some(t.to_owned())),
    }
}

/// Most scopes a record lists, and the longest each is shown: what a caller sends must
/// not grow the audit log at will (a 14 KB `scope` once made a 28 KB `denied` record).
const RECORDED_SCOPES: usize = 16;
const RECORDED_SCOPE_LEN: usize = 64;

/// The requested scopes as recorded: at most [`RECORDED_SCOPES`], each clipped, then a
/// count of the rest.
fn recorded_scopes(scopes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = scopes
        .iter()
        .take(RECORDED_SCOPES)
        .map(|s| crate::authn::truncate(s, RECORDED_SCOPE_LEN))
        .collect();
    if scopes.len() > RECORDED_SCOPES {
        out.push(format!("(and {} more)", scopes.len() - RECORDED_SCOPES));
    }
    out
}

/// Bounds a caller-supplied string before it goes into a record or a message.
pub fn clip(s: &str) -> String {
    crate::authn::truncate(s, 256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::EventKind;

    fn parse_form(body: &str) -> Result<Params, Refusal> {
        let mut ev = AuditEvent::new(EventKind::Denied);
        parse(
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            Ok(Bytes::from(body.to_owned())),
            &mut ev,
        )
    }

    fn rule(body: &str) -> &'static str {
        parse_form(body).err().map_or("ok", |r| r.rule())
    }

    const EXCHANGE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&subject_token=x.y.z";

    #[test]
    fn a_repeated_parameter_is_refused_and_an_unknown_one_ignored() {
        for name in [
            "task",
            "subject_token",
            "scope",
            "grant_type",
            "client_assertion",
        ] {
            let r = parse_form(&format!("{EXCHANGE}&task=t&{name}=a&{name}=b"))
                .err()
                .unwrap_or_else(|| panic!("{name} given twice was accepted"));
            let d = r.error().description;
            assert!(d.contains(&format!("duplicate field `{name}`")), "{d}");
        }
        // An escaped name is the same name.
        let d = parse_form(&format!("{EXCHANGE}&task=t&ta%73k=u"))
            .err()
            .unwrap()
            .error()
            .description;
        assert!(d.contains("duplicate field `task`"), "{d}");
        let p = parse_form(&format!("{EXCHANGE}&task=t&unknown=1&unknown=2")).unwrap();
        assert_eq!(p.task, "t");
    }

    #[test]
    fn a_complete_exchange_parses() {
        let p = parse_form(&format!(
            "{EXCHANGE}&task=t&resource=https%3A%2F%2Fa&scope=s1%20s2&requested_ttl=60"
        ))
        .unwrap();
        assert!(matches!(p.credential, Credential::SubjectToken(ref t) if t == "x.y.z"));
        assert_eq!(p.audience.as_deref(), Some("https://a"));
        assert_eq!(p.scopes, Some(vec!["s1".into(), "s2".into()]));
        assert_eq!(p.requested_ttl, Some(Duration::from_secs(60)));
    }

    #[test]
    fn an_actor_token_needs_its_type_and_a_token_exchange() {
        let jwt_type = "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";
        let p = parse_form(&format!(
            "{EXCHANGE}&task=t&actor_token=a.b.c&actor_token_type={jwt_type}"
        ))
        .unwrap();
        assert_eq!(p.actor_token.as_deref(), Some("a.b.c"));
        let err = |body: String| parse_form(&body).err().unwrap().error().description;
        assert!(
            err(format!("{EXCHANGE}&task=t&actor_token=a.b.c"))
                .contains("actor_token_type is required")
        );
        assert!(
            err(format!("{EXCHANGE}&task=t&actor_token_type={jwt_type}"))
                .contains("actor_token is required")
        );
        assert!(
            err(format!(
                "{EXCHANGE}&task=t&actor_token=a.b.c&actor_token_type=urn%3Ax"
            ))
            .contains("actor_token_type \"urn:x\" is not supported")
        );
        assert!(
            err(format!(
                "grant_type=client_credentials&task=t&actor_token=a.b.c&actor_token_type={jwt_type}"
            ))
            .contains("only with grant_type")
        );
        assert_eq!(
            rule(&format!("{EXCHANGE}&task=t&actor_token=a.b.c")),
            "malformed_request"
        );
    }

    #[test]
    fn each_bad_parameter_has_its_rule() {
        assert_eq!(rule("task=t"), "malformed_request", "no grant_type");
        assert_eq!(rule("grant_type=password&task=t"), "unsupported_grant_type");
        assert_eq!(rule(EXCHANGE), "malformed_request", "no task");
        assert_eq!(
            rule(&format!("{EXCHANGE}&task=t&audience=a&resource=b")),
            "audience_conflict"
        );
        assert_eq!(
            rule(&format!("{EXCHANGE}&task=t&requested_ttl=0")),
            "malformed_request"
        );
        assert_eq!(
            rule(&format!("{EXCHANGE}&task=t&actor_token=a")),
            "malformed_request"
        );
        assert_eq!(rule("grant_type=client_credentials&task=t"), "ok");
        let cc = "grant_type=client_credentials&task=t";
        let jwt_bearer = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";
        assert_eq!(
            rule(&format!(
                "{cc}&client_assertion_type={jwt_bearer}&client_assertion=a.b.c"
            )),
            "ok"
        );
        assert_eq!(
            rule(&format!("{cc}&client_assertion_type={jwt_bearer}")),
            "malformed_request"
        );
        assert_eq!(
            rule(&format!(
                "{cc}&client_assertion_type=saml&client_assertion=a"
            )),
            "client_assertion_type_unsupported"
        );
        assert_eq!(
            rule(&format!("{cc}&client_assertion=a.b.c")),
            "client_assertion_type_unsupported"
        );
        let mut ev = AuditEvent::new(EventKind::Denied);
        let r = parse(
            Some("application/json"),
            Ok(Bytes::from_static(b"{}")),
            &mut ev,
        );
        assert_eq!(r.err().map(|r| r.rule()), Some("malformed_request"));
    }

    #[test]
    fn caller_strings_are_clipped_in_the_record() {
        let mut ev = AuditEvent::new(EventKind::Denied);
        let long = "a".repeat(5000);
        let _ = parse(
            Some("application/x-www-form-urlencoded"),
            Ok(Bytes::from(format!("{EXCHANGE}&task={long}&scope={long}"))),
            &mut ev,
        );
        assert!(ev.task.as_ref().is_some_and(|t| t.len() < 300));
        assert!(ev.scopes.as_ref().is_some_and(|s| s[0].len() < 300));
        // Thousands of scopes: a bounded list.
        let mut ev = AuditEvent::new(EventKind::Denied);
        let many: Vec<String> = (0..3000).map(|i| format!("scope-{i}")).collect();
        let _ = parse(
            Some("application/x-www-form-urlencoded"),
            Ok(Bytes::from(format!(
                "{EXCHANGE}&task=t&scope={}",
                many.join("+")
            ))),
            &mut ev,
        );
        let recorded = ev.scopes.unwrap();
        assert_eq!(recorded.len(), RECORDED_SCOPES + 1);
        assert_eq!(recorded.last().unwrap(), "(and 2984 more)");
        assert!(serde_json::to_string(&recorded).unwrap().len() < 2048);
    }
}
