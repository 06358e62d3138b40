//! Loom model checks of the reservation/stamp protocol on a tiny store (`make loom`):
//! every interleaving (up to the preemption bound) of the real `add` / read code, with loom's
//! atomics and its model of relaxed/acquire/release visibility.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use rust_buffer::{Meta, MetaValues, Options, Retention, RingBuffer};

/// obs_dim 2 (one 64-bit word per row) and target_dim 1 (one 32-bit word): both copy paths.
fn tiny(capacity: usize, retention: Retention) -> RingBuffer {
    RingBuffer::with_options(
        capacity,
        2,
        1,
        Options {
            seed: Some(7),
            retention,
        },
    )
    .unwrap()
}

fn add(s: &RingBuffer, v: f32) {
    let meta = Meta {
        task_id: MetaValues::Scalar(v as i64),
        ..Meta::default()
    };
    s.add(&[v, v], &[v], meta).unwrap();
}

/// A row read from `slot` is never torn: all its values (and its task id) come from one add.
fn check_slot(s: &RingBuffer, slot: usize) -> Option<f32> {
    let (mut o, mut t) = ([0.0f32; 2], [0.0f32; 1]);
    let info = s.read_slot(slot, &mut o, &mut t)?;
    assert_eq!(o[0], o[1], "torn obs {o:?}");
    assert_eq!(o[0], t[0], "obs and target from different writes");
    assert_eq!(info.task_id, o[0] as i64, "metadata from a different write");
    Some(o[0])
}

/// Explore `f` exhaustively up to 2 preemptions (seconds; each protocol mutation tried -
/// dropping a fence, weakening the publish or the first stamp load, skipping validation - is
/// caught at this bound). `LOOM_MAX_PREEMPTIONS=3 make loom` searches deeper (about 100 s).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

/// Run `reader` on its own loom thread while the main thread joins `writers`, then run
/// `after` once everything is joined. (Readers are spawned threads, not the main thread, so
/// loom's scheduler interleaves their first accesses with the writers'.)
fn race(
    s: &Arc<RingBuffer>,
    writers: Vec<thread::JoinHandle<()>>,
    reader: impl Fn(&RingBuffer) + Send + 'static,
) {
    let r = {
        let s = s.clone();
        thread::spawn(move || reader(&s))
    };
    for w in writers {
        w.join().unwrap();
    }
    r.join().unwrap();
}

fn writer(s: &Arc<RingBuffer>, values: &'static [f32]) -> thread::JoinHandle<()> {
    let s = s.clone();
    thread::spawn(move || {
        for &v in values {
            add(&s, v);
        }
    })
}

#[test]
fn reader_never_sees_a_torn_row() {
    model(|| {
        let s = Arc::new(tiny(1, Retention::Fifo));
        let w = writer(&s, &[1.0, 2.0]);
        race(&s, vec![w], |s| {
            let seen = check_slot(s, 0);
            assert!(matches!(seen, None | Some(1.0) | Some(2.0)));
        });
        assert_eq!(check_slot(&s, 0), Some(2.0));
    });
}

#[test]
fn writers_a_lap_apart_take_turns_and_the_newer_row_wins() {
    model(|| {
        let s = Arc::new(tiny(1, Retention::Fifo));
        let writers = vec![writer(&s, &[1.0]), writer(&s, &[2.0])];
        race(&s, writers, |s| {
            let seen = check_slot(s, 0);
            assert!(matches!(seen, None | Some(1.0) | Some(2.0)));
        });
        // The rows reserved indices 0 and 1 in some order; the slot ends with the newer one.
        let (mut o, mut t) = ([0.0f32; 2], [0.0f32; 1]);
        let info = s.read_slot(0, &mut o, &mut t).expect("stable after join");
        assert_eq!(info.row, 1);
        assert_eq!(s.total_added(), 2);
        check_slot(&s, 0);
    });
}

#[test]
fn concurrent_reservations_get_distinct_slots() {
    model(|| {
        let s = Arc::new(tiny(2, Retention::Fifo));
        let writers = vec![writer(&s, &[1.0]), writer(&s, &[2.0])];
        race(&s, writers, |s| {
            let _ = s.len();
        });
        let mut got = [check_slot(&s, 0).unwrap(), check_slot(&s, 1).unwrap()];
        got.sort_by(f32::total_cmp);
        assert_eq!(got, [1.0, 2.0]);
        assert_eq!(s.len(), 2);
    });
}

#[test]
fn reservoir_writers_to_one_slot_never_tear() {
    model(|| {
        // Capacity 1: every row after the first competes for slot 0.
        let s = Arc::new(tiny(1, Retention::Reservoir));
        add(&s, 1.0);
        let writers = vec![writer(&s, &[2.0]), writer(&s, &[3.0])];
        race(&s, writers, |s| {
            let seen = check_slot(s, 0); // None only while a write is in flight
            assert!(matches!(seen, None | Some(1.0) | Some(2.0) | Some(3.0)));
        });
        check_slot(&s, 0).expect("stable after join");
    });
}

/// Add `values.len()` rows in one call (one chunk of the batched write path).
fn add_batch(s: &RingBuffer, values: &[f32]) {
    let obs: Vec<f32> = values.iter().flat_map(|&v| [v, v]).collect();
    let tasks: Vec<i64> = values.iter().map(|&v| v as i64).collect();
    let meta = Meta {
        task_id: MetaValues::PerRow(&tasks),
        ..Meta::default()
    };
    s.add(&obs, values, meta).unwrap();
}

