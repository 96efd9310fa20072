use super::index::LegacyEntry;
use super::*;
use crate::key::content_hash;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, UNIX_EPOCH};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn key(n: u8) -> DerivativeKey {
    DerivativeKey::from_slice(&[n; 32]).unwrap_or_else(|| unreachable!())
}

fn settings(dir: &Path, max_bytes: u64) -> StoreSettings {
    StoreSettings {
        path: dir.to_path_buf(),
        max_bytes,
        min_free_bytes: 0,
        verify_reads: true,
        require_hashes: false,
        fsync: true,
        index_cache_bytes: 1 << 20,
        reconcile_rate: 0,
        memory_bytes: 1 << 20,
        memory_object_max_bytes: 64 << 10,
    }
}

/// The objects and bytes on disk, counted the slow way.
fn counted(store: &Store) -> (u64, u64) {
    (0..=255u8)
        .flat_map(|d| store.files.list_dir(d).into_iter().flatten().flatten())
        .fold((0, 0), |(n, b), (_, m)| (n + 1, b + m.len))
}

/// An object's recorded last access (its file's modification time).
fn access(store: &Store, n: u8, ext: &str) -> io::Result<u64> {
    Ok(store
        .files
        .meta(&key(n), ext)?
        .ok_or_else(|| io::Error::other("no object"))?
        .access)
}

fn set_access(store: &Store, n: u8, ext: &str, at: u64) -> io::Result<()> {
    std::fs::File::options()
        .write(true)
        .open(store.files.path(&key(n), ext))?
        .set_modified(UNIX_EPOCH + Duration::from_secs(at))
}

/// Write an object file as a tool, or format 2, would: no hash attribute.
fn write_bare(dir: &Path, n: u8, ext: &str, bytes: &[u8]) -> io::Result<std::path::PathBuf> {
    let hex = key(n).to_hex();
    let path = dir.join(format!("objects/{}/{hex}.{ext}", &hex[..2]));
    std::fs::create_dir_all(path.parent().ok_or_else(|| io::Error::other("parent"))?)?;
    std::fs::write(&path, bytes)?;
    Ok(path)
}

#[test]
fn put_lookup_corrupt_repair() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
    assert!(
        rec.hashes,
        "the test file system keeps user extended attributes"
    );
    store.put(&key(1), "jpg", b"0123456789", "a")?;
    assert_eq!(store.stats().objects, 1);
    assert_eq!(
        store.lookup(&key(1), "jpg", true).and_then(|h| h.bytes),
        Some(Bytes::from_static(b"0123456789"))
    );
    // Same length, different bytes: only the hash can tell.
    std::fs::write(store.files.path(&key(1), "jpg"), b"9876543210")?;
    assert!(store.lookup(&key(1), "jpg", true).is_none());
    assert_eq!(store.counters.repairs.load(Ordering::Relaxed), 1);
    assert_eq!(store.stats().objects, 0);
    assert!(store.files.meta(&key(1), "jpg")?.is_none(), "removed");
    // Another length than the attribute says: caught without reading the bytes.
    store.put(&key(2), "jpg", b"0123456789", "a")?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(store.files.path(&key(2), "jpg"))?
        .write_all(b"!")?;
    assert!(store.lookup(&key(2), "jpg", false).is_none());
    assert_eq!(store.counters.repairs.load(Ordering::Relaxed), 2);
    assert_eq!(
        store.stats(),
        Stats {
            objects: 0,
            bytes: 0,
            max_bytes: 1 << 20,
            approximate: false
        }
    );
    Ok(())
}

