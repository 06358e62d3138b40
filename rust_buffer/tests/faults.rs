//! The store under faults (issue 15): save racing clear, crafted files (NaN with valid
//! checksums, forged counters), save destinations that must be refused, loads that must not
//! block, truncated shared files, and checked step/counter arithmetic.
//!
//! Every test here is bounded: the race loops run a fixed number of rounds, and anything that
//! could block (a FIFO) runs on a helper thread watched with a timeout.

mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;
use rust_buffer::persist::{PersistError, HEADER_LEN, TRAILER_LEN};
use rust_buffer::{BufferError, Meta, MetaValues, Options, RingBuffer, MAX_ROWS};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rbuf-faults-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn format_error(r: Result<RingBuffer, PersistError>) -> String {
    match r {
        Err(PersistError::Format(m)) => m,
        Err(e) => panic!("expected a format error, got {e}"),
        Ok(_) => panic!("a crafted file was accepted"),
    }
}

/// Re-seal a snapshot after editing it: header CRC (bytes 0..124 at 124) and body CRC.
fn reseal(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[..124]);
    bytes[124..128].copy_from_slice(&crc.to_le_bytes());
    let body_end = bytes.len() - TRAILER_LEN;
    let crc = crc32fast::hash(&bytes[HEADER_LEN..body_end]);
    bytes[body_end..body_end + 4].copy_from_slice(&crc.to_le_bytes());
}

fn filled(capacity: usize, n: u64) -> RingBuffer {
    let s = store(capacity, 3);
    let ids: Vec<u64> = (0..n).collect();
    add_ids(
        &s,
        &ids,
        &vec![1; n as usize],
        &vec![0; n as usize],
        &vec![0; n as usize],
    );
    s
}