#[test]
fn batched_writers_claim_slots_in_order_without_deadlock_or_tearing() {
    model(|| {
        // Two 2-row batches into 2 slots: each claims both slots before copying.
        let s = Arc::new(tiny(2, Retention::Fifo));
        let writers: Vec<_> = [[1.0f32, 2.0], [3.0, 4.0]]
            .into_iter()
            .map(|vals| {
                let s = s.clone();
                thread::spawn(move || add_batch(&s, &vals))
            })
            .collect();
        race(&s, writers, |s| {
            check_slot(s, 1);
        });
        // Whichever batch reserved rows 2..4 owns both slots at the end.
        let mut got = [check_slot(&s, 0).unwrap(), check_slot(&s, 1).unwrap()];
        got.sort_by(f32::total_cmp);
        assert!(got == [1.0, 2.0] || got == [3.0, 4.0], "{got:?}");
        assert_eq!(s.total_added(), 4);
    });
}

// ---- The dead-writer reclaim path of file-backed stores (`Stamps::reap`). ----

use loom::sync::atomic::{AtomicU64, Ordering};
use rust_buffer::model::{Reaper, Slots};

/// Process ids of the models: 100 died mid-write; 200 and 300 are alive.
const DEAD: u64 = 100;

/// A process table of 4 entries (entry = writer tag), as in a shared store's header.
struct Table(Arc<[AtomicU64; 4]>);

impl Reaper for Table {
    fn is_dead(&self, tag: u64) -> bool {
        self.holder(tag) == DEAD
    }
    fn holder(&self, tag: u64) -> u64 {
        self.0[tag as usize].load(Ordering::SeqCst)
    }
}

/// One slot's stamps judged by a shared table, plus the slot's data word.
fn reclaim_setup() -> (Arc<Slots>, Arc<[AtomicU64; 4]>, Arc<AtomicU64>) {
    let table = Arc::new([
        AtomicU64::new(0),
        AtomicU64::new(DEAD),
        AtomicU64::new(200),
        AtomicU64::new(0),
    ]);
    let slots = Arc::new(Slots::new(1, Box::new(Table(table.clone()))));
    let data = Arc::new(AtomicU64::new(0));
    // Writer tag 1 (process 100) claimed slot 0 for row 0, wrote half its data and died.
    assert!(slots.begin_write(1, 0, 0));
    data.store(999, Ordering::Relaxed);
    (slots, table, data)
}

/// Write `row` (its data is the row number) as writer `tag`; false if the slot had a newer row.
fn write(slots: &Slots, data: &AtomicU64, tag: u64, row: u64) -> bool {
    if !slots.begin_write(tag, 0, row) {
        return false;
    }
    data.store(row, Ordering::Relaxed);
    slots.end_write(0, row);
    true
}

/// A reader never sees the dead writer's row, nor a row whose data is from another write.
fn read_checked(slots: &Slots, data: &AtomicU64) {
    let s1 = slots.read_begin(0);
    if s1 == 0 || s1 & 1 == 1 {
        return;
    }
    let row = s1 / 2 - 1;
    let d = data.load(Ordering::Relaxed);
    if slots.read_validate(0, s1) {
        assert_ne!(row, 0, "the dead writer's row was published");
        assert_eq!(d, row, "row {row} read with data {d}");
    }
}

#[test]
fn a_dead_writers_slot_is_reclaimed_and_the_new_row_is_never_torn() {
    model(|| {
        let (slots, _table, data) = reclaim_setup();
        let w = {
            let (slots, data) = (slots.clone(), data.clone());
            thread::spawn(move || assert!(write(&slots, &data, 2, 1), "row 1 was dropped"))
        };
        let r = {
            let (slots, data) = (slots.clone(), data.clone());
            thread::spawn(move || read_checked(&slots, &data))
        };
        w.join().unwrap();
        r.join().unwrap();
        assert_eq!(slots.peek(0), 2 * 1 + 2);
        assert_eq!(data.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn a_new_owner_of_a_dead_writers_tag_is_never_reclaimed() {
    model(|| {
        let (slots, table, data) = reclaim_setup();
        // Process 300 takes over entry 1 (as `register` does): claim the entry, sweep the dead
        // holder's busy stamps, then write row 1 under tag 1.
        let newcomer = {
            let (slots, table, data) = (slots.clone(), table.clone(), data.clone());
            thread::spawn(move || {
                table[1]
                    .compare_exchange(DEAD, 300, Ordering::SeqCst, Ordering::Relaxed)
                    .unwrap();
                slots.reap(0, Some(1));
                write(&slots, &data, 1, 1);
            })
        };
        // Process 200 writes row 2 into the same slot, reclaiming dead stamps as it waits.
        let lapper = {
            let (slots, data) = (slots.clone(), data.clone());
            thread::spawn(move || assert!(write(&slots, &data, 2, 2), "row 2 was dropped"))
        };
        let r = {
            let (slots, data) = (slots.clone(), data.clone());
            thread::spawn(move || read_checked(&slots, &data))
        };
        newcomer.join().unwrap();
        lapper.join().unwrap();
        r.join().unwrap();
        // The newest row wins and its data is whole: no live write was ever reset under its
        // writer (that would let both write the slot at once).
        assert_eq!(slots.peek(0), 2 * 2 + 2);
        assert_eq!(data.load(Ordering::Relaxed), 2);
    });
}
