/* Dequantize-matmul kernels for ember's weight schemes on the cpu:  y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]).
 *
 * x, y and bias are float32; W is stored as ember's schemes store it (ir/ops_quant.py):
 *   EMBER_Q4    uint32[N, K/8] nibbles (q at k = 8j + i in bits 4i..4i+3 of word j), W = s * (q - 8)
 *   EMBER_Q4_1  as EMBER_Q4 plus fp16 mins,                                        W = s * q + m
 *   EMBER_Q8    int8[N, K],                                                          W = s * q
 *   EMBER_F16 / EMBER_BF16   half-precision [N, K] (no scales)
 *   EMBER_Q5_0 .. EMBER_Q3_K (GGUF Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K kept native; entry ember_linear_k):
 *     Q2_K/Q3_K: 2-bit fields (q at k = 16j + i in bits 2i, 2i+1 of word j), Q3_K's bit 2 in `qhigh` as Q5's
 *     bit 4, a byte per 16 of scale code | min code << 4 (Q2_K) or int8 scale codes per 16 (Q3_K):
 *     W = d c q - dmin cm | d c (q - 4).  The others: the nibbles of EMBER_Q4 plus `qhigh` (bit 4 of q at
 *     k = 32j + i in bit i of word j; Q6_K: bits 4-5 at k = 16j + i in bits 2i, 2i+1), Q5_0/Q5_1 fp16 scales (and
 *     mins) per 32, K-quants uint8 scale/min codes per 32 (Q6_K: int8 per 16) times the fp16 `sup` / `sup_mins` of
 *     each 256: W = s (q - 16) | s q + m | d c q - dmin cm | d c (q - 32).
 *     Both kernels dequantize a row (or 16) into float32 in L1 and multiply from there.
 * with fp16 scales (and mins) per `group` consecutive k of a row (the last group of a row may be partial).
 * Quantized formats need K and group multiples of 32 (the Python side checks it and keeps TIR's kernel
 * otherwise). Accumulation is float32.
 *
 * Two kernels, both parallel over the rows n of W (contiguous chunks, one per thread):
 *  - GEMV (few rows of x: decode): W is read once and dequantized in registers. For 4-bit weights a byte holds
 *    an even k (low nibble) and the next odd k (high nibble), so x is split once per call into the even and
 *    odd halves of every 32-block and a block's dot product is two vector FMAs with no shuffles; the scale is
 *    applied once per block and the `- 8 s` / `m` term once per block from the sums of x.
 *  - GEMM (prefill): 16 rows at a time are dequantized into float32 and transposed into a k-major panel (16
 *    weights per k, 64 bytes), which GEMM_MR rows of x at a time multiply as outer products: per k one panel
 *    vector, GEMM_MR broadcasts and GEMM_MR vector FMAs into register accumulators (a sum in k order per output).
 */
#include <stdlib.h>

#include "ember_native.h"

enum { EMBER_Q4 = 0, EMBER_Q4_1 = 1, EMBER_Q8 = 2, EMBER_F16 = 3, EMBER_BF16 = 4,
       /* 5- and 6-bit and super-block formats (ember_linear_k): codes = low nibbles | high bits << 4 */
       EMBER_Q5_0 = 5, EMBER_Q5_1 = 6, EMBER_Q4_K = 7, EMBER_Q5_K = 8, EMBER_Q6_K = 9,
       /* 2-bit qweight fields (k = 16j + i in bits 2i, 2i+1 of word j), Q3_K's bit 2 in qhigh */
       EMBER_Q2_K = 10, EMBER_Q3_K = 11 };

#define GEMV_MAX_ROWS 3      /* x rows up to which the GEMV kernel runs (weights re-read per row) */
#if defined(__AVX512F__)
#define GEMM_LANES 16
#define GEMM_MR 12 /* GEMM register tile: GEMM_MR rows of x by 16 weight rows, one 16-lane accumulator per x row */
#define TILE_CASES TILE_CASE(12) TILE_CASE(11) TILE_CASE(10) TILE_CASE(9) TILE_CASE(8) TILE_CASE(7) \
  TILE_CASE(6) TILE_CASE(5) TILE_CASE(4) TILE_CASE(3) TILE_CASE(2) TILE_CASE(1)
#else
#define GEMM_LANES 8
#define GEMM_MR 6 /* 12 ymm (AVX2) accumulators + the weights' 2 + a broadcast of the 16 registers */
#define TILE_CASES TILE_CASE(6) TILE_CASE(5) TILE_CASE(4) TILE_CASE(3) TILE_CASE(2) TILE_CASE(1)
#endif
typedef float gemm_vec __attribute__((vector_size(4 * GEMM_LANES)));

