//! The layers' device passes over `Buf`s: convolution (im2col + GEMM),
//! BatchNorm, and the channel reductions they need. Same contracts and
//! shapes as the CPU layers in `crate::layers`; see `kernels.cu` for each
//! kernel's arguments.
//!
//! Convolution, per batch of N images with `K = cin*kh*kw`, `P = ho*wo`:
//! - forward: `col[K][N*P] = im2col(x)`; `cn[Co][N*P] = W[Co x K] col`;
//!   `y = act(scale * cn + shift)` back in NCHW;
//! - backward: `dcn = dy` in CN; `db += dcn 1`; `dW += dcn col^T` (the batch
//!   sum is the GEMM's inner dimension); `dcol = W^T dcn`; `dx (+)= col2im(dcol)`.
//!   `col` is recomputed from the saved input (workspaces share one `col`).
//!
//! Channel sums over `N x C x P` are two GEMMs with ones: `t[N*C] = x 1_P`, then `s[C] = 1_N^T t`.

use super::backend::{Backend, Buf, Kernel, ka, opt};
use crate::error::Result;
use crate::layers::batchnorm::BatchNormConfig;
use crate::layers::conv2d::Conv2d;
use crate::shape::Shape4;

/// Scratch the passes share, each sized for the largest layer of a model at one batch size.
pub struct Scratch {
    /// `[K][N*P]`: im2col, then dcol.
    pub col: Buf,
    /// `[Co][N*P]`: convolution output before the epilogue; dy in CN layout.
    pub cn: Buf,
    /// Activation-sized temporary (squared deviations, dy * xhat).
    pub sq: Buf,
    /// `N * C` partial sums.
    pub tmp: Buf,
    /// `C` sums of BatchNorm backward.
    pub s1: Buf,
    pub s2: Buf,
}

impl Scratch {
    pub fn new(be: &Backend, col: usize, cn: usize, act: usize, nc: usize, c: usize) -> Result<Scratch> {
        Ok(Scratch {
            col: be.alloc(col)?,
            cn: be.alloc(cn)?,
            sq: be.alloc(act)?,
            tmp: be.alloc(nc)?,
            s1: be.alloc(c)?,
            s2: be.alloc(c)?,
        })
    }
}

/// `b[..len] = v`.
pub fn fill(be: &Backend, b: Buf, len: usize, v: f32) -> Result<()> {
    be.launch(Kernel::nh_fill, len, ka(&[b.at(0)], &[], &[v]))
}

/// `y += alpha * x` over `len` elements.
pub fn axpy(be: &Backend, y: Buf, alpha: f32, x: Buf, len: usize) -> Result<()> {
    be.launch(Kernel::nh_axpy, len, ka(&[y.at(0), x.at(0)], &[], &[alpha]))
}

/// `s[C] = alpha * sum over n, p of x[N][C][P]` (+ `beta * s`).
pub fn channel_sum(
    be: &Backend,
    s: Buf,
    x: Buf,
    (n, c, p): (usize, usize, usize),
    alpha: f32,
    beta: f32,
    tmp: Buf,
) -> Result<()> {
    be.sum_rows(tmp, x, n * c, p, 1.0, 0.0)?;
    be.sum_cols(s, tmp, n, c, alpha, beta)
}

fn window_ints(conv: &Conv2d, n: usize) -> [i64; 11] {
    let w = &conv.win;
    [w.cin, w.h, w.w, w.kh, w.kw, w.stride, w.pad.top, w.pad.left, w.ho, w.wo, n].map(|v| v as i64)
}

/// `col[K][N*P] = im2col(x)`.
pub fn im2col(be: &Backend, conv: &Conv2d, n: usize, x: Buf, col: Buf) -> Result<()> {
    let len = conv.win.k() * n * conv.win.p();
    be.launch(Kernel::nh_im2col, len, ka(&[x.at(0), col.at(0)], &window_ints(conv, n), &[]))
}

/// Training or eval forward: `y = act(scale * conv(x, w) + shift)` (see the module header).
#[allow(clippy::too_many_arguments)]
pub fn conv_forward(
    be: &Backend,
    conv: &Conv2d,
    n: usize,
    x: Buf,
    w: Buf,
    y: Buf,
    (scale, shift, relu): (Option<Buf>, Option<Buf>, bool),
    s: &Scratch,
) -> Result<()> {
    let (k, p, co) = (conv.win.k(), conv.win.p(), conv.spec.cout);
    let np = n * p;
    im2col(be, conv, n, x, s.col)?;
    // cn[Co x NP] = W[Co x K] col[K x NP]
    be.gemm((false, false), (co, np, k), 1.0, (w.at(0), k), (s.col.at(0), np), 0.0, (s.cn.at(0), np))?;
    let ints = [co as i64, p as i64, n as i64, relu as i64];
    be.launch(Kernel::nh_cn_to_nc, co * np, ka(&[s.cn.at(0), y.at(0), opt(scale), opt(shift)], &ints, &[]))
}

