//! Where the int8 GEMM (`q8`) stores C: f32 values through a strided view,
//! or the 8-bit codes the next int8 layer reads (`Q8Codes`: images in NCHW
//! order; `Q8Laid`: the reader's own c4 layout, `Q8Layout`), each the code
//! `Q8Act::quantize` makes of the value, so the same bits as storing f32 and
//! quantizing it after. Each destination is a `Sink` `q8::run` feeds one
//! row of a tile at a time (16 sums), the reference one value at a time.

use super::MatMut;
use super::q8::{PANEL, Q8Act, Q8Out, Q8Weights, code};
use crate::error::{Error, Result};

/// C as the 8-bit codes of the next layer's input (`act`), laid out as a
/// batch of images: column `j` is pixel `j % p` of image `j / p`, so
/// `C[i, j]` is byte `((j / p) * rows + i) * p + j % p` of `codes`
/// (`[n / p, rows, p]`, NCHW), holding `act.quantize(C[i, j])`: the code
/// the next layer would make of the f32 output, so the same bits, without
/// writing and re-reading the f32 values.
#[derive(Debug)]
pub struct Q8Codes<'a> {
    pub codes: &'a mut [u8],
    pub act: Q8Act,
    /// Columns per image (`n` for a single image).
    pub p: usize,
}

/// Where the int8 GEMM stores C: f32 values (any strides), codes as
/// images, or codes laid out for the next layer's GEMM.
#[derive(Debug)]
pub enum Q8Dst<'a> {
    Values(MatMut<'a>),
    Codes(Q8Codes<'a>),
    Laid(Q8Laid<'a>),
}

impl<'a> From<MatMut<'a>> for Q8Dst<'a> {
    fn from(c: MatMut<'a>) -> Q8Dst<'a> {
        Q8Dst::Values(c)
    }
}

impl<'a> From<Q8Codes<'a>> for Q8Dst<'a> {
    fn from(c: Q8Codes<'a>) -> Q8Dst<'a> {
        Q8Dst::Codes(c)
    }
}

impl<'a> From<Q8Laid<'a>> for Q8Dst<'a> {
    fn from(c: Q8Laid<'a>) -> Q8Dst<'a> {
        Q8Dst::Laid(c)
    }
}

/// Where an int8 layer's GEMM reads its input codes (`ops::im2col_q8`'s c4
/// layout): per image `[quads, ph, phases, pws, 4]` bytes, channel quad by
/// padded row by column phase by position, 4 channels a pixel, the image
/// inside a border of the zero point (`top`, `left`; the border, the
/// channels past `channels` and the positions past the row are the zero
/// point). Pixel `(c, y, x)` (`c < channels`, `y < h`, `x < w`) lies at
/// `at(c, y, x)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Q8Layout {
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    /// Padded rows.
    pub ph: usize,
    /// Column phases (the reader's stride): padded column `col` at phase
    /// `col % phases`, position `col / phases`.
    pub phases: usize,
    /// Positions per phase.
    pub pws: usize,
    pub top: usize,
    pub left: usize,
}

impl Q8Layout {
    /// Bytes of one image.
    pub fn image_len(&self) -> usize {
        self.channels.div_ceil(4) * self.ph * self.phases * self.pws * 4
    }

    /// Bytes from one channel quad to the next.
    #[inline]
    fn quad_len(&self) -> usize {
        self.ph * self.phases * self.pws * 4
    }

    /// Byte of padded column 0 of image row `y`, channel 0.
    #[inline]
    fn row_at(&self, y: usize) -> usize {
        (self.top + y) * self.phases * self.pws * 4
    }

    /// Byte of pixel `(c, y, x)` in its image.
    #[inline]
    pub fn at(&self, c: usize, y: usize, x: usize) -> usize {
        let col = self.left + x;
        c / 4 * self.quad_len() + (((self.top + y) * self.phases + col % self.phases) * self.pws + col / self.phases) * 4 + c % 4
    }
}

/// Byte offsets of successive padded columns of one row of a `Q8Layout`
/// (or any phased c4 codes): column `c` at `(c % phases * pws + c / phases) * 4`,
/// counted along rather than divided per pixel.
pub struct PhaseCursor {
    phase: usize,
    pos: usize,
    phases: usize,
    pws: usize,
}

impl PhaseCursor {
    #[inline(always)]
    pub fn at(col: usize, phases: usize, pws: usize) -> PhaseCursor {
        PhaseCursor { phase: col % phases, pos: col / phases, phases, pws }
    }

    /// The offset of the current column; moves to the next.
    #[inline(always)]
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> usize {
        let o = (self.phase * self.pws + self.pos) * 4;
        self.phase += 1;
        if self.phase == self.phases {
            (self.phase, self.pos) = (0, self.pos + 1);
        }
        o
    }
}

/// C as the next layer's input codes under its `act`, in its GEMM's layout
/// (`Q8Layout`, image after image): column `j` is pixel `j % (h w)` of image
/// `j / (h w)`, row `i` channel `i`, so `C[i, j]` lies at
/// `(j / (h w)) * image_len + at(i, y, x)` with `(y, x)` the pixel's place.
/// Only the images' pixels are written: the caller fills the rest with the
/// zero point once (`codes` starts as `act.zero` everywhere), and the reader
/// then reads its patch matrix in place with no pass of its own.
#[derive(Debug)]
pub struct Q8Laid<'a> {
    pub codes: &'a mut [u8],
    pub act: Q8Act,
    pub layout: Q8Layout,
}

