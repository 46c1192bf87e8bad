// nhpatch's CUDA kernels: every primitive op of the three models, the losses
// and the optimizers, one logical thread per output element.
//
// Contract shared by every kernel: one argument, `KArgs a` (pointers in
// `a.p`, integers in `a.i`, floats in `a.f`, the thread count in `a.n`),
// and a body run for each `idx` in `0 .. a.n` (a grid-stride loop on the
// GPU). A body writes only elements that belong to its `idx`: no shared
// memory, no atomics, no barriers. Reductions (BatchNorm statistics, bias
// gradients, loss sums) are GEMMs against a vector of ones, done by the
// caller through cuBLAS. That keeps the results independent of the launch
// geometry, and lets the same source compile on the host (`host.cc`), where
// `nhpatch::gpu::emu` runs it as a sequential loop and tests compare it with
// the CPU layers.
//
// Layouts: activations NCHW; "CN" buffers are `[C][N*P]` (channel-major, the
// im2col/GEMM layout: `P = H*W`); `col` is `[K][N*P]` with `K = cin*kh*kw`
// rows ordered `(ci, ki, kj)` as a PyTorch weight `[cout, cin, kh, kw]`.
// Flags in `a.i` are 0/1; a null pointer (0) means "absent".

#define PF(k) ((float*)a.p[k])
#define PC(k) ((const float*)a.p[k])
#define PI(k) ((int*)a.p[k])

// ---- fill and elementwise -------------------------------------------------

// p0[idx] = f0.
NH_KERNEL(nh_fill) { PF(0)[idx] = a.f[0]; }

// p0[idx] = p1[idx] - p2[idx] (DnCNN residual: out = input - noise).
NH_KERNEL(nh_sub) { PF(0)[idx] = PC(1)[idx] - PC(2)[idx]; }

// p0[idx] += f0 * p1[idx].
NH_KERNEL(nh_axpy) { PF(0)[idx] += a.f[0] * PC(1)[idx]; }

// ReLU backward, writing: p0 = p1 (dout) where p2 (the ReLU output) > 0, else 0.
NH_KERNEL(nh_relu_bwd) { PF(0)[idx] = PC(2)[idx] > 0.0f ? PC(1)[idx] : 0.0f; }

// ---- convolution lowering -------------------------------------------------

// im2col of N images into col[K][N*P].
// p0 x [N][C][H][W], p1 col; i0 C, i1 H, i2 W, i3 kh, i4 kw, i5 stride,
// i6 pad_top, i7 pad_left, i8 Ho, i9 Wo, i10 N.  n = K * N * P.
NH_KERNEL(nh_im2col) {
  long long C = a.i[0], H = a.i[1], W = a.i[2], kh = a.i[3], kw = a.i[4], s = a.i[5];
  long long Ho = a.i[8], Wo = a.i[9], N = a.i[10];
  long long P = Ho * Wo, NP = N * P;
  long long r = idx / NP, col = idx % NP;
  long long b = col / P, q = col % P;
  long long ci = r / (kh * kw), ki = (r / kw) % kh, kj = r % kw;
  long long iy = (q / Wo) * s + ki - a.i[6], ix = (q % Wo) * s + kj - a.i[7];
  float v = 0.0f;
  if (iy >= 0 && iy < H && ix >= 0 && ix < W) v = PC(0)[((b * C + ci) * H + iy) * W + ix];
  PF(1)[idx] = v;
}

// col2im, the adjoint of nh_im2col, as a gather: each input element sums the
// col entries that read it. p0 dx [N][C][H][W], p1 dcol [K][N*P]; integers
// as nh_im2col, i11 accumulate (dx += sum) or write (dx = sum). n = N*C*H*W.
NH_KERNEL(nh_col2im) {
  long long C = a.i[0], H = a.i[1], W = a.i[2], kh = a.i[3], kw = a.i[4], s = a.i[5];
  long long Ho = a.i[8], Wo = a.i[9], N = a.i[10];
  long long P = Ho * Wo, NP = N * P;
  long long ix = idx % W, iy = (idx / W) % H, ci = (idx / (W * H)) % C, b = idx / (W * H * C);
  float acc = 0.0f;
  for (long long ki = 0; ki < kh; ++ki) {
    long long ty = iy + a.i[6] - ki;
    if (ty < 0 || ty % s != 0 || ty / s >= Ho) continue;
    for (long long kj = 0; kj < kw; ++kj) {
      long long tx = ix + a.i[7] - kj;
      if (tx < 0 || tx % s != 0 || tx / s >= Wo) continue;
      long long r = (ci * kh + ki) * kw + kj;
      acc += PC(1)[r * NP + b * P + (ty / s) * Wo + tx / s];
    }
  }
  if (a.i[11]) PF(0)[idx] += acc; else PF(0)[idx] = acc;
}

