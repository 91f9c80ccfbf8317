/* The native CPU kernels of hnets (loaded by hnets/_native/build.py, called through the
 * checked wrappers of hnets/_native/kernels.py):
 *
 * - the magnitude nonlinearity: its forward, its backward (with the batch norm's
 *   statistic term) and the per-stream power sums of the batch norm;
 * - the ReLU fused with the k x k mean pool after it (and the pool's own backward);
 * - the repacking around the convolution schemes of hnets/nn/schemes.py: split and
 *   merge for Gauss's three real products and Karatsuba's nine, and their backwards;
 * - filter synthesis of HConv2d, straight into the layout the convolution reads, and
 *   its backward.
 *
 * Data: pixel-major complex pairs, float32, contiguous, n positions x s streams x 2
 * (real, imaginary). Per-stream arrays (scale, bias, corr) hold s floats.
 *
 * Built with -ffp-contract=off: every product and sum below is rounded as written
 * (the one fused multiply-add is spelled out, to match ATen's addcmul).
 *
 * Sizes and indices are int64_t (long is 32 bits on Windows). Without OpenMP (a
 * compiler that rejects -fopenmp) the parallel pragmas are ignored (the simd ones are
 * kept by -fopenmp-simd where the compiler takes it) and every kernel runs on one
 * thread: the per-thread slots below then only ever see thread 0.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
#endif

/* Partial sums are kept in float over blocks of this many positions, then added to
   double accumulators: vectorisable inner loops without float drift over 10^5 terms. */
#define BLOCK 256

/* The build's identity: a hash of this file's text, computed and passed by build.py
   (-DHNETS_SOURCE_HASH=0x...ULL) and checked when the library is loaded. */
#ifndef HNETS_SOURCE_HASH
#error "define HNETS_SOURCE_HASH (hnets/_native/build.py passes a hash of this file)"
#endif
uint64_t hnets_source_hash(void) { return HNETS_SOURCE_HASH; }

/* 1 when built with OpenMP, 0 for the single-threaded build. */
int hnets_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

/* One position's streams: op = y relu(|y|_eps + bias) / |y|_eps with y = zp * scale, or
   op += that when accumulating. zp and op may be the same array (each stream's pair is
   read before it is written). */
static inline __attribute__((always_inline)) void relu_row(const float* zp, float* op,
                                                           int64_t s_count,
                                                           const float* restrict scale,
                                                           const float* restrict bias,
                                                           float eps, const int accumulate) {
#pragma omp simd
  for (int64_t s = 0; s < s_count; s++) {
    float yr = zp[2 * s] * scale[s];
    float yi = zp[2 * s + 1] * scale[s];
    float mag = sqrtf(fmaf(yi, yi, yr * yr) + eps);
    float f = mag + bias[s];
    f = f > 0.0f ? f : 0.0f;
    f = f / mag;
    if (accumulate) {
      op[2 * s] += yr * f;
      op[2 * s + 1] += yi * f;
    } else {
      op[2 * s] = yr * f;
      op[2 * s + 1] = yi * f;
    }
  }
}

/* out = y relu(|y|_eps + bias) / |y|_eps, y = z * scale (per stream); out may be z. */
void hnets_relu_forward(const float* z, float* out, int64_t n, int64_t s_count,
                        const float* restrict scale, const float* restrict bias, float eps,
                        int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < n; p++)
    relu_row(z + p * s_count * 2, out + p * s_count * 2, s_count, scale, bias, eps, 0);
}

/* power[s] = sum over positions of |z|^2 (double). */
void hnets_power(const float* restrict z, double* restrict power, int64_t n, int64_t s_count,
                 int threads) {
  double* acc = (double*)calloc((size_t)threads * s_count, sizeof(double));
#pragma omp parallel num_threads(threads)
  {
    double* total = acc + (size_t)omp_get_thread_num() * s_count;
    float* part = (float*)calloc(s_count, sizeof(float));
    int64_t in_block = 0;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < n; p++) {
      const float* restrict zp = z + p * s_count * 2;
      for (int64_t s = 0; s < s_count; s++)
        part[s] += zp[2 * s] * zp[2 * s] + zp[2 * s + 1] * zp[2 * s + 1];
      if (++in_block == BLOCK) {
        for (int64_t s = 0; s < s_count; s++) { total[s] += part[s]; part[s] = 0.0f; }
        in_block = 0;
      }
    }
    for (int64_t s = 0; s < s_count; s++) total[s] += part[s];
    free(part);
  }
  memset(power, 0, s_count * sizeof(double));
  for (int t = 0; t < threads; t++)
    for (int64_t s = 0; s < s_count; s++) power[s] += acc[(size_t)t * s_count + s];
  free(acc);
}