/// Gradients of a convolution: `dw += ..`, `db += ..`, and, when given,
/// `dx += ..` (`true`) or `dx = ..` (`false`).
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    be: &Backend,
    conv: &Conv2d,
    n: usize,
    x: Buf,
    w: Buf,
    dy: Buf,
    (dw, db): (Buf, Option<Buf>),
    dx: Option<(Buf, bool)>,
    s: &Scratch,
) -> Result<()> {
    let (k, p, co) = (conv.win.k(), conv.win.p(), conv.spec.cout);
    let np = n * p;
    let ints = [co as i64, p as i64, n as i64];
    be.launch(Kernel::nh_nc_to_cn, co * np, ka(&[dy.at(0), s.cn.at(0)], &ints, &[]))?;
    if let Some(db) = db {
        be.sum_rows(db, s.cn, co, np, 1.0, 1.0)?;
    }
    im2col(be, conv, n, x, s.col)?;
    // dW[Co x K] += dcn[Co x NP] col^T[NP x K]
    be.gemm((false, true), (co, k, np), 1.0, (s.cn.at(0), np), (s.col.at(0), np), 1.0, (dw.at(0), k))?;
    if let Some((dx, accumulate)) = dx {
        // dcol[K x NP] = W^T[K x Co] dcn[Co x NP]
        be.gemm((true, false), (k, np, co), 1.0, (w.at(0), k), (s.cn.at(0), np), 0.0, (s.col.at(0), np))?;
        let mut ints = window_ints(conv, n).to_vec();
        ints.push(accumulate as i64);
        let len = n * conv.win.cin * conv.win.h * conv.win.w;
        be.launch(Kernel::nh_col2im, len, ka(&[dx.at(0), s.col.at(0)], &ints, &[]))?;
    }
    Ok(())
}

/// BatchNorm's saved statistics and running averages (all `[C]`).
#[derive(Clone, Copy)]
pub struct BnState {
    pub mean: Buf,
    pub inv_std: Buf,
}

/// Training forward: batch statistics into `st`, running statistics `rm`, `rv`
/// updated, `y = act(gamma * xhat + beta)`.
#[allow(clippy::too_many_arguments)]
pub fn bn_forward_train(
    be: &Backend,
    cfg: &BatchNormConfig,
    (n, p): (usize, usize),
    x: Buf,
    y: Buf,
    st: BnState,
    (gamma, beta, rm, rv): (Option<Buf>, Option<Buf>, Buf, Buf),
    relu: bool,
    s: &Scratch,
) -> Result<()> {
    let c = cfg.channels;
    let (m, len) = (n * p, n * c * p);
    channel_sum(be, st.mean, x, (n, c, p), 1.0 / m as f32, 0.0, s.tmp)?;
    be.launch(Kernel::nh_sq_dev, len, ka(&[s.sq.at(0), x.at(0), st.mean.at(0)], &[p as i64, c as i64], &[]))?;
    // m2 goes through inv_std, which nh_bn_stats overwrites element by element.
    channel_sum(be, st.inv_std, s.sq, (n, c, p), 1.0, 0.0, s.tmp)?;
    let div = if m > 1 { m - 1 } else { 1 };
    let ptrs = [st.mean.at(0), st.inv_std.at(0), st.inv_std.at(0), rm.at(0), rv.at(0)];
    be.launch(Kernel::nh_bn_stats, c, ka(&ptrs, &[], &[cfg.eps, cfg.momentum, m as f32, div as f32]))?;
    let ptrs = [y.at(0), x.at(0), st.mean.at(0), st.inv_std.at(0), opt(gamma), opt(beta)];
    be.launch(Kernel::nh_bn_norm, len, ka(&ptrs, &[p as i64, c as i64, relu as i64], &[]))
}

/// Eval BatchNorm folded with the convolution bias into `scale`, `shift` (`[C]`).
#[allow(clippy::too_many_arguments)]
pub fn bn_fold(
    be: &Backend,
    cfg: &BatchNormConfig,
    (scale, shift): (Buf, Buf),
    (gamma, beta, rm, rv): (Option<Buf>, Option<Buf>, Buf, Buf),
    bias: Option<Buf>,
) -> Result<()> {
    let ptrs = [scale.at(0), shift.at(0), opt(gamma), opt(beta), rm.at(0), rv.at(0), opt(bias)];
    be.launch(Kernel::nh_bn_fold, cfg.channels, ka(&ptrs, &[], &[cfg.eps]))
}

