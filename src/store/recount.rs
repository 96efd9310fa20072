//! The recount: every directory's summary counted again from its files, one directory at a time,
//! in the background while the store serves (as nginx's cache loader does), after a crash, a lost
//! or corrupt index, files changed behind the store's back, or to upgrade a store of format 2.
//!
//! A directory is counted under its lock (so no write or eviction in it is half-counted) and its
//! summary replaced at once; the totals are exact again when the last one is. Hashing, which can
//! take a while, is done before, without the lock. On the way, a file
//! without a hash attribute is given one: from its format 2 record when the store is being
//! upgraded (with that record's last access; a file of another length than the record says is
//! removed, to be rendered again), else by hashing it as it is. Once every directory is counted,
//! format 2's records are dropped. Paced at `store.reconcile_rate` files a second.

use super::files::{set_access, stored_hash, FileMeta, FoundObject};
use super::summary::DirSummary;
use super::{io_err, lock, Store};
use crate::key::content_hash_reader;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

/// What one recount did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct ReconcileReport {
    /// Directories counted.
    pub dirs: u64,
    /// Files counted.
    pub files_checked: u64,
    /// Objects and bytes found.
    pub objects: u64,
    /// See `objects`.
    pub bytes: u64,
    /// Files given their hash and last access from their format 2 record (the upgrade).
    pub upgraded: u64,
    /// Files without a hash attribute given one (their bytes hashed as they are).
    pub adopted: u64,
    /// Files removed: of another length than their format 2 record said.
    pub dropped: u64,
    /// Files that could not be given their attribute (counted as they are; see the log).
    pub unsettled: u64,
    /// Temp files of earlier processes removed (writes a crash interrupted).
    pub temps_removed: u64,
    /// Whether it counted everything (not stopped by shutdown).
    pub complete: bool,
    /// Seconds it took.
    pub seconds: f64,
}

impl Store {
    /// Garbage-collect now, at full speed: temp files, a recount, then the budget.
    pub(crate) fn gc(&self) -> io::Result<ReconcileReport> {
        self.files.remove_temps()?;
        let report = self.reconcile(0)?;
        self.evict_to_budget();
        Ok(report)
    }

    /// Forget every summary and count them again from the files, now.
    pub(crate) fn reindex(&self) -> io::Result<ReconcileReport> {
        self.index.clear().map_err(io_err)?;
        self.needs_pass.store(true, Ordering::Relaxed);
        self.dirs.set_approximate(true);
        self.reconcile(0)
    }

    /// One recount, at most `rate` files a second (0: unbounded). Writes and hits go on meanwhile,
    /// but for the directory being counted.
    pub(crate) fn reconcile(&self, rate: u64) -> io::Result<ReconcileReport> {
        let _one = lock(&self.pass_lock)?;
        self.counters.reconcile_running.store(1, Ordering::Relaxed);
        let upgrading = self.index.has_legacy();
        let result = self.recount(rate, upgrading);
        self.counters.reconcile_running.store(0, Ordering::Relaxed);
        let report = result?;
        if report.complete {
            if upgrading {
                self.index.drop_legacy().map_err(io_err)?;
            }
            self.needs_pass.store(false, Ordering::Relaxed);
            self.dirs.set_approximate(false);
            self.counters
                .reconcile_passes
                .fetch_add(1, Ordering::Relaxed);
            self.save_summaries(true, false);
        }
        Ok(report)
    }

    /// Count directory `d` again under its lock and make that its summary; returns its files.
    pub(super) fn count_dir(&self, d: u8) -> io::Result<u64> {
        let mut dir = self.dirs.lock(d)?;
        let mut counted = DirSummary::default();
        let mut n = 0u64;
        for item in self.files.list_dir(d)? {
            let (_, meta) = item?;
            n += 1;
            counted.add(meta.len, meta.access);
        }
        dir.replace(counted);
        Ok(n)
    }

    fn recount(&self, rate: u64, upgrading: bool) -> io::Result<ReconcileReport> {
        let started = Instant::now();
        let mut report = ReconcileReport::default();
        let mut pace = Pace::new(rate);
        for d in 0..=255u8 {
            if self.closed() {
                return Ok(report);
            }
            report.temps_removed += self.files.sweep_temps(d)? as u64;
            // First each file is settled (given its attribute: hashing may take a while), with
            // the directory free for writes and hits; then it is counted under its lock, which
            // costs a directory listing.
            for item in self.files.list_dir(d)? {
                if self.closed() {
                    return Ok(report);
                }
                let (found, meta) = item?;
                // One file that cannot be settled (read-only, unreadable) is skipped, not the
                // recount: it is counted as it is and served by its length.
                if let Err(e) = self.settle(&found, meta, upgrading, &mut report) {
                    report.unsettled += 1;
                    tracing::warn!(path = %found.path.display(), "recount: {e}");
                }
            }
            let n = self.count_dir(d)?;
            report.dirs += 1;
            report.files_checked += n;
            self.counters
                .reconcile_checked
                .fetch_add(n, Ordering::Relaxed);
            pace.wait(n);
        }
        (report.objects, report.bytes) = self.dirs.totals();
        self.counters
            .reconcile_dropped
            .fetch_add(report.dropped, Ordering::Relaxed);
        if report.bytes > self.settings.max_bytes {
            self.kick_evictor();
        }
        report.complete = true;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Give a file without a hash attribute its hash (from its format 2 record when upgrading,
    /// else by hashing it as it is), or remove it when its record says another length. Without
    /// its directory's lock: the attribute is set through the file opened here, so a file
    /// published under the same name meanwhile is never given another's hash, and a removal
    /// checks under the lock that the file is still this one.
    fn settle(
        &self,
        found: &FoundObject,
        meta: FileMeta,
        upgrading: bool,
        report: &mut ReconcileReport,
    ) -> io::Result<()> {
        let file = match std::fs::File::open(&found.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let opened = FileMeta::of_file(&file)?;
        if opened.ino != meta.ino || (self.files.xattrs() && stored_hash(&file).is_some()) {
            return Ok(());
        }
        if upgrading {
            if let Some(old) = self.index.legacy_entry(&found.key).map_err(io_err)? {
                if old.len != opened.len {
                    if self.remove(&found.key, &found.ext, Some(opened.ino))? {
                        report.dropped += 1;
                    }
                    return Ok(());
                }
                self.files.set_hash(&file, &old.hash, old.len)?;
                // Its last use as format 2 recorded it (unless hit since).
                if old.last_access > opened.access {
                    set_access(&file, old.last_access)?;
                }
                report.upgraded += 1;
                return Ok(());
            }
        }
        if !self.files.xattrs() {
            return Ok(());
        }
        // No record: hashed as it is (a file copied in by hand, or one that format 2 wrote just
        // before a crash, ahead of its record).
        let hash = content_hash_reader(&mut &file)?;
        self.files.set_hash(&file, &hash, opened.len)?;
        report.adopted += 1;
        self.counters.adopted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Paces a walk at `rate` steps a second (0: unbounded), sleeping between batches.
struct Pace {
    rate: u64,
    started: std::time::Instant,
    done: u64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            rate,
            started: std::time::Instant::now(),
            done: 0,
        }
    }

    fn wait(&mut self, steps: u64) {
        self.done += steps;
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.done as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead.min(Duration::from_secs(1)));
        }
    }
}