/* One position of the backward. With inv = 1/|a z|_eps, s = max(1 + b inv, 0),
   u = Re(conj(g) z) a inv where s > 0 (else 0) and ky = (1 - s) u a inv:
   grad_bias += u, grad_a += s Re(conj(g) z) + ky |z|^2 and, when writing,
   grad_z = g (s a) + z (ky a - corr). */
static inline void backward_row(const float* restrict gp, const float* restrict zp,
                                float* restrict op, int64_t s_count, const float* restrict a,
                                const float* restrict bias, float eps,
                                const float* restrict corr, float* restrict part_a,
                                float* restrict part_b, int write, float gdiv) {
  for (int64_t s = 0; s < s_count; s++) {
    float zr = zp[2 * s], zi = zp[2 * s + 1];
    float gr = gp[2 * s] / gdiv, gi = gp[2 * s + 1] / gdiv;
    float qz = zr * zr + zi * zi;
    float gz = gr * zr + gi * zi;
    float inv = 1.0f / sqrtf(qz * (a[s] * a[s]) + eps);
    float ainv = inv * a[s];
    float sv = inv * bias[s] + 1.0f;
    sv = sv > 0.0f ? sv : 0.0f;
    float u = sv > 0.0f ? gz * ainv : 0.0f;
    float ky = (1.0f - sv) * u * ainv;
    part_b[s] += u;
    part_a[s] += sv * gz + ky * qz;
    if (write) {
      float gs = sv * a[s];
      float kz = ky * a[s] - corr[s];
      op[2 * s] = gr * gs + zr * kz;
      op[2 * s + 1] = gi * gs + zi * kz;
    }
  }
}

/* grad_out may be NULL (reductions only). grad_a and grad_bias receive s doubles.
   With k > 1 the forward was pooled (hnets_relu_pool, kind 0): z has n = b h w
   positions (rows of w), g is the pooled gradient, each of its values spread over its
   k x k tile divided by k^2 (the mean pool's backward). */
void hnets_relu_backward(const float* g, const float* z, float* grad_out, int64_t n,
                         int64_t s_count, const float* a, const float* bias, float eps,
                         const float* corr, double* grad_a, double* grad_bias, int64_t h,
                         int64_t w, int64_t k, int threads) {
  float gdiv = (float)(k * k);
  double* acc = (double*)calloc((size_t)threads * 2 * s_count, sizeof(double));
#pragma omp parallel num_threads(threads)
  {
    double* total = acc + (size_t)omp_get_thread_num() * 2 * s_count;
    float* part = (float*)calloc(2 * s_count, sizeof(float));
    int64_t in_block = 0;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < n; p++) {
      size_t off = (size_t)p * s_count * 2, goff = off;
      if (k > 1) {
        int64_t x = p % w, y = (p / w) % h, bi = p / (w * h);
        goff = (size_t)((bi * (h / k) + y / k) * (w / k) + x / k) * s_count * 2;
      }
      /* constant arguments, so each call below is specialised when inlined */
      if (grad_out && k > 1)
        backward_row(g + goff, z + off, grad_out + off, s_count, a, bias, eps, corr, part,
                     part + s_count, 1, gdiv);
      else if (grad_out)
        backward_row(g + goff, z + off, grad_out + off, s_count, a, bias, eps, corr, part,
                     part + s_count, 1, 1.0f);
      else if (k > 1)
        backward_row(g + goff, z + off, 0, s_count, a, bias, eps, corr, part, part + s_count,
                     0, gdiv);
      else
        backward_row(g + goff, z + off, 0, s_count, a, bias, eps, corr, part, part + s_count,
                     0, 1.0f);
      if (++in_block == BLOCK) {
        for (int64_t s = 0; s < 2 * s_count; s++) { total[s] += part[s]; part[s] = 0.0f; }
        in_block = 0;
      }
    }
    for (int64_t s = 0; s < 2 * s_count; s++) total[s] += part[s];
    free(part);
  }
  memset(grad_a, 0, s_count * sizeof(double));
  memset(grad_bias, 0, s_count * sizeof(double));
  for (int t = 0; t < threads; t++)
    for (int64_t s = 0; s < s_count; s++) {
      grad_a[s] += acc[(size_t)t * 2 * s_count + s];
      grad_bias[s] += acc[(size_t)t * 2 * s_count + s_count + s];
    }
  free(acc);
}

