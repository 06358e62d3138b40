//! The ring against a `VecDeque` model, plus the samplers' behaviour on small stores.

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::*;
use rust_buffer::{BufferError, Meta, MetaValues, Options, Retention, RingBuffer};

#[test]
fn wraparound_matches_vecdeque_model() {
    let capacity = 7;
    let s = store(capacity, 3);
    let mut model: VecDeque<u64> = VecDeque::new();
    let mut next = 0u64;
    for round in 0..60u64 {
        let n = 1 + (round * 7 % 11) as usize; // 1..11 rows, some batches larger than capacity
        let ids: Vec<u64> = (next..next + n as u64).collect();
        next += n as u64;
        let task: Vec<i64> = ids.iter().map(|&i| (i % 3) as i64).collect();
        add_ids(&s, &ids, &task, &vec![0; n], &vec![0; n]);
        for &id in &ids {
            if model.len() == capacity {
                model.pop_front();
            }
            model.push_back(id);
        }
        assert_eq!(s.len(), model.len());
        assert_eq!(s.total_added(), next);
        let got = held(&s);
        // Slot order: slot = global index mod capacity.
        let mut by_slot = vec![u64::MAX; model.len()];
        for &id in &model {
            by_slot[(id % capacity as u64) as usize] = id;
        }
        let got_ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert_eq!(got_ids, by_slot);
        for (id, info) in &got {
            assert_eq!(info.row, *id);
            assert_eq!(info.task_id, (*id % 3) as i64);
        }
        let counts: BTreeMap<i64, usize> = s.task_counts().into_iter().collect();
        let mut expect = BTreeMap::new();
        for &id in &model {
            *expect.entry((id % 3) as i64).or_insert(0) += 1;
        }
        assert_eq!(counts, expect);
    }
}

#[test]
fn samples_only_held_rows_and_is_deterministic() {
    let s = store(50, 11);
    let ids: Vec<u64> = (0..80).collect();
    add_ids(&s, &ids, &[0; 80], &[0; 80], &[0; 80]);
    let b = s.sample(40, true).unwrap();
    let got = batch_ids(&b.obs, &b.target, DO, DT);
    assert!(got.iter().all(|&id| (30..80).contains(&id)), "{got:?}");
    let again = store(50, 11);
    add_ids(&again, &ids, &[0; 80], &[0; 80], &[0; 80]);
    assert_eq!(again.sample(40, true).unwrap(), b);
    let other = store(50, 12);
    add_ids(&other, &ids, &[0; 80], &[0; 80], &[0; 80]);
    assert_ne!(other.sample(40, true).unwrap(), b);
}

#[test]
fn sample_is_roughly_uniform() {
    let s = store(10, 5);
    add_ids(
        &s,
        &(0..10).collect::<Vec<_>>(),
        &[0; 10],
        &[0; 10],
        &[0; 10],
    );
    let mut hits = [0usize; 10];
    for _ in 0..1000 {
        let b = s.sample(10, false).unwrap();
        for id in batch_ids(&b.obs, &b.target, DO, DT) {
            hits[id as usize] += 1;
        }
    }
    assert!(hits.iter().all(|&h| (850..1150).contains(&h)), "{hits:?}");
}

