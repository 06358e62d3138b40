//! Snapshots: bit-exact round trips, and damaged files that must be refused, never panic.
//!
//! The mutation property test doubles as the bounded fuzzer of the loader:
//! `PERSIST_FUZZ_CASES=200000 cargo test --release -p rust_buffer --test persist`
//! (see docs/persistence.md).

mod common;

use common::*;
use proptest::prelude::*;
use rust_buffer::persist::{PersistError, HEADER_LEN};
use rust_buffer::{Meta, MetaValues, Options, Retention, RingBuffer};

/// A store with two tasks of episodes, `n` rows, optionally cleared halfway.
fn filled(capacity: usize, n: u64, retention: Retention, clear_at: Option<u64>) -> RingBuffer {
    let s = RingBuffer::with_options(
        capacity,
        DO,
        DT,
        Options {
            seed: Some(11),
            retention,
        },
    )
    .unwrap();
    let mut id = 0;
    while id < n {
        if Some(id) == clear_at {
            s.clear();
        }
        let k = 17.min(n - id);
        let ids: Vec<u64> = (id..id + k).collect();
        let task = vec![(id / 17 % 3) as i64; k as usize];
        let episode = vec![(id / 17) as i64; k as usize];
        let step: Vec<i64> = (0..k as i64).collect();
        add_ids(&s, &ids, &task, &episode, &step);
        id += k;
    }
    s
}

/// Everything observable: raw slots, stamps-derived info, counters, and the next samples.
fn assert_same(a: &RingBuffer, b: &RingBuffer) {
    assert_eq!(a.len(), b.len());
    assert_eq!(a.capacity(), b.capacity());
    assert_eq!(a.total_added(), b.total_added());
    assert_eq!(a.retention(), b.retention());
    assert_eq!(a.seed(), b.seed());
    assert_eq!(a.placement_seed(), b.placement_seed());
    assert_eq!(a.sampler_calls(), b.sampler_calls());
    assert_eq!(held(a), held(b));
    assert_eq!(a.task_counts(), b.task_counts());
    // Results, not unwraps: small stores refuse some of these, and must refuse alike.
    let n = a.len().min(50);
    assert_eq!(a.sample(n, true), b.sample(n, true));
    assert_eq!(a.sample_sequences(8, 4), b.sample_sequences(8, 4));
    assert_eq!(a.sample_tasks(2, 3, 2, true), b.sample_tasks(2, 3, 2, true));
    assert_eq!(
        a.sample_tasks(2, 3, 2, false),
        b.sample_tasks(2, 3, 2, false)
    );
    let w = a.len().min(20);
    assert_eq!(a.sample_recent(w, w, false), b.sample_recent(w, w, false));
}

#[test]
fn round_trip_is_bit_exact() {
    for (cap, n, retention, clear_at) in [
        (100, 60, Retention::Fifo, None),
        (100, 1000, Retention::Fifo, None),
        (100, 1000, Retention::Fifo, Some(17 * 40)),
        (64, 1000, Retention::Reservoir, None),
    ] {
        let s = filled(cap, n, retention, clear_at);
        s.sample(3, false).unwrap(); // move the sampler off its first stream
        let bytes = snapshot(&s);
        let t = load(&bytes).unwrap();
        assert_same(&s, &t);
        // Both keep working identically afterwards.
        let (o, tg) = rows(&[5000, 5001]);
        for x in [&s, &t] {
            x.add(&o, &tg, Meta::episode(9, 99, &[0, 1])).unwrap();
        }
        assert_same(&s, &t);
        assert_eq!(snapshot(&s), snapshot(&t));
    }
}

#[test]
fn empty_and_reseeded_stores_round_trip() {
    let s = store(10, 3);
    let t = load(&snapshot(&s)).unwrap();
    assert_eq!(t.len(), 0);
    assert_eq!(t.capacity(), 10);
    let s = filled(50, 40, Retention::Fifo, None);
    s.reseed(123);
    let t = load(&snapshot(&s)).unwrap();
    assert_eq!(t.seed(), 123);
    assert_same(&s, &t);
}

