//! The window index and samplers against a brute-force oracle of valid starts (FIFO and
//! reservoir stores, wrap-around, clears), plus distribution checks of the weighted and
//! recent draws, `windows_at` and `gather`.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use proptest::prelude::*;
use rust_buffer::{BufferError, Options, Retention, RingBuffer, RowInfo, WindowQuery};

/// The row held in every slot `0..len` (None: unreadable), with its id.
fn slots(s: &RingBuffer) -> Vec<Option<(u64, RowInfo)>> {
    let mut o = vec![0.0; DO];
    let mut t = vec![0.0; DT];
    (0..s.len())
        .map(|slot| {
            s.read_slot(slot, &mut o, &mut t)
                .map(|info| (row_id(&o, &t), info))
        })
        .collect()
}

/// Oracle: is the window of `len` rows from `start` valid (each row the next row of one
/// episode, first step >= 0, no wrap unless every slot is filled)?
fn oracle_valid(held: &[Option<(u64, RowInfo)>], cap: usize, start: usize, len: usize) -> bool {
    let n = held.len();
    if len > n || (n < cap && start + len > n) {
        return false;
    }
    let Some((_, first)) = held[start] else {
        return false;
    };
    first.step >= 0
        && (1..len).all(|i| {
            held[(start + i) % n].is_some_and(|(_, r)| {
                r.row == first.row + i as u64
                    && r.task_id == first.task_id
                    && r.episode_id == first.episode_id
                    && r.step == first.step + i as i64
            })
        })
}

/// Oracle starts per task.
fn oracle_counts(s: &RingBuffer, len: usize) -> Vec<(i64, u64)> {
    let held = slots(s);
    let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
    for start in 0..held.len() {
        if oracle_valid(&held, s.capacity(), start, len) {
            *counts.entry(held[start].unwrap().1.task_id).or_default() += 1;
        }
    }
    counts.into_iter().collect()
}

/// Check a sampled window: consecutive rows of one episode, first row id returned.
fn check_window(ids: &[u64], held: &HashMap<u64, RowInfo>) -> u64 {
    let first = held[&ids[0]];
    for (i, id) in ids.iter().enumerate() {
        let r = held.get(id).expect("sampled row is held");
        assert_eq!(r.row, first.row + i as u64);
        assert_eq!((r.task_id, r.episode_id), (first.task_id, first.episode_id));
        assert_eq!(r.step, first.step + i as i64);
    }
    ids[0]
}

