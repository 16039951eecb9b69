//! The break-glass webhook: every grant event is POSTed as JSON, with retries, in the
//! background. A failing webhook never blocks a close or a revocation.

use std::time::Duration;

use serde_json::Value;

/// Sends events to the configured webhook (or nowhere).
#[derive(Debug, Clone)]
pub struct Webhook {
    target: Option<(String, reqwest::Client)>,
}

/// Attempts per event.
const ATTEMPTS: u32 = 4;

impl Webhook {
    /// A webhook posting to `url` (none: events are only audited).
    pub fn new(url: Option<String>) -> Self {
        let target = url.and_then(|u| {
            crate::authn::issuers::http_client(None)
                .ok()
                .map(|c| (u, c))
        });
        Self { target }
    }

    /// Sends `event` in the background with retries and backoff.
    pub fn send(&self, event: Value) {
        let Some((url, client)) = self.target.clone() else {
            return;
        };
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            for attempt in 1..=ATTEMPTS {
                match client.post(&url).json(&event).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        tracing::warn!(%url, status = %r.status(), attempt, "break-glass webhook refused the event")
                    }
                    Err(e) => {
                        tracing::warn!(%url, error = %e, attempt, "break-glass webhook unreachable")
                    }
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            tracing::error!(%url, "break-glass webhook gave up after {ATTEMPTS} attempts; the audit log has the event");
        });
    }
}
