//! Rust-level timings of the store against compiled floors, no Python in the loop:
//! `cargo bench -p rust_buffer --bench store`. The Python-level comparison against NumPy and
//! the peer libraries is `benchmarks/bench_buffer.py`.
//!
//! Floors: a random gather is "random index + memcpy of the same bytes" into a reused buffer;
//! a window gather is "random start + memcpy of `seq_len` contiguous rows"; a batched add is a
//! memcpy of the batch into the next rows of a ring. Operations run interleaved in short
//! blocks and each reports its best block: on a shared 2-core machine, other processes only
//! ever make a block slower, so the minimum is the cleanest estimate.

use std::hint::black_box;
use std::time::Instant;

use rust_buffer::rng::Rng;
use rust_buffer::{Meta, MetaBatch, MetaValues, Options, RingBuffer};

const D: usize = 64;
const SEQ: usize = 32;
const BLOCKS: usize = 60;

struct Op<'a> {
    name: String,
    floor: Option<usize>,
    calls: usize,
    run: Box<dyn FnMut() + 'a>,
    best: f64,
}

fn op<'a>(name: String, floor: Option<usize>, calls: usize, run: impl FnMut() + 'a) -> Op<'a> {
    Op {
        name,
        floor,
        calls,
        run: Box::new(run),
        best: f64::INFINITY,
    }
}

fn fill(cap: usize) -> RingBuffer {
    let store = RingBuffer::with_options(
        cap,
        D,
        D,
        Options {
            seed: Some(1),
            ..Options::default()
        },
    )
    .unwrap();
    let mut rng = Rng::new(5);
    let chunk = 65536;
    let data: Vec<f32> = (0..chunk * D)
        .map(|_| (rng.next_u64() % 1000) as f32)
        .collect();
    let steps: Vec<i64> = (0..chunk as i64).map(|i| i % 1000).collect();
    for k in 0..cap.div_ceil(chunk) {
        let eps: Vec<i64> = (0..chunk as i64)
            .map(|i| (k * chunk) as i64 + i / 1000)
            .collect();
        let meta = Meta {
            task_id: MetaValues::Scalar((k % 10) as i64),
            episode_id: MetaValues::PerRow(&eps),
            step: MetaValues::PerRow(&steps),
        };
        store.add(&data, &data, meta).unwrap();
    }
    store
}