#[test]
fn save_racing_clear_and_add_always_leaves_a_loadable_snapshot() {
    let dir = temp_dir("race");
    let path = dir.join("snap.rbuf");
    let s = Arc::new(store(1024, 5));
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s.clear();
                let ids: Vec<u64> = (id..id + 500).collect();
                add_ids(&s, &ids, &[0; 500], &[0; 500], &[0; 500]);
                id = (id + 500) % 900_000; // ids stay exact in f32
            }
        })
    };
    let (mut saved, mut refused) = (0, 0);
    for _ in 0..100 {
        match s.save_file(&path) {
            Ok(_) => saved += 1,
            Err(PersistError::Cleared { .. }) => refused += 1,
            Err(e) => panic!("save failed: {e}"),
        }
        if path.exists() {
            let t = RingBuffer::load_file(&path).expect("every saved snapshot loads");
            let (mut o, mut tg) = ([0.0; DO], [0.0; DT]);
            for slot in 0..t.capacity() {
                if t.read_slot(slot, &mut o, &mut tg).is_some() {
                    row_id(&o, &tg);
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    assert!(saved > 0, "no save succeeded ({refused} refused)");
    std::fs::remove_dir_all(&dir).ok();
}

/// A writer that clears the store the first time the save writes body bytes to it.
struct ClearingWriter<'a> {
    inner: Cursor<Vec<u8>>,
    store: &'a RingBuffer,
    cleared: bool,
}

impl std::io::Write for ClearingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.cleared && self.inner.position() >= HEADER_LEN as u64 {
            self.cleared = true;
            self.store.clear();
            let (o, t) = rows(&[900, 901]);
            self.store.add(&o, &t, Meta::default()).unwrap();
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for ClearingWriter<'_> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn a_copy_that_overlaps_a_clear_is_refused_not_mixed() {
    let s = filled(64, 40);
    let mut w = ClearingWriter {
        inner: Cursor::new(Vec::new()),
        store: &s,
        cleared: false,
    };
    match s.save_to(&mut w) {
        Err(PersistError::Cleared { .. }) => {}
        other => panic!("expected Cleared, got {other:?}"),
    }
    // After the clear, a save is consistent again: only the two new rows.
    let t = load(&snapshot(&s)).unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t.total_added(), 42);
}

#[test]
fn load_rejects_nan_and_infinity_even_with_valid_checksums() {
    let s = filled(16, 10);
    let clean = snapshot(&s);
    // The first block starts with 10 stamps (u64), then obs rows (f32 x DO).
    let obs_at = HEADER_LEN + 10 * 8;
    for (value, row, col) in [
        (f32::NAN, 3, 2),
        (f32::INFINITY, 9, 0),
        (f32::NEG_INFINITY, 0, 1),
    ] {
        let mut bytes = clean.clone();
        let at = obs_at + (row * DO + col) * 4;
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        reseal(&mut bytes);
        let msg = format_error(load(&bytes));
        assert!(
            msg.contains(&format!("slot {row} obs column {col}")) && msg.contains("finite"),
            "{msg}"
        );
    }
    // The target column too.
    let target_at = obs_at + 10 * DO * 4;
    let mut bytes = clean.clone();
    bytes[target_at + 4..target_at + 8].copy_from_slice(&f32::NAN.to_le_bytes());
    reseal(&mut bytes);
    assert!(format_error(load(&bytes)).contains("slot 0 target column 1"));
    assert!(load(&clean).is_ok());
}

#[test]
fn load_rejects_forged_counters_at_or_above_the_limit() {
    let s = filled(16, 10);
    let clean = snapshot(&s);
    for cursor in [u64::MAX, MAX_ROWS, MAX_ROWS + 1, 1 << 60] {
        let mut bytes = clean.clone();
        bytes[56..64].copy_from_slice(&cursor.to_le_bytes());
        reseal(&mut bytes);
        let msg = format_error(load(&bytes));
        assert!(msg.contains("limit"), "cursor {cursor}: {msg}");
    }
    // Just below the limit loads, and the next add is refused instead of wrapping.
    let mut bytes = clean.clone();
    bytes[56..64].copy_from_slice(&(MAX_ROWS - 1).to_le_bytes());
    reseal(&mut bytes);
    let t = load(&bytes).unwrap();
    let (o, tg) = rows(&[1]);
    let err = t.add(&o, &tg, Meta::default()).unwrap_err();
    assert!(matches!(err, BufferError::RowLimit { .. }), "{err}");
    assert!(err.to_string().contains("limit"));
    assert_eq!(t.total_added(), MAX_ROWS - 1, "nothing was reserved");
}

#[cfg(unix)]
#[test]
fn save_refuses_links_fifos_devices_directories_and_shared_stores() {
    let dir = temp_dir("dest");
    let s = filled(16, 10);
    let target = dir.join("real.rbuf");
    s.save_file(&target).unwrap();
    let link = dir.join("link.rbuf");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = dir.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let shared_path = dir.join("shared.rbs");
    let shared = RingBuffer::create_file(&shared_path, 8, DO, DT, Options::default()).unwrap();
    let cases: [(&Path, &str); 6] = [
        (&link, "symbolic link"),
        (&fifo, "FIFO"),
        (Path::new("/dev/null"), "device"),
        (&dir, "directory"),
        (&shared_path, "file-backed store"),
        (&shared_path, "own file"),
    ];
    for (i, (path, why)) in cases.into_iter().enumerate() {
        let who = if i == 5 { &shared } else { &s };
        match who.save_file(path) {
            Err(PersistError::Destination(m)) => assert!(m.contains(why), "{why}: {m}"),
            other => panic!("{why}: expected a refusal, got {other:?}"),
        }
    }
    // Nothing was replaced: the link still points at a loadable snapshot, the shared store
    // still opens.
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    RingBuffer::load_file(&link).unwrap();
    RingBuffer::open_file(&shared_path, None).unwrap();
    // A regular file that is not a store is replaced as before.
    let plain = dir.join("plain");
    std::fs::write(&plain, b"old").unwrap();
    s.save_file(&plain).unwrap();
    RingBuffer::load_file(&plain).unwrap();
    drop(shared);
    std::fs::remove_dir_all(&dir).ok();
}

/// A shared store file at `path` holding rows `0..n` (task, episode and step 0).
fn filled_file(path: &Path, capacity: usize, n: usize) -> RingBuffer {
    let s = RingBuffer::create_file(path, capacity, DO, DT, Options::default()).unwrap();
    let ids: Vec<u64> = (0..n as u64).collect();
    add_ids(&s, &ids, &vec![0; n], &vec![0; n], &vec![0; n]);
    s
}

/// Run `f` on a helper thread; panic if it has not returned after 10 s (it blocked).
fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()).ok());
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the call blocked")
}

