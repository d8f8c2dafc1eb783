//! Group commit for new posts: the inserts of concurrent `POST /posts` requests are written
//! together, one `insertMany` per batch, instead of one round trip each.
//!
//! Each request still gets its `201` only once its own document is stored: a request queues its
//! document and waits for the outcome of the batch it joined. A batch is whatever has queued by
//! the time a write slot is free, up to [`MAX_BATCH`] documents, with at most
//! [`WRITES_IN_FLIGHT`] batches in flight; so an idle service writes a lone post at once (no
//! waiting for company), and a busy one writes dozens per round trip. The queue is bounded: when
//! it is full, requests wait for room (back-pressure) rather than piling up in memory.
//!
//! `insertMany` is unordered, so one document's failure (say a duplicate `_id`, which cannot
//! happen with fresh ObjectIds) fails only its own request.

use std::{collections::HashMap, sync::Arc};

use mongodb::{Collection, bson::Document, error::ErrorKind};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::StoreError;

/// Documents written by one `insertMany` at most.
pub const MAX_BATCH: usize = 256;
/// Batches written at once at most.
pub const WRITES_IN_FLIGHT: usize = 2;
/// Inserts waiting for a batch at most.
const QUEUE_CAPACITY: usize = 4096;

struct Insert {
    document: Document,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The queue of inserts into one collection. Cheap to clone; the writer task ends when the last
/// clone is dropped.
#[derive(Clone, Debug)]
pub struct BatchWriter {
    queue: mpsc::Sender<Insert>,
}

impl std::fmt::Debug for Insert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Insert").finish_non_exhaustive()
    }
}

impl BatchWriter {
    /// Starts the writer task on the current runtime.
    pub fn spawn(collection: Collection<Document>) -> Self {
        let (queue, inserts) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(write_batches(collection, inserts));
        Self { queue }
    }

    /// Inserts `document`, returning once it is stored (or failed to be).
    pub async fn insert(&self, document: Document) -> Result<(), StoreError> {
        let (done, outcome) = oneshot::channel();
        self.queue
            .send(Insert { document, done })
            .await
            .map_err(|_| StoreError::Write("the post writer has stopped".to_owned()))?;
        outcome
            .await
            .map_err(|_| StoreError::Write("the post writer dropped the insert".to_owned()))?
    }
}

async fn write_batches(collection: Collection<Document>, mut inserts: mpsc::Receiver<Insert>) {
    let slots = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    loop {
        // Take a slot first, then everything queued by now: the batch grows while slots are busy.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = inserts.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match inserts.try_recv() {
                Ok(insert) => batch.push(insert),
                Err(_) => break,
            }
        }
        let collection = collection.clone();
        tokio::spawn(async move {
            write(&collection, batch).await;
            drop(slot);
        });
    }
}

/// One `insertMany`; every insert of the batch learns its own outcome.
async fn write(collection: &Collection<Document>, batch: Vec<Insert>) {
    metrics::histogram!("posts_insert_batch_size").record(batch.len() as f64);
    let (documents, waiting): (Vec<Document>, Vec<_>) = batch
        .into_iter()
        .map(|insert| (insert.document, insert.done))
        .unzip();
    let failed: Result<HashMap<usize, String>, mongodb::error::Error> =
        match collection.insert_many(&documents).ordered(false).await {
            Ok(_) => Ok(HashMap::new()),
            Err(error) => match error.kind.as_ref() {
                // Only some documents failed: the others are stored.
                ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => {
                    Ok(failure
                        .write_errors
                        .iter()
                        .flatten()
                        .map(|w| (w.index, w.message.clone()))
                        .collect())
                }
                _ => Err(error),
            },
        };
    for (index, done) in waiting.into_iter().enumerate() {
        let outcome = match &failed {
            Ok(failed) => match failed.get(&index) {
                None => Ok(()),
                Some(message) => Err(StoreError::Write(message.clone())),
            },
            Err(error) => Err(StoreError::Mongo(error.clone())),
        };
        let _ = done.send(outcome);
    }
}