fn main() {
    println!(
        "{:<40} {:>10} {:>10} {:>7}",
        "operation (64+64 floats per row)", "store us", "floor us", "ratio"
    );
    for cap in [100_000usize, 1_000_000] {
        let store = fill(cap);
        // SAFETY (floors only): the store is not written while these slices are read.
        let obs = unsafe { std::slice::from_raw_parts(store.obs_ptr(), cap * D) };
        let tgt = unsafe { std::slice::from_raw_parts(store.target_ptr(), cap * D) };
        let mut rng = Rng::new(7);
        let (mut o256, mut t256) = (vec![0f32; 256 * D], vec![0f32; 256 * D]);
        let (mut m256, mut n256) = (vec![0f32; 256 * D], vec![0f32; 256 * D]);
        let (mut o4k, mut t4k) = (vec![0f32; 4096 * D], vec![0f32; 4096 * D]);
        let (mut os, mut ts, mut ids) = (
            vec![0f32; 256 * SEQ * D],
            vec![0f32; 256 * SEQ * D],
            vec![0i64; 256],
        );
        let (mut fo, mut ft) = (vec![0f32; 4096 * D], vec![0f32; 4096 * D]);
        let mut meta = MetaBatch {
            task_id: vec![0; 256],
            episode_id: vec![0; 256],
            step: vec![0; 256],
        };
        let batch: Vec<f32> = (0..1024 * D).map(|i| (i % 7) as f32).collect();
        // Added batches are episodes too, so windows stay available while the ring turns.
        let batch_steps: Vec<i64> = (0..1024).collect();
        let batch_meta = Meta {
            task_id: MetaValues::Scalar(3),
            episode_id: MetaValues::Scalar(-7),
            step: MetaValues::PerRow(&batch_steps),
        };
        let row_meta = Meta {
            step: MetaValues::Scalar(0),
            ..Meta::default()
        };
        let mut ring = vec![0f32; cap * D];
        let mut pos = 0usize;
        let gather = |rng: &mut Rng, n: usize, fo: &mut [f32], ft: &mut [f32]| {
            for i in 0..n {
                let s = rng.below(cap);
                fo[i * D..(i + 1) * D].copy_from_slice(&obs[s * D..(s + 1) * D]);
                ft[i * D..(i + 1) * D].copy_from_slice(&tgt[s * D..(s + 1) * D]);
            }
        };
        let r = std::cell::RefCell::new(&mut rng);
        let f = std::cell::RefCell::new((&mut fo, &mut ft));
        let mut ops = vec![
            op("floor gather 256".into(), None, 40, || {
                let (fo, ft) = &mut *f.borrow_mut();
                gather(&mut r.borrow_mut(), 256, fo, ft);
                black_box(&fo);
            }),
            op(format!("sample(256) from {cap}"), Some(0), 40, || {
                black_box(store.sample(256, false).unwrap());
            }),
            op(format!("sample_into(256) from {cap}"), Some(0), 40, || {
                store.sample_into(&mut o256, &mut t256, None).unwrap();
            }),
            op(
                format!("sample_into(256) +meta from {cap}"),
                Some(0),
                40,
                || {
                    store
                        .sample_into(&mut m256, &mut n256, Some(&mut meta))
                        .unwrap();
                },
            ),
            op("floor gather 4096".into(), None, 4, || {
                let (fo, ft) = &mut *f.borrow_mut();
                gather(&mut r.borrow_mut(), 4096, fo, ft);
                black_box(&fo);
            }),
            op(format!("sample_into(4096) from {cap}"), Some(4), 4, || {
                store.sample_into(&mut o4k, &mut t4k, None).unwrap();
            }),
            op("floor windows 256 x 32".into(), None, 2, || {
                let (fo, ft) = &mut *f.borrow_mut();
                let mut rng = r.borrow_mut();
                for _ in 0..2 {
                    // 2 x 128 windows into the 4096-row buffers: same bytes as 256 x 32.
                    for w in 0..128 {
                        let s = rng.below(cap - SEQ);
                        fo[w * SEQ * D..(w + 1) * SEQ * D]
                            .copy_from_slice(&obs[s * D..(s + SEQ) * D]);
                        ft[w * SEQ * D..(w + 1) * SEQ * D]
                            .copy_from_slice(&tgt[s * D..(s + SEQ) * D]);
                    }
                }
                black_box(&fo);
            }),
            op(
                format!("sample_sequences_into(256, 32) {cap}"),
                Some(6),
                2,
                || {
                    store
                        .sample_sequences_into(SEQ, &mut os, &mut ts, &mut ids)
                        .unwrap();
                },
            ),
            op(
                "floor memcpy 1024 rows into a ring".into(),
                None,
                20,
                || {
                    let p = pos % (cap - 1024);
                    ring[p * D..(p + 1024) * D].copy_from_slice(&batch);
                    ring[(cap - 1024 - p) * D..(cap - p) * D].copy_from_slice(&batch);
                    pos += 1024;
                    black_box(&ring);
                },
            ),
            op(format!("add 1024 rows {cap}"), Some(8), 20, || {
                store.add(&batch, &batch, batch_meta).unwrap();
            }),
            op(format!("add 1 row x 100 {cap}"), None, 20, || {
                for _ in 0..100 {
                    store.add(&batch[..D], &batch[..D], row_meta).unwrap();
                }
            }),
            op(format!("sample_tasks(1, 10, 10) {cap}"), None, 20, || {
                black_box(store.sample_tasks(1, 10, 10, false).unwrap());
            }),
        ];
        for _ in 0..BLOCKS {
            for o in ops.iter_mut() {
                let t = Instant::now();
                for _ in 0..o.calls {
                    (o.run)();
                }
                o.best = o.best.min(t.elapsed().as_secs_f64() * 1e6 / o.calls as f64);
            }
        }
        for o in &ops {
            match o.floor {
                Some(i) => println!(
                    "{:<40} {:>10.1} {:>10.1} {:>7.2}",
                    o.name,
                    o.best,
                    ops[i].best,
                    o.best / ops[i].best
                ),
                None => println!("{:<40} {:>10.1}", o.name, o.best),
            }
        }
        println!(
            "  add 1024 rows: {:.1} GB/s",
            1024.0 * 2.0 * D as f64 * 4.0 / ops[9].best / 1e3
        );
    }
}