#[test]
fn the_memory_tier_holds_only_what_the_disk_holds() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut set = settings(dir.path(), 1 << 20);
    set.verify_reads = false;
    let (store, _) = Store::open(set)?;
    store.put(&key(1), "jpg", b"0123456789", "a")?;
    assert!(
        store.lookup_hot(&key(1)).is_none(),
        "a render's bytes wait for a read"
    );
    store.lookup(&key(1), "jpg", true).ok_or("hit")?;
    let hot = store.lookup_hot(&key(1)).ok_or("read once: in memory")?;
    assert_eq!(hot.bytes.as_deref(), Some(&b"0123456789"[..]));
    // Changed on disk behind the store: memory still serves the bytes that were verified.
    std::fs::write(store.files.path(&key(1), "jpg"), b"9876543210")?;
    assert_eq!(
        store.lookup_hot(&key(1)).and_then(|h| h.bytes).as_deref(),
        Some(&b"0123456789"[..])
    );
    // A corrupt file is never taken in, even with verify_reads off: hashed on its way to memory,
    // it is found out, and not served either.
    store.hot.remove(&key(1));
    assert!(store.lookup(&key(1), "jpg", true).is_none());
    assert!(store.lookup_hot(&key(1)).is_none(), "hashed on its way in");
    assert_eq!(store.counters.repairs.load(Ordering::Relaxed), 1);
    // Every way an object leaves the disk empties memory too.
    store.put(&key(2), "jpg", b"abc", "b")?;
    store.put(&key(3), "jpg", b"def", "b")?;
    store.put(&key(4), "png", b"ghi", "c")?;
    for n in [2, 3, 4] {
        let ext = if n == 4 { "png" } else { "jpg" };
        store.lookup(&key(n), ext, true).ok_or("hit")?;
        assert!(store.lookup_hot(&key(n)).is_some());
    }
    assert_eq!(store.purge("b")?, 2);
    assert!(store.lookup_hot(&key(2)).is_none() && store.lookup_hot(&key(3)).is_none());
    store.put(&key(4), "png", b"new", "c")?;
    assert!(store.lookup_hot(&key(4)).is_none(), "rewritten");
    // Without bodies (the proxy sends the file), a hit checks the file's length.
    store.lookup(&key(4), "png", false).ok_or("hit")?;
    assert!(store.lookup_hot(&key(4)).is_some_and(|h| h.bytes.is_none()));
    std::fs::write(store.files.path(&key(4), "png"), b"shorter!!")?;
    assert!(
        store.lookup_hot(&key(4)).is_none(),
        "truncated or grown: a miss"
    );
    assert_eq!(store.hot.counters.hits.load(Ordering::Relaxed), 6);
    Ok(())
}

#[test]
fn hits_are_recorded_on_the_files_at_most_once_a_minute() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
    store.put(&key(1), "jpg", b"0123456789", "a")?;
    let written = access(&store, 1, "jpg")?;
    assert!(written + 5 >= now_secs(), "published now");
    // Pretend the last recorded access was long ago: a disk hit queues it, and writes nothing.
    set_access(&store, 1, "jpg", 1)?;
    store.hot.remove(&key(1));
    store.lookup(&key(1), "jpg", true).ok_or("hit")?;
    assert_eq!(access(&store, 1, "jpg")?, 1, "no write on the hit");
    store.record_touches();
    assert!(access(&store, 1, "jpg")? > 1, "recorded in the background");
    // A recent access is not recorded again.
    let recent = now_secs() - 30;
    set_access(&store, 1, "jpg", recent)?;
    store.hot.remove(&key(1));
    store.lookup(&key(1), "jpg", true).ok_or("hit")?;
    store.record_touches();
    assert_eq!(access(&store, 1, "jpg")?, recent);
    // A memory hit writes nothing either; the background records it.
    if let Some(o) = store.hot.get(&key(1)) {
        o.last_access.store(1, Ordering::Relaxed);
    }
    set_access(&store, 1, "jpg", 1)?;
    store.lookup_hot(&key(1)).ok_or("memory hit")?;
    assert_eq!(access(&store, 1, "jpg")?, 1, "no write on the hit");
    store.record_touches();
    assert!(access(&store, 1, "jpg")? > 1, "recorded in the background");
    Ok(())
}

