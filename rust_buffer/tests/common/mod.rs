//! Shared helpers: rows whose content encodes their id, so any copy can be checked.
#![allow(dead_code)]

use std::io::Cursor;

use rust_buffer::persist::PersistError;
use rust_buffer::{Meta, MetaValues, Options, Retention, RingBuffer, RowInfo};

pub const DO: usize = 4;
pub const DT: usize = 3;

/// obs[j] = id * 10 + j, target[j] = -(id * 10 + j): exact in f32 for id < 1e6.
pub fn rows(ids: &[u64]) -> (Vec<f32>, Vec<f32>) {
    let mut obs = Vec::with_capacity(ids.len() * DO);
    let mut target = Vec::with_capacity(ids.len() * DT);
    for &id in ids {
        obs.extend((0..DO).map(|j| (id * 10 + j as u64) as f32));
        target.extend((0..DT).map(|j| -((id * 10 + j as u64) as f32)));
    }
    (obs, target)
}

/// The id a row encodes, asserting the row is internally consistent (not torn).
pub fn row_id(obs: &[f32], target: &[f32]) -> u64 {
    let id = (obs[0] / 10.0).round() as u64;
    for (j, &v) in obs.iter().enumerate() {
        assert_eq!(v, (id * 10 + j as u64) as f32, "torn obs row {obs:?}");
    }
    for (j, &v) in target.iter().enumerate() {
        assert_eq!(
            v,
            -((id * 10 + j as u64) as f32),
            "torn target row {target:?}"
        );
    }
    id
}

pub fn store(capacity: usize, seed: u64) -> RingBuffer {
    RingBuffer::with_options(
        capacity,
        DO,
        DT,
        Options {
            seed: Some(seed),
            retention: Retention::Fifo,
        },
    )
    .unwrap()
}

/// Add rows with the given ids and metadata.
pub fn add_ids(s: &RingBuffer, ids: &[u64], task: &[i64], episode: &[i64], step: &[i64]) {
    let (o, t) = rows(ids);
    let meta = Meta {
        task_id: MetaValues::PerRow(task),
        episode_id: MetaValues::PerRow(episode),
        step: MetaValues::PerRow(step),
    };
    s.add(&o, &t, meta).unwrap();
}

/// Every held row in slot order: (id, info).
pub fn held(s: &RingBuffer) -> Vec<(u64, RowInfo)> {
    let mut o = vec![0.0; s.obs_dim()];
    let mut t = vec![0.0; s.target_dim()];
    (0..s.len())
        .map(|slot| {
            let info = s.read_slot(slot, &mut o, &mut t).expect("slot holds a row");
            (row_id(&o, &t), info)
        })
        .collect()
}

/// Ids of the rows of a flat batch.
pub fn batch_ids(obs: &[f32], target: &[f32], d_o: usize, d_t: usize) -> Vec<u64> {
    obs.chunks(d_o)
        .zip(target.chunks(d_t))
        .map(|(o, t)| row_id(o, t))
        .collect()
}

/// The store's snapshot bytes (`save_to` into memory).
pub fn snapshot(s: &RingBuffer) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    s.save_to(&mut c).unwrap();
    c.into_inner()
}

/// Load a store from snapshot bytes.
pub fn load(bytes: &[u8]) -> Result<RingBuffer, PersistError> {
    RingBuffer::load_from(&mut Cursor::new(bytes), bytes.len() as u64)
}