/// How one row of a tile maps its sums (`Q8Out`): `corr` is the zero
/// point times the row's weight sum.
#[derive(Clone, Copy)]
pub(super) struct RowMap {
    pub corr: i32,
    pub scale: f32,
    pub shift: f32,
    pub relu: bool,
}

/// The codes of 16 values (`q8::code`), the portable way.
#[inline(always)]
fn codes16(y: &[f32; PANEL], inv: f32, zero: f32) -> [u8; PANEL] {
    let mut q = [0u8; PANEL];
    q.iter_mut().zip(y).for_each(|(d, &v)| *d = code(v, inv, zero));
    q
}

impl RowMap {
    /// The output of a corrected sum: the one formula.
    #[inline(always)]
    pub fn value(self, corrected: i32) -> f32 {
        let y = self.scale * corrected as f32 + self.shift;
        if !self.relu || y > 0.0 { y } else { 0.0 }
    }

    /// The 16 outputs of a row of sums.
    #[inline(always)]
    fn values(self, acc: &[i32; PANEL]) -> [f32; PANEL] {
        let mut y = [0.0f32; PANEL];
        y.iter_mut().zip(acc).for_each(|(d, &v)| *d = self.value(v - self.corr));
        y
    }
}

/// Where `run` and `naive` put C: `panel` names the columns `j0 .. j0 +
/// cols` (inside one panel) of the rows stored next.
pub(super) trait Sink {
    fn panel(&mut self, j0: usize, cols: usize);
    /// Stores `C[i, j0 + jj] = y[jj]` for `jj < cols`.
    fn put(&mut self, i: usize, y: &[f32; PANEL]);
    /// Stores row `i`'s sums mapped by `m` (the tiles' path).
    #[inline(always)]
    fn row(&mut self, i: usize, acc: &[i32; PANEL], m: RowMap) {
        self.put(i, &m.values(acc))
    }
    /// Stores rows `i .. i + 4` (`i` a multiple of 4), row `i + r` mapped by
    /// `map(i + r)`. (A closure, not an array of maps: the array's fields,
    /// stored one by one and loaded in pairs, stalled every row.)
    #[inline(always)]
    fn quad(&mut self, i: usize, acc: &[[i32; PANEL]; 4], map: impl Fn(usize) -> RowMap) {
        for (r, acc_row) in acc.iter().enumerate() {
            self.row(i + r, acc_row, map(i + r));
        }
    }
}

/// f32 values into a strided view.
pub(super) struct ValueSink<'a, 'c> {
    pub c: &'a mut MatMut<'c>,
    pub j0: usize,
    pub cols: usize,
}

impl Sink for ValueSink<'_, '_> {
    #[inline(always)]
    fn panel(&mut self, j0: usize, cols: usize) {
        (self.j0, self.cols) = (j0, cols);
    }

    /// A contiguous row is mapped straight into place (through a row array
    /// the compiler built the 16 lanes piecewise).
    #[inline(always)]
    fn row(&mut self, i: usize, acc: &[i32; PANEL], m: RowMap) {
        let (rs, cs) = (self.c.row_stride(), self.c.col_stride());
        if cs != 1 {
            return self.put(i, &m.values(acc));
        }
        // Element (i, j0) of the view, which was bounds-checked when built.
        let base = i * rs + self.j0;
        let dst = &mut self.c.data_mut()[base..base + self.cols];
        dst.iter_mut().zip(acc).for_each(|(d, &v)| *d = m.value(v - m.corr));
    }

    #[inline(always)]
    fn put(&mut self, i: usize, y: &[f32; PANEL]) {
        let (rs, cs) = (self.c.row_stride(), self.c.col_stride());
        // Element (i, j0) of the view, which was bounds-checked when built.
        let base = i * rs + self.j0 * cs;
        let data = self.c.data_mut();
        if cs == 1 && self.cols == PANEL {
            // A whole contiguous row of the panel (the convolutions' case): one fixed-size copy.
            let dst: &mut [f32; PANEL] = (&mut data[base..base + PANEL]).try_into().expect("16 values");
            *dst = *y;
        } else {
            for (jj, &v) in y.iter().enumerate().take(self.cols) {
                data[base + jj * cs] = v;
            }
        }
    }
}