typedef struct {
  const float* x;
  const uint8_t* w;
  const uint16_t* scales;
  const uint16_t* mins;
  const float* bias;
  float* y;
  int64_t M, N, K;
  int32_t group, fmt;
  float* xs; /* GEMV, 4-bit: x rows split per 32-block into the 16 even k, then the 16 odd k */
  int status;
  const uint32_t* qhigh;   /* EMBER_Q5_0 ..: high code bits */
  const uint16_t* sup;     /* K-quants: fp16 d per 256 */
  const uint16_t* sup_min; /* Q4_K, Q5_K: fp16 dmin per 256 */
} LinearArgs;

EMBER_INLINE int is_wide(int32_t fmt) { return fmt >= EMBER_Q5_0; }

/* Row n of a 5-/6-bit or super-block weight into float32 out[0 .. K) (K a multiple of 32; 256 for K-quants). The
 * values are gguf's: d * code is exact in float32, then one multiply and one add, as the scheme's formula. */
static void dequant_row_wide(const LinearArgs* a, int64_t n, float* out) {
  const int64_t K = a->K;
  const int fmt = a->fmt;
  const int six = fmt == EMBER_Q6_K, crumbs = fmt == EMBER_Q2_K || fmt == EMBER_Q3_K; /* 2-bit qweight fields */
  const uint32_t* w = (const uint32_t*)a->w + n * (crumbs ? K / 16 : K / 8);
  const uint32_t* hi = a->qhigh ? a->qhigh + n * (six ? K / 16 : K / 32) : NULL;
  const int64_t groups = six || crumbs ? K / 16 : K / 32;
  const int64_t supers = K / 256;
  for (int64_t b = 0; b < K / 32; ++b) {
    float q[32];
    for (int i = 0; i < 32; ++i) {
      uint32_t code;
      if (crumbs) {
        code = (w[2 * b + i / 16] >> (2 * (i % 16))) & 3u;
        if (hi) code |= ((hi[b] >> i) & 1u) << 2;
      } else {
        code = (w[4 * b + i / 8] >> (4 * (i % 8))) & 15u;
        if (six) code |= ((hi[2 * b + i / 16] >> (2 * (i % 16))) & 3u) << 4;
        else if (hi) code |= ((hi[b] >> i) & 1u) << 4;
      }
      q[i] = (float)code;
    }
    float s0, c0, s1, c1;
    if (fmt == EMBER_Q5_0 || fmt == EMBER_Q5_1) {
      s0 = s1 = f16_to_f32(a->scales[n * groups + b]);
      c0 = c1 = fmt == EMBER_Q5_1 ? f16_to_f32(a->mins[n * groups + b]) : 0.0f;
      if (fmt == EMBER_Q5_0)
        for (int i = 0; i < 32; ++i) q[i] -= 16.0f;
    } else if (six || fmt == EMBER_Q3_K) { /* int8 scale codes per 16, W = d c (q - 32 | q - 4) */
      const int8_t* sc = (const int8_t*)a->scales + n * groups;
      const float d = f16_to_f32(a->sup[n * supers + b / 8]);
      s0 = d * (float)sc[2 * b];
      s1 = d * (float)sc[2 * b + 1];
      c0 = c1 = 0.0f;
      const float offset = six ? 32.0f : 4.0f;
      for (int i = 0; i < 32; ++i) q[i] -= offset;
    } else if (fmt == EMBER_Q2_K) { /* a byte per 16: scale code | min code << 4 */
      const uint8_t* sc = (const uint8_t*)a->scales + n * groups;
      const float d = f16_to_f32(a->sup[n * supers + b / 8]), dm = f16_to_f32(a->sup_min[n * supers + b / 8]);
      s0 = d * (float)(sc[2 * b] & 15);
      s1 = d * (float)(sc[2 * b + 1] & 15);
      c0 = -(dm * (float)(sc[2 * b] >> 4));
      c1 = -(dm * (float)(sc[2 * b + 1] >> 4));
    } else {
      const uint8_t* sc = (const uint8_t*)a->scales + n * groups;
      const uint8_t* mn = (const uint8_t*)a->mins + n * groups;
      const float d = f16_to_f32(a->sup[n * supers + b / 8]), dm = f16_to_f32(a->sup_min[n * supers + b / 8]);
      s0 = s1 = d * (float)sc[b];
      c0 = c1 = -(dm * (float)mn[b]);
    }
    float* o = out + 32 * b;
    for (int i = 0; i < 16; ++i) o[i] = q[i] * s0 + c0;
    for (int i = 16; i < 32; ++i) o[i] = q[i] * s1 + c1;
  }
}

