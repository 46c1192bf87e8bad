//! Geometric augmentation of square patches: the 8 symmetries of the square
//! (the dihedral group D4: identity, three 90-degree rotations, four flips),
//! as HardNet's training applies them. A transform is a number 0..8 whose
//! bits say: bit 0 transpose, bit 1 flip columns, bit 2 flip rows, applied
//! to the output coordinates in that order:
//!
//! ```text
//! out[y][x] = in[y'][x'],  (y', x') = transpose ? (x, y) : (y, x),
//!                          then y' = S-1-y' if flip rows, x' = S-1-x' if flip columns
//! ```
//!
//! The 8 codes are the 8 distinct elements of D4 (a rotation by 90 degrees
//! is a transpose followed by one flip). Every view of one training tuple
//! gets the same transform, so matching patches stay matching.

/// Number of transforms.
pub const TRANSFORMS: u8 = 8;
/// The identity transform.
pub const IDENTITY: u8 = 0;

/// Index in a `side x side` source patch of output pixel `(y, x)` under transform `t` (0..8).
#[inline]
pub fn source_index(t: u8, side: usize, y: usize, x: usize) -> usize {
    let (mut sy, mut sx) = if t & 1 != 0 { (x, y) } else { (y, x) };
    if t & 4 != 0 {
        sy = side - 1 - sy;
    }
    if t & 2 != 0 {
        sx = side - 1 - sx;
    }
    sy * side + sx
}

/// Writes `src` (one `side x side` patch, row-major) under transform `t` into
/// `dst`, converting each value with `f`. `t` is taken modulo 8.
#[inline]
pub fn transform_into<S: Copy, D>(dst: &mut [D], src: &[S], side: usize, t: u8, f: impl Fn(S) -> D) {
    debug_assert!(dst.len() == side * side && src.len() == side * side);
    let t = t % TRANSFORMS;
    if t == IDENTITY {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f(s);
        }
        return;
    }
    for (y, row) in dst.chunks_exact_mut(side).enumerate() {
        for (x, d) in row.iter_mut().enumerate() {
            *d = f(src[source_index(t, side, y, x)]);
        }
    }
}

/// The transform that undoes `t`.
pub fn inverse(t: u8) -> u8 {
    let t = t % TRANSFORMS;
    // Without a transpose the flips are their own inverses; with one, the
    // flips swap axes when moved to the other side of the transpose.
    if t & 1 == 0 { t } else { 1 | ((t & 2) << 1) | ((t & 4) >> 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(t: u8, p: &[u32], side: usize) -> Vec<u32> {
        let mut out = vec![u32::MAX; side * side];
        transform_into(&mut out, p, side, t, |v| v);
        out
    }

    #[test]
    fn the_eight_transforms_are_distinct_permutations_with_inverses() {
        for side in [1usize, 2, 5, 32] {
            let p: Vec<u32> = (0..(side * side) as u32).collect();
            let mut seen = std::collections::HashSet::new();
            for t in 0..TRANSFORMS {
                let q = apply(t, &p, side);
                let mut sorted = q.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, p, "transform {t} is not a permutation at side {side}");
                seen.insert(q.clone());
                assert_eq!(apply(inverse(t), &q, side), p, "inverse of {t} at side {side}");
            }
            let distinct = if side == 1 { 1 } else { 8 };
            assert_eq!(seen.len(), distinct, "side {side}");
        }
    }

    #[test]
    fn codes_cover_rotations_and_flips() {
        // 2x2 patch [a b; c d] = [0 1; 2 3].
        let p = [0u32, 1, 2, 3];
        let rot90_ccw = [1u32, 3, 0, 2]; // [b d; a c]
        let rot180 = [3u32, 2, 1, 0];
        let flip_lr = [1u32, 0, 3, 2];
        let flip_ud = [2u32, 3, 0, 1];
        let all: Vec<Vec<u32>> = (0..8).map(|t| apply(t, &p, 2)).collect();
        for want in [rot90_ccw, rot180, flip_lr, flip_ud] {
            assert!(all.iter().any(|q| q[..] == want[..]), "{want:?} missing from {all:?}");
        }
        assert_eq!(apply(2, &p, 2), flip_lr);
        assert_eq!(apply(4, &p, 2), flip_ud);
        assert_eq!(apply(6, &p, 2), rot180);
    }
}
