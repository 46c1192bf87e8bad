//! Weights prepared for a layer's kernels (the Winograd weight transforms,
//! the int8 and bf16 weights), kept in the layer's workspace and rebuilt only when the weights change.
//!
//! Inference calls a layer with the same weights again and again; the
//! Winograd weight transforms on every call were a third of a one-patch
//! U-Net forward and two fifths of a HardNet one. The cache is keyed by the
//! weights' bits (a copy of them is kept), so it can never be stale, whoever
//! owns the weights and however they changed; a hit costs one comparison, a
//! miss (every training step) one copy more than preparing alone. That pays
//! only where preparing costs more than reading the weights twice: a plain
//! transpose (the dense layer's W^T, HardNet's conv7) does not.
//!
//! Shapes: `src` has the weights' length, `out` the prepared length; `tag`
//! names the preparation (e.g. a Winograd transform rotated or not for the
//! same weights), so two preparations of one buffer never mix.
//!
//! The comparison reads the f32 weights once per call, which is as much
//! memory traffic as the f32 layer itself on one patch: at batch 1 it was a
//! tenth of int8 HardNet's time. An owner that knows when its weights change
//! (`net::Network`, whose parameters change only through `params_mut`)
//! vouches for them with a [`WeightsKey`] (`vouch`): while the key it
//! vouches for is the key of the held result, a call skips the comparison.
//! Any other call compares as before, then holds the vouched key.

use crate::error::Result;

/// One state of a set of weights, as named by their owner: whoever vouches
/// with a key promises that every call made under it passes weights of the
/// same bits (`Model`'s `Workspace::vouch_weights`). Keys name states of
/// one owner's weights; a workspace must not be shared between owners that
/// vouch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightsKey(pub u64);

/// The vouched key (`vouch`) and the key of the held result: a hit without
/// comparing needs both, and equal.
#[derive(Clone, Copy, Debug, Default)]
struct Keys {
    vouched: Option<WeightsKey>,
    held: Option<WeightsKey>,
}

impl Keys {
    fn trusted(&self) -> bool {
        self.vouched.is_some() && self.vouched == self.held
    }
}

/// A prepared-weights cache of fixed sizes, allocated once.
pub(crate) struct Prepared {
    /// The weights `out` was prepared from.
    src: Vec<f32>,
    out: Vec<f32>,
    /// The preparation `out` holds, once it holds one.
    tag: Option<u8>,
    keys: Keys,
}

impl Prepared {
    pub(crate) fn new(src_len: usize, out_len: usize) -> Self {
        Prepared { src: vec![0.0; src_len], out: vec![0.0; out_len], tag: None, keys: Keys::default() }
    }

    /// The key later calls' weights are vouched for by (`None`: compare every call).
    pub(crate) fn vouch(&mut self, key: Option<WeightsKey>) {
        self.keys.vouched = key;
    }

    /// `weight` prepared by `prepare(weight, out)` under `tag`: the cached
    /// result when `weight` has the bits and `tag` of the last preparation.
    /// The caller checked `weight.len()` against the layer.
    /// A failed preparation leaves the cache empty.
    pub(crate) fn get(
        &mut self,
        weight: &[f32],
        tag: u8,
        prepare: impl FnOnce(&[f32], &mut [f32]) -> Result<()>,
    ) -> Result<&[f32]> {
        if self.tag == Some(tag) && self.keys.trusted() {
            return Ok(&self.out);
        }
        if self.tag != Some(tag) || !same_bits(&self.src, weight) {
            self.tag = None;
            self.keys.held = None;
            prepare(weight, &mut self.out)?;
            self.src.copy_from_slice(weight);
            self.tag = Some(tag);
        }
        self.keys.held = self.keys.vouched;
        Ok(&self.out)
    }
}

/// Weights converted into another form (int8 codes, bf16 values) by a
/// function that builds it, kept with a copy of the f32 weights it came from
/// and rebuilt only when their bits change, like `Prepared`. The first
/// conversion allocates; a hit costs one comparison.
pub(crate) struct Converted<W> {
    src: Vec<f32>,
    value: Option<W>,
    keys: Keys,
}

impl<W> Converted<W> {
    pub(crate) fn new(src_len: usize) -> Self {
        Converted { src: vec![0.0; src_len], value: None, keys: Keys::default() }
    }

    /// As `Prepared::vouch`.
    pub(crate) fn vouch(&mut self, key: Option<WeightsKey>) {
        self.keys.vouched = key;
    }

    /// `convert(weight)`, or the cached result when `weight` has the bits of
    /// the last conversion. A failed conversion leaves the cache empty.
    pub(crate) fn get(&mut self, weight: &[f32], convert: impl FnOnce(&[f32]) -> Result<W>) -> Result<&W> {
        if self.value.is_none() || !(self.keys.trusted() || same_bits(&self.src, weight)) {
            self.value = None;
            self.keys.held = None;
            self.value = Some(convert(weight)?);
            self.src.copy_from_slice(weight);
        }
        self.keys.held = self.keys.vouched;
        Ok(self.value.as_ref().expect("set above"))
    }
}

