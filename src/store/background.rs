//! The background work and the close: a thread that records the hits due on their files, keeps
//! the budget and saves the changed summaries every few seconds (or when a write passes the
//! budget), the recount when one is owed, and a close that stops both and saves the summaries as
//! those of a clean close.

use super::index::{Meta, FORMAT};
use super::{Store, StoreError};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

/// How often the background thread wakes when no write has woken it (and saves the summaries).
const BACKGROUND_TICK: Duration = Duration::from_secs(5);

impl Store {
    /// Start the background work: the evictor (when a write pushes the store past its budget, and
    /// every few seconds regardless, also saving the summaries) and, if the summaries need it, one
    /// recount at `store.reconcile_rate`. Both stop at [`Store::close`] or when the store is
    /// dropped.
    pub(crate) fn start_background(self: &Arc<Self>) -> io::Result<()> {
        let (tx, rx) = sync_channel::<()>(1);
        if let Ok(mut guard) = self.kick.lock() {
            *guard = Some(tx);
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("iiifd-evictor".into())
            .spawn(move || background(&weak, &rx))?;
        // Opened over its budget (a smaller budget configured): start now, not at the first tick.
        if self.dirs.totals().1 > self.settings.max_bytes {
            self.kick_evictor();
        }
        if self.needs_reconcile() {
            let store = Arc::clone(self);
            std::thread::Builder::new()
                .name("iiifd-recount".into())
                .spawn(move || {
                    let rate = store.settings.reconcile_rate;
                    match store.reconcile(rate) {
                        Ok(r) => tracing::info!(report = ?r, "store recounted"),
                        Err(e) => tracing::warn!("store recount failed: {e}"),
                    }
                })?;
        }
        Ok(())
    }

    /// Save the summaries that changed (every one with `all`), and whether this is a clean close.
    pub(super) fn save_summaries(&self, all: bool, clean: bool) {
        let Ok(_one) = self.save_lock.lock() else {
            return;
        };
        // Once closing, only the close's own save counts: a background save after it must not
        // write older summaries over it, or mark a cleanly closed store as crashed.
        if !clean && self.closed() {
            return;
        }
        for (d, summary) in self.dirs.take_changed(all) {
            if let Err(e) = self.index.save_summary(d, &summary) {
                tracing::warn!("cannot save the store's summaries: {e}");
                return;
            }
        }
        let meta = Meta {
            format: FORMAT,
            clean,
        };
        if let Err(e) = self.index.save_meta(&meta) {
            tracing::warn!("cannot save the store's state: {e}");
        }
    }

    /// Flush the index to disk.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        Ok(self.index.flush()?)
    }

    /// Stop the background work and save the summaries as those of a clean close (unless a
    /// recount is still owed), so the next open trusts them.
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        // Every directory taken once after this: no file change is half-way.
        self.stopping.store(true, Ordering::SeqCst);
        for d in 0..=255u8 {
            drop(self.dirs.lock(d)?);
        }
        if let Ok(mut guard) = self.kick.lock() {
            guard.take();
        }
        // A running recount stops at its next step; wait for it, so its summaries are whole.
        let _pass = self.pass_lock.lock();
        self.save_summaries(true, !self.needs_reconcile());
        self.flush()
    }
}

/// The background thread: hits from memory recorded, the budget kept, the summaries saved.
fn background(store: &std::sync::Weak<Store>, rx: &Receiver<()>) {
    loop {
        match rx.recv_timeout(BACKGROUND_TICK) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(store) = store.upgrade() else { return };
        if store.closed() {
            return;
        }
        store.record_touches();
        let n = store.evict_to_budget();
        if n > 0 {
            tracing::info!(
                evicted = n,
                bytes = store.stats().bytes,
                "store back under its budget"
            );
            crate::sys::release_free_heap();
        }
        store.save_summaries(false, false);
    }
}
