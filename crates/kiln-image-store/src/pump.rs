//! Moves a stream of bytes (a request body, an HTTP download) into a spool file, with the
//! network on the async side and the writes and hashing on a blocking thread, so that both
//! proceed at once.

use bytes::Bytes;
use futures::{Stream, StreamExt as _};

use crate::SpoolFile;

/// Chunks in flight between the network and the disk.
const CHUNKS_IN_FLIGHT: usize = 32;

/// Why pumping stopped early. Whatever reached the file before is intact and hashed.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The source failed (the client went away, the remote server broke off).
    #[error("reading the source")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Writing to the spool file failed (a full disk, most often).
    #[error("writing the spool file")]
    Spool(#[source] std::io::Error),
}

/// Appends everything `stream` yields to `spool` and returns the spool file with the outcome.
/// When writing fails, the rest of `stream` is left unread for the caller to deal with.
pub async fn pump_into_spool<S, E>(spool: SpoolFile, stream: &mut S) -> (SpoolFile, Result<(), PumpError>)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let writer = tokio::task::spawn_blocking(move || {
        let mut spool = spool;
        while let Some(chunk) = receiver.blocking_recv() {
            if let Err(error) = spool.append_bytes(chunk) {
                return (spool, Err(error));
            }
        }
        let flushed = spool.flush();
        (spool, flushed)
    });
    let mut source_error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => {
                if sender.send(bytes).await.is_err() {
                    break; // the writer failed; its error says why
                }
            }
            Err(error) => {
                source_error = Some(error.into());
                break;
            }
        }
    }
    drop(sender);
    let (spool, written) = writer.await.expect("the spool writer does not panic");
    let outcome = match (written, source_error) {
        (Err(error), _) => Err(PumpError::Spool(error)),
        (Ok(()), Some(source)) => Err(PumpError::Source(source)),
        (Ok(()), None) => Ok(()),
    };
    (spool, outcome)
}
