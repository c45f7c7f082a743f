//! Group commit for access tokens minted on their own (client credentials):
//! concurrent issuances are written by one multi-row INSERT, so one durable
//! commit (one fsync) covers many tokens. Each caller still gets its answer
//! only after the commit that contains its token, so nothing is
//! acknowledged before it is durable.
//!
//! On a SQLite file one thread of its own takes the waiting tokens and
//! writes them through its own connection ([`DirectTokenWriter`]): no
//! hand-over between the async tasks and sqlx's connection thread on the
//! way (+35 % at 16 connections, bench/README.md). Its commits do not wait
//! for the disk; a second thread flushes the write-ahead log
//! ([`WalSync`]) and only then answers every batch committed before the
//! flush. So the next batch is written while the last one goes to disk,
//! and one fsync serves several commits. On PostgreSQL (and
//! in-memory SQLite) the INSERT runs on its own through the pool
//! (autocommit: one statement is atomic), one round trip per batch instead
//! of four (BEGIN, INSERT, COMMIT and the pool's check); PostgreSQL gets
//! [`PG_WRITERS`] so that one batch's commit overlaps the next one's insert.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::store::tokens::{DirectTokenWriter, WalSync};
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
            let (committed, to_sync) = std::sync::mpsc::sync_channel(SYNC_QUEUE);
            let wal = writer.wal_sync();
            let sync_metrics = metrics.clone();
            spawn_thread("token-wal-sync", move || {
                sync_and_answer(&wal, &to_sync, &sync_metrics);
            })?;
            spawn_thread("token-writer", move || {
                write_directly(writer, rx, &committed)
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

/// Committed batches waiting for the write-ahead log flush: enough that
/// the writer never waits while one flush runs, few enough that a stalled
/// disk stops it (each batch holds up to [`MAX_BATCH`] waiting callers).
const SYNC_QUEUE: usize = 64;

/// A batch the SQLite writer has committed (or failed to), on its way to
/// the flush that makes it durable.
struct Committed {
    batch: Vec<Pending>,
    result: StoreResult<()>,
}

fn spawn_thread(name: &str, run: impl FnOnce() + Send + 'static) -> StoreResult<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .map(drop)
        .map_err(|e| StoreError::Unavailable(format!("cannot start the {name} thread: {e}")))
}

/// The SQLite writer thread: blocks until a token waits, takes every token
/// waiting (up to [`MAX_BATCH`]), stores them in one transaction and hands
/// the batch to [`sync_and_answer`]. Ends when the last [`TokenWriter`] is
/// dropped.
fn write_directly(
    mut writer: DirectTokenWriter,
    mut rx: mpsc::Receiver<Pending>,
    committed: &std::sync::mpsc::SyncSender<Committed>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::with_capacity(MAX_BATCH);
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
        if committed.send(Committed { batch, result }).is_err() {
            // The flushing thread is gone; dropping the batch answers its
            // callers "writer stopped".
            return;
        }
    }
}

/// The SQLite flushing thread: takes every batch committed so far, flushes
/// the write-ahead log once for all of them, then answers their callers.
/// A failed flush fails every batch it was to cover.
fn sync_and_answer(
    wal: &WalSync,
    committed: &std::sync::mpsc::Receiver<Committed>,
    metrics: &Metrics,
) {
    let mut ready = Vec::new();
    while let Ok(first) = committed.recv() {
        ready.push(first);
        ready.extend(committed.try_iter());
        let synced = if ready.iter().any(|c| c.result.is_ok()) {
            wal.sync()
                .inspect(|()| {
                    metrics.token_log_syncs.fetch_add(1, Ordering::Relaxed);
                })
                .inspect_err(|e| tracing::error!(error = %e, "token batches are not durable"))
                .is_ok()
        } else {
            true
        };
        for mut c in ready.drain(..) {
            let result = c.result.and_then(|()| {
                synced.then_some(()).ok_or_else(|| {
                    StoreError::Unavailable("the write-ahead log could not be flushed".into())
                })
            });
            settle(&mut c.batch, result, metrics);
        }
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
