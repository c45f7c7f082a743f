//! Group commit for access tokens minted on their own (client credentials):
//! concurrent issuances are written in one transaction, so one durable
//! commit (one fsync) covers many tokens. Each caller still gets its answer
//! only after the commit that contains its token, so nothing is
//! acknowledged before it is durable.

use tokio::sync::{mpsc, oneshot};

use crate::store::{Store, StoreError};
use crate::tokens::AccessTokenRecord;

const MAX_BATCH: usize = 256;

struct Pending {
    record: AccessTokenRecord,
    token_hash: String,
    done: oneshot::Sender<Result<(), String>>,
}

#[derive(Debug, Clone)]
pub struct TokenWriter {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl TokenWriter {
    /// Starts the writer task on the current runtime.
    pub fn spawn(store: Store) -> TokenWriter {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(store, rx));
        TokenWriter { tx }
    }

    /// Stores one access token; returns once it is committed.
    pub async fn insert(
        &self,
        record: AccessTokenRecord,
        token_hash: String,
    ) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending {
                record,
                token_hash,
                done,
            })
            .await
            .map_err(|_| StoreError::Unavailable("token writer stopped".into()))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(e)),
            Err(_) => Err(StoreError::Unavailable("token writer stopped".into())),
        }
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let result = write(&store, &batch).await.map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, tokens = batch.len(), "cannot store a batch of access tokens");
        }
        for p in batch.drain(..) {
            let _ = p.done.send(result.clone());
        }
    }
}

async fn write(store: &Store, batch: &[Pending]) -> Result<(), StoreError> {
    let rows: Vec<(&AccessTokenRecord, &str)> = batch
        .iter()
        .map(|p| (&p.record, p.token_hash.as_str()))
        .collect();
    let mut tx = store.begin().await?;
    // 64 rows per statement keeps the placeholder count far below both
    // backends' limits.
    for chunk in rows.chunks(64) {
        crate::store::tokens::insert_access_many(store, &mut tx, chunk).await?;
    }
    tx.commit().await?;
    Ok(())
}