/* Gauss's trick for complex convolutions: de-interleave complex pairs into the three
   real inputs (re, im, re + im), and re-interleave the three real products. */
void hnets_split3(const float* restrict z, float* restrict re, float* restrict im,
                  float* restrict sum, int64_t n, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < n; p++) {
    float r = z[2 * p], i = z[2 * p + 1];
    re[p] = r;
    im[p] = i;
    sum[p] = r + i;
  }
}

/* out = (p + sign_q q, p + sign_r r) as interleaved pairs. */
void hnets_merge3(const float* restrict p, const float* restrict q, const float* restrict r,
                  float* restrict out, int64_t n, float sign_q, float sign_r, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t k = 0; k < n; k++) {
    out[2 * k] = p[k] + sign_q * q[k];
    out[2 * k + 1] = p[k] + sign_r * r[k];
  }
}

/* Backward of a mean pool whose k x k windows tile the input, channels-last:
   out[b, y, x, :] = g[b, y / k, x / k, :] / (k * k). */
void hnets_tile_spread(const float* restrict g, float* restrict out, int64_t b, int64_t h,
                       int64_t w, int64_t n, int64_t k, int threads) {
  float kk = (float)(k * k);
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (int64_t bi = 0; bi < b; bi++)
    for (int64_t y = 0; y < h * k; y++) {
      const float* restrict grow = g + (size_t)(bi * h + y / k) * w * n;
      float* restrict orow = out + (size_t)(bi * h * k + y) * w * k * n;
      for (int64_t x = 0; x < w * k; x++) {
        const float* restrict gp = grow + (x / k) * n;
        float* restrict op = orow + x * n;
        for (int64_t c = 0; c < n; c++) op[c] = gp[c] / kk;
      }
    }
}

#define LANES 64 /* independent accumulators: enough to hide the add latency */

/* Filter synthesis of HConv2d: a bank out[g][o][a][i][b] (G x O x A x I x B, the
   layout the convolution wants) = sum_q c[o][i][q] m[q][g][a][b], with the complex
   ring coefficients c[o][i][(f, r, p)] = w[f][o][i][r] * (p ? sin : cos)[f][o][i]
   (sin = NULL: no phase, c = (w, 0)); q runs over F x R x 2. Work is split by output
   channel o: its I x (G A B) products go to a local buffer, then out in runs of I B. */
static void coefficients(const float* restrict w, const float* restrict cs,
                         const float* restrict sn, float* restrict c, int64_t o, int64_t i,
                         int64_t f_count, int64_t o_count, int64_t i_count, int64_t r_count) {
  for (int64_t f = 0; f < f_count; f++) {
    int64_t foi = (f * o_count + o) * i_count + i;
    float co = sn ? cs[foi] : 1.0f, si = sn ? sn[foi] : 0.0f;
    for (int64_t r = 0; r < r_count; r++) {
      float wv = w[foi * r_count + r];
      c[(f * r_count + r) * 2] = wv * co;
      c[(f * r_count + r) * 2 + 1] = wv * si;
    }
  }
}

void hnets_synthesise(const float* restrict w, const float* restrict cs,
                      const float* restrict sn, const float* restrict m,
                      float* restrict out, int64_t f_count, int64_t o_count,
                      int64_t i_count, int64_t r_count, int64_t g_count, int64_t a_count,
                      int64_t b_count, int threads) {
  int64_t q_count = f_count * r_count * 2, j_count = g_count * a_count * b_count;
#pragma omp parallel num_threads(threads)
  {
    float* local = (float*)malloc(sizeof(float) * j_count * i_count);
    float* c = (float*)malloc(sizeof(float) * q_count);
#pragma omp for schedule(static)
    for (int64_t o = 0; o < o_count; o++) {
      for (int64_t i = 0; i < i_count; i++) {
        coefficients(w, cs, sn, c, o, i, f_count, o_count, i_count, r_count);
        float* restrict li = local + i * j_count;
        int64_t j0 = 0;
        for (; j0 + LANES <= j_count; j0 += LANES) {  /* accumulators stay in registers */
          float acc[LANES] = {0.0f};
          for (int64_t q = 0; q < q_count; q++) {
            const float* restrict mq = m + q * j_count + j0;
            float cq = c[q];
#pragma omp simd
            for (int l = 0; l < LANES; l++) acc[l] = fmaf(cq, mq[l], acc[l]);
          }
          for (int l = 0; l < LANES; l++) li[j0 + l] = acc[l];
        }
        /* the rest: the same sums in the same order, vectorised along j */
        for (int64_t j = j0; j < j_count; j++) li[j] = 0.0f;
        for (int64_t q = 0; q < q_count; q++) {
          const float* restrict mq = m + q * j_count;
          float cq = c[q];
          for (int64_t j = j0; j < j_count; j++) li[j] = fmaf(cq, mq[j], li[j]);
        }
      }
      for (int64_t g = 0; g < g_count; g++)
        for (int64_t a = 0; a < a_count; a++) {
          const float* restrict src = local + (g * a_count + a) * b_count;
          float* restrict dst = out + ((g * o_count + o) * a_count + a) * i_count * b_count;
          for (int64_t i = 0; i < i_count; i++)
            for (int64_t b = 0; b < b_count; b++) dst[i * b_count + b] = src[i * j_count + b];
        }
    }
    free(local);
    free(c);
  }
}