// CN -> NCHW with a per-channel affine map and optional ReLU:
// y[b][c][q] = act(scale[c] * src[c][b*P + q] + shift[c]).
// p0 src [C][N*P], p1 y, p2 scale (or null: 1), p3 shift (or null: 0);
// i0 C, i1 P, i2 N, i3 relu. n = N*C*P.
NH_KERNEL(nh_cn_to_nc) {
  long long C = a.i[0], P = a.i[1], N = a.i[2];
  long long q = idx % P, c = (idx / P) % C, b = idx / (P * C);
  float v = PC(0)[c * N * P + b * P + q];
  if (a.p[2]) v *= PC(2)[c];
  if (a.p[3]) v += PC(3)[c];
  if (a.i[3] && !(v > 0.0f)) v = 0.0f;
  PF(1)[idx] = v;
}

// NCHW -> CN: dst[c][b*P + q] = src[b][c][q]. p0 src, p1 dst; i0 C, i1 P, i2 N. n = N*C*P.
NH_KERNEL(nh_nc_to_cn) {
  long long C = a.i[0], P = a.i[1], N = a.i[2];
  long long q = idx % P, b = (idx / P) % N, c = idx / (P * N);
  PF(1)[idx] = PC(0)[(b * C + c) * P + q];
}

// ---- BatchNorm --------------------------------------------------------------

// Squared deviation from a per-group mean: p0 out = (p1 x - p2 mean[g])^2,
// g = (idx / i0) % i1 (i0 the group's run length, i1 the group count).
NH_KERNEL(nh_sq_dev) {
  float d = PC(1)[idx] - PC(2)[(idx / a.i[0]) % a.i[1]];
  PF(0)[idx] = d * d;
}

// Per channel, from the batch mean p0 and the sum of squared deviations p1
// over m = f2 values: p2 inv_std = 1 / sqrt(m2/m + eps); running stats p3, p4
// (may be null) move by momentum f1 toward the mean and the unbiased variance
// m2 / f3. f0 eps. n = C.
NH_KERNEL(nh_bn_stats) {
  double mean = PC(0)[idx], m2 = PC(1)[idx], eps = a.f[0], mom = a.f[1], m = a.f[2], div = a.f[3];
  PF(2)[idx] = (float)(1.0 / sqrt(m2 / m + eps));
  if (a.p[3]) {
    PF(3)[idx] = (float)((1.0 - mom) * PC(3)[idx] + mom * mean);
    PF(4)[idx] = (float)((1.0 - mom) * PC(4)[idx] + mom * (m2 / div));
  }
}

// Normalise with saved statistics: y = act(gamma[c] * (x - mean[c]) * inv_std[c] + beta[c]).
// p0 y, p1 x, p2 mean, p3 inv_std, p4 gamma (null: 1), p5 beta (null: 0);
// i0 P, i1 C, i2 relu. n = N*C*P.
NH_KERNEL(nh_bn_norm) {
  long long c = (idx / a.i[0]) % a.i[1];
  float g = a.p[4] ? PC(4)[c] : 1.0f, bt = a.p[5] ? PC(5)[c] : 0.0f;
  float k = PC(3)[c] * g;
  float y = (PC(1)[idx] - PC(2)[c]) * k + bt;
  if (a.i[2] && !(y > 0.0f)) y = 0.0f;
  PF(0)[idx] = y;
}

// Eval BatchNorm folded into a per-channel affine map of the convolution
// output (bias included): scale = gamma / sqrt(rv + eps),
// shift = beta + (bias - rm) * scale. p0 scale, p1 shift, p2 gamma (null: 1),
// p3 beta (null: 0), p4 rm, p5 rv, p6 bias (null: 0); f0 eps. n = C.
NH_KERNEL(nh_bn_fold) {
  double g = a.p[2] ? PC(2)[idx] : 1.0, bt = a.p[3] ? PC(3)[idx] : 0.0, bias = a.p[6] ? PC(6)[idx] : 0.0;
  double k = g / sqrt((double)PC(5)[idx] + (double)a.f[0]);
  PF(0)[idx] = (float)k;
  PF(1)[idx] = (float)(bt + (bias - (double)PC(4)[idx]) * k);
}

