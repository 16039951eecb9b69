//! Acknowledging an anomaly (an identity held by a `deny` anomaly may get tokens again),
//! recorded first: the `anomaly_acknowledged` record is durable before the
//! acknowledgement is, and an acknowledgement whose anomaly changed in between (raised
//! on another replica a moment ago, acknowledged meanwhile) is undone and decided again.

use serde_json::json;

use crate::anomaly::{Acknowledged, Anomaly};
use crate::audit::event::AuditEvent;
use crate::error::ApiError;
use crate::record_first;
use crate::state::AppState;

/// How many times an acknowledgement is decided again when its anomaly changed between
/// its record and its transaction.
const ATTEMPTS: usize = 3;

/// Why an acknowledgement did not happen.
#[derive(Debug)]
pub enum AckError {
    /// No anomaly `id` on any replica (to be recorded as `unknown_anomaly`).
    Unknown,
    /// The answer (503) for a failure already recorded, or not recordable.
    Failed(ApiError),
}

/// Acknowledges anomaly `id` for `by` at the clock's time, recording `ev` (with the
/// anomaly's identity and kind) first; returns the anomaly after.
pub async fn acknowledge(
    st: &AppState,
    id: &str,
    by: &str,
    ev: &mut AuditEvent,
) -> Result<Anomaly, AckError> {
    let monitor = &st.governance.monitor;
    let _serial = monitor.one_ack_at_a_time().await;
    for _ in 0..ATTEMPTS {
        let now = st.clock.unix_secs();
        let Some(known) = monitor.get(id) else {
            // Perhaps raised on another replica: the transaction reads the newest state.
            match monitor.acknowledge(id, by, now, None) {
                Ok(Acknowledged::Unknown) => return Err(AckError::Unknown),
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "state store append failed");
                    return Err(AckError::Failed(ApiError::store_unavailable()));
                }
            }
        };
        ev.identity = Some(known.identity.clone());
        ev.detail = Some(json!({ "anomaly": known.id, "kind": known.kind }));
        let decided = record_first::decided(st, vec![ev.clone()], || {
            Ok(match monitor.acknowledge(id, by, now, Some(&known))? {
                Acknowledged::Done(a) => Some(a),
                Acknowledged::Unknown | Acknowledged::Changed => None,
            })
        })
        .await;
        match decided {
            Ok(Some(a)) => return Ok(a),
            Ok(None) => {}
            Err(e) => return Err(AckError::Failed(e)),
        }
    }
    Err(AckError::Failed(ApiError::store_unavailable()))
}