/// `Q8Codes` with the code map's constants hoisted (`Q8Act::quantize`) and
/// the current panel's place in the images found once for all its rows.
/// `AVX512`: rows through `q8_x86::codes_row_avx512` (whoever makes such a
/// sink vouches for the CPU), else the portable formulas.
pub(super) struct CodeSink<'a, const AVX512: bool> {
    codes: &'a mut [u8],
    rows: usize,
    p: usize,
    inv: f32,
    zero: f32,
    j0: usize,
    cols: usize,
    /// Where the panel's columns are one run of 16 inside one image: the
    /// offset of row 0's first code (row i's is `i * p` further).
    whole: Option<usize>,
}

impl<'a, const AVX512: bool> CodeSink<'a, AVX512> {
    pub fn new(c: &'a mut Q8Codes<'_>, rows: usize) -> CodeSink<'a, AVX512> {
        let (inv, zero) = (1.0 / c.act.scale, c.act.zero as f32);
        CodeSink { codes: &mut *c.codes, rows, p: c.p, inv, zero, j0: 0, cols: 0, whole: None }
    }

    /// Stores row `i`'s codes `q[jj]` at columns `j0 + jj < j0 + cols`.
    #[inline(always)]
    fn store(&mut self, i: usize, q: &[u8; PANEL]) {
        if let Some(base) = self.whole {
            let o = base + i * self.p;
            *<&mut [u8; PANEL]>::try_from(&mut self.codes[o..o + PANEL]).expect("16 codes") = *q;
            return;
        }
        // A run crossing from one image into the next, or the last panel's.
        let (mut j, mut at) = (self.j0, 0);
        while at < self.cols {
            let (img, pix) = (j / self.p, j % self.p);
            let len = (self.p - pix).min(self.cols - at);
            let o = (img * self.rows + i) * self.p + pix;
            self.codes[o..o + len].copy_from_slice(&q[at..at + len]);
            (j, at) = (j + len, at + len);
        }
    }
}

impl<const AVX512: bool> Sink for CodeSink<'_, AVX512> {
    #[inline(always)]
    fn panel(&mut self, j0: usize, cols: usize) {
        let (img, pix) = (j0 / self.p, j0 % self.p);
        (self.j0, self.cols) = (j0, cols);
        self.whole = (cols == PANEL && pix + PANEL <= self.p).then_some(img * self.rows * self.p + pix);
    }

    #[inline(always)]
    fn put(&mut self, i: usize, y: &[f32; PANEL]) {
        self.store(i, &codes16(y, self.inv, self.zero));
    }

    #[inline(always)]
    fn row(&mut self, i: usize, acc: &[i32; PANEL], m: RowMap) {
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            let constants = (self.inv, self.zero);
            let whole = self.whole.map(|base| base + i * self.p);
            // SAFETY (both): an AVX512 sink is made only for the VNNI and AMX kernels, whose
            // CPU has avx512f and avx512bw (`dispatch`, `Q8Kernel::is_available`).
            if let Some(o) = whole {
                // Straight into place: the codes never touch the stack.
                let dst = <&mut [u8; PANEL]>::try_from(&mut self.codes[o..o + PANEL]).expect("16 codes");
                unsafe { super::q8_x86::codes_row_avx512(acc, m, constants, dst) };
            } else {
                let mut q = [0u8; PANEL];
                unsafe { super::q8_x86::codes_row_avx512(acc, m, constants, &mut q) };
                self.store(i, &q);
            }
            return;
        }
        self.put(i, &m.values(acc))
    }
}

pub(super) fn check_out(a: &Q8Weights, n: usize, out: &Q8Out<'_>, c: &Q8Dst<'_>) -> Result<()> {
    let bad = match c {
        Q8Dst::Values(c) => (c.rows() != a.rows() || c.cols() != n).then(|| format!("C is {}x{}", c.rows(), c.cols())),
        Q8Dst::Codes(c) => (c.p == 0 || !n.is_multiple_of(c.p) || c.codes.len() != a.rows() * n)
            .then(|| format!("C is {} codes in images of {} columns", c.codes.len(), c.p)),
        Q8Dst::Laid(c) => {
            let (l, p) = (&c.layout, c.layout.h * c.layout.w);
            let fits = l.channels == a.rows() && p > 0 && n.is_multiple_of(p) && l.phases > 0;
            let inside = l.top + l.h <= l.ph && l.left + l.w <= l.phases * l.pws;
            (!fits || !inside || c.codes.len() != n / p * l.image_len())
                .then(|| format!("C is {} codes laid out as {l:?}", c.codes.len()))
        }
    };
    if let Some(what) = bad {
        return Err(Error::Shape(format!("int8 GEMM: A is {}x{}, B has {n} columns, {what}", a.rows(), a.cols())));
    }
    if out.scale.len() != a.rows() || out.shift.is_some_and(|s| s.len() != a.rows()) {
        return Err(Error::Shape(format!("int8 GEMM: the output map needs {} scales and shifts", a.rows())));
    }
    Ok(())
}