#[test]
fn a_clean_close_is_trusted_and_a_crash_is_recounted() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
        assert!(!rec.reconcile_needed, "a new store owes nothing");
        for n in 0..10 {
            store.put(&key(n), "png", &[n; 100], "img")?;
        }
        std::fs::remove_file(store.files.path(&key(3), "png"))?;
        store.close()?;
    }
    // Files the store did not write (a tool's, with its attribute, and one without) and a temp
    // file.
    Files::open(dir.path(), true)?.write(&key(42), "jpg", b"copied")?;
    write_bare(dir.path(), 43, "jpg", b"by hand")?;
    std::fs::write(dir.path().join("tmp/x.tmp"), b"partial")?;
    let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
    assert_eq!((rec.temps_removed, rec.reconcile_needed), (1, false));
    assert_eq!(store.stats().objects, 10, "the saved summaries, trusted");
    assert!(!store.stats().approximate);
    // A write an earlier process did not finish, beside its object.
    let leftover = store
        .files
        .path(&key(44), "jpg")
        .with_file_name(format!(".{}.00000000deadbeef.7.tmp", key(44).to_hex()));
    std::fs::write(&leftover, b"half")?;
    let report = store.gc()?;
    assert!(report.complete);
    assert_eq!((report.objects, report.adopted), (11, 1));
    assert_eq!(report.temps_removed, 1);
    assert!(!leftover.exists(), "a crash's temp file is swept");
    assert_eq!(counted(&store), (11, 9 * 100 + 6 + 7));
    assert_eq!(store.stats().bytes, 913);
    let verified = store.verify()?;
    assert_eq!(
        (verified.checked, verified.bad, verified.unhashed),
        (11, 0, 0)
    );
    // Files not named as the store names them are neither counted nor touched.
    let stray = store
        .files
        .path(&key(5), "png")
        .with_file_name(key(5).to_hex().to_uppercase() + ".png");
    std::fs::write(&stray, b"stray")?;
    std::fs::write(dir.path().join("objects/00/notes.txt"), b"not an object")?;
    assert_eq!(store.gc()?.objects, 11);
    assert!(stray.exists());
    drop(store); // no close: a crash
    let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
    assert!(rec.reconcile_needed);
    assert!(store.stats().approximate);
    assert!(store.reconcile(0)?.complete);
    assert!(!store.needs_reconcile() && !store.stats().approximate);
    assert_eq!(store.stats().objects, 11);
    Ok(())
}

#[test]
fn eviction_takes_the_least_recently_used_and_purge_survives_a_lost_index() -> TestResult {
    let dir = tempfile::tempdir()?;
    let now = now_secs();
    {
        let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
        for n in 0..10 {
            store.put(&key(n), "png", &[n; 100], "img")?;
        }
        store.put(&key(77), "gif", b"kept", "other")?;
        // Objects 5-9 were last hit two hours ago (set behind the store's back, then recounted).
        for n in 5..10 {
            set_access(&store, n, "png", now - 7200)?;
        }
        store.reindex()?;
        store.close()?;
    }
    // Budget 600: 1004 bytes are stored, eviction goes down to 540: the five not hit since.
    let (store, _) = Store::open(settings(dir.path(), 600))?;
    assert_eq!(store.evict_to_budget(), 5);
    assert_eq!(store.stats().bytes, 504);
    for n in 0..10 {
        let kept = store.lookup(&key(n), "png", false).is_some();
        assert_eq!(kept, n < 5, "object {n}: only those hit later are kept");
    }
    assert_eq!(
        counted(&store),
        (store.stats().objects, store.stats().bytes)
    );
    store.close()?;
    drop(store);
    // A destroyed index: the files are counted again, and purge still finds what it needs.
    std::fs::remove_dir_all(dir.path().join("index"))?;
    std::fs::create_dir_all(dir.path().join("index"))?;
    std::fs::write(dir.path().join("index/db"), b"garbage garbage garbage")?;
    let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
    assert!(rec.reconcile_needed);
    store.reconcile(0)?;
    assert_eq!(store.verify()?.bad, 0);
    let on_disk = counted(&store).0;
    assert_eq!((on_disk, store.stats().objects), (6, 6));
    assert_eq!(store.purge("img")?, 5);
    assert_eq!(store.purge("img")?, 0);
    assert_eq!(store.stats().objects, 1);
    assert_eq!(counted(&store), (1, 4));
    Ok(())
}

#[test]
fn eviction_follows_the_summaries_of_a_large_spread() -> TestResult {
    // Objects last accessed over a day, in every directory: eviction removes the oldest ones
    // by the cut-off the summaries give, and nothing accessed after it.
    let dir = tempfile::tempdir()?;
    let now = now_secs();
    {
        let (store, _) = Store::open(settings(dir.path(), 1 << 30))?;
        for n in 0..=255u8 {
            store.put(&key(n), "jpg", &[n; 1000], "x")?;
            set_access(&store, n, "jpg", now - 86_400 + u64::from(n) * 300)?;
        }
        store.close()?;
        drop(store);
        // Reopened, the summaries counted again from those times.
        let (store, _) = Store::open(settings(dir.path(), 1 << 30))?;
        store.reindex()?;
        store.close()?;
    }
    let (store, _) = Store::open(settings(dir.path(), 200_000))?;
    let evicted = store.evict_to_budget();
    // Down to 180,000 bytes: 76 objects of 1000 bytes go, the oldest.
    assert_eq!(evicted, 76);
    for n in 0..=255u8 {
        let kept = store.files.meta(&key(n), "jpg")?.is_some();
        assert_eq!(kept, n >= 76, "object {n}");
    }
    Ok(())
}