#[test]
fn errors_are_named_and_nothing_is_inserted() {
    let s = store(8, 0);
    assert_eq!(s.sample(1, false).unwrap_err(), BufferError::Empty);
    let err = s.add(&[1.0; 5], &[0.0; 3], Meta::default()).unwrap_err();
    assert!(
        matches!(
            err,
            BufferError::Columns {
                got: 5,
                expected: 4,
                ..
            }
        ),
        "{err}"
    );
    let err = s.add(&[1.0; 8], &[0.0; 3], Meta::default()).unwrap_err();
    assert_eq!(
        err,
        BufferError::RowMismatch {
            obs_rows: 2,
            target_rows: 1
        }
    );
    let mut obs = vec![1.0; 8];
    obs[6] = f32::NAN;
    let err = s.add(&obs, &[0.0; 6], Meta::default()).unwrap_err();
    assert!(
        matches!(err, BufferError::NonFinite { row: 1, col: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was inserted"));
    let err = s
        .add(&[1.0; 4], &[f32::INFINITY, 0.0, 0.0], Meta::default())
        .unwrap_err();
    assert!(
        matches!(err, BufferError::NonFinite { row: 0, col: 0, .. }),
        "{err}"
    );
    let meta = Meta {
        task_id: MetaValues::PerRow(&[1, 2, 3]),
        ..Meta::default()
    };
    let err = s.add(&[1.0; 8], &[0.0; 6], meta).unwrap_err();
    assert!(matches!(
        err,
        BufferError::MetaLength {
            name: "task_id",
            got: 3,
            expected: 2
        }
    ));
    assert_eq!(s.total_added(), 0);
    assert_eq!(s.len(), 0);
    s.add(&[1.0; 8], &[0.0; 6], Meta::default()).unwrap();
    let err = s.sample(3, false).unwrap_err();
    assert!(
        err.to_string()
            .contains("requested 3 rows but the store holds only 2"),
        "{err}"
    );
    assert_eq!(
        RingBuffer::new(0, 1, 1).unwrap_err(),
        BufferError::ZeroCapacity
    );
    assert!(matches!(
        RingBuffer::new(1, 0, 1),
        Err(BufferError::ZeroDim { .. })
    ));
    assert!(matches!(
        RingBuffer::new(usize::MAX / 2, 4, 1),
        Err(BufferError::TooLarge { .. })
    ));
}

#[test]
fn sample_into_checks_sizes() {
    let s = store(8, 0);
    add_ids(&s, &[1, 2, 3], &[0; 3], &[0; 3], &[0; 3]);
    let (mut o, mut t) = (vec![0.0; 2 * DO], vec![0.0; 2 * DT]);
    s.sample_into(&mut o, &mut t, None).unwrap();
    assert!(batch_ids(&o, &t, DO, DT)
        .iter()
        .all(|id| (1..=3).contains(id)));
    let mut short = vec![0.0; DT];
    assert!(matches!(
        s.sample_into(&mut o, &mut short, None),
        Err(BufferError::OutputSize {
            name: "target_out",
            ..
        })
    ));
}

#[test]
fn clear_restarts_at_slot_zero() {
    let s = store(5, 0);
    add_ids(&s, &[1, 2, 3, 4, 5, 6, 7], &[1; 7], &[0; 7], &[0; 7]);
    s.clear();
    assert_eq!(s.len(), 0);
    assert_eq!(s.total_added(), 7);
    assert!(s.task_counts().is_empty());
    add_ids(&s, &[50, 51], &[4; 2], &[0; 2], &[0; 2]);
    let ids: Vec<u64> = held(&s).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![50, 51]);
    assert_eq!(s.task_counts(), vec![(4, 2)]);
}

#[test]
fn recent_and_task_rows() {
    let s = store(32, 1);
    let ids: Vec<u64> = (0..50).collect();
    let task: Vec<i64> = ids.iter().map(|&i| (i % 2) as i64).collect();
    add_ids(&s, &ids, &task, &[0; 50], &[0; 50]);
    for _ in 0..20 {
        let b = s.sample_recent(6, 6, true).unwrap();
        assert!(batch_ids(&b.obs, &b.target, DO, DT)
            .iter()
            .all(|&id| id >= 44));
        let b = s.sample_task_rows(1, 8, true).unwrap();
        assert!(batch_ids(&b.obs, &b.target, DO, DT)
            .iter()
            .all(|&id| id % 2 == 1));
        assert_eq!(b.meta.unwrap().task_id, vec![1; 8]);
    }
    assert!(matches!(
        s.sample_recent(1, 33, false),
        Err(BufferError::WindowTooLarge { .. })
    ));
    assert_eq!(
        s.sample_task_rows(7, 1, false).unwrap_err(),
        BufferError::UnknownTask { task_id: 7 }
    );
    assert!(matches!(
        s.sample_task_rows(1, 17, false),
        Err(BufferError::NotEnoughRows { .. })
    ));
}

/// Episodes of `len` steps, ids consecutive, task = episode % n_tasks.
fn episodes(s: &RingBuffer, n_episodes: u64, len: u64, n_tasks: u64, first_id: u64) {
    for e in 0..n_episodes {
        let ids: Vec<u64> = (0..len).map(|k| first_id + e * len + k).collect();
        let n = ids.len();
        let steps: Vec<i64> = (0..len as i64).collect();
        add_ids(
            s,
            &ids,
            &vec![(e % n_tasks) as i64; n],
            &vec![e as i64; n],
            &steps,
        );
    }
}

#[test]
fn sequences_stay_in_one_episode_and_never_cross_the_cursor() {
    let s = store(100, 2);
    episodes(&s, 13, 10, 3, 0); // 130 rows into 100 slots: the cursor sits mid-episode
    for _ in 0..50 {
        let b = s.sample_sequences(8, 4).unwrap();
        for (w, window) in b.obs.chunks(4 * DO).enumerate() {
            let ids = batch_ids(window, &b.target[w * 4 * DT..(w + 1) * 4 * DT], DO, DT);
            assert!(ids.windows(2).all(|p| p[1] == p[0] + 1), "{ids:?}");
            assert_eq!(ids[0] / 10, ids[3] / 10, "crosses an episode: {ids:?}");
            assert!(ids[0] >= 30, "read an overwritten row: {ids:?}");
            assert_eq!(b.task_ids[w], ((ids[0] / 10) % 3) as i64);
        }
    }
    let err = s.sample_sequences(1, 11).unwrap_err();
    assert!(
        matches!(err, BufferError::NoValidWindow { seq_len: 11, .. }),
        "{err}"
    );
}

#[test]
fn rare_windows_are_found_exactly() {
    // 1000 rows of 1-step episodes and one 5-step episode: random starts almost always fail.
    let s = store(2000, 4);
    episodes(&s, 1000, 1, 1, 0);
    episodes(&s, 1, 5, 1, 5000);
    let b = s.sample_sequences(3, 5).unwrap();
    let ids = batch_ids(&b.obs, &b.target, DO, DT);
    assert_eq!(ids, [5000, 5001, 5002, 5003, 5004].repeat(3));
}

#[test]
fn sample_tasks_disjoint_and_contiguous() {
    let s = store(400, 9);
    episodes(&s, 30, 10, 5, 0); // tasks 0..5, 60 rows each, episodes of 10 steps
    for contiguous in [false, true] {
        let b = s.sample_tasks(3, 4, 2, contiguous).unwrap();
        let mut seen = b.task_ids.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 3, "tasks must be distinct");
        for (k, &task) in b.task_ids.iter().enumerate() {
            let sup = batch_ids(
                &b.support_obs[k * 4 * DO..(k + 1) * 4 * DO],
                &b.support_target[k * 4 * DT..(k + 1) * 4 * DT],
                DO,
                DT,
            );
            let qry = batch_ids(
                &b.query_obs[k * 2 * DO..(k + 1) * 2 * DO],
                &b.query_target[k * 2 * DT..(k + 1) * 2 * DT],
                DO,
                DT,
            );
            let all: Vec<u64> = sup.iter().chain(&qry).copied().collect();
            assert!(all.iter().all(|&id| ((id / 10) % 5) as i64 == task));
            let mut uniq = all.clone();
            uniq.sort_unstable();
            uniq.dedup();
            assert_eq!(uniq.len(), 6, "support and query must be disjoint: {all:?}");
            if contiguous {
                assert!(all.windows(2).all(|p| p[1] == p[0] + 1), "{all:?}");
                assert_eq!(all[0] / 10, all[5] / 10);
            }
        }
    }
    let err = s.sample_tasks(6, 1, 1, false).unwrap_err();
    assert!(
        matches!(
            err,
            BufferError::NotEnoughTasks {
                requested: 6,
                available: 5,
                ..
            }
        ),
        "{err}"
    );
    let err = s.sample_tasks(1, 8, 3, true).unwrap_err();
    assert!(
        matches!(
            err,
            BufferError::NotEnoughTasks {
                contiguous: true,
                available: 0,
                ..
            }
        ),
        "{err}"
    );
    let b = s.sample_tasks(5, 3, 0, true).unwrap();
    assert!(b.query_obs.is_empty());
}

#[test]
fn reservoir_keeps_a_uniform_sample() {
    let opts = Options {
        seed: Some(42),
        retention: Retention::Reservoir,
    };
    let s = RingBuffer::with_options(500, DO, DT, opts).unwrap();
    let total = 10_000u64;
    for start in (0..total).step_by(250) {
        let ids: Vec<u64> = (start..start + 250).collect();
        add_ids(&s, &ids, &[0; 250], &[0; 250], &[0; 250]);
    }
    assert_eq!(s.len(), 500);
    assert_eq!(s.total_added(), total);
    let ids: Vec<u64> = held(&s).into_iter().map(|(id, _)| id).collect();
    let mut uniq = ids.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), 500);
    let mut tenths = [0usize; 10];
    for id in ids {
        tenths[(id / 1000) as usize] += 1;
    }
    assert!(tenths.iter().all(|&n| (25..=75).contains(&n)), "{tenths:?}");
    let b = s.sample_recent(5, 500, false).unwrap();
    assert!(batch_ids(&b.obs, &b.target, DO, DT)
        .iter()
        .all(|&id| id >= total - 500));
}