#[derive(Debug, Clone)]
enum Op {
    /// An episode of `n` rows of `task`, added in chunks of `chunk` rows; `steps` false gives
    /// step -1 (no episode steps).
    Add {
        n: usize,
        task: i64,
        chunk: usize,
        steps: bool,
    },
    Clear,
    /// Compare the index with the oracle (the index is updated incrementally between).
    Check {
        len: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..24, 0i64..4, 1usize..8, prop::bool::weighted(0.9))
            .prop_map(|(n, task, chunk, steps)| Op::Add { n, task, chunk, steps }),
        1 => Just(Op::Clear),
        3 => (1usize..10).prop_map(|len| Op::Check { len }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn index_matches_oracle(
        capacity in 1usize..40,
        reservoir in any::<bool>(),
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let retention = if reservoir { Retention::Reservoir } else { Retention::Fifo };
        let s = RingBuffer::with_options(capacity, DO, DT, Options { seed: Some(seed), retention }).unwrap();
        let (mut next, mut episode) = (0u64, 0i64);
        for op in ops {
            match op {
                Op::Add { n, task, chunk, steps } => {
                    let all_steps: Vec<i64> = (0..n as i64).map(|t| if steps { t } else { -1 }).collect();
                    for part in all_steps.chunks(chunk) {
                        let ids: Vec<u64> = (next..next + part.len() as u64).collect();
                        add_ids(&s, &ids, &vec![task; part.len()], &vec![episode; part.len()], part);
                        next += part.len() as u64;
                    }
                    episode += 1;
                }
                Op::Clear => s.clear(),
                Op::Check { len } => {
                    let want = oracle_counts(&s, len);
                    prop_assert_eq!(s.window_counts(len).unwrap(), want.clone());
                    let held: HashMap<u64, RowInfo> = slots(&s).into_iter().flatten().collect();
                    let r = s.sample_windows(16, len, WindowQuery { seed: Some(seed), ..Default::default() });
                    if want.is_empty() {
                        prop_assert!(matches!(r, Err(BufferError::NoValidWindow { .. } | BufferError::Empty)), "{:?}", r);
                        continue;
                    }
                    let b = r.unwrap();
                    let ids = batch_ids(&b.obs, &b.target, DO, DT);
                    for (w, window) in ids.chunks(len).enumerate() {
                        let first = check_window(window, &held);
                        prop_assert_eq!(b.task_ids[w], held[&first].task_id);
                    }
                    // Task weights: only tasks with windows and positive weight are drawn.
                    let weights: Vec<(i64, f64)> = (0..4).map(|t| (t, f64::from(t as u8 % 2))).collect();
                    let known: Vec<(i64, f64)> = weights.iter().copied().filter(|(t, _)| held.values().any(|r| r.task_id == *t && r.step >= 0)).collect();
                    let q = WindowQuery { task_weights: Some(&known), seed: Some(seed ^ 1), ..Default::default() };
                    let odd_windows = want.iter().any(|&(t, _)| t % 2 == 1);
                    match s.sample_windows(8, len, q) {
                        Ok(b) => {
                            prop_assert!(odd_windows);
                            prop_assert!(b.task_ids.iter().all(|t| t % 2 == 1));
                        }
                        Err(e) => prop_assert!(!odd_windows || known.iter().all(|w| w.1 == 0.0), "{e}"),
                    }
                    // Recent: windows lie within the newest rows.
                    let recent = 1 + (seed as usize % 30);
                    let lo = s.total_added().saturating_sub(recent as u64);
                    let in_recent = slots(&s).iter().enumerate().any(|(st, r)| {
                        r.is_some_and(|(_, info)| info.row >= lo) && oracle_valid(&slots(&s), capacity, st, len)
                    });
                    let q = WindowQuery { recent: Some(recent), seed: Some(seed), ..Default::default() };
                    match s.sample_windows(8, len, q) {
                        Ok(b) => {
                            prop_assert!(in_recent);
                            for window in batch_ids(&b.obs, &b.target, DO, DT).chunks(len) {
                                let first = check_window(window, &held);
                                prop_assert!(held[&first].row >= lo);
                            }
                        }
                        Err(e) => {
                            prop_assert!(!in_recent, "{}", e);
                            let named = matches!(e, BufferError::NoValidWindowIn { .. } | BufferError::NoValidWindow { .. } | BufferError::Empty);
                            prop_assert!(named, "{}", e);
                        }
                    }
                    // windows_at: valid iff the window ending at, or starting at, the anchor is.
                    let n = s.len();
                    let anchors: Vec<i64> = (0..n as i64).collect();
                    let mut o = vec![0.0; n * len * DO];
                    let mut t = vec![0.0; n * len * DT];
                    let mut valid = vec![false; n];
                    s.windows_at_into(&anchors, len, &mut o, &mut t, &mut valid).unwrap();
                    let hs = slots(&s);
                    for a in 0..n {
                        let end = if a + 1 >= len { Some(a + 1 - len) } else if n == capacity { Some(a + 1 + capacity - len) } else { None };
                        let end_ok = end.is_some_and(|e| oracle_valid(&hs, capacity, e, len));
                        let start_ok = oracle_valid(&hs, capacity, a, len);
                        prop_assert_eq!(valid[a], end_ok || start_ok, "anchor {}", a);
                        let ids = if valid[a] {
                            batch_ids(&o[a * len * DO..(a + 1) * len * DO], &t[a * len * DT..(a + 1) * len * DT], DO, DT)
                        } else {
                            prop_assert!(o[a * len * DO..(a + 1) * len * DO].iter().all(|&v| v == 0.0));
                            continue;
                        };
                        let want_start = if end_ok { end.unwrap() } else { a };
                        prop_assert_eq!(ids[0], hs[want_start].unwrap().0);
                    }
                    // gather: the rows in those slots.
                    let mut go = vec![0.0; n * DO];
                    let mut gt = vec![0.0; n * DT];
                    s.gather_into(&anchors, &mut go, &mut gt).unwrap();
                    let got = batch_ids(&go, &gt, DO, DT);
                    let want_ids: Vec<u64> = hs.iter().map(|r| r.unwrap().0).collect();
                    prop_assert_eq!(got, want_ids);
                }
            }
        }
    }
}

/// A FIFO store of episodes with lengths cycling through `lens`, tasks cycling 0..tasks.
fn episodes(cap: usize, rows: usize, lens: &[usize], tasks: i64) -> RingBuffer {
    let opts = Options {
        seed: Some(5),
        retention: Retention::Fifo,
    };
    let s = RingBuffer::with_options(cap, DO, DT, opts).unwrap();
    let (mut next, mut ep) = (0u64, 0usize);
    while (next as usize) < rows {
        let n = lens[ep % lens.len()];
        let ids: Vec<u64> = (next..next + n as u64).collect();
        let steps: Vec<i64> = (0..n as i64).collect();
        let task = ep as i64 % tasks;
        add_ids(&s, &ids, &vec![task; n], &vec![ep as i64; n], &steps);
        next += n as u64;
        ep += 1;
    }
    s
}

#[test]
fn uniform_draws_cover_every_start_evenly() {
    // Starts of length 4: episodes of 4, 6 and 9 rows give 1, 3 and 6 starts each.
    let s = episodes(190, 190, &[4, 6, 9], 3);
    let held: HashMap<u64, RowInfo> = slots(&s).into_iter().flatten().collect();
    let n_starts: u64 = s.window_counts(4).unwrap().iter().map(|c| c.1).sum();
    let draws = 200 * n_starts as usize;
    let b = s
        .sample_windows(
            draws,
            4,
            WindowQuery {
                seed: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
    let mut freq: HashMap<u64, usize> = HashMap::new();
    for w in batch_ids(&b.obs, &b.target, DO, DT).chunks(4) {
        *freq.entry(check_window(w, &held)).or_default() += 1;
    }
    assert_eq!(freq.len() as u64, n_starts, "every valid start is drawn");
    for (&id, &f) in &freq {
        // 200 expected per start; 5 standard deviations is about 70.
        assert!((130..=270).contains(&f), "start {id} drawn {f} times");
    }
}

#[test]
fn task_weights_and_seeds_are_honoured() {
    let s = episodes(4000, 4000, &[7, 13, 40], 4);
    let weights = [(0, 3.0), (1, 1.0), (2, 0.0)];
    let q = WindowQuery {
        task_weights: Some(&weights),
        seed: Some(11),
        ..Default::default()
    };
    let b = s.sample_windows(20_000, 5, q).unwrap();
    let zeros = b.task_ids.iter().filter(|&&t| t == 0).count() as f64 / 20_000.0;
    assert!(b.task_ids.iter().all(|&t| t == 0 || t == 1));
    assert!((zeros - 0.75).abs() < 0.02, "task 0 share {zeros}");
    // Same seed, same batch; and the store's shared generator is untouched by seeded draws.
    let before = s.sampler_calls();
    assert_eq!(
        s.sample_windows(64, 5, q).unwrap(),
        s.sample_windows(64, 5, q).unwrap()
    );
    assert_eq!(s.sampler_calls(), before);
    // Equal weights: task-balanced even though task 3's episodes are all 40 rows long.
    let eq = [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)];
    let q = WindowQuery {
        task_weights: Some(&eq),
        seed: Some(2),
        ..Default::default()
    };
    let b = s.sample_windows(20_000, 5, q).unwrap();
    for t in 0..4 {
        let share = b.task_ids.iter().filter(|&&x| x == t).count() as f64 / 20_000.0;
        assert!((share - 0.25).abs() < 0.02, "task {t} share {share}");
    }
    // Bad weights are named errors.
    for (w, ok) in [
        (-1.0, false),
        (f64::NAN, false),
        (f64::INFINITY, false),
        (0.0, false),
    ] {
        let ws = [(0, w)];
        let r = s.sample_windows(
            1,
            5,
            WindowQuery {
                task_weights: Some(&ws),
                ..Default::default()
            },
        );
        assert_eq!(r.is_ok(), ok);
    }
    let unknown = [(99, 1.0)];
    let r = s.sample_windows(
        1,
        5,
        WindowQuery {
            task_weights: Some(&unknown),
            ..Default::default()
        },
    );
    assert_eq!(r.unwrap_err(), BufferError::UnknownTask { task_id: 99 });
}

#[test]
fn sample_tasks_subsets_and_seeds() {
    let s = episodes(5000, 5000, &[13, 40], 50);
    // Task t's episodes are 40 rows long when t is odd, 13 when even.
    let subset = [3, 5, 7, 9];
    for seed in 0..20 {
        let q = rust_buffer::TaskQuery {
            tasks: Some(&subset),
            seed: Some(seed),
        };
        let a = s.sample_tasks_with(3, 8, 8, true, q).unwrap();
        assert!(a.task_ids.iter().all(|t| subset.contains(t)));
        assert_eq!(a, s.sample_tasks_with(3, 8, 8, true, q).unwrap());
        let r = s.sample_tasks_with(3, 4, 4, false, q).unwrap();
        assert!(r.task_ids.iter().all(|t| subset.contains(t)));
    }
    let q = rust_buffer::TaskQuery {
        tasks: Some(&subset),
        seed: None,
    };
    assert!(matches!(
        s.sample_tasks_with(5, 8, 8, true, q),
        Err(BufferError::NotEnoughTasks { available: 4, .. })
    ));
    let evens = [2, 4, 6];
    let q = rust_buffer::TaskQuery {
        tasks: Some(&evens),
        seed: None,
    };
    assert!(matches!(
        s.sample_tasks_with(1, 8, 8, true, q),
        Err(BufferError::NotEnoughTasks { available: 0, .. })
    ));
    // Windows of 32 rows exist only in the 40-row episodes: exactly the tasks
    // `window_counts` lists qualify.
    let qualifying = s.window_counts(32).unwrap().len();
    let r = s.sample_tasks(qualifying, 16, 16, true);
    assert!(r.is_ok(), "{r:?}");
    assert!(s.sample_tasks(qualifying + 1, 16, 16, true).is_err());
}

#[test]
fn reservoir_index_survives_many_replacements() {
    let opts = Options {
        seed: Some(9),
        retention: Retention::Reservoir,
    };
    let s = RingBuffer::with_options(300, DO, DT, opts).unwrap();
    let mut next = 0u64;
    for ep in 0..400i64 {
        let n = 1 + (ep as usize * 7) % 23;
        let ids: Vec<u64> = (next..next + n as u64).collect();
        let steps: Vec<i64> = (0..n as i64).collect();
        add_ids(&s, &ids, &vec![ep % 5; n], &vec![ep; n], &steps);
        next += n as u64;
        if ep % 17 == 0 {
            for len in [1, 2, 3, 6] {
                assert_eq!(
                    s.window_counts(len).unwrap(),
                    oracle_counts(&s, len),
                    "ep {ep} len {len}"
                );
            }
        }
    }
}

/// Window draws depend on the order the index happens to list segments in, which depends on
/// when it was queried; `reseed` rebuilds it, so two stores with the same rows and seed draw
/// the same windows afterwards whatever their query history (what snapshots rely on).
#[test]
fn reseed_makes_window_draws_independent_of_query_history() {
    let a = episodes(300, 0, &[5], 3);
    let b = episodes(300, 0, &[5], 3);
    let (mut next, mut ep) = (0u64, 0i64);
    for round in 0..40 {
        let n = 3 + (round * 7) % 17;
        let ids: Vec<u64> = (next..next + n as u64).collect();
        let steps: Vec<i64> = (0..n as i64).collect();
        for s in [&a, &b] {
            add_ids(s, &ids, &vec![ep % 3; n], &vec![ep; n], &steps);
        }
        if round % 3 == 0 {
            a.sample_windows(4, 2, WindowQuery::default()).unwrap();
        }
        next += n as u64;
        ep += 1;
    }
    a.reseed(5);
    b.reseed(5);
    let q = WindowQuery::default();
    assert_eq!(
        a.sample_windows(64, 3, q).unwrap(),
        b.sample_windows(64, 3, q).unwrap()
    );
    assert_eq!(
        a.sample_tasks(2, 3, 3, true).unwrap(),
        b.sample_tasks(2, 3, 3, true).unwrap()
    );
}

/// A saved store and its loaded copy draw the same windows once the original forgets its
/// index (the Python `save` does this after writing).
#[test]
fn saved_and_loaded_stores_draw_the_same_windows() {
    let a = episodes(200, 500, &[4, 9, 6], 3);
    a.sample_windows(8, 3, WindowQuery::default()).unwrap();
    let ids: Vec<u64> = (1000..1030).collect();
    add_ids(
        &a,
        &ids,
        &[1; 30],
        &[999; 30],
        &(0..30).collect::<Vec<i64>>(),
    );
    a.sample_windows(8, 3, WindowQuery::default()).unwrap();
    let path = std::env::temp_dir().join(format!("windows_save_{}.rbuf", std::process::id()));
    a.save_file(&path).unwrap();
    a.forget_window_index();
    let b = RingBuffer::load_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let q = WindowQuery::default();
    assert_eq!(
        a.sample_windows(64, 3, q).unwrap(),
        b.sample_windows(64, 3, q).unwrap()
    );
    assert_eq!(
        a.sample_tasks(2, 2, 2, true).unwrap(),
        b.sample_tasks(2, 2, 2, true).unwrap()
    );
}