// t = dy * xhat, xhat = (x - mean[c]) * inv_std[c]. p0 t, p1 dy, p2 x,
// p3 mean, p4 inv_std; i0 P, i1 C. n = N*C*P.
NH_KERNEL(nh_bn_dy_xhat) {
  long long c = (idx / a.i[0]) % a.i[1];
  PF(0)[idx] = PC(1)[idx] * ((PC(2)[idx] - PC(3)[c]) * PC(4)[c]);
}

// BatchNorm training backward, writing:
// dx = gamma[c] * inv_std[c] * (dy - s1[c]/m - xhat * s2[c]/m), s1 = sum dy,
// s2 = sum dy*xhat. p0 dx, p1 dy, p2 x, p3 mean, p4 inv_std, p5 gamma (null: 1),
// p6 s1, p7 s2; i0 P, i1 C; f0 m. n = N*C*P.
NH_KERNEL(nh_bn_bwd) {
  long long c = (idx / a.i[0]) % a.i[1];
  float g = a.p[5] ? PC(5)[c] : 1.0f, is = PC(4)[c], m = a.f[0];
  float xhat = (PC(2)[idx] - PC(3)[c]) * is;
  PF(0)[idx] = g * is * (PC(1)[idx] - PC(6)[c] / m - xhat * (PC(7)[c] / m));
}

// ---- pooling, upsampling, concatenation, dropout ---------------------------

// 2x2 max pool, stride 2: p0 out, p1 argmax (int, index in the input plane),
// p2 x; i0 H, i1 W (input), i2 Ho, i3 Wo. The first maximum in row-major
// window order wins ties. n = N*C*Ho*Wo.
NH_KERNEL(nh_maxpool) {
  long long W = a.i[1], Ho = a.i[2], Wo = a.i[3];
  long long plane = idx / (Ho * Wo), k = idx % (Ho * Wo);
  long long top = 2 * (k / Wo) * W + 2 * (k % Wo);
  const float* x = PC(2) + plane * a.i[0] * W;
  long long cand[3] = {top + 1, top + W, top + W + 1};
  long long best = top;
  for (int t = 0; t < 3; ++t)
    if (x[cand[t]] > x[best]) best = cand[t];
  PF(0)[idx] = x[best];
  PI(1)[idx] = (int)best;
}

// Max pool backward as a gather: each input element takes its window's
// gradient when it was the argmax. p0 dx (+=), p1 dout, p2 argmax; integers as nh_maxpool.
// n = N*C*H*W.
NH_KERNEL(nh_maxpool_bwd) {
  long long H = a.i[0], W = a.i[1], Ho = a.i[2], Wo = a.i[3];
  long long plane = idx / (H * W), k = idx % (H * W);
  long long oy = (k / W) / 2, ox = (k % W) / 2;
  if (oy >= Ho || ox >= Wo) return;
  long long o = plane * Ho * Wo + oy * Wo + ox;
  if (PI(2)[o] == (int)k) PF(0)[idx] += PC(1)[o];
}

// Nearest upsampling x2: p0 out [N][C][2H][2W], p1 x; i0 H, i1 W. n = N*C*4*H*W.
NH_KERNEL(nh_upsample) {
  long long H = a.i[0], W = a.i[1];
  long long plane = idx / (4 * H * W), k = idx % (4 * H * W);
  long long oy = k / (2 * W), ox = k % (2 * W);
  PF(0)[idx] = PC(1)[plane * H * W + (oy / 2) * W + ox / 2];
}

// Its adjoint: dx (+=) = (d[2i][2j] + d[2i][2j+1]) + (d[2i+1][2j] + d[2i+1][2j+1]).
// p0 dx, p1 dout; i0 H, i1 W. n = N*C*H*W.
NH_KERNEL(nh_upsample_bwd) {
  long long H = a.i[0], W = a.i[1];
  long long plane = idx / (H * W), k = idx % (H * W);
  long long i = k / W, j = k % W;
  const float* d = PC(1) + plane * 4 * H * W + 2 * i * 2 * W + 2 * j;
  PF(0)[idx] += (d[0] + d[1]) + (d[2 * W] + d[2 * W + 1]);
}