#[test]
fn save_file_replaces_atomically_and_loads() {
    let dir = std::env::temp_dir().join(format!("rbuf-persist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.rbuf");
    let s = filled(100, 300, Retention::Fifo, None);
    s.save_file(&path).unwrap();
    let s2 = filled(30, 10, Retention::Fifo, None);
    s2.save_file(&path).unwrap(); // over the old file
    let t = RingBuffer::load_file(&path).unwrap();
    assert_same(&s2, &t);
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    assert!(matches!(
        RingBuffer::load_file(&dir.join("missing")),
        Err(PersistError::Io(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn message(r: Result<RingBuffer, PersistError>) -> String {
    match r {
        Ok(_) => panic!("a damaged file was accepted"),
        Err(PersistError::Format(m)) => m,
        Err(e) => panic!("expected a format error, got {e:?}"),
    }
}

#[test]
fn damaged_files_say_what_is_wrong() {
    let good = snapshot(&filled(100, 300, Retention::Fifo, None));
    let mut b = good.clone();
    b[0] = b'X';
    assert!(message(load(&b)).contains("magic"));
    let mut b = good.clone();
    b[8] = 2;
    assert!(message(load(&b)).contains("version 2"));
    let mut b = good.clone();
    b[20] ^= 1; // capacity, header CRC not updated
    assert!(message(load(&b)).contains("header checksum"));
    assert!(message(load(&good[..good.len() - 1])).contains("truncated"));
    assert!(message(load(&good[..50])).contains("truncated"));
    assert!(message(load(&good[..3])).contains("truncated"));
    let mut b = good.clone();
    b.push(0);
    assert!(message(load(&b)).contains("trailing"));
    let mut b = good.clone();
    let mid = HEADER_LEN + 5000;
    b[mid] ^= 0x40;
    assert!(message(load(&b)).contains("checksum"));
}

/// Re-encode a header with one field changed and a valid CRC (what a buggy writer makes).
fn with_field(good: &[u8], at: usize, value: u64) -> Vec<u8> {
    let mut b = good.to_vec();
    b[at..at + 8].copy_from_slice(&value.to_le_bytes());
    let crc = crc32(&b[..124]);
    b[124..128].copy_from_slice(&crc.to_le_bytes());
    b
}

fn crc32(data: &[u8]) -> u32 {
    // Bitwise CRC-32 (IEEE), independent of the crate's implementation.
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn headers_whose_sizes_do_not_match_are_refused() {
    let good = snapshot(&filled(100, 300, Retention::Fifo, None));
    assert!(load(&with_field(&good, 16, 100)).is_ok()); // unchanged capacity: still fine
    for (at, value, needle) in [
        (16, 0, "at least 1"),              // capacity 0
        (24, 5, "file length"),             // obs_dim: rows no longer fit the file
        (24, u64::MAX / 2, "overflow"),     // obs_dim absurd
        (48, 1 << 40, "rows saved"),        // rows beyond the counters
        (56, 5, "rows saved"),              // cursor too small for the rows
        (64, 1 << 50, "beyond the cursor"), // base > cursor
        (96, 12, "file length"),            // file_len field
        (16, u64::MAX, "address space"),    // capacity beyond usize on 64-bit? no: fits
    ] {
        let m = load(&with_field(&good, at, value));
        if at == 16 && value == u64::MAX {
            // u64::MAX fits usize on 64-bit machines: refused by the allocator instead.
            assert!(m.is_err());
            continue;
        }
        assert!(message(m).contains(needle), "field at {at} = {value}");
    }
    // A stamp that no row can have (valid CRC recomputed over the body).
    let s = filled(100, 300, Retention::Fifo, None);
    let mut b = snapshot(&s);
    b[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&7u64.to_le_bytes());
    let body_end = b.len() - 8;
    let crc = crc32(&b[HEADER_LEN..body_end]);
    b[body_end..body_end + 4].copy_from_slice(&crc.to_le_bytes());
    assert!(message(load(&b)).contains("stamp"));
}

fn fuzz_cases() -> u32 {
    std::env::var("PERSIST_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn sample_file() -> Vec<u8> {
    let s = filled(40, 90, Retention::Fifo, None);
    snapshot(&s)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    /// Any single-byte change is detected (header CRC, body CRC or end marker), never a panic.
    #[test]
    fn every_single_byte_change_is_refused(pos in 0usize..10_000, flip in 1u8..=255) {
        let mut b = sample_file();
        let pos = pos % b.len();
        b[pos] ^= flip;
        prop_assert!(load(&b).is_err());
    }

    /// Random damage (several bytes, truncation, extension) never panics or reads out of
    /// bounds; a truncated or extended file is always refused.
    #[test]
    fn random_damage_never_panics(
        edits in proptest::collection::vec((0usize..10_000, any::<u8>()), 0..8),
        cut in proptest::option::of(0usize..10_000),
        extra in 0usize..3,
    ) {
        let mut b = sample_file();
        let n = b.len();
        for (pos, v) in edits {
            let i = pos % n;
            b[i] = v;
        }
        if let Some(c) = cut {
            b.truncate(c % n);
        }
        b.extend(std::iter::repeat_n(0u8, extra));
        let r = load(&b);
        if b.len() != n {
            prop_assert!(r.is_err());
        }
    }

    /// Arbitrary header fields with a valid CRC (a confused writer) are validated, not
    /// trusted: no panic, no huge allocation from a small file.
    #[test]
    fn forged_headers_never_panic(
        fields in proptest::collection::vec((0usize..12, any::<u64>()), 1..4),
        small in any::<bool>(),
    ) {
        let mut b = sample_file();
        for (k, v) in fields {
            let at = 16 + 8 * k;
            let v = if small { v % 200 } else { v };
            if at + 8 <= 104 {
                b = with_field(&b, at, v);
            }
        }
        let _ = load(&b);
    }

    /// Snapshots of random stores round-trip exactly.
    #[test]
    fn random_stores_round_trip(cap in 1usize..50, n in 0u64..200, reservoir in any::<bool>()) {
        let retention = if reservoir { Retention::Reservoir } else { Retention::Fifo };
        let s = filled(cap, n, retention, None);
        let t = load(&snapshot(&s)).unwrap();
        prop_assert_eq!(held(&s), held(&t));
        prop_assert_eq!(s.total_added(), t.total_added());
        prop_assert_eq!(snapshot(&s), snapshot(&t));
    }
}

#[test]
fn save_while_writers_run_never_tears_rows() {
    let s = std::sync::Arc::new(store(4096, 5));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut id = w * 1_000_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ids: Vec<u64> = (id..id + 7).collect();
                    let (o, t) = rows(&ids);
                    let meta = Meta {
                        task_id: MetaValues::Scalar(w as i64),
                        ..Meta::default()
                    };
                    s.add(&o, &t, meta).unwrap();
                    id += 7;
                }
            })
        })
        .collect();
    for _ in 0..20 {
        let t = load(&snapshot(&s)).unwrap();
        let mut o = vec![0.0; DO];
        let mut tg = vec![0.0; DT];
        for slot in 0..t.len() {
            if t.read_slot(slot, &mut o, &mut tg).is_some() {
                row_id(&o, &tg); // panics on a torn row
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
}

#[test]
fn multi_block_snapshots_round_trip() {
    // Rows of 16 KiB: blocks of 255 rows, so 1000 rows take 4 blocks (the threaded path).
    let (d_o, d_t) = (4096, 2);
    let s = RingBuffer::with_options(
        700,
        d_o,
        d_t,
        Options {
            seed: Some(3),
            retention: Retention::Fifo,
        },
    )
    .unwrap();
    for k in 0..10u64 {
        let obs: Vec<f32> = (0..100 * d_o)
            .map(|i| (k * 1000) as f32 + i as f32)
            .collect();
        let target: Vec<f32> = (0..100 * d_t).map(|i| -(i as f32) - k as f32).collect();
        let steps: Vec<i64> = (0..100).collect();
        s.add(&obs, &target, Meta::episode(k as i64 % 3, k as i64, &steps))
            .unwrap();
    }
    let bytes = snapshot(&s);
    assert_eq!(u32::from_le_bytes(bytes[44..48].try_into().unwrap()), 255);
    let t = load(&bytes).unwrap();
    assert_eq!(snapshot(&t), bytes);
    assert_eq!(s.sample(64, true), t.sample(64, true));
    assert_eq!(s.sample_sequences(5, 20), t.sample_sequences(5, 20));
    assert_eq!(s.task_counts(), t.task_counts());
    let mut b = bytes.clone();
    let k = b.len() / 2;
    b[k] ^= 1; // inside the third block
    assert!(load(&b).is_err());
}