/// `Q8Laid`'s sink: a channel quad's 4 rows at once, interleaved 4 bytes a
/// pixel (one 64-byte run where the 16 pixels are consecutive positions of
/// one phase of one row); a partial last quad a byte at a time. `AVX512` as
/// `CodeSink`.
pub(super) struct LaidSink<'a, const AVX512: bool> {
    codes: &'a mut [u8],
    layout: Q8Layout,
    inv: f32,
    zero: f32,
    cols: usize,
    /// The current panel's pixels: the byte of channel 0 of column `j0 + jj`.
    offs: [usize; PANEL],
    /// Whether `offs` runs on 4 bytes a column (one run of 64 bytes a quad).
    run: bool,
}

impl<'a, const AVX512: bool> LaidSink<'a, AVX512> {
    pub fn new(c: &'a mut Q8Laid<'_>) -> LaidSink<'a, AVX512> {
        let (inv, zero) = (1.0 / c.act.scale, c.act.zero as f32);
        let (codes, layout) = (&mut *c.codes, c.layout);
        LaidSink { codes, layout, inv, zero, cols: 0, offs: [0; PANEL], run: false }
    }

    /// Stores channel `i`'s codes of the panel, a byte a pixel.
    #[inline(always)]
    fn bytes(&mut self, i: usize, q: &[u8; PANEL]) {
        let base = i / 4 * self.layout.quad_len() + i % 4;
        for (jj, &v) in q.iter().enumerate().take(self.cols) {
            self.codes[self.offs[jj] + base] = v;
        }
    }
}

impl<const AVX512: bool> Sink for LaidSink<'_, AVX512> {
    #[inline(always)]
    fn panel(&mut self, j0: usize, cols: usize) {
        let l = self.layout;
        let p = l.h * l.w;
        // Column j0's place found once; the rest counted along (the divisions
        // of 16 lookups a panel were a fifth of the store's time).
        let (mut img, pix) = (j0 / p, j0 % p);
        let (mut y, x0) = (pix / l.w, pix % l.w);
        let mut o = img * l.image_len() + l.row_at(y);
        let mut col = PhaseCursor::at(l.left + x0, l.phases, l.pws);
        let mut x = x0;
        for slot in self.offs.iter_mut().take(cols) {
            *slot = o + col.next();
            x += 1;
            if x == l.w {
                (x, y) = (0, y + 1);
                if y == l.h {
                    (y, img) = (0, img + 1);
                }
                o = img * l.image_len() + l.row_at(y);
                col = PhaseCursor::at(l.left, l.phases, l.pws);
            }
        }
        self.cols = cols;
        self.run = cols == PANEL && self.offs.windows(2).all(|w| w[1] == w[0] + 4);
    }

    /// One value at a time (the reference's path): straight to its byte.
    #[inline(always)]
    fn put(&mut self, i: usize, y: &[f32; PANEL]) {
        self.bytes(i, &codes16(y, self.inv, self.zero));
    }

    #[inline(always)]
    fn quad(&mut self, i: usize, acc: &[[i32; PANEL]; 4], map: impl Fn(usize) -> RowMap) {
        let mut pixels = [0u8; 4 * PANEL];
        let maps = [map(i), map(i + 1), map(i + 2), map(i + 3)];
        #[cfg(target_arch = "x86_64")]
        if AVX512 {
            // SAFETY: as `CodeSink::row`.
            unsafe { super::q8_x86::codes_quad_avx512(acc, maps, (self.inv, self.zero), &mut pixels) };
        }
        if !cfg!(target_arch = "x86_64") || !AVX512 {
            let rows = [0, 1, 2, 3].map(|r| codes16(&maps[r].values(&acc[r]), self.inv, self.zero));
            super::q8::interleave_step(&mut pixels, [&rows[0], &rows[1], &rows[2], &rows[3]]);
        }
        let base = i / 4 * self.layout.quad_len();
        if self.run {
            let o = self.offs[0] + base;
            *<&mut [u8; 4 * PANEL]>::try_from(&mut self.codes[o..o + 4 * PANEL]).expect("64 codes") = pixels;
        } else {
            for (jj, px) in pixels.chunks_exact(4).enumerate().take(self.cols) {
                let o = self.offs[jj] + base;
                self.codes[o..o + 4].copy_from_slice(px);
            }
        }
    }
}
