//! Rust-level timings of the store against a compiled gather floor (no Python in the loop).
//! `cargo bench -p rust_buffer` prints a table; the Python-level comparison against NumPy and
//! the peers is `benchmarks/bench_buffer.py`.

use std::hint::black_box;
use std::time::Instant;

use rust_buffer::rng::Rng;
use rust_buffer::{Meta, MetaValues, Options, RingBuffer};

const D: usize = 64;

/// Best-of-`reps` mean time of `iters` calls, in microseconds (best-of filters a noisy host).
fn time(iters: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.min(50) {
        f();
    }
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// The floor: random index + memcpy of the same bytes (obs and target rows), into reused
/// buffers.
fn floor(
    obs: &[f32],
    target: &[f32],
    cap: usize,
    batch: usize,
    rng: &mut Rng,
    o: &mut [f32],
    t: &mut [f32],
) {
    for i in 0..batch {
        let s = rng.below(cap);
        o[i * D..(i + 1) * D].copy_from_slice(&obs[s * D..(s + 1) * D]);
        t[i * D..(i + 1) * D].copy_from_slice(&target[s * D..(s + 1) * D]);
    }
}

fn main() {
    println!(
        "{:<34} {:>10} {:>10} {:>7}",
        "operation", "store us", "floor us", "ratio"
    );
    for cap in [100_000usize, 1_000_000] {
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
        let data: Vec<f32> = (0..cap * D)
            .map(|_| (rng.next_u64() % 1000) as f32)
            .collect();
        let steps: Vec<i64> = (0..cap as i64).map(|i| i % 1000).collect();
        let eps: Vec<i64> = (0..cap as i64).map(|i| i / 1000).collect();
        for start in (0..cap).step_by(65536) {
            let end = (start + 65536).min(cap);
            let meta = Meta {
                task_id: MetaValues::Scalar(0),
                episode_id: MetaValues::PerRow(&eps[start..end]),
                step: MetaValues::PerRow(&steps[start..end]),
            };
            store
                .add(&data[start * D..end * D], &data[start * D..end * D], meta)
                .unwrap();
        }
        let floor_target = data.clone();
        for batch in [256usize, 4096] {
            let iters = if batch == 256 { 2000 } else { 200 };
            let (mut o, mut t) = (vec![0.0; batch * D], vec![0.0; batch * D]);
            let f = time(iters, 7, || {
                floor(&data, &floor_target, cap, batch, &mut rng, &mut o, &mut t);
                black_box((&o, &t));
            });
            let s = time(iters, 7, || {
                black_box(store.sample(batch, false).unwrap());
            });
            let si = time(iters, 7, || {
                store.sample_into(&mut o, &mut t, None).unwrap();
                black_box((&o, &t));
            });
            println!(
                "{:<34} {:>10.1} {:>10.1} {:>7.2}",
                format!("sample({batch}) from {cap}"),
                s,
                f,
                s / f
            );
            println!(
                "{:<34} {:>10.1} {:>10.1} {:>7.2}",
                format!("sample_into({batch}) from {cap}"),
                si,
                f,
                si / f
            );
        }
        let seq = time(200, 7, || {
            black_box(store.sample_sequences(256, 32).unwrap());
        });
        println!(
            "{:<34} {:>10.1}",
            format!("sample_sequences(256, 32) {cap}"),
            seq
        );
        let batch = &data[..1024 * D];
        let add = time(500, 7, || {
            store.add(batch, batch, Meta::default()).unwrap();
        });
        println!(
            "{:<34} {:>10.1}   {:.1} GB/s",
            format!("add 1024 rows {cap}"),
            add,
            1024.0 * 512.0 / add / 1e3
        );
        let add1 = time(20000, 7, || {
            store
                .add(&batch[..D], &batch[..D], Meta::default())
                .unwrap();
        });
        println!("{:<34} {:>10.3}", format!("add 1 row {cap}"), add1);
    }
}
