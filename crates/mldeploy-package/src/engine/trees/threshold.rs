//! Reduce every library's numeric split test to one `x <= t` on the raw f64 input.
//!
//! Each library compares a *transformed* input with its threshold: scikit-learn trees round
//! x to float32 first and compare with a float64 threshold; XGBoost rounds x to float32 and
//! tests `<` against a float32 split value; LightGBM flushes |x| <= 1e-35 to zero before
//! `<=`. All of these transforms are monotone (non-decreasing) in x, so the set of non-NaN
//! inputs that go left is a down-set of the ordered f64 values: it is exactly
//! `{x : x <= t}` for `t` = the largest f64 that goes left. Computing `t` once at load time
//! (and checking it against the library's own predicate) removes the per-visit float32
//! conversion from the hot loop and makes the result bit-for-bit the library's decision.

/// Order-preserving map from non-NaN f64 to u64 (-inf smallest, +inf largest; -0 just
/// below +0).
fn key(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

fn from_key(k: u64) -> f64 {
    if k >> 63 == 1 {
        f64::from_bits(k & !(1 << 63))
    } else {
        f64::from_bits(!k)
    }
}

/// The next f64 above `x` in key order (used instead of `f64::next_up`, which needs a newer
/// compiler than the server's MSRV).
pub(super) fn next_up(x: f64) -> f64 {
    if x == f64::INFINITY {
        return x;
    }
    from_key(key(x) + 1)
}

/// The largest non-NaN `t` such that `goes_left(t)` holds, for a predicate that is monotone
/// (true on a down-set). `None` when even `-inf` does not go left (then nothing does).
///
/// `hints` are cheap guesses tried first; a guess is accepted only if it is provably the
/// boundary (`goes_left(h) && !goes_left(next_up(h))`), so a wrong hint costs time, never
/// correctness. Otherwise a binary search over the 2^64 ordered keys (64 steps) decides.
pub(super) fn down_set_bound(goes_left: impl Fn(f64) -> bool, hints: &[f64]) -> Option<f64> {
    for &h in hints {
        if !h.is_nan() && h != f64::INFINITY && goes_left(h) && !goes_left(next_up(h)) {
            return Some(h);
        }
    }
    if !goes_left(f64::NEG_INFINITY) {
        return None;
    }
    if goes_left(f64::INFINITY) {
        return Some(f64::INFINITY);
    }
    // Invariant: goes_left(lo) is true, goes_left(hi) is false.
    let (mut lo, mut hi) = (key(f64::NEG_INFINITY), key(f64::INFINITY));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if goes_left(from_key(mid)) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(from_key(lo))
}

/// Where an f64 input rounds to float32: the boundary hints for a float32 value `f` (the
/// midpoint to the next float32 up, and the f64 just below it).
fn f32_rounding_hints(f: f32) -> [f64; 2] {
    let up = next_up_f32(f);
    let mid = (f as f64 + up as f64) / 2.0;
    let below = from_key(key(mid).saturating_sub(1));
    [mid, below]
}

fn next_up_f32(f: f32) -> f32 {
    if f == f32::INFINITY {
        return f;
    }
    if f == 0.0 {
        return f32::from_bits(1);
    }
    let b = f.to_bits();
    if f > 0.0 {
        f32::from_bits(b + 1)
    } else {
        f32::from_bits(b - 1)
    }
}

/// scikit-learn trees: `float32(x) <= threshold` (threshold float64). Returns the f64 bound.
pub(super) fn sklearn_f32(threshold: f64) -> Option<f64> {
    let goes_left = |x: f64| (x as f32) as f64 <= threshold;
    // The largest float32 not above the threshold, then where f64 inputs round to it.
    let mut f = threshold as f32;
    if f as f64 > threshold {
        f = prev_f32(f);
    }
    down_set_bound(goes_left, &f32_rounding_hints(f))
}

/// XGBoost: `float32(x) < split` (split float32).
pub(super) fn xgboost_lt(split: f32) -> Option<f64> {
    let goes_left = |x: f64| (x as f32) < split;
    down_set_bound(goes_left, &f32_rounding_hints(prev_f32(split)))
}

fn prev_f32(f: f32) -> f32 {
    -next_up_f32(-f)
}

/// LightGBM's zero threshold (`kZeroThreshold = 1e-35f`, as double).
pub(super) const LIGHTGBM_ZERO: f64 = 1e-35f32 as f64;

/// LightGBM input flush: the C API drops entries with |x| <= kZeroThreshold from a dense row,
/// so the tree sees 0.0 for them.
pub(super) fn lightgbm_flush(x: f64) -> f64 {
    if x.abs() <= LIGHTGBM_ZERO {
        0.0
    } else {
        x
    }
}

/// LightGBM: `flush(x) <= threshold` (threshold float64).
pub(super) fn lightgbm_le(threshold: f64) -> Option<f64> {
    let goes_left = |x: f64| lightgbm_flush(x) <= threshold;
    down_set_bound(goes_left, &[threshold])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(goes_left: impl Fn(f64) -> bool, t: Option<f64>, samples: &[f64]) {
        for &x in samples {
            let fast = match t {
                Some(t) => x <= t,
                None => false,
            };
            assert_eq!(fast, goes_left(x), "x = {x:e}, t = {t:?}");
        }
    }

    fn samples_around(c: f64) -> Vec<f64> {
        let mut v = vec![c, -c, 0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, 1e300, -1e300];
        let mut lo = c;
        let mut hi = c;
        for _ in 0..40 {
            lo = from_key(key(lo) - 1);
            hi = next_up(hi);
            v.push(lo);
            v.push(hi);
        }
        let f = c as f32;
        for g in [f, next_up_f32(f), prev_f32(f)] {
            for h in f32_rounding_hints(g) {
                v.push(h);
                v.push(next_up(h));
                v.push(from_key(key(h) - 1));
            }
        }
        v
    }

    #[test]
    fn sklearn_bounds_match_the_float32_comparison() {
        let mut state = 0x1234_5678_9abc_def0_u64;
        let mut thresholds =
            vec![0.0, -0.0, 1.0, -1.0, 0.5, 1e-40, -1e-40, 3.4e38, -3.4e38, 1e39, -1e39, 2.5];
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f64::from_bits(state);
            if x.is_finite() && x.abs() < 1e40 {
                thresholds.push(x);
            }
            thresholds.push(((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 100.0);
        }
        for thr in thresholds {
            let t = sklearn_f32(thr);
            check(|x| (x as f32) as f64 <= thr, t, &samples_around(thr));
        }
    }

    #[test]
    fn xgboost_bounds_match_the_float32_comparison() {
        let mut state = 42_u64;
        let mut splits =
            vec![0.0f32, -0.0, 1.0, -1.0, f32::MAX, -f32::MAX, f32::from_bits(1), 1e-45, 0.42377135];
        for _ in 0..2000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let f = f32::from_bits((state >> 32) as u32);
            if f.is_finite() {
                splits.push(f);
            }
        }
        for s in splits {
            let t = xgboost_lt(s);
            check(|x| (x as f32) < s, t, &samples_around(s as f64));
        }
    }

    #[test]
    fn lightgbm_bounds_match_the_flushed_comparison() {
        for thr in [0.0, -0.0, 5e-36, -5e-36, 1e-35, -1e-35, 2e-35, 1.5, -1.5, 1e-300, -1e-300] {
            let t = lightgbm_le(thr);
            let mut s = samples_around(thr);
            s.extend(samples_around(LIGHTGBM_ZERO));
            s.extend(samples_around(-LIGHTGBM_ZERO));
            check(|x| lightgbm_flush(x) <= thr, t, &s);
        }
    }
}
