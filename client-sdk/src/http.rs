//! [`AuthorizedClient`]: reqwest with the current token on every request, and one
//! refresh-and-retry on a 401 from the resource server.

use crate::error::Error;
use crate::source::TokenSource;

/// Why an authorized request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No token could be obtained.
    #[error(transparent)]
    Token(#[from] Error),
    /// The request failed in transport.
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The request body cannot be replayed, so it cannot be retried after a 401.
    #[error("request body is a stream and cannot be retried")]
    NotReplayable,
}

/// A reqwest client that authenticates with tokens from a [`TokenSource`].
#[derive(Debug, Clone)]
pub struct AuthorizedClient {
    client: reqwest::Client,
    source: TokenSource,
}

impl AuthorizedClient {
    /// Wraps `client`.
    pub fn new(client: reqwest::Client, source: TokenSource) -> Self {
        Self { client, source }
    }

    /// The inner client, to build requests.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `req` with `Authorization: Bearer` (or `DPoP` and a proof, for DPoP-bound
    /// tokens); on 401 fetches a fresh token once and
    /// retries once.
    pub async fn execute(&self, req: reqwest::Request) -> Result<reqwest::Response, RequestError> {
        let retry = req.try_clone().ok_or(RequestError::NotReplayable)?;
        let token = self.source.token().await?;
        let resp = self.client.execute(authorized(req, &token)?).await?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        tracing::info!(target: "broker_client", "resource server answered 401; refreshing the token once");
        let fresh = self.source.refresh(Some(&token)).await?;
        Ok(self.client.execute(authorized(retry, &fresh)?).await?)
    }
}

/// `req` with the token: `Authorization: Bearer`, or for a DPoP-bound token
/// `Authorization: DPoP` and a fresh `DPoP` proof for this request (RFC 9449 §7).
fn authorized(
    mut req: reqwest::Request,
    token: &crate::source::Token,
) -> Result<reqwest::Request, RequestError> {
    let scheme = match token.dpop_key() {
        Some(key) => {
            let proof = key
                .proof(
                    req.method().as_str(),
                    req.url().as_str(),
                    Some(token.expose()),
                    None,
                )
                .map_err(|e| RequestError::Token(Error::Config(e.to_string())))?;
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&proof) {
                req.headers_mut().insert("dpop", v);
            }
            "DPoP"
        }
        None => "Bearer",
    };
    if let Ok(mut v) =
        reqwest::header::HeaderValue::from_str(&format!("{scheme} {}", token.expose()))
    {
        v.set_sensitive(true);
        req.headers_mut().insert(reqwest::header::AUTHORIZATION, v);
    }
    Ok(req)
}
