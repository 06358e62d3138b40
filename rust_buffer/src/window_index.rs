//! The window index: every valid window start of every length, kept between queries so that
//! drawing a window costs `O(log)` whatever the store's size and episode lengths.
//!
//! **The rule** (one definition, [`links`]): slot `s` *links* to the next slot when both hold
//! rows, the next one is the row inserted right after `s`'s (global index + 1, so a window
//! never crosses the write cursor or a lapped/dropped row), of the same task and episode, with
//! the next step (`step + 1`), and `s`'s step is `>= 0`. A window of `L` rows starting at `s`
//! is valid when `s` holds a row with `step >= 0` and each of its first `L - 1` slots links to
//! the next. `read_window` checks the same rule again, row by row under the stamps, when it
//! copies a window, so a window being overwritten concurrently is never returned.
//!
//! **Segments.** Maximal chains of linked slots are kept as segments (head slot, length). A
//! segment of `n` rows holds `max(0, n - L + 1)` valid starts of length `L`: its first
//! `n - L + 1` slots. Segments are grouped by length in a [`LenSet`]: one list of heads per
//! length, and two Fenwick trees over the lengths (taken in decreasing order, so "length at
//! least `L`" is a prefix) holding the count of segments and the sum of `n + 1`. Then the
//! number of valid starts of length `L` is `sum(n + 1) - L * count` over that prefix, and a
//! uniform start is a Fenwick descent to the length, a uniform segment of that length and a
//! uniform offset in it: `O(log max_len)`. One `LenSet` covers all segments and one per task
//! covers that task's, so task-weighted draws cost the same.
//!
//! **Maintenance.** Like the task index (`index`), the structure lives behind a mutex that
//! only window queries take (`add` never touches it) and is brought up to date at the start
//! of each query from the rows added since the last one, in insertion order: row `r` goes to
//! the slot `slot_for(r)` names (FIFO: the next slot of the ring; reservoir: the hashed slot,
//! or nowhere when dropped). Its old row leaves the slot (splitting that row's segment in two;
//! in a FIFO ring the oldest row is always a segment's head, so that is `O(1)`), then the new
//! row joins the segment that ends in the slot before it when the two rows link. A new row
//! can only link to its left: the row after it does not exist yet. So each added row costs
//! `O(log)` (plus, in reservoir mode, a walk to the head of the segment a replaced row sat
//! in). The update stops at the first row whose write is unfinished and resumes there, so rows
//! being written are never valid. A `clear`, or more than `capacity` new rows in FIFO mode,
//! starts the index afresh from the rows still held. Reservoir mode replays every row added
//! since the last query (dropped rows cost one hash each).

use std::collections::HashMap;

use crate::error::BufferError;
use crate::index::current;
use crate::rows::{Retention, RowInfo};
use crate::slots::stable_row;
use crate::store::RingBuffer;

/// Slot `s` holds a row with `step >= 0` (in the index's view).
const PRESENT: u8 = 1;
/// Slot `s` links to slot `s + 1` (mod capacity).
const LINK: u8 = 2;
/// Smallest Fenwick size (lengths) a `LenSet` starts with.
const MIN_LENGTHS: usize = 16;

/// The rule: does `b` continue `a` as the next row of one episode? (`a.step >= 0`, global
/// index and step one further, same task and episode.) `offset` generalises it to the row
/// `offset` rows later.
#[inline]
pub(crate) fn links(a: &RowInfo, b: &RowInfo, offset: u64) -> bool {
    a.step >= 0
        && b.row == a.row + offset
        && b.episode_id == a.episode_id
        && b.task_id == a.task_id
        && a.step.checked_add(offset as i64) == Some(b.step)
}

/// Segments grouped by length, with Fenwick trees over lengths in decreasing order.
#[derive(Debug, Default)]
pub(crate) struct LenSet {
    /// Largest length representable (a power of two, or 0 when nothing was added yet).
    size: usize,
    /// Fenwick tree (1-based) of segment counts at position `size + 1 - n`.
    count: Vec<i64>,
    /// Fenwick tree of `n + 1` summed over segments, same positions.
    weight: Vec<i64>,
    /// `heads[n]`: head slots of the segments of length `n`.
    heads: Vec<Vec<u32>>,
    /// Segments held.
    segments: usize,
}