/// Training backward: `dx = ..` (written), `dgamma += sum dy*xhat`, `dbeta += sum dy`.
#[allow(clippy::too_many_arguments)]
pub fn bn_backward(
    be: &Backend,
    cfg: &BatchNormConfig,
    (n, p): (usize, usize),
    dy: Buf,
    x: Buf,
    st: BnState,
    gamma: Option<Buf>,
    dparams: Option<(Buf, Buf)>,
    dx: Buf,
    s: &Scratch,
) -> Result<()> {
    let c = cfg.channels;
    let (m, len) = (n * p, n * c * p);
    channel_sum(be, s.s1, dy, (n, c, p), 1.0, 0.0, s.tmp)?;
    let ptrs = [s.sq.at(0), dy.at(0), x.at(0), st.mean.at(0), st.inv_std.at(0)];
    be.launch(Kernel::nh_bn_dy_xhat, len, ka(&ptrs, &[p as i64, c as i64], &[]))?;
    channel_sum(be, s.s2, s.sq, (n, c, p), 1.0, 0.0, s.tmp)?;
    if let Some((dgamma, dbeta)) = dparams {
        axpy(be, dgamma, 1.0, s.s2, c)?;
        axpy(be, dbeta, 1.0, s.s1, c)?;
    }
    let ptrs = [dx.at(0), dy.at(0), x.at(0), st.mean.at(0), st.inv_std.at(0), opt(gamma), s.s1.at(0), s.s2.at(0)];
    be.launch(Kernel::nh_bn_bwd, len, ka(&ptrs, &[p as i64, c as i64], &[m as f32]))
}

/// Per-row standardisation (HardNet's input) of `x` (`rows x d`):
/// `mean = sum x / d`, `m2 = sum (x - mean)^2`, saved `std_eps = sqrt(m2 / (d - 1)) + 1e-7`,
/// `out = (x - mean) / std_eps`. `sq` is `rows * d` scratch.
pub fn input_norm(
    be: &Backend,
    (rows, d): (usize, usize),
    x: Buf,
    out: Buf,
    (mean, m2, std): (Buf, Buf, Buf),
    sq: Buf,
) -> Result<()> {
    be.sum_rows(mean, x, rows, d, 1.0 / d as f32, 0.0)?;
    be.launch(Kernel::nh_sq_dev, rows * d, ka(&[sq.at(0), x.at(0), mean.at(0)], &[d as i64, rows as i64], &[]))?;
    be.sum_rows(m2, sq, rows, d, 1.0, 0.0)?;
    let ptrs = [out.at(0), x.at(0), mean.at(0), m2.at(0), std.at(0)];
    be.launch(Kernel::nh_input_norm, rows * d, ka(&ptrs, &[d as i64], &[]))
}

/// `dx += ` the input gradient of `input_norm` for `g` (`rows x d`), from the
/// saved `mean` and `std` (std_eps); `gbar`, `dot` (`rows`) and `tmp` (`rows * d`) are scratch.
#[allow(clippy::too_many_arguments)]
pub fn input_norm_backward(
    be: &Backend,
    (rows, d): (usize, usize),
    g: Buf,
    x: Buf,
    (mean, std): (Buf, Buf),
    dx: Buf,
    (gbar, dot, tmp): (Buf, Buf, Buf),
) -> Result<()> {
    be.sum_rows(gbar, g, rows, d, 1.0 / d as f32, 0.0)?;
    be.launch(Kernel::nh_centered_mul, rows * d, ka(&[tmp.at(0), g.at(0), x.at(0), mean.at(0)], &[d as i64], &[]))?;
    be.sum_rows(dot, tmp, rows, d, 1.0, 0.0)?;
    let ptrs = [dx.at(0), g.at(0), x.at(0), mean.at(0), std.at(0), gbar.at(0), dot.at(0)];
    be.launch(Kernel::nh_input_norm_bwd, rows * d, ka(&ptrs, &[d as i64], &[]))
}

/// Row-wise L2 normalisation of `x` (`rows x d`): saved `norms`, `out = x / max(norm, 1e-12)`.
/// `ss` (`rows`) and `sq` (`rows * d`) are scratch.
pub fn l2norm_forward(
    be: &Backend,
    (rows, d): (usize, usize),
    x: Buf,
    out: Buf,
    norms: Buf,
    (ss, sq): (Buf, Buf),
) -> Result<()> {
    be.launch(Kernel::nh_mul, rows * d, ka(&[sq.at(0), x.at(0), x.at(0)], &[], &[]))?;
    be.sum_rows(ss, sq, rows, d, 1.0, 0.0)?;
    be.launch(Kernel::nh_l2norm, rows * d, ka(&[out.at(0), x.at(0), ss.at(0), norms.at(0)], &[d as i64], &[]))
}

