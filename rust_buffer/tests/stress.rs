//! 4 writer threads and 2 sampler threads over 2^20 rows. Every row carries a checksum of its
//! own content (in `target[0]` and in `episode_id`); a torn or half-written row fails it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use rust_buffer::rng::Rng;
use rust_buffer::{BufferError, Meta, MetaValues, Options, RingBuffer, WindowQuery};

const DO: usize = 8;
const DT: usize = 2;
const WRITERS: u64 = 4;
const ROWS_PER_WRITER: u64 = 1 << 18; // 4 x 2^18 = 1,048,576 rows
const CAPACITY: usize = 4096; // small, so slots are overwritten ~256 times and writers lap

/// Checksum of an obs row, exact in f32 (< 2^24).
fn checksum(obs: &[f32]) -> u32 {
    obs.iter().enumerate().fold(0u32, |acc, (j, &v)| {
        (acc.wrapping_mul(31) ^ (v as u32).wrapping_add(j as u32)) & 0xFF_FFFF
    })
}

/// Row `seq` of `writer`: obs are random 16-bit integers, then writer and seq.
fn make_row(
    writer: u64,
    seq: u64,
    rng: &mut Rng,
    obs: &mut Vec<f32>,
    target: &mut Vec<f32>,
) -> i64 {
    let start = obs.len();
    obs.extend((0..DO - 2).map(|_| (rng.next_u64() & 0xFFFF) as f32));
    obs.push(writer as f32);
    obs.push((seq & 0xFF_FFFF) as f32);
    let c = checksum(&obs[start..]);
    target.push(c as f32);
    target.push(-(c as f32));
    i64::from(c)
}

fn check_row(obs: &[f32], target: &[f32], task: i64, episode: i64) {
    let c = checksum(obs);
    assert_eq!(target[0], c as f32, "torn row: {obs:?} {target:?}");
    assert_eq!(target[1], -(c as f32), "torn row: {obs:?} {target:?}");
    assert_eq!(episode, i64::from(c), "metadata from another row");
    assert_eq!(task, obs[DO - 2] as i64, "task id from another row");
}