impl LenSet {
    /// Make room for segments of length `n` (rebuilding the trees at a larger size).
    fn grow(&mut self, n: usize) {
        let size = n.next_power_of_two().max(MIN_LENGTHS);
        self.heads.resize_with(size + 1, Vec::new);
        self.size = size;
        self.count = vec![0; size + 1];
        self.weight = vec![0; size + 1];
        for (len, heads) in self.heads.iter().enumerate().skip(1) {
            let p = size + 1 - len;
            self.count[p] = heads.len() as i64;
            self.weight[p] = (heads.len() * (len + 1)) as i64;
        }
        for p in 1..=size {
            let parent = p + (p & p.wrapping_neg());
            if parent <= size {
                self.count[parent] += self.count[p];
                self.weight[parent] += self.weight[p];
            }
        }
    }

    fn update(&mut self, n: usize, sign: i64) {
        let mut p = self.size + 1 - n;
        while p <= self.size {
            self.count[p] += sign;
            self.weight[p] += sign * (n as i64 + 1);
            p += p & p.wrapping_neg();
        }
    }

    fn insert(&mut self, head: u32, n: usize, pos: &mut [u32]) {
        if n > self.size {
            self.grow(n);
        }
        pos[head as usize] = self.heads[n].len() as u32;
        self.heads[n].push(head);
        self.update(n, 1);
        self.segments += 1;
    }

    fn remove(&mut self, head: u32, n: usize, pos: &mut [u32]) {
        let list = &mut self.heads[n];
        let i = pos[head as usize] as usize;
        debug_assert_eq!(list[i], head);
        list.swap_remove(i);
        if let Some(&moved) = list.get(i) {
            pos[moved as usize] = i as u32;
        }
        self.update(n, -1);
        self.segments -= 1;
    }

    /// Number of valid starts of windows of `len` rows.
    pub(crate) fn total(&self, len: usize) -> u64 {
        if len == 0 || len > self.size {
            return 0;
        }
        let (mut c, mut w) = (0i64, 0i64);
        let mut p = self.size + 1 - len;
        while p > 0 {
            c += self.count[p];
            w += self.weight[p];
            p &= p - 1;
        }
        (w - len as i64 * c) as u64
    }

    /// The `u`-th valid start (`u < total(len)`) as (segment head, offset in the segment).
    pub(crate) fn nth(&self, len: usize, mut u: u64) -> (u32, usize) {
        debug_assert!(u < self.total(len));
        // Descend to the largest position `q` whose prefix (lengths >= size + 1 - q) holds at
        // most `u` starts, never past `limit` (lengths below `len`, whose terms are negative).
        let limit = self.size + 1 - len;
        let (mut pos, mut step) = (0usize, self.size);
        while step > 0 {
            let next = pos + step;
            if next <= limit {
                let v = (self.weight[next] - len as i64 * self.count[next]) as u64;
                if v <= u {
                    pos = next;
                    u -= v;
                }
            }
            step >>= 1;
        }
        let n = self.size - pos;
        let per = (n + 1 - len) as u64;
        let list = &self.heads[n];
        (list[(u / per) as usize], (u % per) as usize)
    }

    /// Segments held.
    pub(crate) fn is_empty(&self) -> bool {
        self.segments == 0
    }
}

/// One task's segments, and its place in the list of tasks.
#[derive(Debug, Default)]
pub(crate) struct TaskSegments {
    pub(crate) set: LenSet,
    at: usize,
}