/// Its backward: `dx += J^T g` from the forward's input `x` and `norms`.
/// `dot` (`rows`) and `sq` (`rows * d`) are scratch.
pub fn l2norm_backward(
    be: &Backend,
    (rows, d): (usize, usize),
    g: Buf,
    x: Buf,
    norms: Buf,
    dx: Buf,
    (dot, sq): (Buf, Buf),
) -> Result<()> {
    be.launch(Kernel::nh_mul, rows * d, ka(&[sq.at(0), g.at(0), x.at(0)], &[], &[]))?;
    be.sum_rows(dot, sq, rows, d, 1.0, 0.0)?;
    let ptrs = [dx.at(0), g.at(0), x.at(0), norms.at(0), dot.at(0)];
    be.launch(Kernel::nh_l2norm_bwd, rows * d, ka(&ptrs, &[d as i64], &[]))
}

fn pool_ints(s: Shape4) -> [i64; 4] {
    [s.h, s.w, s.h / 2, s.w / 2].map(|v| v as i64)
}

/// 2x2 max pool of `x` (`s`, the input's shape) into `out`, saving `argmax`.
pub fn maxpool(be: &Backend, s: Shape4, x: Buf, out: Buf, argmax: Buf) -> Result<()> {
    let len = s.n * s.c * (s.h / 2) * (s.w / 2);
    be.launch(Kernel::nh_maxpool, len, ka(&[out.at(0), argmax.at(0), x.at(0)], &pool_ints(s), &[]))
}

/// Its backward: `dx += dout` at each window's argmax.
pub fn maxpool_backward(be: &Backend, s: Shape4, dout: Buf, argmax: Buf, dx: Buf) -> Result<()> {
    be.launch(Kernel::nh_maxpool_bwd, s.len(), ka(&[dx.at(0), dout.at(0), argmax.at(0)], &pool_ints(s), &[]))
}

/// Nearest upsampling x2 of `x` (`s`, the input's shape) into `out`.
pub fn upsample(be: &Backend, s: Shape4, x: Buf, out: Buf) -> Result<()> {
    be.launch(Kernel::nh_upsample, 4 * s.len(), ka(&[out.at(0), x.at(0)], &[s.h as i64, s.w as i64], &[]))
}

/// Its backward: `dx += ` the sum of each pixel's four copies' gradients.
pub fn upsample_backward(be: &Backend, s: Shape4, dout: Buf, dx: Buf) -> Result<()> {
    be.launch(Kernel::nh_upsample_bwd, s.len(), ka(&[dx.at(0), dout.at(0)], &[s.h as i64, s.w as i64], &[]))
}

/// `out = a ++ b` along channels.
pub fn concat(be: &Backend, (sa, sb): (Shape4, Shape4), a: Buf, b: Buf, out: Buf) -> Result<()> {
    let ints = [sa.image_len() as i64, sb.image_len() as i64];
    be.launch(Kernel::nh_concat, sa.len() + sb.len(), ka(&[out.at(0), a.at(0), b.at(0)], &ints, &[]))
}

/// Its backward: `da += dout[:, :Ca]`, `db += dout[:, Ca:]`.
pub fn concat_backward(be: &Backend, (sa, sb): (Shape4, Shape4), dout: Buf, da: Buf, db: Buf) -> Result<()> {
    let ints = [sa.image_len() as i64, sb.image_len() as i64];
    be.launch(Kernel::nh_concat_bwd, sa.len() + sb.len(), ka(&[da.at(0), db.at(0), dout.at(0)], &ints, &[]))
}

/// Inverted dropout with a host-drawn `mask` (1 keep, 0 drop): `out = mask ? x * scale : 0`.
pub fn dropout(be: &Backend, len: usize, x: Buf, mask: Buf, out: Buf, scale: f32) -> Result<()> {
    be.launch(Kernel::nh_dropout, len, ka(&[out.at(0), x.at(0), mask.at(0)], &[], &[scale]))
}

/// Its backward: `dx += mask ? dout * scale : 0`.
pub fn dropout_backward(be: &Backend, len: usize, dout: Buf, mask: Buf, dx: Buf, scale: f32) -> Result<()> {
    be.launch(Kernel::nh_dropout_bwd, len, ka(&[dx.at(0), dout.at(0), mask.at(0)], &[], &[scale]))
}
