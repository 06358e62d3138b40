//! The task index: which slots hold rows of which task.
//!
//! `sample_tasks`, `sample_task_rows` and `task_counts` need each task's slots. Scanning the
//! whole `task_id` column costs `O(len)` per call (about 10 ms at a million rows), so in FIFO
//! mode the index is kept between calls and brought up to date from the rows added since: in a
//! ring, row `r` lands in slot `(r - base) % capacity`, so a refresh reads only the new rows'
//! slots and moves each slot to its new task's list (`O(1)` per row with a position table).
//! A refresh stops at the first row whose write is unfinished and resumes there next time. A
//! `clear`, or more than `capacity` new rows, starts it afresh. The index lives behind a
//! mutex that only these task queries take; `add` never touches it.
//!
//! Reservoir mode drops and places rows by hash, so it scans every call instead.

use std::collections::HashMap;

use crate::rows::Retention;
use crate::slots::stable_row;
use crate::store::RingBuffer;
use crate::sync::Ordering;

/// Marks a slot that is not in any task's list.
const NONE: u32 = u32::MAX;

/// Each task's slots, sorted by task id (a borrowed view for one query).
pub(crate) struct TaskSlots<'a> {
    pub(crate) tasks: Vec<(i64, &'a [u32])>,
}

impl TaskSlots<'_> {
    /// The slots of `task`, if it holds any rows.
    pub(crate) fn get(&self, task: i64) -> Option<&[u32]> {
        self.tasks
            .binary_search_by_key(&task, |(t, _)| *t)
            .ok()
            .map(|i| self.tasks[i].1)
    }
}

/// The incrementally maintained index (FIFO only).
pub(crate) struct IndexCache {
    /// The `base` (last clear) it was built for.
    base: u64,
    /// Rows `..upto` are reflected.
    upto: u64,
    by_task: HashMap<i64, Vec<u32>>,
    /// Per slot: the task it is listed under, and its position in that list (`NONE`: unlisted).
    task: Vec<i64>,
    pos: Vec<u32>,
}

impl IndexCache {
    fn new(capacity: usize, base: u64, upto: u64) -> Self {
        IndexCache {
            base,
            upto,
            by_task: HashMap::new(),
            task: vec![0; capacity],
            pos: vec![NONE; capacity],
        }
    }

    /// List `slot` under `task` (moving it from its previous task's list).
    fn set(&mut self, slot: usize, task: i64) {
        let p = self.pos[slot];
        if p != NONE {
            let old = self.task[slot];
            if old == task {
                return;
            }
            if let Some(list) = self.by_task.get_mut(&old) {
                list.swap_remove(p as usize);
                if let Some(&moved) = list.get(p as usize) {
                    self.pos[moved as usize] = p;
                }
                if list.is_empty() {
                    self.by_task.remove(&old);
                }
            }
        }
        let list = self.by_task.entry(task).or_default();
        self.pos[slot] = list.len() as u32;
        list.push(slot as u32);
        self.task[slot] = task;
    }

    fn view(&self) -> TaskSlots<'_> {
        let mut tasks: Vec<(i64, &[u32])> = self
            .by_task
            .iter()
            .map(|(t, v)| (*t, v.as_slice()))
            .collect();
        tasks.sort_unstable_by_key(|(t, _)| *t);
        TaskSlots { tasks }
    }
}

/// The incremental index in `slot` (its `built` says `(base, upto)`), rebuilt by `fresh`
/// when missing, built before a clear (another `base`), or behind `oldest` (rows it never saw
/// were overwritten since).
pub(crate) fn current<C>(
    slot: &mut Option<Box<C>>,
    base: u64,
    oldest: u64,
    built: impl FnOnce(&C) -> (u64, u64),
    fresh: impl FnOnce() -> C,
) -> &mut C {
    let stale = match slot.as_deref() {
        Some(c) => {
            let (b, upto) = built(c);
            b != base || upto < oldest
        }
        None => true,
    };
    if stale {
        *slot = Some(Box::new(fresh()));
    }
    slot.as_mut().expect("just filled")
}

impl RingBuffer {
    /// Run `f` on the current task index.
    pub(crate) fn with_tasks<R>(&self, f: impl FnOnce(&TaskSlots<'_>) -> R) -> R {
        if self.retention() == Retention::Reservoir || self.capacity >= NONE as usize {
            let owned = self.scan_tasks();
            let tasks = owned.iter().map(|(t, v)| (*t, v.as_slice())).collect();
            return f(&TaskSlots { tasks });
        }
        self.index.with(|slot| f(&self.refresh(slot).view()))
    }

    /// Bring the FIFO index up to the rows added so far.
    fn refresh<'a>(&self, slot: &'a mut Option<Box<IndexCache>>) -> &'a IndexCache {
        let base = self.base();
        let cursor = self.cursor();
        let cap = self.capacity as u64;
        // The oldest row that can still be held.
        let oldest = base.max(cursor.saturating_sub(cap));
        let c = current(
            slot,
            base,
            oldest,
            |c| (c.base, c.upto),
            || IndexCache::new(self.capacity, base, oldest),
        );
        let mut row = c.upto;
        let mut s = ((row - base) % cap) as usize;
        while row < cursor {
            let s1 = self.stamps.read_begin(s);
            // Unfinished (or not yet started) write of `row`: resume here next time.
            if !matches!(stable_row(s1), Some(held) if held >= row) {
                break;
            }
            let task = self.task_id[s].load(Ordering::Relaxed);
            if !self.stamps.read_validate(s, s1) {
                break;
            }
            c.set(s, task);
            row += 1;
            s += 1;
            if s == self.capacity {
                s = 0;
            }
        }
        c.upto = row;
        c
    }

    /// A fresh scan of the held rows into per-task slot lists, sorted by task id.
    fn scan_tasks(&self) -> Vec<(i64, Vec<u32>)> {
        let base = self.base();
        let mut map: HashMap<i64, Vec<u32>> = HashMap::new();
        for slot in 0..self.len() {
            if let Some(info) = self.read_meta(slot, base) {
                map.entry(info.task_id).or_default().push(slot as u32);
            }
        }
        let mut tasks: Vec<(i64, Vec<u32>)> = map.into_iter().collect();
        tasks.sort_unstable_by_key(|(t, _)| *t);
        tasks
    }
}