/* Backward of hnets_synthesise: grad_w[f][o][i][r] and (sn != NULL) grad_phase[f][o][i]
   from grad[g][o][a][i][b]; mt is the synthesis matrix transposed, mt[(g, a, b)][q]. */
void hnets_synthesise_backward(const float* restrict grad, const float* restrict w,
                               const float* restrict cs, const float* restrict sn,
                               const float* restrict mt, float* restrict grad_w,
                               float* restrict grad_phase, int64_t f_count,
                               int64_t o_count, int64_t i_count, int64_t r_count,
                               int64_t g_count, int64_t a_count, int64_t b_count,
                               int threads) {
  int64_t q_count = f_count * r_count * 2, j_count = g_count * a_count * b_count;
#pragma omp parallel num_threads(threads)
  {
    float* local = (float*)malloc(sizeof(float) * j_count * i_count);
    float* gc = (float*)malloc(sizeof(float) * 4 * q_count);
#pragma omp for schedule(static)
    for (int64_t o = 0; o < o_count; o++) {
      for (int64_t g = 0; g < g_count; g++)
        for (int64_t a = 0; a < a_count; a++) {
          const float* restrict src =
              grad + ((g * o_count + o) * a_count + a) * i_count * b_count;
          float* restrict dst = local + (g * a_count + a) * b_count;
          for (int64_t i = 0; i < i_count; i++)
            for (int64_t b = 0; b < b_count; b++) dst[i * j_count + b] = src[i * b_count + b];
        }
      for (int64_t i = 0; i < i_count; i++) {
        const float* restrict li = local + i * j_count;
        /* four interleaved partial sums over j (independent add chains), then added */
        for (int64_t q = 0; q < 4 * q_count; q++) gc[q] = 0.0f;
        for (int64_t j = 0; j < j_count; j++) {
          const float* restrict mj = mt + j * q_count;
          float* restrict part = gc + (j & 3) * q_count;
          float v = li[j];
#pragma omp simd
          for (int64_t q = 0; q < q_count; q++) part[q] = fmaf(v, mj[q], part[q]);
        }
        for (int64_t q = 0; q < q_count; q++)
          gc[q] = (gc[q] + gc[q_count + q]) + (gc[2 * q_count + q] + gc[3 * q_count + q]);
        for (int64_t f = 0; f < f_count; f++) {
          int64_t foi = (f * o_count + o) * i_count + i;
          float co = sn ? cs[foi] : 1.0f, si = sn ? sn[foi] : 0.0f;
          float gp = 0.0f;
          for (int64_t r = 0; r < r_count; r++) {
            float gre = gc[(f * r_count + r) * 2], gim = gc[(f * r_count + r) * 2 + 1];
            grad_w[foi * r_count + r] = gre * co + gim * si;
            gp += w[foi * r_count + r] * (gim * co - gre * si);
          }
          if (sn) grad_phase[foi] = gp;
        }
      }
    }
    free(local);
    free(gc);
  }
}

/* Karatsuba over a pair of rotation orders (inputs and outputs of orders 0 and 1),
   with Gauss's trick inside: y0 = A + B, y1 = A + C with A = W0 (x0 + x1),
   B = (W-1 - W0) x1, C = (W1 - W0) x0, each complex product u K by three real ones,
   P1 = (u_r + u_i) K_r, P2 = u_i (K_r + K_i), P3 = u_r (K_i - K_r): (P1 - P2, P1 + P3).
   Maps are pixel-major: x is n positions x c channels x 2 orders x 2 parts; the nine
   real maps are n x c planes, plane k at k * n * c. */
