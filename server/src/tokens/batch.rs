//! Group commit for access tokens minted on their own (client credentials):
//! concurrent issuances are written by one multi-row INSERT, so one durable
//! commit (one fsync) covers many tokens. Each caller still gets its answer
//! only after the commit that contains its token, so nothing is
//! acknowledged before it is durable.
//!
//! On a SQLite file one thread of its own takes the waiting tokens, writes
//! them through its own connection ([`DirectTokenWriter`]) and answers:
//! no hand-over between the async tasks and sqlx's connection thread on
//! the way (+35 % at 16 connections, bench/README.md). On PostgreSQL (and
//! in-memory SQLite) the INSERT runs on its own through the pool
//! (autocommit: one statement is atomic), one round trip per batch instead
//! of four (BEGIN, INSERT, COMMIT and the pool's check); PostgreSQL gets
//! [`PG_WRITERS`] so that one batch's commit overlaps the next one's insert.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::store::tokens::DirectTokenWriter;
use crate::store::{Backend, Store, StoreError, StoreResult};
use crate::telemetry::metrics::Metrics;
use crate::tokens::AccessTokenRecord;

/// Rows per INSERT: 256 × 13 placeholders stays far below both backends'
/// limits (SQLite 32766, PostgreSQL 65535).
const MAX_BATCH: usize = 256;

/// Concurrent batch writers on PostgreSQL (each holds a pool connection
/// only while it writes). Two let one batch's commit overlap the next
/// one's insert; measured against 1, 3, 4 and 8, more writers only split the
/// waiting tokens into smaller batches (bench/README.md).
const PG_WRITERS: usize = 2;

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
    /// Starts the writer thread (SQLite file) or tasks (on the current
    /// runtime).
    pub fn spawn(store: Store, metrics: Arc<Metrics>) -> StoreResult<TokenWriter> {
        let (tx, rx) = mpsc::channel(4096);
        if let Some(writer) = DirectTokenWriter::open(&store)? {
            std::thread::Builder::new()
                .name("token-writer".into())
                .spawn(move || write_directly(writer, rx, &metrics))
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot start the token writer thread: {e}"))
                })?;
            return Ok(TokenWriter { tx });
        }
        let writers = match store.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => PG_WRITERS,
        };
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers {
            tokio::spawn(run(store.clone(), rx.clone(), metrics.clone()));
        }
        Ok(TokenWriter { tx })
    }

    /// Stores many access tokens (each in whichever batch takes it); returns
    /// once each is committed or failed, with whether it was stored.
    pub async fn insert_many(&self, rows: Vec<(AccessTokenRecord, String)>) -> Vec<bool> {
        let mut waiting = Vec::with_capacity(rows.len());
        for (record, token_hash) in rows {
            let (done, wait) = oneshot::channel();
            let sent = self
                .tx
                .send(Pending {
                    record,
                    token_hash,
                    done,
                })
                .await;
            waiting.push(sent.ok().map(|()| wait));
        }
        let mut stored = Vec::with_capacity(waiting.len());
        for wait in waiting {
            stored.push(match wait {
                Some(wait) => matches!(wait.await, Ok(Ok(()))),
                None => false,
            });
        }
        stored
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

async fn run(store: Store, rx: Arc<Mutex<mpsc::Receiver<Pending>>>, metrics: Arc<Metrics>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // The lock is held only while taking a batch, so the next writer
        // collects the tokens that arrive while this one writes.
        if rx.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let result = {
            let rows: Vec<(&AccessTokenRecord, &str)> = batch
                .iter()
                .map(|p| (&p.record, p.token_hash.as_str()))
                .collect();
            crate::store::tokens::insert_access_batch(&store, &rows).await
        };
        settle(&mut batch, result, &metrics);
    }
}

/// The SQLite writer thread: blocks until a token waits, takes every token
/// waiting (up to [`MAX_BATCH`]), stores them in one transaction. Ends when
/// the last [`TokenWriter`] is dropped.
fn write_directly(
    mut writer: DirectTokenWriter,
    mut rx: mpsc::Receiver<Pending>,
    metrics: &Metrics,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH
            && let Ok(next) = rx.try_recv()
        {
            batch.push(next);
        }
        let result = {
            let rows: Vec<(&AccessTokenRecord, &str)> = batch
                .iter()
                .map(|p| (&p.record, p.token_hash.as_str()))
                .collect();
            writer.insert_batch(&rows)
        };
        settle(&mut batch, result, metrics);
    }
}

/// Counts a stored batch, logs a failed one, and answers every caller in it.
fn settle(batch: &mut Vec<Pending>, result: StoreResult<()>, metrics: &Metrics) {
    let result = match result {
        Ok(()) => {
            metrics.token_batches.fetch_add(1, Ordering::Relaxed);
            metrics
                .token_batch_rows
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, tokens = batch.len(), "cannot store a batch of access tokens");
            Err(e.to_string())
        }
    };
    for p in batch.drain(..) {
        let _ = p.done.send(result.clone());
    }
}