// Channel concatenation: p0 out [N][Ca+Cb][P], p1 a, p2 b; i0 Ca*P, i1 Cb*P (image lengths). n = N*(Ca+Cb)*P.
NH_KERNEL(nh_concat) {
  long long la = a.i[0], lb = a.i[1], img = la + lb;
  long long b = idx / img, k = idx % img;
  PF(0)[idx] = k < la ? PC(1)[b * la + k] : PC(2)[b * lb + k - la];
}

// Its adjoint: p0 da (+=), p1 db (+=), p2 dout; integers as nh_concat. n = N*(Ca+Cb)*P.
NH_KERNEL(nh_concat_bwd) {
  long long la = a.i[0], lb = a.i[1], img = la + lb;
  long long b = idx / img, k = idx % img;
  if (k < la) PF(0)[b * la + k] += PC(2)[idx];
  else PF(1)[b * lb + k - la] += PC(2)[idx];
}

// Inverted dropout with a mask drawn on the host (1 keep, 0 drop):
// p0 out = mask ? x * f0 : 0, p1 x, p2 mask. n = len.
NH_KERNEL(nh_dropout) { PF(0)[idx] = PC(2)[idx] != 0.0f ? PC(1)[idx] * a.f[0] : 0.0f; }

// Its backward: p0 dx (+=) mask ? dout * f0 : 0, p1 dout, p2 mask. n = len.
NH_KERNEL(nh_dropout_bwd) {
  if (PC(2)[idx] != 0.0f) PF(0)[idx] += PC(1)[idx] * a.f[0];
}

// ---- per-row normalisations (HardNet) --------------------------------------

// Input standardisation per patch, from the row means p2 and the sums of
// squared deviations p3 over D = i0 values: p4 std_eps = sqrt(m2/(D-1)) + 1e-7
// (written by the idx % D == 0 thread), p0 out = (x - mean) / std_eps, p1 x.
NH_KERNEL(nh_input_norm) {
  long long D = a.i[0], r = idx / D;
  double den = sqrt((double)PC(3)[r] / (double)(D - 1)) + 1e-7;
  PF(0)[idx] = (float)(((double)PC(1)[idx] - (double)PC(2)[r]) / den);
  if (idx % D == 0) PF(4)[r] = (float)den;
}

// Its backward (the input gradient), from the row means p5 gbar of g and
// p6 S = sum_j g_j (x_j - mean): p0 dx (+=) = (g - gbar) / d - (x - mean) * S / (d^2 (D-1) s)
// with s = d - 1e-7 (the second term dropped for a constant patch, s = 0);
// p1 g, p2 x, p3 mean, p4 d = std_eps; i0 D.
NH_KERNEL(nh_input_norm_bwd) {
  long long D = a.i[0], r = idx / D;
  double mu = PC(3)[r], d = PC(4)[r], s = d - (double)1e-7f;
  double k = s > 0.0 ? (double)PC(6)[r] / (d * d * (double)(D - 1) * s) : 0.0;
  PF(0)[idx] += (float)(((double)PC(1)[idx] - (double)PC(5)[r]) / d - ((double)PC(2)[idx] - mu) * k);
}

// Product with a centred factor, per row of D = i0 values: p0 = p1 * (p2 - p3[row]).
NH_KERNEL(nh_centered_mul) { PF(0)[idx] = PC(1)[idx] * (PC(2)[idx] - PC(3)[idx / a.i[0]]); }

// Elementwise product p0 = p1 * p2 (squares when p1 == p2, dot terms otherwise).
NH_KERNEL(nh_mul) { PF(0)[idx] = PC(1)[idx] * PC(2)[idx]; }

// L2 normalisation of rows of D = i0 values from their sums of squares p2:
// p0 out = x / max(sqrt(ss), 1e-12), p1 x, p3 norm (written by the idx % D == 0 thread).
NH_KERNEL(nh_l2norm) {
  long long D = a.i[0], r = idx / D;
  double n = sqrt((double)PC(2)[r]);
  double inv = 1.0 / (n > 1e-12 ? n : 1e-12);
  PF(0)[idx] = (float)((double)PC(1)[idx] * inv);
  if (idx % D == 0) PF(3)[r] = (float)n;
}