/* For the two pairs (q0, q1) at each position, three complex values u: forward
   (x0 + x1, x1, x0) as planes (u_r + u_i, u_i, u_r); grad (g0 + g1, g0, g1) as
   planes (u_r + u_i, u_r, u_i). */
static inline void nine_planes(const float* restrict x, float* restrict planes, int64_t n,
                               int64_t c, int grad, int threads) {
  int64_t plane = n * c;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < n * c; p++) {
    const float* xp = x + 4 * p;
    float q0r = xp[0], q0i = xp[1], q1r = xp[2], q1i = xp[3];
    float u[3][2] = {{q0r + q1r, q0i + q1i}, {q1r, q1i}, {q0r, q0i}};
    if (grad) {
      u[1][0] = q0r, u[1][1] = q0i, u[2][0] = q1r, u[2][1] = q1i;
    }
    for (int k = 0; k < 3; k++) {
      planes[3 * k * plane + p] = u[k][0] + u[k][1];
      planes[(3 * k + 1) * plane + p] = grad ? u[k][0] : u[k][1];
      planes[(3 * k + 2) * plane + p] = grad ? u[k][1] : u[k][0];
    }
  }
}

/* The nine real inputs: for u = x0 + x1, x1, x0 the planes u_r + u_i, u_i, u_r. */
void hnets_split9(const float* restrict x, float* restrict planes, int64_t n, int64_t c,
                  int threads) {
  nine_planes(x, planes, n, c, 0, threads);
}

/* The nine real products (each n x t, pointers in prods) -> y, n x t x 2 x 2. */
void hnets_merge9(const float* const* prods, float* restrict y, int64_t n, int64_t t,
                  int threads) {
  const float *p0 = prods[0], *p1 = prods[1], *p2 = prods[2], *p3 = prods[3],
              *p4 = prods[4], *p5 = prods[5], *p6 = prods[6], *p7 = prods[7],
              *p8 = prods[8];
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < n * t; p++) {
    float ar = p0[p] - p1[p], ai = p0[p] + p2[p];
    float br = p3[p] - p4[p], bi = p3[p] + p5[p];
    float cr = p6[p] - p7[p], ci = p6[p] + p8[p];
    float* yp = y + 4 * p;
    yp[0] = ar + br;
    yp[1] = ai + bi;
    yp[2] = ar + cr;
    yp[3] = ai + ci;
  }
}

/* Backward, output side: grad y (n x t x 2 x 2) -> the nine products' gradients as
   planes, with the P2 planes (1, 4, 7) not negated (the caller negates what they give). */
void hnets_gsplit9(const float* restrict g, float* restrict planes, int64_t n, int64_t t,
                   int threads) {
  /* d/dA = g0 + g1, d/dB = g0, d/dC = g1; each product's (P1, P2, P3) gradients are
     (d_r + d_i, -d_r, d_i) */
  nine_planes(g, planes, n, t, 1, threads);
}

/* Backward, input side: the nine input gradients (each n x c, pointers in parts; 1, 4
   and 7 from the un-negated planes) -> grad x, n x c x 2 x 2. */
void hnets_gmerge9(const float* const* parts, float* restrict gx, int64_t n, int64_t c,
                   int threads) {
  const float *d0 = parts[0], *d1 = parts[1], *d2 = parts[2], *d3 = parts[3],
              *d4 = parts[4], *d5 = parts[5], *d6 = parts[6], *d7 = parts[7],
              *d8 = parts[8];
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t p = 0; p < n * c; p++) {
    float sr = d0[p] + d2[p], si = d0[p] - d1[p];
    float* out = gx + 4 * p;
    out[0] = sr + (d6[p] + d8[p]);
    out[1] = si + (d6[p] - d7[p]);
    out[2] = sr + (d3[p] + d5[p]);
    out[3] = si + (d3[p] - d4[p]);
  }
}

/* One position of a convolution's output from its unmerged real products, as pairs in
   z. kind 1, Gauss: planes P1, P2, P3 (n x s), the pair (P1 - P2, P1 + P3); kind 2,
   Karatsuba: planes 0..8 (n x s/2), streams (channel, order) with order 0 A + B and
   order 1 A + C (see hnets_merge9). Merging into a buffer first, then the ReLU: two
   simple loops that vectorise (a per-element branch on the kind did not). */
