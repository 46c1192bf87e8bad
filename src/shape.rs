//! `Shape4`: the NCHW shape of a tensor, shared by the ops, the layers, the
//! models and the device backend (below all of them, so every one may use it).

/// An NCHW tensor shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape4 {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape4 {
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Shape4 { n, c, h, w }
    }
    /// Elements in the whole tensor.
    pub const fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Elements in one image (C*H*W).
    pub const fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Elements in one channel plane (H*W).
    pub const fn plane(&self) -> usize {
        self.h * self.w
    }
}

impl std::fmt::Display for Shape4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}x{}", self.n, self.c, self.h, self.w)
    }
}