/* GEMV of the wide formats: each row dequantized into `row` (L1), then dotted with the M <= 3 rows of x. */
static int gemv_range_wide(const LinearArgs* a, int64_t n0, int64_t n1) {
  const int64_t K = a->K;
  float* row = (float*)aligned_alloc(64, (size_t)(((K + 15) & ~(int64_t)15) * sizeof(float)));
  if (row == NULL) return -1;
  for (int64_t n = n0; n < n1; ++n) {
    dequant_row_wide(a, n, row);
    for (int64_t m = 0; m < a->M; ++m) {
      const float* x = a->x + m * K;
      f32x16 acc = {0};
      for (int64_t k = 0; k < K; k += 16) acc += ld_f32(row + k) * ld_f32(x + k);
      a->y[m * a->N + n] = hsum(acc) + (a->bias ? a->bias[n] : 0.0f);
    }
  }
  free(row);
  return 0;
}


/* ------------------------------------------------------------------ GEMV */

/* Per-group scales s and offsets c (W = s * q + c; c = m for EMBER_Q4_1, -8 s for EMBER_Q4, 0 for EMBER_Q8) of
 * rows n .. n+R as float32, so that the hot loops broadcast them straight from memory. */
static void row_scales(const LinearArgs* a, int64_t n, int R, float* s, float* c, int64_t groups) {
  for (int r = 0; r < R; ++r) {
    const uint16_t* sp = a->scales + (n + r) * groups;
    float* so = s + r * groups;
    float* co = c + r * groups;
    int64_t g = 0;
    for (; g + 16 <= groups; g += 16) st_f32(so + g, f16x16_to_f32(sp + g));
    for (; g < groups; ++g) so[g] = f16_to_f32(sp[g]);
    if (a->fmt == EMBER_Q4_1) {
      const uint16_t* mp = a->mins + (n + r) * groups;
      for (g = 0; g + 16 <= groups; g += 16) st_f32(co + g, f16x16_to_f32(mp + g));
      for (; g < groups; ++g) co[g] = f16_to_f32(mp[g]);
    } else {
      for (g = 0; g < groups; ++g) co[g] = a->fmt == EMBER_Q4 ? -8.0f * so[g] : 0.0f;
    }
  }
}

#if defined(__AVX512F__)
/* 4-bit rows with AVX-512: a group's 16 possible values s * q + c form one register, and vpermps picks each
 * weight's value by its nibble (it reads only the low 4 bits of every 32-bit lane), so a 32-weight block costs
 * one widening, one shift, two permutes and two FMAs per row. xs is x split into even and odd halves. */
EMBER_INLINE void gemv_q4_rows(const LinearArgs* a, int64_t n, int R, const float* xs, const float* s,
                               const float* c, float* y) {
  const int64_t K = a->K, groups = (K + a->group - 1) / a->group, per = a->group / 32, rb = K / 2;
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 acc_e[4], acc_o[4], table[4];
  for (int r = 0; r < 4; ++r) acc_e[r] = acc_o[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < K / 32; ++b) {
    if (b % per == 0) { /* a new group (per is 1 for the 32-groups of GGUF formats: no inner loop) */
      int64_t g = b / per;
      for (int r = 0; r < R; ++r)
        table[r] = _mm512_fmadd_ps(iota, _mm512_set1_ps(s[r * groups + g]), _mm512_set1_ps(c[r * groups + g]));
    }
    __m512 xe = _mm512_loadu_ps(xs + 32 * b), xo = _mm512_loadu_ps(xs + 32 * b + 16);
    for (int r = 0; r < R; ++r) {
      __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(a->w + (n + r) * rb + 16 * b)));
      acc_e[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(q, table[r]), xe, acc_e[r]);
      acc_o[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table[r]), xo, acc_o[r]);
    }
  }
  for (int r = 0; r < R; ++r) y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc_e[r], acc_o[r]));
}
#else
/* 4-bit rows, portable: per 32-block, the even-k (low nibble) and odd-k (high nibble) weights against the even
 * and odd halves of x; W = s * q + c, so a row is sum_g s_g * (q . x)_g + c_g * (sum of x over g). */
