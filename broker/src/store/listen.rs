//! The wake-up of the PostgreSQL store: a connection of its own that `LISTEN`s on
//! `broker_events` and wakes the replica's follower when another replica commits a change.
//!
//! A notification is only a hint: the follower then reads every row after the last id
//! it has applied, so nothing depends on a notification arriving. While the listening
//! connection is down (the database restarting, a network cut), notifications are lost;
//! the follower's fallback poll still runs, and every (re)connect wakes it once so that it
//! catches up by id at once.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

/// The channel every append notifies.
pub(super) const CHANNEL: &str = "broker_events";

/// How long to wait before connecting again after the listening connection failed.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Runs a listening connection's I/O: wakes `wake` on every notification; returns when
/// the connection closes or fails.
pub(super) async fn pump<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    wake: Arc<Notify>,
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

/// The listener thread's loop: connect with `connect` (which starts [`pump`] and returns
/// the client with `LISTEN` issued and the pump's handle), wake once, wait for the
/// connection to end, connect again; until `stop` fires.
pub(super) async fn run<C, F>(
    mut connect: C,
    wake: Arc<Notify>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) where
    C: FnMut() -> F,
    F: std::future::Future<
            Output = Result<
                (
                    tokio_postgres::Client,
                    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
                ),
                super::StoreError,
            >,
        >,
{
    let mut last_error: Option<String> = None;
    loop {
        let session = async {
            match connect().await {
                Ok((client, pump)) => {
                    last_error = None;
                    // Anything committed while no one listened: read it now.
                    wake.notify_one();
                    let ended = pump.await;
                    drop(client);
                    match ended {
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "state store: the listening connection closed")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "state store: the listener task failed")
                        }
                        Ok(Ok(())) => {}
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(error = %e, "state store: could not listen for changes; polling only");
                        last_error = Some(e);
                    }
                }
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
        };
        tokio::select! {
            _ = &mut stop => return,
            () = session => {}
        }
    }
}
