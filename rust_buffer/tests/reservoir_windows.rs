//! Regression: `sample_sequences` and contiguous `sample_tasks` on reservoir stores filled past
//! capacity. Once full, a reservoir puts each kept row in a random slot, so a window's two ends
//! can survive while a slot inside it was replaced; such windows must never be returned, and
//! must not make the sampler report contention (there is no concurrent writer here).

mod common;

use std::collections::BTreeSet;

use common::*;
use rust_buffer::{BufferError, Options, Retention, RingBuffer};

/// Steps per episode; row ids are global insertion indices, so `id / EP` is the episode.
const EP: u64 = 20;

fn reservoir(capacity: usize, seed: u64) -> RingBuffer {
    let opts = Options {
        seed: Some(seed),
        retention: Retention::Reservoir,
    };
    RingBuffer::with_options(capacity, DO, DT, opts).unwrap()
}

/// `n` episodes of `EP` steps, one `add` call each; task = episode % 3.
fn fill(s: &RingBuffer, n: u64) {
    for e in 0..n {
        let ids: Vec<u64> = (e * EP..(e + 1) * EP).collect();
        let steps: Vec<i64> = (0..EP as i64).collect();
        let k = ids.len();
        add_ids(
            s,
            &ids,
            &vec![(e % 3) as i64; k],
            &vec![e as i64; k],
            &steps,
        );
    }
}

/// Is `b` the next step of the same episode as `a` (ids encode episode and step)?
fn next_step(a: u64, b: u64) -> bool {
    b == a + 1 && a / EP == b / EP
}

/// Oracle from the slot contents of a full store: (first ids of intact windows, number of
/// starts whose two ends agree although a slot inside was replaced).
fn oracle(s: &RingBuffer, len: usize) -> (BTreeSet<u64>, usize) {
    let ids: Vec<u64> = held(s).into_iter().map(|(id, _)| id).collect();
    let n = ids.len();
    assert_eq!(
        n,
        s.capacity(),
        "the oracle expects a full store (windows wrap)"
    );
    let mut intact = BTreeSet::new();
    let mut broken_inside = 0;
    for start in 0..n {
        let w: Vec<u64> = (0..len).map(|i| ids[(start + i) % n]).collect();
        let ends_agree = w[len - 1] == w[0] + (len as u64 - 1) && w[0] / EP == w[len - 1] / EP;
        if w.windows(2).all(|p| next_step(p[0], p[1])) {
            intact.insert(w[0]);
        } else if ends_agree {
            broken_inside += 1;
        }
    }
    (intact, broken_inside)
}

/// Check a batch of windows of `len` rows; returns their first ids.
fn window_starts(obs: &[f32], target: &[f32], tasks: &[i64], len: usize) -> Vec<u64> {
    let ids = batch_ids(obs, target, DO, DT);
    ids.chunks(len)
        .zip(tasks)
        .map(|(w, &task)| {
            assert!(w.windows(2).all(|p| next_step(p[0], p[1])), "{w:?}");
            assert_eq!(task, ((w[0] / EP) % 3) as i64, "{w:?}");
            w[0]
        })
        .collect()
}

#[test]
fn reservoir_windows_are_intact_and_uniform_over_the_oracle() {
    let len = 3;
    for seed in 0..4 {
        let s = reservoir(200, seed);
        fill(&s, 40); // 800 rows into 200 slots: about 1 in 4 first-fill rows survive
        let (intact, broken_inside) = oracle(&s, len);
        // The case that broke: few intact windows, and starts whose ends agree are not enough.
        assert!(
            !intact.is_empty() && broken_inside > 0,
            "{intact:?} {broken_inside}"
        );
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..20 {
            let b = s.sample_sequences(200, len).unwrap();
            for first in window_starts(&b.obs, &b.target, &b.task_ids, len) {
                assert!(
                    intact.contains(&first),
                    "seed {seed}: window at {first} not intact"
                );
                *counts.entry(first).or_insert(0usize) += 1;
            }
        }
        // Uniform over the intact windows: 4000 draws, each expected 4000 / |intact| times.
        let expected = 4000.0 / intact.len() as f64;
        assert_eq!(counts.len(), intact.len(), "seed {seed}: {counts:?}");
        for (&first, &n) in &counts {
            let ratio = n as f64 / expected;
            assert!(
                (0.8..1.2).contains(&ratio),
                "seed {seed}: {first} drawn {n} times"
            );
        }
    }
}

#[test]
fn reservoir_without_intact_windows_reports_no_valid_window() {
    let len = 8;
    for seed in 0..4 {
        let s = reservoir(200, seed);
        fill(&s, 40);
        let (intact, broken_inside) = oracle(&s, len);
        assert!(
            intact.is_empty() && broken_inside > 0,
            "{intact:?} {broken_inside}"
        );
        let err = s.sample_sequences(4, len).unwrap_err();
        assert!(
            matches!(
                err,
                BufferError::NoValidWindow {
                    seq_len: 8,
                    rows: 200
                }
            ),
            "seed {seed}: {err}"
        );
    }
}

#[test]
fn reservoir_contiguous_tasks_are_intact_windows() {
    let (n_support, n_query) = (2, 1);
    let len = n_support + n_query;
    for seed in 0..4 {
        let s = reservoir(200, seed);
        fill(&s, 40);
        let (intact, _) = oracle(&s, len);
        let tasks: BTreeSet<i64> = intact.iter().map(|&id| ((id / EP) % 3) as i64).collect();
        for _ in 0..50 {
            let b = s
                .sample_tasks(tasks.len(), n_support, n_query, true)
                .unwrap();
            let support = batch_ids(&b.support_obs, &b.support_target, DO, DT);
            let query = batch_ids(&b.query_obs, &b.query_target, DO, DT);
            for (t, &task) in b.task_ids.iter().enumerate() {
                let mut w = support[t * n_support..(t + 1) * n_support].to_vec();
                w.extend_from_slice(&query[t * n_query..(t + 1) * n_query]);
                assert!(intact.contains(&w[0]), "seed {seed}: {w:?} not intact");
                assert!(w.windows(2).all(|p| next_step(p[0], p[1])), "{w:?}");
                assert_eq!(task, ((w[0] / EP) % 3) as i64);
            }
        }
    }
}