EMBER_INLINE void gemv_q4_rows(const LinearArgs* a, int64_t n, int R, const float* xs, const float* s,
                               const float* c, float* y) {
  const int64_t K = a->K, groups = (K + a->group - 1) / a->group, per = a->group / 32, rb = K / 2;
  f32x16 acc[4] = {{0}, {0}, {0}, {0}};
  float corr[4] = {0, 0, 0, 0};
  for (int64_t g = 0; g < groups; ++g) {
    f32x16 xsum = {0};
    for (int64_t b = g * per; b < (g + 1) * per && b < K / 32; ++b) { /* the last group may be partial */
      f32x16 xe = ld_f32(xs + 32 * b), xo = ld_f32(xs + 32 * b + 16);
      xsum += xe + xo;
      for (int r = 0; r < R; ++r) {
        u8x16 q = ld_u8(a->w + (n + r) * rb + 16 * b);
        f32x16 t = u8_to_f32(q & 15) * xe + u8_to_f32(q >> 4) * xo;
        acc[r] += t * s[r * groups + g];
      }
    }
    float sum = hsum(xsum);
    for (int r = 0; r < R; ++r) corr[r] += c[r * groups + g] * sum;
  }
  for (int r = 0; r < R; ++r) y[r] = hsum(acc[r]) + corr[r];
}
#endif

EMBER_INLINE void gemv_q8_rows(const LinearArgs* a, int64_t n, int R, const float* x, const float* s, float* y) {
  const int64_t K = a->K, groups = (K + a->group - 1) / a->group, per = a->group / 32;
  f32x16 acc[4] = {{0}, {0}, {0}, {0}};
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t b = g * per; b < (g + 1) * per && b < K / 32; ++b) { /* the last group may be partial */
      f32x16 x0 = ld_f32(x + 32 * b), x1 = ld_f32(x + 32 * b + 16);
      for (int r = 0; r < R; ++r) {
        const int8_t* q = (const int8_t*)a->w + (n + r) * K + 32 * b;
        f32x16 t = i8_to_f32(q) * x0 + i8_to_f32(q + 16) * x1;
        acc[r] += t * s[r * groups + g];
      }
    }
  }
  for (int r = 0; r < R; ++r) y[r] = hsum(acc[r]);
}

EMBER_INLINE void gemv_half_rows(const LinearArgs* a, int64_t n, int R, const float* x, float* y) {
  const int64_t K = a->K, K16 = K & ~(int64_t)15;
  const uint16_t* w = (const uint16_t*)a->w;
  const int bf = a->fmt == EMBER_BF16;
  f32x16 acc[4] = {{0}, {0}, {0}, {0}};
  for (int64_t k = 0; k < K16; k += 16) {
    f32x16 xv = ld_f32(x + k);
    for (int r = 0; r < R; ++r) {
      const uint16_t* p = w + (n + r) * K + k;
      acc[r] += (bf ? bf16x16_to_f32(p) : f16x16_to_f32(p)) * xv;
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(acc[r]);
    for (int64_t k = K16; k < K; ++k) {
      uint16_t h = w[(n + r) * K + k];
      s += (bf ? bf16_to_f32(h) : f16_to_f32(h)) * x[k];
    }
    y[r] = s;
  }
}

EMBER_INLINE void gemv_rows(const LinearArgs* a, int64_t n, int R, float* s, float* c) {
  float out[4];
  const int64_t groups = a->group ? (a->K + a->group - 1) / a->group : 0;
  if (a->fmt != EMBER_F16 && a->fmt != EMBER_BF16) row_scales(a, n, R, s, c, groups);
  for (int64_t m = 0; m < a->M; ++m) {
    const float* x = a->x + m * a->K;
    if (a->fmt == EMBER_Q4 || a->fmt == EMBER_Q4_1)
      gemv_q4_rows(a, n, R, a->xs + m * a->K, s, c, out);
    else if (a->fmt == EMBER_Q8)
      gemv_q8_rows(a, n, R, x, s, out);
    else
      gemv_half_rows(a, n, R, x, out);
    for (int r = 0; r < R; ++r) a->y[m * a->N + n + r] = out[r] + (a->bias ? a->bias[n + r] : 0.0f);
  }
}

static int gemv_range(const LinearArgs* a, int64_t n0, int64_t n1) {
  const int64_t groups = a->group ? (a->K + a->group - 1) / a->group : 0;
  float* s = (float*)malloc((size_t)(8 * groups + 1) * sizeof(float));
  if (s == NULL) return -1;
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) gemv_rows(a, n, 4, s, s + 4 * groups);
  for (; n < n1; ++n) gemv_rows(a, n, 1, s, s + 4 * groups);
  free(s);
  return 0;
}