/// The index itself (see the module docs).
#[derive(Debug)]
pub(crate) struct WindowIndex {
    /// The `base` (last clear) it was built for.
    base: u64,
    /// Rows `..upto` are reflected.
    pub(crate) upto: u64,
    cap: usize,
    flags: Vec<u8>,
    /// At a segment's head: its length.
    seg_len: Vec<u32>,
    /// At a segment's last slot: its head.
    seg_head: Vec<u32>,
    /// Task of the row in each present slot.
    pub(crate) task: Vec<i64>,
    /// Global index of the row in each present slot (what a copy checks the stamps against).
    pub(crate) row: Vec<u64>,
    /// Position of a head in its list in `all` and in its task's set.
    all_pos: Vec<u32>,
    task_pos: Vec<u32>,
    /// Every segment.
    pub(crate) all: LenSet,
    /// Each task's segments.
    pub(crate) tasks: HashMap<i64, TaskSegments>,
    /// Tasks with at least one segment (any order), for uniform task draws.
    pub(crate) task_list: Vec<i64>,
}

impl WindowIndex {
    fn new(cap: usize, base: u64, upto: u64) -> Self {
        WindowIndex {
            base,
            upto,
            cap,
            flags: vec![0; cap],
            seg_len: vec![0; cap],
            seg_head: vec![0; cap],
            task: vec![0; cap],
            row: vec![0; cap],
            all_pos: vec![0; cap],
            task_pos: vec![0; cap],
            all: LenSet::default(),
            tasks: HashMap::new(),
            task_list: Vec::new(),
        }
    }

    #[inline]
    fn prev(&self, s: usize) -> usize {
        if s == 0 {
            self.cap - 1
        } else {
            s - 1
        }
    }

    #[inline]
    fn next(&self, s: usize) -> usize {
        if s + 1 == self.cap {
            0
        } else {
            s + 1
        }
    }

    pub(crate) fn present(&self, s: usize) -> bool {
        self.flags[s] & PRESENT != 0
    }

    pub(crate) fn linked(&self, s: usize) -> bool {
        self.flags[s] & LINK != 0
    }

    fn add_seg(&mut self, head: usize, n: usize, task: i64) {
        self.seg_len[head] = n as u32;
        self.seg_head[(head + n - 1) % self.cap] = head as u32;
        self.all.insert(head as u32, n, &mut self.all_pos);
        let list = &mut self.task_list;
        let entry = self.tasks.entry(task).or_insert_with(|| {
            list.push(task);
            TaskSegments {
                set: LenSet::default(),
                at: list.len() - 1,
            }
        });
        entry.set.insert(head as u32, n, &mut self.task_pos);
    }

    fn del_seg(&mut self, head: usize, n: usize, task: i64) {
        self.all.remove(head as u32, n, &mut self.all_pos);
        let entry = self
            .tasks
            .get_mut(&task)
            .expect("segment's task is indexed");
        entry.set.remove(head as u32, n, &mut self.task_pos);
        if entry.set.is_empty() {
            let at = entry.at;
            self.tasks.remove(&task);
            self.task_list.swap_remove(at);
            if let Some(&moved) = self.task_list.get(at) {
                self.tasks.get_mut(&moved).expect("listed task").at = at;
            }
        }
    }

    /// The row in slot `s` leaves: split its segment around `s`.
    fn remove(&mut self, s: usize) {
        if !self.present(s) {
            return;
        }
        // Walk back to the segment's head (in a FIFO ring `s` is the head already). Row
        // indices increase strictly along a segment, so it cannot go all the way round.
        let (mut head, mut i) = (s, 0usize);
        loop {
            let p = self.prev(head);
            if !self.linked(p) || i >= self.cap {
                break;
            }
            head = p;
            i += 1;
        }
        let n = self.seg_len[head] as usize;
        let task = self.task[head];
        self.del_seg(head, n, task);
        if i > 0 {
            self.add_seg(head, i, task);
            let p = self.prev(s);
            self.flags[p] &= !LINK;
        }
        if i + 1 < n {
            self.add_seg(self.next(s), n - 1 - i, task);
        }
        self.flags[s] = 0;
    }

    /// A row of `task` (with `step >= 0`) enters slot `s`, continuing the segment that ends
    /// in the slot before when `joins`.
    fn insert(&mut self, s: usize, task: i64, row: u64, joins: bool) {
        self.flags[s] = PRESENT;
        self.task[s] = task;
        self.row[s] = row;
        if joins {
            let p = self.prev(s);
            let head = self.seg_head[p] as usize;
            let n = self.seg_len[head] as usize;
            self.del_seg(head, n, task);
            self.flags[p] |= LINK;
            self.add_seg(head, n + 1, task);
        } else {
            self.add_seg(s, 1, task);
        }
    }

