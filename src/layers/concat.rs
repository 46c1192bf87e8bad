//! Concatenation of two NCHW tensors along channels (the U-Net skip:
//! `[conv1 out, 16 ch] ++ [conv3 out, 64 ch] -> 80 ch`).
//!
//! Shapes: `a`: `N x Ca x H x W`, `b`: `N x Cb x H x W`, `out`:
//! `N x (Ca+Cb) x H x W`. Image n of `out` is image n of `a` followed by image
//! n of `b`. Backward splits `dout` the same way: `da += dout[:, :Ca]`,
//! `db += dout[:, Ca:]`. One image per rayon task.

use crate::error::{Result, check_len};
use crate::ops::elementwise::par_min_items;
use crate::shape::Shape4;
use crate::shape_err;
use rayon::prelude::*;

/// The shape of `a ++ b` along channels; N, H and W must agree.
pub fn concat_shape(a: Shape4, b: Shape4) -> Result<Shape4> {
    if a.n != b.n || a.h != b.h || a.w != b.w {
        return Err(shape_err!("concat: {a} and {b} differ outside the channel axis"));
    }
    Ok(Shape4::new(a.n, a.c + b.c, a.h, a.w))
}

/// `out = a ++ b` along channels.
pub fn forward(out: &mut [f32], a: &[f32], b: &[f32], sa: Shape4, sb: Shape4) -> Result<()> {
    let so = concat_shape(sa, sb)?;
    check_len("concat forward: out", out.len(), so.len())?;
    check_len("concat forward: a", a.len(), sa.len())?;
    check_len("concat forward: b", b.len(), sb.len())?;
    if so.is_empty() {
        return Ok(());
    }
    let (ia, ib) = (sa.image_len(), sb.image_len());
    out.par_chunks_mut(so.image_len()).enumerate().with_min_len(par_min_items(so.image_len())).for_each(|(n, o)| {
        let (oa, ob) = o.split_at_mut(ia);
        oa.copy_from_slice(&a[n * ia..(n + 1) * ia]);
        ob.copy_from_slice(&b[n * ib..(n + 1) * ib]);
    });
    Ok(())
}

/// One side of `out = a ++ b`: `side` is `a` (`first`) or `b`, the other
/// side's channels of `out` are left as they are (written by the layer that
/// makes that side, straight into `out`, in an eval pass).
pub fn forward_side(out: &mut [f32], side: &[f32], sa: Shape4, sb: Shape4, first: bool) -> Result<()> {
    let so = concat_shape(sa, sb)?;
    check_len("concat forward: out", out.len(), so.len())?;
    let (ia, ib) = (sa.image_len(), sb.image_len());
    let (len, at) = if first { (ia, 0) } else { (ib, ia) };
    check_len("concat forward: side", side.len(), so.n * len)?;
    if so.is_empty() {
        return Ok(());
    }
    out.par_chunks_mut(so.image_len()).enumerate().with_min_len(par_min_items(so.image_len())).for_each(|(n, o)| {
        o[at..at + len].copy_from_slice(&side[n * len..(n + 1) * len]);
    });
    Ok(())
}

/// `da += dout[:, :Ca]`, `db += dout[:, Ca:]`.
pub fn backward(da: &mut [f32], db: &mut [f32], dout: &[f32], sa: Shape4, sb: Shape4) -> Result<()> {
    backward_parts(Some(da), Some(db), dout, sa, sb)
}

/// As [`backward`], for the sides that want a gradient (`None` skips one).
pub fn backward_parts(
    da: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
    dout: &[f32],
    sa: Shape4,
    sb: Shape4,
) -> Result<()> {
    let so = concat_shape(sa, sb)?;
    check_len("concat backward: dout", dout.len(), so.len())?;
    if let Some(da) = &da {
        check_len("concat backward: da", da.len(), sa.len())?;
    }
    if let Some(db) = &db {
        check_len("concat backward: db", db.len(), sb.len())?;
    }
    // Each gradient is one pass over its own images, so a 0-channel side is skipped.
    for (d, s, off) in [(da, sa, 0), (db, sb, sa.image_len())] {
        let img = s.image_len();
        let Some(d) = d.filter(|_| img > 0) else { continue };
        d.par_chunks_mut(img).enumerate().with_min_len(par_min_items(img)).for_each(|(n, d)| {
            let src = &dout[n * so.image_len() + off..][..img];
            for (d, &g) in d.iter_mut().zip(src) {
                *d += g;
            }
        });
    }
    Ok(())
}