/// Whether `a` and `b` hold the same bits (so -0.0 differs from 0.0 and a
/// NaN equals itself). Branch-free over chunks so that it vectorises.
pub(crate) fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.chunks(64)
            .zip(b.chunks(64))
            .all(|(x, y)| x.iter().zip(y).fold(0u32, |acc, (p, q)| acc | (p.to_bits() ^ q.to_bits())) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepares_again_only_for_other_bits_or_another_tag() {
        let mut c = Prepared::new(3, 3);
        let calls = std::cell::Cell::new(0);
        let get = |c: &mut Prepared, w: &[f32], tag: u8| {
            c.get(w, tag, |w, out| {
                calls.set(calls.get() + 1);
                for (o, v) in out.iter_mut().zip(w) {
                    *o = 2.0 * v + tag as f32;
                }
                Ok(())
            })
            .unwrap()
            .to_vec()
        };
        assert_eq!(get(&mut c, &[1.0, 2.0, 0.0], 0), [2.0, 4.0, 0.0]);
        assert_eq!(get(&mut c, &[1.0, 2.0, 0.0], 0), [2.0, 4.0, 0.0]);
        assert_eq!(get(&mut c, &[1.0, 2.0, 0.0], 1), [3.0, 5.0, 1.0]);
        assert_eq!(get(&mut c, &[1.0, 2.0, -0.0], 1), [3.0, 5.0, 1.0]);
        assert_eq!(get(&mut c, &[1.0, 2.5, -0.0], 1), [3.0, 6.0, 1.0]);
        assert_eq!(get(&mut c, &[f32::NAN, 2.5, -0.0], 1)[1..], [6.0, 1.0]);
        assert_eq!(get(&mut c, &[f32::NAN, 2.5, -0.0], 1)[1..], [6.0, 1.0]);
        // First call, tag change, -0.0 for 0.0, a changed value, a NaN: 5 preparations of 7 calls.
        assert_eq!(calls.get(), 5);
        assert!(same_bits(&[0.5; 130], &[0.5; 130]) && !same_bits(&[0.5; 130], &[0.5; 129]));
        let mut far = vec![0.5f32; 130];
        far[129] = 0.25;
        assert!(!same_bits(&[0.5; 130], &far));
    }

    #[test]
    fn converts_again_only_for_other_bits_and_not_after_a_failure() {
        let mut c = Converted::new(2);
        let calls = std::cell::Cell::new(0);
        let mut get = |w: &[f32]| {
            *c.get(w, |w| {
                calls.set(calls.get() + 1);
                Ok(w[0] + w[1])
            })
            .unwrap()
        };
        assert_eq!(get(&[1.0, 2.0]), 3.0);
        assert_eq!(get(&[1.0, 2.0]), 3.0);
        assert_eq!(get(&[1.0, 2.5]), 3.5);
        assert_eq!(calls.get(), 2);
        let mut c = Converted::<f32>::new(1);
        assert!(c.get(&[1.0], |_| Err(crate::error::Error::Shape("refused".into()))).is_err());
        assert_eq!(*c.get(&[1.0], |w| Ok(w[0])).unwrap(), 1.0);
    }

    #[test]
    fn a_failed_preparation_is_not_kept() {
        let mut c = Prepared::new(2, 2);
        let w = [1.0, 2.0];
        assert!(c.get(&w, 0, |_, _| Err(crate::error::Error::Shape("refused".into()))).is_err());
        let mut ran = false;
        let got = c
            .get(&w, 0, |_, out| {
                ran = true;
                out.fill(3.0);
                Ok(())
            })
            .unwrap()
            .to_vec();
        assert!(ran && got == [3.0, 3.0]);
    }

    /// Under a vouched key a call trusts the key instead of the bits: weights
    /// passed with other bits under the same key (a broken promise, on
    /// purpose here) get the held result, so no comparison ran. A new key or
    /// none compares again; a failed preparation holds no key.
    #[test]
    fn a_vouched_key_stands_for_the_bits_until_it_changes() {
        let mut c = Prepared::new(2, 2);
        let calls = std::cell::Cell::new(0);
        let get = |c: &mut Prepared, w: &[f32], tag: u8| {
            c.get(w, tag, |w, out| {
                calls.set(calls.get() + 1);
                out.iter_mut().zip(w).for_each(|(o, v)| *o = 2.0 * v + tag as f32);
                Ok(())
            })
            .unwrap()
            .to_vec()
        };
        c.vouch(Some(WeightsKey(7)));
        assert_eq!(get(&mut c, &[1.0, 2.0], 0), [2.0, 4.0]);
        assert_eq!(get(&mut c, &[5.0, 5.0], 0), [2.0, 4.0], "trusted: held result");
        assert_eq!(get(&mut c, &[5.0, 5.0], 1), [11.0, 11.0], "another tag prepares");
        c.vouch(Some(WeightsKey(8)));
        assert_eq!(get(&mut c, &[5.0, 5.0], 1), [11.0, 11.0], "same bits under a new key: compared, kept");
        assert_eq!(get(&mut c, &[6.0, 6.0], 1), [11.0, 11.0], "and trusted from then on");
        c.vouch(None);
        assert_eq!(get(&mut c, &[6.0, 6.0], 1), [13.0, 13.0], "no key: compared");
        assert_eq!(calls.get(), 3);

        let mut v = Converted::<f32>::new(1);
        v.vouch(Some(WeightsKey(1)));
        assert!(v.get(&[1.0], |_| Err(crate::error::Error::Shape("refused".into()))).is_err());
        assert_eq!(*v.get(&[2.0], |w| Ok(w[0])).unwrap(), 2.0, "a failure holds no key");
        assert_eq!(*v.get(&[3.0], |w| Ok(w[0])).unwrap(), 2.0, "trusted");
        v.vouch(Some(WeightsKey(2)));
        assert_eq!(*v.get(&[3.0], |w| Ok(w[0])).unwrap(), 3.0, "new key: compared");
    }
}
