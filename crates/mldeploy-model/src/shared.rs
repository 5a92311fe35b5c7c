//! Counters shared by every worker process.

use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed array of atomic 64-bit slots. In a served model it lies in memory the master mapped
/// before forking, so every worker sees the same values; [`SharedSlots::private`] makes an
/// unshared one for tests. Slots start at zero. A model carves it up itself (it gets all of it).
#[derive(Clone, Copy)]
pub struct SharedSlots {
    slots: &'static [AtomicU64],
}

impl std::fmt::Debug for SharedSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSlots").field("len", &self.slots.len()).finish()
    }
}

impl SharedSlots {
    /// Slots a server hands to its model: 64 Ki slots, 512 KiB.
    pub const DEFAULT_LEN: usize = 64 * 1024;

    /// Wrap slots that live for the rest of the process (the master's shared mapping).
    pub fn new(slots: &'static [AtomicU64]) -> Self {
        Self { slots }
    }

    /// Process-private slots (leaked once; for tests and `mldeploy check`).
    pub fn private(len: usize) -> Self {
        let v: Vec<AtomicU64> = (0..len).map(|_| AtomicU64::new(0)).collect();
        Self { slots: Box::leak(v.into_boxed_slice()) }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// All slots.
    pub fn slots(&self) -> &'static [AtomicU64] {
        self.slots
    }

    /// Add to an integer slot.
    pub fn add(&self, index: usize, n: u64) {
        self.slots[index].fetch_add(n, Ordering::Relaxed);
    }

    /// Read an integer slot.
    pub fn get(&self, index: usize) -> u64 {
        self.slots[index].load(Ordering::Relaxed)
    }

    /// Add to a slot that holds an `f64` (compare-and-swap loop; no lock).
    pub fn add_f64(&self, index: usize, x: f64) {
        atomic_add_f64(&self.slots[index], x);
    }

    /// Read a slot that holds an `f64`.
    pub fn get_f64(&self, index: usize) -> f64 {
        f64::from_bits(self.get(index))
    }

    /// A sub-range of the slots, for handing parts to different users.
    pub fn sub(&self, start: usize, len: usize) -> SharedSlots {
        SharedSlots { slots: &self.slots[start..start + len] }
    }
}

/// Add `x` to a word that holds the bits of an `f64`: a compare-and-swap loop, no lock, safe
/// against other threads and processes adding to the same word.
pub fn atomic_add_f64(slot: &AtomicU64, x: f64) {
    let mut cur = slot.load(Ordering::Relaxed);
    loop {
        let next = (f64::from_bits(cur) + x).to_bits();
        match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(seen) => cur = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_slots_accumulate() {
        let s = SharedSlots::private(4);
        s.add_f64(1, 1.5);
        s.add_f64(1, 2.25);
        assert_eq!(s.get_f64(1), 3.75);
        assert_eq!(s.get(0), 0);
        s.add(0, 7);
        assert_eq!(s.sub(0, 2).get(0), 7);
    }
}
