//! Shared slots for each model: memory every worker sees, where a model keeps figures that
//! must add up across workers (feedback counts). The master maps one region per model before
//! forking; a worker finds its model's region in a small directory keyed by the model's
//! identity (its repository name or its path), so a model keeps its region across reloads and
//! two models never share one.

use std::sync::atomic::{AtomicU64, Ordering};

use mldeploy_model::SharedSlots;

/// Most models with shared slots in one server.
pub const MAX_MODELS: usize = 64;
/// Slots of one model's region: 64 Ki slots, 512 KiB (mapped, not resident until used).
pub const REGION_LEN: usize = SharedSlots::DEFAULT_LEN;

/// The directory and the regions.
#[derive(Debug, Clone, Copy)]
pub struct ModelSlots {
    directory: &'static [AtomicU64],
    regions: SharedSlots,
}

/// FNV-1a of the key, never 0 (a free directory entry).
fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

impl ModelSlots {
    /// Words needed for the directory and every region.
    pub const WORDS: usize = MAX_MODELS + MAX_MODELS * REGION_LEN;

    /// Slots in `words` (zeroed): as many models as fit, up to [`MAX_MODELS`].
    pub fn new(words: &'static [AtomicU64]) -> ModelSlots {
        let models = (words.len() / (1 + REGION_LEN)).min(MAX_MODELS);
        let (directory, regions) = words.split_at(models);
        ModelSlots { directory, regions: SharedSlots::new(&regions[..models * REGION_LEN]) }
    }

    /// Process-private slots for a few models (`mldeploy check`, tests).
    pub fn private(models: usize) -> ModelSlots {
        let words: Vec<AtomicU64> = (0..models * (1 + REGION_LEN)).map(|_| AtomicU64::new(0)).collect();
        ModelSlots::new(Box::leak(words.into_boxed_slice()))
    }

    /// The region of the model known as `key`: the one it had, or a free one; `None` when
    /// every region is taken.
    pub fn claim(&self, key: &str) -> Option<SharedSlots> {
        let h = key_hash(key);
        for (i, entry) in self.directory.iter().enumerate() {
            let seen = match entry.compare_exchange(0, h, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => h,
                Err(seen) => seen,
            };
            if seen == h {
                return Some(self.regions.sub(i * REGION_LEN, REGION_LEN));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_keeps_its_own_region() {
        let slots = ModelSlots::private(4);
        let a = slots.claim("repo/iris").unwrap();
        let b = slots.claim("repo/wine").unwrap();
        a.add(0, 5);
        assert_eq!(b.get(0), 0);
        assert_eq!(slots.claim("repo/iris").unwrap().get(0), 5);
        assert_eq!(a.len(), REGION_LEN);
        for i in 2..4 {
            assert!(slots.claim(&format!("m{i}")).is_some());
        }
        assert!(slots.claim("one too many").is_none());
        assert!(slots.claim("repo/wine").is_some());
    }
}