/* ------------------------------------------------------------------ GEMM */

/* Row n of W into float32 `out` (K values, natural order, then zeros up to a multiple of 16). */
static void dequant_row(const LinearArgs* a, int64_t n, float* out, int64_t Kp) {
  const int64_t K = a->K, groups = a->group ? (K + a->group - 1) / a->group : 0;
  if (is_wide(a->fmt)) {
    dequant_row_wide(a, n, out);
  } else if (a->fmt == EMBER_Q4 || a->fmt == EMBER_Q4_1) {
    const uint8_t* w = a->w + n * (K / 2);
    const int64_t per = a->group / 32;
    for (int64_t b = 0; b < K / 32; ++b) {
      int64_t g = b / per;  /* once per 32 weights, beside 16 vector ops */
      float s = f16_to_f32(a->scales[n * groups + g]);
      float c = a->fmt == EMBER_Q4_1 ? f16_to_f32(a->mins[n * groups + g]) : -8.0f * s;
      u8x16 q = ld_u8(w + 16 * b);
      f32x16 lo = u8_to_f32(q & 15) * s + c, hi = u8_to_f32(q >> 4) * s + c;
      st_f32(out + 32 * b, __builtin_shufflevector(lo, hi, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23));
      st_f32(out + 32 * b + 16,
             __builtin_shufflevector(lo, hi, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31));
    }
  } else if (a->fmt == EMBER_Q8) {
    const int8_t* w = (const int8_t*)a->w + n * K;
    const int64_t per = a->group / 32;
    for (int64_t b = 0; b < K / 32; ++b) {
      float s = f16_to_f32(a->scales[n * groups + b / per]);
      st_f32(out + 32 * b, i8_to_f32(w + 32 * b) * s);
      st_f32(out + 32 * b + 16, i8_to_f32(w + 32 * b + 16) * s);
    }
  } else {
    const uint16_t* w = (const uint16_t*)a->w + n * K;
    const int bf = a->fmt == EMBER_BF16;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) st_f32(out + k, bf ? bf16x16_to_f32(w + k) : f16x16_to_f32(w + k));
    for (; k < K; ++k) out[k] = bf ? bf16_to_f32(w[k]) : f16_to_f32(w[k]);
  }
  for (int64_t k = K; k < Kp; ++k) out[k] = 0.0f;
}

/* The weights of 16 rows n0 .. n0+15 (zero past the last row) as a k-major panel: panel[16 k + j] = W[n0 + j, k]. */
static void pack_panel(const LinearArgs* a, int64_t n0, int rows, float* dequant, int64_t Kp, float* panel) {
  const int64_t K = a->K;
  for (int r = 0; r < rows; ++r) dequant_row(a, n0 + r, dequant + r * Kp, Kp);
  for (int64_t k = 0; k < K; ++k) {
    float* out = panel + 16 * k;
    for (int j = 0; j < rows; ++j) out[j] = dequant[j * Kp + k];
    for (int j = rows; j < 16; ++j) out[j] = 0.0f;
  }
}

/* y[m0 + i, n0 + j] for i < MR, j < NR: MR x 16 outer products per k (16 panel values times MR broadcast x values),
 * each sum in k order. In vectors of the machine's width (GCC spills 64-byte vectors on AVX2). */
