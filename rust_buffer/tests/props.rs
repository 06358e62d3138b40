//! Property tests of add/sample invariants against a simple model of the ring.

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Add `n` rows of one episode of task `task`.
    Add {
        n: usize,
        task: i64,
    },
    Clear,
    Sample {
        batch: usize,
    },
    Sequences {
        batch: usize,
        len: usize,
    },
    Tasks {
        n_tasks: usize,
        support: usize,
        query: usize,
        contiguous: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..20, 0i64..4).prop_map(|(n, task)| Op::Add { n, task }),
        1 => Just(Op::Clear),
        2 => (0usize..20).prop_map(|batch| Op::Sample { batch }),
        2 => (1usize..6, 1usize..6).prop_map(|(batch, len)| Op::Sequences { batch, len }),
        2 => (1usize..4, 0usize..4, 0usize..3, any::<bool>())
            .prop_map(|(n_tasks, support, query, contiguous)| Op::Tasks { n_tasks, support, query, contiguous }),
    ]
}

/// Model row: (id, task, episode, step).
type Row = (u64, i64, i64, i64);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn store_matches_model(capacity in 1usize..24, seed in any::<u64>(), ops in prop::collection::vec(op(), 1..40)) {
        let s = store(capacity, seed);
        let mut model: VecDeque<Row> = VecDeque::new();
        let mut next = 0u64;
        let mut episode = 0i64;
        for op in ops {
            match op {
                Op::Add { n, task } => {
                    let ids: Vec<u64> = (next..next + n as u64).collect();
                    let steps: Vec<i64> = (0..n as i64).collect();
                    add_ids(&s, &ids, &vec![task; n], &vec![episode; n], &steps);
                    for (k, &id) in ids.iter().enumerate() {
                        if model.len() == capacity {
                            model.pop_front();
                        }
                        model.push_back((id, task, episode, k as i64));
                    }
                    next += n as u64;
                    episode += 1;
                }
                Op::Clear => {
                    s.clear();
                    model.clear();
                }
                Op::Sample { batch } => {
                    let r = s.sample(batch, true);
                    if batch > model.len() {
                        prop_assert!(r.is_err());
                        continue;
                    }
                    let b = r.unwrap();
                    let meta = b.meta.unwrap();
                    for (i, id) in batch_ids(&b.obs, &b.target, DO, DT).into_iter().enumerate() {
                        let row = model.iter().find(|r| r.0 == id);
                        prop_assert!(row.is_some(), "sampled row {} is not held", id);
                        let &(_, task, ep, step) = row.unwrap();
                        prop_assert_eq!((meta.task_id[i], meta.episode_id[i], meta.step[i]), (task, ep, step));
                    }
                }
                Op::Sequences { batch, len } => {
                    let has_window = model.iter().any(|r| r.3 + 1 >= len as i64
                        && model.iter().filter(|q| q.2 == r.2).count() >= len);
                    match s.sample_sequences(batch, len) {
                        Ok(b) => {
                            prop_assert!(has_window);
                            for (w, ids) in batch_ids(&b.obs, &b.target, DO, DT).chunks(len).enumerate() {
                                let rows: Vec<Row> = ids.iter().map(|id| *model.iter().find(|r| r.0 == *id).unwrap()).collect();
                                for p in rows.windows(2) {
                                    prop_assert_eq!(p[1].0, p[0].0 + 1);
                                    prop_assert_eq!(p[1].2, p[0].2);
                                    prop_assert_eq!(p[1].3, p[0].3 + 1);
                                }
                                prop_assert_eq!(b.task_ids[w], rows[0].1);
                            }
                        }
                        Err(_) => prop_assert!(!has_window || model.is_empty()),
                    }
                }
                Op::Tasks { n_tasks, support, query, contiguous } => {
                    let per = support + query;
                    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
                    for r in &model {
                        *counts.entry(r.1).or_default() += 1;
                    }
                    prop_assert_eq!(s.task_counts(), counts.clone().into_iter().collect::<Vec<_>>());
                    let r = s.sample_tasks(n_tasks, support, query, contiguous);
                    let qualifying = if contiguous {
                        // Tasks with an episode holding `per` rows (a ring keeps a suffix of
                        // each episode, so those rows are consecutive steps).
                        let mut per_episode: BTreeMap<(i64, i64), usize> = BTreeMap::new();
                        for r in &model {
                            *per_episode.entry((r.1, r.2)).or_default() += 1;
                        }
                        let mut tasks: Vec<i64> = per_episode.iter().filter(|(_, &c)| c >= per).map(|(k, _)| k.0).collect();
                        tasks.dedup();
                        tasks.len()
                    } else {
                        counts.values().filter(|&&c| c >= per).count()
                    };
                    if per == 0 || qualifying < n_tasks {
                        prop_assert!(r.is_err());
                        continue;
                    }
                    prop_assert!(r.is_ok(), "sample_tasks failed with enough qualifying tasks: {:?}", r);
                    let b = r.unwrap();
                    let mut tasks = b.task_ids.clone();
                    tasks.sort_unstable();
                    tasks.dedup();
                    prop_assert_eq!(tasks.len(), n_tasks);
                    for (k, &task) in b.task_ids.iter().enumerate() {
                        let mut ids = batch_ids(&b.support_obs[k * support * DO..(k + 1) * support * DO], &b.support_target[k * support * DT..(k + 1) * support * DT], DO, DT);
                        ids.extend(batch_ids(&b.query_obs[k * query * DO..(k + 1) * query * DO], &b.query_target[k * query * DT..(k + 1) * query * DT], DO, DT));
                        for id in &ids {
                            let row = model.iter().find(|r| r.0 == *id);
                            prop_assert!(row.is_some_and(|r| r.1 == task));
                        }
                        if contiguous {
                            prop_assert!(ids.windows(2).all(|p| p[1] == p[0] + 1));
                        }
                        let n = ids.len();
                        ids.sort_unstable();
                        ids.dedup();
                        prop_assert_eq!(ids.len(), n, "support and query overlap");
                    }
                }
            }
            prop_assert_eq!(s.len(), model.len());
            prop_assert_eq!(s.total_added(), next);
            let got: Vec<u64> = held(&s).into_iter().map(|(id, _)| id).collect();
            let mut want: Vec<u64> = model.iter().map(|r| r.0).collect();
            want.sort_unstable();
            let mut got_sorted = got.clone();
            got_sorted.sort_unstable();
            prop_assert_eq!(got_sorted, want);
        }
    }
}