// Its backward: dx (+=) = g / n - x (g . x) / n^3, or g / 1e-12 below the clamp.
// p0 dx, p1 g, p2 x, p3 norm, p4 dot = g . x per row; i0 D.
NH_KERNEL(nh_l2norm_bwd) {
  long long r = idx / a.i[0];
  double n = PC(3)[r];
  double inv = n > 1e-12 ? 1.0 / n : 1e12, k = n > 1e-12 ? (double)PC(4)[r] / (n * n * n) : 0.0;
  PF(0)[idx] += (float)((double)PC(1)[idx] * inv - (double)PC(2)[idx] * k);
}

// ---- losses -----------------------------------------------------------------

// Mean pointwise loss of the denoisers: d = pred - target (f32),
// i0 = 0 for L1 (term |d|, gradient sign(d) / len), 1 for MSE (d^2, 2d / len).
// p0 grad (+=), p1 term, p2 pred, p3 target; f0 1 / len. n = len.
NH_KERNEL(nh_point_loss) {
  float d = PC(2)[idx] - PC(3)[idx];
  double inv = a.f[0], t, g;
  if (a.i[0] == 0) {
    t = fabs((double)d);
    g = d > 0.0f ? 1.0 : (d < 0.0f ? -1.0 : 0.0);
  } else {
    t = (double)d * (double)d;
    g = 2.0 * (double)d;
  }
  PF(1)[idx] = (float)t;
  PF(0)[idx] += (float)(g * inv);
}

// Triplet loss on mean squared distances, one triplet per thread: rows of
// D = i0 values in p1 (anchors), p1 + B*D (positives), p1 + 2*B*D (negatives),
// B = i1; p0 the gradient (+=) in the same layout; p2 the hinge per triplet;
// f0 margin. n = B.
NH_KERNEL(nh_triplet) {
  long long D = a.i[0], B = a.i[1];
  const float* an = PC(1) + idx * D;
  const float* po = an + B * D;
  const float* ne = an + 2 * B * D;
  double sp = 0.0, sn = 0.0;
  for (long long d = 0; d < D; ++d) {
    double u = (double)(an[d] - po[d]), v = (double)(an[d] - ne[d]);
    sp += u * u;
    sn += v * v;
  }
  double hinge = (sp - sn) / (double)D + (double)a.f[0];
  if (hinge <= 0.0) {
    PF(2)[idx] = 0.0f;
    return;
  }
  PF(2)[idx] = (float)hinge;
  float c = (float)(2.0 / (double)D / (double)B);
  float* ga = PF(0) + idx * D;
  float* gp = ga + B * D;
  float* gn = ga + 2 * B * D;
  for (long long d = 0; d < D; ++d) {
    float x = an[d], y = po[d], z = ne[d];
    ga[d] += c * (z - y);
    gp[d] -= c * (x - y);
    gn[d] += c * (x - z);
  }
}

// HardNet loss, step 1: D_ij = sqrt(||a_i - p_j||^2 + 1e-6) + 1e-8.
// p0 dist [B][B], p1 anchors [B][D], p2 positives; i0 D, i1 B. n = B*B.
NH_KERNEL(nh_hn_dist) {
  long long D = a.i[0], B = a.i[1], i = idx / B, j = idx % B;
  const float* x = PC(1) + i * D;
  const float* y = PC(2) + j * D;
  double s = 0.0;
  for (long long d = 0; d < D; ++d) {
    double u = (double)x[d] - (double)y[d];
    s += u * u;
  }
  PF(0)[idx] = (float)sqrt(s + 1e-6) + 1e-8f;
}

__device__ static inline float nh_masked(float d, long long i, long long j) {
  float m = i == j ? d + 10.0f : d;
  return m < 0.008f ? m + 10.0f : m;
}