#[cfg(unix)]
#[test]
fn load_and_open_refuse_fifos_without_blocking() {
    let dir = temp_dir("fifo");
    let fifo = dir.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let f = fifo.clone();
    let err = within_seconds(move || RingBuffer::load_file(&f).map(|_| ()))
        .expect_err("a FIFO was loaded");
    assert!(err.to_string().contains("FIFO"), "{err}");
    let f = fifo.clone();
    let err = within_seconds(move || RingBuffer::open_file(&f, None).map(|_| ()))
        .expect_err("a FIFO was opened");
    assert!(err.to_string().contains("FIFO"), "{err}");
    let err = within_seconds(|| RingBuffer::load_file(Path::new("/dev/zero")).map(|_| ()))
        .expect_err("a device was loaded");
    assert!(err.to_string().contains("device"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn open_rejects_forged_counters_and_non_finite_rows() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = temp_dir("open");
    let path = dir.join("s.rbs");
    drop(filled_file(&path, 8, 6));
    let poke = |at: u64, bytes: &[u8]| {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(bytes).unwrap();
    };
    // Cursor (offset 128) forged to 2^64 - 1, then base (136) beyond the cursor.
    poke(128, &u64::MAX.to_le_bytes());
    let err = RingBuffer::open_file(&path, None).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    poke(128, &6u64.to_le_bytes());
    poke(136, &7u64.to_le_bytes());
    let err = RingBuffer::open_file(&path, None).unwrap_err();
    assert!(err.to_string().contains("beyond the cursor"), "{err}");
    poke(136, &0u64.to_le_bytes());
    RingBuffer::open_file(&path, None).unwrap();
    // obs starts at the page after the stamps (8 slots x 8 bytes < 1 page): slot 4, column 1.
    poke(2 * 4096 + (4 * DO as u64 + 1) * 4, &f32::NAN.to_le_bytes());
    let err = RingBuffer::open_file(&path, None).unwrap_err();
    assert!(err.to_string().contains("slot 4 obs column 1"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_truncated_shared_file_is_an_error_not_a_signal() {
    let dir = temp_dir("trunc");
    let path = dir.join("s.rbs");
    let s = filled_file(&path, 1024, 100);
    assert!(s.check_file().is_ok());
    // Another handle (as another process would) truncates the file.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(4096).unwrap();
    match s.check_file() {
        Err(BufferError::Truncated {
            actual, expected, ..
        }) => {
            assert_eq!(actual, 4096);
            assert!(expected > actual);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    let err = RingBuffer::open_file(&path, None).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(store(4, 1).check_file().is_ok(), "heap stores always pass");
    drop(s);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn windows_never_wrap_from_the_largest_step_to_the_smallest() {
    let s = store(16, 9);
    let steps = [i64::MAX - 1, i64::MAX, i64::MIN, i64::MIN + 1];
    let (o, t) = rows(&[0, 1, 2, 3]);
    let meta = Meta {
        task_id: MetaValues::Scalar(1),
        episode_id: MetaValues::Scalar(7),
        step: MetaValues::PerRow(&steps),
    };
    s.add(&o, &t, meta).unwrap();
    for len in [3, 4] {
        assert!(
            matches!(
                s.sample_sequences(4, len),
                Err(BufferError::NoValidWindow { .. })
            ),
            "a window of {len} crossed the step wrap"
        );
    }
    // Windows of 2 exist on both sides of the wrap (steps >= 0 only: the first pair).
    let b = s.sample_sequences(8, 2).unwrap();
    for w in b.obs.chunks(2 * DO) {
        assert_eq!(
            (w[0], w[DO]),
            (0.0, 10.0),
            "only rows 0 and 1 form a window"
        );
    }
}

#[test]
fn huge_capacities_report_the_overflow_not_a_saturated_size() {
    let err = RingBuffer::new(1 << 62, 4, 1).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("overflows"), "{msg}");
    assert!(!msg.contains(&usize::MAX.to_string()), "{msg}");
}