#[test]
fn four_writers_two_samplers_never_see_a_torn_row() {
    let opts = Options {
        seed: Some(1),
        ..Options::default()
    };
    let store = Arc::new(RingBuffer::with_options(CAPACITY, DO, DT, opts).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicUsize::new(0));

    let samplers: Vec<_> = (0..3)
        .map(|k| {
            let (store, done, checked) = (store.clone(), done.clone(), checked.clone());
            thread::spawn(move || {
                let mut n = 0usize;
                while !done.load(Ordering::Acquire) {
                    if store.len() < 1024 {
                        thread::yield_now();
                        continue;
                    }
                    if k == 0 {
                        let b = store.sample(256, true).unwrap();
                        let m = b.meta.unwrap();
                        for (i, (o, t)) in b.obs.chunks(DO).zip(b.target.chunks(DT)).enumerate() {
                            check_row(o, t, m.task_id[i], m.episode_id[i]);
                        }
                        n += 256;
                    } else {
                        let (mut o, mut t) = (vec![0.0; 64 * DO], vec![0.0; 64 * DT]);
                        match store.sample_recent(64, 1024, true) {
                            Ok(b) => {
                                let m = b.meta.unwrap();
                                for (i, (o, t)) in
                                    b.obs.chunks(DO).zip(b.target.chunks(DT)).enumerate()
                                {
                                    check_row(o, t, m.task_id[i], m.episode_id[i]);
                                }
                            }
                            Err(BufferError::Contended) => {}
                            Err(e) => panic!("{e}"),
                        }
                        // The task index is refreshed while writers run: rows of one task only.
                        let task = (n / 128 % WRITERS as usize) as i64;
                        match store.sample_task_rows(task, 16, true) {
                            Ok(b) => {
                                let m = b.meta.unwrap();
                                assert!(m.task_id.iter().all(|&t| t == task));
                                for (i, (o, t)) in
                                    b.obs.chunks(DO).zip(b.target.chunks(DT)).enumerate()
                                {
                                    check_row(o, t, m.task_id[i], m.episode_id[i]);
                                }
                            }
                            Err(BufferError::Contended | BufferError::UnknownTask { .. }) => {}
                            Err(BufferError::NotEnoughRows { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                        store.sample_into(&mut o, &mut t, None).unwrap();
                        for (o, t) in o.chunks(DO).zip(t.chunks(DT)) {
                            assert_eq!(t[0], checksum(o) as f32, "torn row {o:?}");
                        }
                        n += 128;
                    }
                }
                checked.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(100 + w);
                let (mut obs, mut target, mut ep) = (Vec::new(), Vec::new(), Vec::new());
                let mut seq = 0;
                while seq < ROWS_PER_WRITER {
                    let n = (1 + rng.below(64) as u64).min(ROWS_PER_WRITER - seq);
                    obs.clear();
                    target.clear();
                    ep.clear();
                    for k in 0..n {
                        ep.push(make_row(w, seq + k, &mut rng, &mut obs, &mut target));
                    }
                    let meta = Meta {
                        task_id: MetaValues::Scalar(w as i64),
                        episode_id: MetaValues::PerRow(&ep),
                        step: MetaValues::Scalar(0),
                    };
                    store.add(&obs, &target, meta).unwrap();
                    seq += n;
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    for s in samplers {
        s.join().unwrap();
    }
    assert_eq!(store.total_added(), WRITERS * ROWS_PER_WRITER);
    assert_eq!(store.len(), CAPACITY);
    // After the writers stop, every slot holds a whole row.
    let (mut o, mut t) = (vec![0.0; DO], vec![0.0; DT]);
    for slot in 0..CAPACITY {
        let info = store.read_slot(slot, &mut o, &mut t).expect("stable slot");
        check_row(&o, &t, info.task_id, info.episode_id);
        assert!(info.row >= WRITERS * ROWS_PER_WRITER - CAPACITY as u64);
    }
    assert!(
        checked.load(Ordering::Relaxed) > 0,
        "samplers checked nothing"
    );
}

/// Windows under concurrent writes: 3 writers add episodes in batches while 2 samplers take
/// `sample_sequences` windows and contiguous `sample_tasks` sets. Each row's obs carries
/// (writer, episode, step) and a checksum, so a window can be checked row by row.
#[test]
fn windows_under_concurrent_writes_are_whole_and_consecutive() {
    const W: u64 = 3;
    const ROWS: u64 = 1 << 19;
    const L: usize = 32; // 32 rows x 4 words: the block-copy path
    let opts = Options {
        seed: Some(2),
        ..Options::default()
    };
    let store = Arc::new(RingBuffer::with_options(4096, DO, DT, opts).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let windows = Arc::new(AtomicUsize::new(0));

    let check_window = |obs: &[f32], target: &[f32]| {
        let rows: Vec<&[f32]> = obs.chunks(DO).collect();
        for (k, o) in rows.iter().enumerate() {
            let c = checksum(o);
            assert_eq!(target[k * DT], c as f32, "torn row in a window: {o:?}");
            if k > 0 {
                let p = rows[k - 1];
                assert_eq!((o[0], o[1]), (p[0], p[1]), "window crosses an episode");
                assert_eq!(o[2], p[2] + 1.0, "steps not consecutive");
            }
        }
    };
    let samplers: Vec<_> = (0..3)
        .map(|k| {
            let (store, done, windows) = (store.clone(), done.clone(), windows.clone());
            thread::spawn(move || {
                // Until the writers stop, then a little longer if few windows were checked
                // (bounded: the final rows may hold a single task).
                let (mut mine, mut extra) = (0, 0);
                while !done.load(Ordering::Acquire) || (mine < 200 && extra < 1000) {
                    if done.load(Ordering::Acquire) {
                        extra += 1;
                    }
                    if k == 2 {
                        // Weighted and recent windows, and windows around random slots.
                        let weights = [(0, 1.0), (1, 2.0), (2, 1.0)];
                        let q = WindowQuery {
                            task_weights: Some(&weights),
                            recent: (mine % 2 == 0).then_some(2048),
                            seed: None,
                        };
                        match store.sample_windows(8, L, q) {
                            Ok(b) => {
                                for (o, t) in b.obs.chunks(L * DO).zip(b.target.chunks(L * DT)) {
                                    check_window(o, t);
                                }
                                windows.fetch_add(8, Ordering::Relaxed);
                                mine += 8;
                            }
                            Err(
                                BufferError::NoValidWindow { .. }
                                | BufferError::NoValidWindowIn { .. }
                                | BufferError::UnknownTask { .. }
                                | BufferError::Empty
                                | BufferError::Contended,
                            ) => {}
                            Err(e) => panic!("{e}"),
                        }
                        let n = store.len() as i64;
                        if n > 0 {
                            let anchors: Vec<i64> =
                                (0..8).map(|i| (i * 977 + mine as i64) % n).collect();
                            let mut o = vec![0.0; 8 * L * DO];
                            let mut t = vec![0.0; 8 * L * DT];
                            let mut valid = [false; 8];
                            store
                                .windows_at_into(&anchors, L, &mut o, &mut t, &mut valid)
                                .unwrap();
                            for (i, ok) in valid.iter().enumerate() {
                                if *ok {
                                    check_window(
                                        &o[i * L * DO..(i + 1) * L * DO],
                                        &t[i * L * DT..(i + 1) * L * DT],
                                    );
                                }
                            }
                        }
                    } else if k == 0 {
                        match store.sample_sequences(16, L) {
                            Ok(b) => {
                                for (o, t) in b.obs.chunks(L * DO).zip(b.target.chunks(L * DT)) {
                                    check_window(o, t);
                                }
                                windows.fetch_add(16, Ordering::Relaxed);
                                mine += 16;
                            }
                            Err(
                                BufferError::NoValidWindow { .. }
                                | BufferError::Empty
                                | BufferError::Contended,
                            ) => {}
                            Err(e) => panic!("{e}"),
                        }
                    } else {
                        match store.sample_tasks(2, 24, 8, true) {
                            Ok(b) => {
                                for i in 0..2 {
                                    let mut o =
                                        b.support_obs[i * 24 * DO..(i + 1) * 24 * DO].to_vec();
                                    o.extend_from_slice(&b.query_obs[i * 8 * DO..(i + 1) * 8 * DO]);
                                    let mut t =
                                        b.support_target[i * 24 * DT..(i + 1) * 24 * DT].to_vec();
                                    t.extend_from_slice(
                                        &b.query_target[i * 8 * DT..(i + 1) * 8 * DT],
                                    );
                                    check_window(&o, &t);
                                    assert_eq!(b.task_ids[i], o[0] as i64);
                                }
                                windows.fetch_add(2, Ordering::Relaxed);
                                mine += 2;
                            }
                            Err(
                                BufferError::NotEnoughTasks { .. }
                                | BufferError::Empty
                                | BufferError::Contended,
                            ) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..W)
        .map(|w| {
            let store = store.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(200 + w);
                let (mut episode, mut step, mut written) = (0u64, 0u64, 0u64);
                let (mut obs, mut target, mut steps) = (Vec::new(), Vec::new(), Vec::new());
                while written < ROWS {
                    let n = 16 + rng.below(113) as u64;
                    obs.clear();
                    target.clear();
                    steps.clear();
                    for _ in 0..n {
                        let start = obs.len();
                        obs.extend([w as f32, episode as f32, step as f32]);
                        obs.extend((0..DO - 3).map(|_| (rng.next_u64() & 0xFFFF) as f32));
                        let c = checksum(&obs[start..]);
                        target.extend([c as f32, -(c as f32)]);
                        steps.push(step as i64);
                        step += 1;
                    }
                    let meta = Meta {
                        task_id: MetaValues::Scalar(w as i64),
                        episode_id: MetaValues::Scalar((w << 32 | episode) as i64),
                        step: MetaValues::PerRow(&steps),
                    };
                    store.add(&obs, &target, meta).unwrap();
                    written += n;
                    if rng.below(4) == 0 {
                        episode += 1;
                        step = 0;
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    for s in samplers {
        s.join().unwrap();
    }
    // Quiescent: windows must exist and check out.
    let b = store.sample_sequences(64, L).unwrap();
    for (o, t) in b.obs.chunks(L * DO).zip(b.target.chunks(L * DT)) {
        check_window(o, t);
    }
    assert!(windows.load(Ordering::Relaxed) > 0, "no window was checked");
}

/// Wide batched adds (1024 rows x 64 + 64 floats: the non-temporal copy path) from 2 writers
/// that lap each other in a small ring, while a sampler checks every row it copies: the
/// streamed rows must be fenced before their stamps say they are written.
#[test]
fn streamed_batches_are_never_torn() {
    const D: usize = 64;
    const BATCH: usize = 1024;
    let opts = Options {
        seed: Some(4),
        ..Options::default()
    };
    let store = Arc::new(RingBuffer::with_options(3000, D, D, opts).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (store, done, checked) = (store.clone(), done.clone(), checked.clone());
        thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                let b = match store.sample(256, false) {
                    Ok(b) => b,
                    Err(BufferError::Empty | BufferError::NotEnoughRows { .. }) => continue,
                    Err(e) => panic!("{e}"),
                };
                for (o, t) in b.obs.chunks(D).zip(b.target.chunks(D)) {
                    // Every value of a row is its batch number; target is its negation.
                    assert!(o.iter().all(|&v| v == o[0]), "torn obs row");
                    assert!(t.iter().all(|&v| v == -o[0]), "torn target row");
                }
                checked.fetch_add(256, Ordering::Relaxed);
            }
        })
    };
    let writers: Vec<_> = (0..2u32)
        .map(|w| {
            let store = store.clone();
            thread::spawn(move || {
                for k in 0..400u32 {
                    let v = (k * 2 + w) as f32;
                    let obs = vec![v; BATCH * D];
                    let target = vec![-v; BATCH * D];
                    store.add(&obs, &target, Meta::default()).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    sampler.join().unwrap();
    assert!(
        checked.load(Ordering::Relaxed) > 0,
        "the sampler checked nothing"
    );
}