// HardNet loss, step 2, one anchor per thread: the hardest negative of row i
// (and, with anchor swap i2, of column i), first index on ties, the row
// winning a tie with the column. Writes p1 hinge (0 when inactive),
// p2 neg_row, p3 neg_col (int), p4 k_pos = 1/(B sqrt(.)) of (i, i),
// p5 k_neg of the negative (both 0 when inactive); p0 dist; i1 B; f0 margin.
NH_KERNEL(nh_hn_select) {
  long long B = a.i[1], i = idx;
  const float* dist = PC(0);
  float best = 1e30f;
  long long bj = 0;
  for (long long j = 0; j < B; ++j) {
    float m = nh_masked(dist[i * B + j], i, j);
    if (m < best) { best = m; bj = j; }
  }
  long long nr = i, nc = bj;
  if (a.i[2]) {
    float cbest = 1e30f;
    long long ci = 0;
    for (long long r = 0; r < B; ++r) {
      float m = nh_masked(dist[r * B + i], r, i);
      if (m < cbest) { cbest = m; ci = r; }
    }
    if (cbest < best) { best = cbest; nr = ci; nc = i; }
  }
  PI(2)[i] = (int)nr;
  PI(3)[i] = (int)nc;
  double hinge = (double)a.f[0] + (double)dist[i * B + i] - (double)best;
  if (hinge <= 0.0) {
    PF(1)[i] = 0.0f;
    PF(4)[i] = 0.0f;
    PF(5)[i] = 0.0f;
    return;
  }
  PF(1)[i] = (float)hinge;
  double w = 1.0 / (double)B;
  // sqrt(||.||^2 + 1e-6) is the distance without its 1e-8.
  PF(4)[i] = (float)(w / (double)(dist[i * B + i] - 1e-8f));
  PF(5)[i] = (float)(-w / (double)(dist[nr * B + nc] - 1e-8f));
}

// HardNet loss, step 3, a gather per gradient element: for anchor row r
// (threads 0 .. B*D) and positive row c (B*D .. 2*B*D), the terms of every
// active anchor whose positive pair or negative is that row.
// p0 grad_a (+=), p1 grad_p (+=), p2 anchors, p3 positives, p4 neg_row,
// p5 neg_col, p6 k_pos, p7 k_neg; i0 D, i1 B. n = 2*B*D.
NH_KERNEL(nh_hn_grad) {
  long long D = a.i[0], B = a.i[1];
  long long side = idx / (B * D), e = idx % (B * D), row = e / D, d = e % D;
  const float* an = PC(2);
  const float* po = PC(3);
  float acc = 0.0f;
  for (long long i = 0; i < B; ++i) {
    float kp = PC(6)[i], kn = PC(7)[i];
    long long nr = PI(4)[i], nc = PI(5)[i];
    if (side == 0) {
      if (row == i) acc += kp * (an[i * D + d] - po[i * D + d]);
      if (row == nr) acc += kn * (an[nr * D + d] - po[nc * D + d]);
    } else {
      if (row == i) acc -= kp * (an[i * D + d] - po[i * D + d]);
      if (row == nc) acc -= kn * (an[nr * D + d] - po[nc * D + d]);
    }
  }
  PF(side)[e] += acc;
}

// ---- optimizers ---------------------------------------------------------------

// torch.optim.SGD over the elements whose p3 mask is non-zero: p0 params,
// p1 grads, p2 momentum buffer; f0 lr, f1 weight decay, f2 momentum,
// f3 1 - dampening; i0 use weight decay, i1 use momentum, i2 nesterov, i3 first step.
NH_KERNEL(nh_sgd) {
  if (PC(3)[idx] == 0.0f) return;
  float p = PF(0)[idx];
  float d = a.i[0] ? PC(1)[idx] + a.f[1] * p : PC(1)[idx];
  if (a.i[1]) {
    float b = a.i[3] ? d : a.f[2] * PF(2)[idx] + a.f[3] * d;
    PF(2)[idx] = b;
    d = a.i[2] ? d + a.f[2] * b : b;
  }
  PF(0)[idx] = p - a.f[0] * d;
}

// torch.optim.Adam over the elements whose p4 mask is non-zero: p0 params,
// p1 grads, p2 exp_avg, p3 exp_avg_sq; f0 step size lr / bc1, f1 sqrt(bc2),
// f2 beta1, f3 beta2, f4 1 - beta1, f5 1 - beta2, f6 eps, f7 weight decay; i0 use weight decay.
NH_KERNEL(nh_adam) {
  if (PC(4)[idx] == 0.0f) return;
  float p = PF(0)[idx];
  float g = a.i[0] ? PC(1)[idx] + a.f[7] * p : PC(1)[idx];
  float m = a.f[2] * PF(2)[idx] + a.f[4] * g;
  float v = a.f[3] * PF(3)[idx] + a.f[5] * (g * g);
  PF(2)[idx] = m;
  PF(3)[idx] = v;
  float denom = sqrtf(v) / a.f[1] + a.f[6];
  PF(0)[idx] = p - a.f[0] * (m / denom);
}