#[test]
fn a_background_save_after_close_does_not_mark_a_crash() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
        store.put(&key(1), "jpg", b"x", "a")?;
        store.close()?;
        // The background thread's tick, and an eviction, finishing just after the close.
        store.save_summaries(false, false);
        assert!(!store.remove(&key(1), "jpg", None)?);
        store.flush()?;
    }
    let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
    assert!(!rec.reconcile_needed);
    assert_eq!(store.stats().objects, 1);
    assert_eq!(store.verify()?.checked, 1, "the object outlived the close");
    assert_eq!(store.verify()?.bad, 0);
    Ok(())
}

#[test]
fn a_file_without_an_attribute_is_served_and_adopted_by_the_recount() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
    write_bare(dir.path(), 9, "webp", b"pixels")?;
    assert!(
        store.lookup(&key(9), "jpg", true).is_none(),
        "another format"
    );
    let hit = store.lookup(&key(9), "webp", true).ok_or("served")?;
    assert_eq!(hit.bytes.as_deref(), Some(&b"pixels"[..]));
    assert_eq!(store.verify()?.unhashed, 1);
    let report = store.reconcile(0)?;
    assert_eq!((report.adopted, report.objects), (1, 1));
    assert_eq!(store.counters.adopted.load(Ordering::Relaxed), 1);
    let verified = store.verify()?;
    assert_eq!((verified.unhashed, verified.bad), (0, 0));
    // Adopted as it was: now its bytes are checked.
    std::fs::write(store.files.path(&key(9), "webp"), b"pixelz")?;
    assert!(store.lookup(&key(9), "webp", true).is_none());
    Ok(())
}

#[test]
fn a_format_2_store_is_upgraded_in_place() -> TestResult {
    let dir = tempfile::tempdir()?;
    let old_access = now_secs() - 3 * 86_400;
    {
        // Format 2: bare files, one record each in the index.
        let index = Index::open(&dir.path().join("index"), 1 << 20)?;
        for n in 0..20u8 {
            let bytes = vec![n; 50 + usize::from(n)];
            // Format 2 never touched a file after writing it: its mtime is when it was written.
            let path = write_bare(dir.path(), n, "jpg", &bytes)?;
            std::fs::File::options()
                .write(true)
                .open(path)?
                .set_modified(UNIX_EPOCH + Duration::from_secs(old_access - 1000))?;
            let entry = LegacyEntry {
                len: bytes.len() as u64,
                last_access: old_access + u64::from(n),
                hash: content_hash(&bytes),
            };
            index.put_legacy(&key(n), &entry, "jpg")?;
        }
        // A file that changed length since its record (dropped), and one without a record
        // (adopted).
        write_bare(dir.path(), 7, "jpg", b"torn")?;
        write_bare(dir.path(), 99, "png", b"no record")?;
        index.flush()?;
    }
    let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
    assert!(rec.upgrading && rec.reconcile_needed);
    // Served at once, checked against the old record (and given its attribute on the way).
    let hit = store
        .lookup(&key(3), "jpg", true)
        .ok_or("hit before the upgrade")?;
    assert_eq!(hit.bytes.map(|b| b.len()), Some(53));
    assert!(store.lookup(&key(7), "jpg", true).is_none(), "torn: a miss");
    let report = store.reconcile(0)?;
    assert!(report.complete);
    // 20 records: 3 upgraded by its hit, 7 repaired by its lookup; the other 18 by the recount.
    assert_eq!(
        (report.upgraded, report.dropped, report.adopted),
        (18, 0, 1)
    );
    assert_eq!(store.stats().objects, 20);
    assert!(!store.index.has_legacy());
    // The old last access carried over, so eviction order survives the upgrade.
    assert_eq!(access(&store, 12, "jpg")?, old_access + 12);
    assert_eq!(
        access(&store, 3, "jpg")?,
        old_access + 3,
        "upgraded by its lookup"
    );
    store.record_touches();
    assert!(access(&store, 3, "jpg")? > old_access + 3, "hit since");
    let verified = store.verify()?;
    assert_eq!(
        (verified.checked, verified.bad, verified.unhashed),
        (20, 0, 0)
    );
    store.close()?;
    drop(store);
    let (store, rec) = Store::open(settings(dir.path(), 1 << 20))?;
    assert!(!rec.upgrading && !rec.reconcile_needed);
    assert_eq!(store.stats().objects, 20);
    for n in (0..20u8).filter(|n| *n != 7) {
        assert!(
            store.lookup(&key(n), "jpg", true).is_some(),
            "object {n} kept"
        );
    }
    Ok(())
}