static inline void merge_position(int kind, const float* const* pl, int64_t pos,
                                  int64_t s_count, float* restrict z) {
  if (kind == 1) {
    const float* restrict p1 = pl[0] + pos * s_count;
    const float* restrict p2 = pl[1] + pos * s_count;
    const float* restrict p3 = pl[2] + pos * s_count;
    for (int64_t s = 0; s < s_count; s++) {
      z[2 * s] = p1[s] - p2[s];
      z[2 * s + 1] = p1[s] + p3[s];
    }
  } else {
    int64_t t_count = s_count / 2, off = pos * t_count;
    const float *restrict q0 = pl[0] + off, *restrict q1 = pl[1] + off,
                          *restrict q2 = pl[2] + off, *restrict q3 = pl[3] + off,
                          *restrict q4 = pl[4] + off, *restrict q5 = pl[5] + off,
                          *restrict q6 = pl[6] + off, *restrict q7 = pl[7] + off,
                          *restrict q8 = pl[8] + off;
    for (int64_t t = 0; t < t_count; t++) {
      float ar = q0[t] - q1[t], ai = q0[t] + q2[t];
      z[4 * t] = ar + (q3[t] - q4[t]);
      z[4 * t + 1] = ai + (q3[t] + q5[t]);
      z[4 * t + 2] = ar + (q6[t] - q7[t]);
      z[4 * t + 3] = ai + (q6[t] + q8[t]);
    }
  }
}

/* The magnitude ReLU, then k x k mean pooling over tiles when k > 1, of b x h x w
   positions: from interleaved pairs (kind 0, pl[0]) or from unmerged products (kinds 1
   and 2, merged per position into a small buffer first). Each window is summed in
   row-major order and divided by k^2, as ATen's avg_pool2d does. */
static inline __attribute__((always_inline)) void relu_pool(
    const int kind, const float* const* pl, float* restrict out, int64_t b, int64_t h,
    int64_t w, int64_t s_count, const float* restrict scale, const float* restrict bias,
    float eps, int64_t k, int threads) {
  int64_t ho = h / k, wo = w / k;
  float kk = (float)(k * k);
#pragma omp parallel num_threads(threads)
  {
    float* acc = (float*)malloc(sizeof(float) * 2 * s_count);
    float* zbuf = (float*)malloc(sizeof(float) * 2 * s_count);
#pragma omp for collapse(2) schedule(static)
    for (int64_t bi = 0; bi < b; bi++)
      for (int64_t yo = 0; yo < ho; yo++)
        for (int64_t xo = 0; xo < wo; xo++) {
          for (int64_t j = 0; j < 2 * s_count; j++) acc[j] = 0.0f;
          for (int64_t dy = 0; dy < k; dy++)
            for (int64_t dx = 0; dx < k; dx++) {
              int64_t pos = (bi * h + yo * k + dy) * w + xo * k + dx;
              const float* zp = pl[0] + pos * s_count * 2;
              if (kind != 0) {
                merge_position(kind, pl, pos, s_count, zbuf);
                zp = zbuf;
              }
              relu_row(zp, acc, s_count, scale, bias, eps, 1);
            }
          float* restrict op = out + ((bi * ho + yo) * wo + xo) * s_count * 2;
          if (k == 1)
            for (int64_t j = 0; j < 2 * s_count; j++) op[j] = acc[j];
          else
            for (int64_t j = 0; j < 2 * s_count; j++) op[j] = acc[j] / kk;
        }
    free(acc);
    free(zbuf);
  }
}

/* The magnitude ReLU, then k x k mean pooling (k = 1: none), of b x h x w positions,
   out b x h/k x w/k: kind 0 from the interleaved pairs planes[0] (so that the full-size
   result is never stored), kinds 1 and 2 from a convolution's unmerged products (so
   that its merged output is never stored). */
void hnets_relu_pool(int kind, const float* const* planes, float* out, int64_t b, int64_t h,
                     int64_t w, int64_t s_count, const float* scale, const float* bias,
                     float eps, int64_t k, int threads) {
  if (kind == 0)
    relu_pool(0, planes, out, b, h, w, s_count, scale, bias, eps, k, threads);
  else if (kind == 1)
    relu_pool(1, planes, out, b, h, w, s_count, scale, bias, eps, k, threads);
  else
    relu_pool(2, planes, out, b, h, w, s_count, scale, bias, eps, k, threads);
}