    /// Slot of the start drawn as the `u`-th of `set` (`u < set.total(len)`).
    pub(crate) fn start(&self, set: &LenSet, len: usize, u: u64) -> usize {
        let (head, off) = set.nth(len, u);
        (head as usize + off) % self.cap
    }

    /// A drawn start: its slot and the row the index holds there.
    pub(crate) fn drawn(&self, slot: usize) -> (usize, u64) {
        (slot, self.row[slot])
    }
}

impl RingBuffer {
    /// Run `f` on the window index, brought up to date.
    pub(crate) fn with_windows<R>(
        &self,
        f: impl FnOnce(&WindowIndex) -> R,
    ) -> Result<R, BufferError> {
        if self.capacity >= u32::MAX as usize {
            return Err(BufferError::TooLarge {
                elements: self.capacity,
            });
        }
        Ok(self.windows.with(|slot| f(self.refresh_windows(slot))))
    }

    /// Bring the window index up to the rows added so far (see the module docs).
    fn refresh_windows<'a>(&self, slot: &'a mut Option<Box<WindowIndex>>) -> &'a WindowIndex {
        let base = self.base();
        let cursor = self.cursor();
        let cap = self.capacity as u64;
        let oldest = match self.retention() {
            Retention::Fifo => base.max(cursor.saturating_sub(cap)),
            Retention::Reservoir => base,
        };
        let c = current(
            slot,
            base,
            oldest,
            |c| (c.base, c.upto),
            || WindowIndex::new(self.capacity, base, oldest),
        );
        let mut row = c.upto;
        while row < cursor {
            let Some(s) = self.slot_for(row, base) else {
                row += 1; // a dropped reservoir row
                continue;
            };
            let s1 = self.stamps.read_begin(s);
            let held = match stable_row(s1) {
                Some(held) if held >= row => held,
                // Unfinished (or not yet started) write of `row`: resume here next time.
                _ => break,
            };
            if held > row {
                // Row `row` was overwritten already: the slot's old row leaves, and the newer
                // row enters when its turn comes.
                c.remove(s);
                row += 1;
                continue;
            }
            let Some(info) = self.read_meta(s, base).filter(|i| i.row == row) else {
                break;
            };
            c.remove(s);
            if info.step >= 0 {
                let p = c.prev(s);
                let joins = row > base
                    && c.present(p)
                    && p != s
                    && self
                        .read_meta(p, base)
                        .is_some_and(|prev| links(&prev, &info, 1));
                c.insert(s, info.task_id, row, joins);
            }
            row += 1;
        }
        c.upto = row;
        c
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Valid starts of each length, by brute force over a list of segment lengths.
    #[test]
    fn lenset_counts_and_draws_match_brute_force() {
        let mut rng = Rng::new(7);
        let mut set = LenSet::default();
        let mut pos = vec![0u32; 4096];
        let mut segs: Vec<(u32, usize)> = Vec::new();
        for step in 0..600u32 {
            if !segs.is_empty() && rng.below(3) == 0 {
                let (h, n) = segs.swap_remove(rng.below(segs.len()));
                set.remove(h, n, &mut pos);
            } else {
                let n = 1 + rng.below(if step % 50 == 0 { 200 } else { 20 });
                set.insert(step, n, &mut pos);
                segs.push((step, n));
            }
            for len in [1usize, 2, 5, 13, 32, 100, 300] {
                let want: usize = segs.iter().map(|&(_, n)| (n + 1).saturating_sub(len)).sum();
                assert_eq!(set.total(len), want as u64, "len {len}");
                // Every start index maps to a distinct (head, offset) inside a long-enough segment.
                let mut seen = std::collections::HashSet::new();
                for u in 0..want as u64 {
                    let (h, off) = set.nth(len, u);
                    let &(_, n) = segs.iter().find(|&&(sh, _)| sh == h).unwrap();
                    assert!(off + len <= n);
                    assert!(seen.insert((h, off)));
                }
            }
        }
    }
}