EMBER_INLINE void tile(const LinearArgs* a, int64_t m0, int64_t n0, const float* panel, int MR, int NR) {
  enum { NV = 16 / GEMM_LANES };
  const int64_t K = a->K;
  const float* x = a->x + m0 * a->K;
  gemm_vec acc[GEMM_MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = (gemm_vec){0};
  for (int64_t k = 0; k < K; ++k) {
    gemm_vec w[NV];
    for (int v = 0; v < NV; ++v) memcpy(&w[v], panel + 16 * k + GEMM_LANES * v, sizeof w[v]);
    for (int i = 0; i < MR; ++i) {
      const gemm_vec xs = (gemm_vec){0} + x[i * K + k];
      for (int v = 0; v < NV; ++v) acc[i][v] += xs * w[v];
    }
  }
  for (int i = 0; i < MR; ++i) {
    float out[16];
    memcpy(out, acc[i], sizeof out);
    for (int j = 0; j < NR; ++j) a->y[(m0 + i) * a->N + n0 + j] = out[j] + (a->bias ? a->bias[n0 + j] : 0.0f);
  }
}

#define TILE_CASE(mr) \
  case mr: tile(a, m, n, panel, mr, nr); break;

static void tile_any(const LinearArgs* a, int64_t m, int64_t n, const float* panel, int mr, int nr) {
  switch (mr) {
    TILE_CASES
    default: break;
  }
}

static int gemm_range(const LinearArgs* a, int64_t n0, int64_t n1) {
  /* dequantized rows 64 bytes more than a multiple of 64 apart: a power-of-two stride would put the 16 rows that
     pack_panel reads together in one cache set */
  const int64_t Kp = ((a->K + 15) & ~(int64_t)15) + 16;
  float* dequant = (float*)aligned_alloc(64, (size_t)(16 * Kp * sizeof(float)));
  float* panel = (float*)aligned_alloc(64, (size_t)(16 * Kp * sizeof(float)));
  if (dequant == NULL || panel == NULL) {
    free(dequant);
    free(panel);
    return -1;
  }
  for (int64_t n = n0; n < n1; n += 16) {
    const int nr = n1 - n < 16 ? (int)(n1 - n) : 16;
    pack_panel(a, n, nr, dequant, Kp, panel);
    for (int64_t m = 0; m < a->M; m += GEMM_MR) {
      const int mr = a->M - m < GEMM_MR ? (int)(a->M - m) : GEMM_MR;
      tile_any(a, m, n, panel, mr, nr);
    }
  }
  free(dequant);
  free(panel);
  return 0;
}

static int linear_task(int task, TVMParallelGroupEnv* env, void* cdata) {
  LinearArgs* a = (LinearArgs*)cdata;
  int64_t n0, n1;
  ember_split(a->N, task, env->num_task, 4, &n0, &n1);
  if (n0 >= n1) return 0;
  int status;
  if (a->M > GEMV_MAX_ROWS) status = gemm_range(a, n0, n1);
  else status = is_wide(a->fmt) ? gemv_range_wide(a, n0, n1) : gemv_range(a, n0, n1);
  if (status != 0) a->status = -1;
  return 0;
}

/* The entry point called from TIR (targets/cpu/native_linear.py). Returns 0, or -1 when out of memory. */
int32_t ember_linear(const float* x, const void* w, const void* scales, const void* mins, const float* bias,
                     float* y, int64_t M, int64_t N, int64_t K, int32_t group, int32_t fmt, int32_t has_bias) {
  LinearArgs a = {x, (const uint8_t*)w, (const uint16_t*)scales, (const uint16_t*)mins, has_bias ? bias : NULL,
                  y, M, N, K, group, fmt, NULL, 0, NULL, NULL, NULL};
  if (M <= 0 || N <= 0) return 0;
  if (M <= GEMV_MAX_ROWS && (fmt == EMBER_Q4 || fmt == EMBER_Q4_1)) {
    a.xs = (float*)malloc((size_t)(M * K) * sizeof(float));
    if (a.xs == NULL) return -1;
    for (int64_t i = 0; i < M * K; i += 32)
      for (int j = 0; j < 16; ++j) {
        a.xs[i + j] = x[i + 2 * j];
        a.xs[i + 16 + j] = x[i + 2 * j + 1];
      }
  }
  ember_parallel(linear_task, &a);
  free(a.xs);
  return a.status;
}

/* The entry point of the 5-/6-bit and super-block formats (EMBER_Q5_0 .. EMBER_Q3_K; K a multiple of 32, of 256
 * for K-quants). Unused pieces may be any pointer. Returns 0, or -1 when out of memory. */
int32_t ember_linear_k(const float* x, const void* w, const void* qhigh, const void* scales, const void* mins,
                       const void* sup, const void* sup_min, const float* bias, float* y, int64_t M, int64_t N,
                       int64_t K, int32_t fmt, int32_t has_bias) {
  LinearArgs a = {x, (const uint8_t*)w, (const uint16_t*)scales, (const uint16_t*)mins, has_bias ? bias : NULL,
                  y, M, N, K, 32, fmt, NULL, 0, fmt == EMBER_Q4_K || fmt == EMBER_Q2_K ? NULL : (const uint32_t*)qhigh,
                  (const uint16_t*)sup, (const uint16_t*)sup_min};
  if (M <= 0 || N <= 0) return 0;
  ember_parallel(linear_task, &a);
  return a.status;
}