#[test]
fn required_hashes_refuse_a_file_system_without_attributes() -> TestResult {
    // tmpfs before Linux 6.6 and some network file systems keep no user attributes; /dev/shm is
    // tmpfs. Where it does keep them, both settings open.
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        return Ok(());
    };
    let mut set = settings(dir.path(), 1 << 20);
    let opened = Store::open(set.clone()).map(|(_, rec)| rec.hashes);
    set.require_hashes = true;
    match opened? {
        true => assert!(Store::open(set).is_ok()),
        false => {
            let err = Store::open(set).err().ok_or("refused")?;
            assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        }
    }
    Ok(())
}

#[test]
fn totals_stay_exact_while_a_recount_runs_beside_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut set = settings(dir.path(), 1 << 30);
    set.fsync = false;
    {
        let (store, _) = Store::open(set.clone())?;
        for n in 0..=255u8 {
            store.put(&key(n), "jpg", &vec![n; usize::from(n) + 1], "x")?;
        }
        // No close, no summaries saved: the next open starts from nothing, approximate.
    }
    let (store, rec) = Store::open(set)?;
    assert!(rec.reconcile_needed);
    assert_eq!(store.stats().objects, 0);
    let store = Arc::new(store);
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        std::thread::spawn(move || -> Result<u64, StoreError> {
            while store.counters.reconcile_running.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            let mut ops = 0;
            for round in 0u64.. {
                for n in (0..=255u8).rev().step_by(7) {
                    if done.load(Ordering::Relaxed) {
                        return Ok(ops);
                    }
                    if (u64::from(n) + round) % 2 == 0 {
                        let len = 10 + usize::from(n) + (round % 5) as usize;
                        store.put(&key(n), "jpg", &vec![n; len], "x")?;
                    } else {
                        store.remove(&key(n), "jpg", None)?;
                    }
                    ops += 1;
                }
            }
            Ok(ops)
        })
    };
    let report = store.reconcile(300)?;
    done.store(true, Ordering::Relaxed);
    let ops = writer.join().map_err(|_| "writer panicked")??;
    assert!(
        report.complete && ops > 50,
        "{ops} writes beside {report:?}"
    );
    assert_eq!(
        counted(&store),
        (store.stats().objects, store.stats().bytes)
    );
    Ok(())
}

#[test]
fn an_eviction_walk_corrects_a_summary_that_counts_missing_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let in_dir_7 = |n: u8| {
        let mut raw = [n; 32];
        raw[0] = 7;
        DerivativeKey::from_slice(&raw).unwrap_or_else(|| unreachable!())
    };
    {
        let (store, _) = Store::open(settings(dir.path(), 1 << 20))?;
        for n in 0..40 {
            store.put(&in_dir_7(n), "jpg", &[n; 100], "x")?;
        }
        store.close()?;
    }
    // 38 files deleted behind the store's back; the saved summary still counts 4,000 bytes.
    for n in 2..40 {
        let hex = in_dir_7(n).to_hex();
        std::fs::remove_file(dir.path().join(format!("objects/07/{hex}.jpg")))?;
    }
    let (store, rec) = Store::open(settings(dir.path(), 3_000))?;
    assert!(!rec.reconcile_needed);
    assert_eq!(store.stats().bytes, 4_000);
    store.evict_to_budget();
    // The walk found 2 files where 40 were counted: the directory is counted again, and eviction
    // stops chasing bytes that are not there.
    assert_eq!(
        counted(&store),
        (store.stats().objects, store.stats().bytes)
    );
    assert!(store.stats().bytes <= 200);
    Ok(())
}
