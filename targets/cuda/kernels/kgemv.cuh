// ember's decode GEMV (batch 1) for the GGUF formats kept native: y[N] (fp16) = x[K] (fp16) . W[N, K]^T (+ bias),
// W in ir/ops_quant.py's planar layout (row-major, K contiguous):
//   qweight  uint32 [N, K/8]   low nibbles, k = 8j + i in nibble i of word j
//   qhigh    uint32            Q5_*: [N, K/32], bit i of word j is bit 4 of k = 32j + i
//                              Q6_K: [N, K/16], bits 2i..2i+1 of word j are bits 4-5 of k = 16j + i
//   Q5_0 / Q5_1: fp16 scales (and mins) [N, K/32]: W = s (q - 16) | s q + m
//   Q4_K / Q5_K: uint8 scale / min codes [N, K/32], fp16 d / dmin [N, K/256]: W = (d c) q - (dmin cm)
//   Q6_K:        int8 scale codes [N, K/16], fp16 d [N, K/256]: W = (d c) (q - 32)
//
// Plan: gemv.cuh's (its measured q4f16 kernel), with the layout's extra streams:
// - A lane owns one 32-group of a row per step: one 16-byte load of codes, plus 4 (5-bit) or 8 (6-bit) bytes of
//   high bits and the group's scale codes and super-block halves; a warp reads contiguous runs of every stream.
//   Each warp owns R rows, so one x fragment serves R rows; D steps of every stream are in flight per lane (a
//   register ring refilled right after each step is consumed), the first D issued before pdl::wait().
// - x is staged once per block in shared memory in the order the nibble pairs come out ({x0,x4}, {x1,x5}, ... per
//   8 values) with gemv.cuh's bank swizzle; min formats also get the fp32 sum of x per group there.
// - Codes become fp16 without I2F: one LOP3 puts a nibble pair under the magic 0x6400 (half 1024 + code) and one
//   more ors the high bits above it (spread once per word by PRMT, shifted into place per pair); one HFMA2 turns
//   the half into the centred code (q - c) / c (c = 8, 16, 32 by the code width; |value| <= 1, exact in fp16) so
//   fp16 partial sums over 2 words (16 codes) stay in range for large activations; the group scale (d code c,
//   fp32) and the min term (m + c s) sum(x) (min formats: centred, the two terms do not cancel) are applied in
//   fp32 per group.
// - ACT SWIGLU: x_ptr holds [gate | up] and the staged x is silu(gate) * up (gemv.cuh's swiglu8).
// - pdl.cuh contract: weights may be read before pdl::wait(), x only after.
#ifndef EMBER_KGEMV_CUH
#define EMBER_KGEMV_CUH
#include <cstdint>
#include <cuda_fp16.h>

#include "pdl.cuh"
#include "stream.cuh"
#include "gemv.cuh"

namespace ember {
namespace kgemv {

enum Format : int { Q5_0 = 5, Q5_1 = 6, Q4_K = 7, Q5_K = 8, Q6_K = 9 };
enum Bias : int { NO_BIAS = 0, HALF_BIAS = 1, FLOAT_BIAS = 2 };
enum Act : int { PLAIN = 0, SWIGLU = 1 };

using gemv::and_or;
using gemv::as_half2;

template <int F>
struct Fmt {
  static constexpr int kHigh = F == Q6_K ? 2 : F == Q4_K ? 0 : 1;     // high-bit words per 32-group
  static constexpr bool kMin = F == Q5_1 || F == Q4_K || F == Q5_K;   // W = s q + m
  static constexpr bool kSuper = F == Q4_K || F == Q5_K || F == Q6_K;  // scales are codes times a fp16 d
  // Codes are used centred, as q - kBias (W = s (q - kBias) + (m + kBias s) for the min formats: the two terms of
  // a group's sum then do not cancel), and the GEMV's fp16 values are (q - kBias) / kBias, in [-1, 1).
  static constexpr float kBias = F == Q6_K ? 32.0f : F == Q4_K ? 8.0f : 16.0f;
  static constexpr float kVS = kBias;
};

// The fp16 constants of the dequant: a nibble pair under the magic at bits 0-3 ("lo": the half is 1024 + q) or
// at bits 4-7 ("hi": 1024 + 16 q, q's high bits above the nibble in both cases); v = half * mul + add = (q - bias)
// / VS exactly (VS a power of 2, the results have <= 11 significant bits).
template <int F>
struct Consts {
  __half2 lo_mul, lo_add, hi_mul, hi_add;
  __device__ __forceinline__ Consts() {
    constexpr float vs = Fmt<F>::kVS, b = Fmt<F>::kBias;
    lo_mul = __float2half2_rn(1.0f / vs);
    lo_add = __float2half2_rn(-(1024.0f + b) / vs);
    hi_mul = __float2half2_rn(1.0f / (16.0f * vs));
    hi_add = __float2half2_rn(-(64.0f + b) / vs);
  }
};

// The high bits of word j (k = 8j .. 8j+7 of the lane's group) spread for the pairs: bits of k = 8j + i (i < 4)
// in the low half, of k = 8j + 4 + i in the high half, both from bit 0 (Q5: 1 bit each; Q6_K: 2 bits each).
template <int F>
__device__ __forceinline__ uint32_t spread_high(const uint32_t* hi, uint32_t hi4, int j) {
  if constexpr (F == Q6_K) {  // word j >> 1 holds k 16(j>>1) .. +15, 2 bits each: bytes 2(j&1), 2(j&1)+1
    const uint32_t b = 2u * (j & 1);
    return __byte_perm(hi[j >> 1], 0u, b | (4u << 4) | ((b + 1) << 8) | (4u << 12));
  } else {  // byte j of the group's word, and byte j of word >> 4 (its low nibble: bits 4-7 of byte j)
    return __byte_perm(hi[0], hi4, j | (4u << 4) | ((4u + j) << 8) | (4u << 12));
  }
}

// Eight codes (word w, high bits H spread) as four halves-to-be {q0,q4}, {q1,q5}, {q2,q6}, {q3,q7}: the bits of
// half 1024 + q (b[0], b[2]) or 1024 + 16 q (b[1], b[3]).
template <int F>
__device__ __forceinline__ void word_bits(uint32_t w, uint32_t H, uint32_t* b) {
  const uint32_t magic = 0x64006400u;
  const uint32_t w8 = w >> 8;
  b[0] = and_or<0x000F000Fu>(w, magic);
  b[1] = and_or<0x00F000F0u>(w, magic);
  b[2] = and_or<0x000F000Fu>(w8, magic);
  b[3] = and_or<0x00F000F0u>(w8, magic);
  if constexpr (F == Q6_K) {  // pair t's 2 bits at 2t / 16 + 2t of H, to 4-5 (lo) or 8-9 (hi) of each half
    b[0] = and_or<0x00300030u>(H << 4, b[0]);
    b[1] = and_or<0x03000300u>(H << 6, b[1]);
    b[2] = and_or<0x00300030u>(H, b[2]);
    b[3] = and_or<0x03000300u>(H << 2, b[3]);
  } else if constexpr (Fmt<F>::kHigh == 1) {  // pair t's bit at t / 16 + t of H, to 4 (lo) or 8 (hi)
    b[0] = and_or<0x00100010u>(H << 4, b[0]);
    b[1] = and_or<0x01000100u>(H << 7, b[1]);
    b[2] = and_or<0x00100010u>(H << 2, b[2]);
    b[3] = and_or<0x01000100u>(H << 5, b[3]);
  }
}

// Eight codes times x ({x0,x4}, {x1,x5}, {x2,x6}, {x3,x7}) into acc, the codes as (q - bias) / VS.
template <int F>
__device__ __forceinline__ __half2 dot_word(uint32_t w, uint32_t H, const uint32_t* x, const Consts<F>& c,
                                            __half2 acc) {
  uint32_t b[4];
  word_bits<F>(w, H, b);
  acc = __hfma2(__hfma2(as_half2(b[0]), c.lo_mul, c.lo_add), as_half2(x[0]), acc);
  acc = __hfma2(__hfma2(as_half2(b[1]), c.hi_mul, c.hi_add), as_half2(x[1]), acc);
  acc = __hfma2(__hfma2(as_half2(b[2]), c.lo_mul, c.lo_add), as_half2(x[2]), acc);
  acc = __hfma2(__hfma2(as_half2(b[3]), c.hi_mul, c.hi_add), as_half2(x[3]), acc);
  return acc;
}

// One lane load of one row (a 32-group): codes, high words, and the group's scale data as raw bits.
struct Slot {
  uint4 w;
  uint32_t hi[2];
  uint32_t s;  // Q5_0/Q5_1: the fp16 scale; K-quants: the scale code(s) (Q6_K: 2 int8 in the low 16 bits)
  uint32_t m;  // Q5_1: the fp16 min; Q4_K/Q5_K: the min code
  uint32_t d;  // K-quants: fp16 d (low 16 bits) and dmin (high 16 bits)
};

struct Pieces {  // the weight's streams (unused ones point anywhere)
  const uint8_t* qweight;
  const uint8_t* qhigh;
  const uint8_t* scales;
  const uint8_t* mins;
  const uint8_t* sup;
  const uint8_t* sup_min;
};

__device__ __forceinline__ uint32_t load_u16(const void* p) {
  return __ldg(static_cast<const unsigned short*>(p));
}
__device__ __forceinline__ uint32_t load_u8(const void* p) { return __ldg(static_cast<const unsigned char*>(p)); }
__device__ __forceinline__ uint32_t load_u32(const void* p) { return __ldg(static_cast<const uint32_t*>(p)); }
__device__ __forceinline__ uint2 load_u64(const void* p) { return __ldg(static_cast<const uint2*>(p)); }
__device__ __forceinline__ float half_at(uint32_t bits, int half) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits >> (16 * half))));
}

__device__ __forceinline__ void zero_slot(Slot& sl) {  // padding: zero codes and scales (x is zero there too)
  sl.w = make_uint4(0, 0, 0, 0);
  sl.hi[0] = sl.hi[1] = 0u;
  sl.s = sl.m = sl.d = 0u;
}

// Group g of row n (weights only: may run before pdl::wait()).
template <int F, int K>
__device__ __forceinline__ void load_slot(Slot& sl, const Pieces& p, size_t n, int g) {
  constexpr int C = K / 32;
  const size_t i = n * C + g;
  sl.w = load_stream(p.qweight + i * 16);
  if constexpr (Fmt<F>::kHigh == 2) {
    const uint2 h = load_u64(p.qhigh + i * 8);
    sl.hi[0] = h.x;
    sl.hi[1] = h.y;
  } else if constexpr (Fmt<F>::kHigh == 1) {
    sl.hi[0] = load_u32(p.qhigh + i * 4);
  }
  if constexpr (F == Q5_0 || F == Q5_1) {
    sl.s = load_u16(p.scales + i * 2);
    if constexpr (F == Q5_1) sl.m = load_u16(p.mins + i * 2);
  } else if constexpr (F == Q6_K) {
    sl.s = load_u16(p.scales + i * 2);
    sl.d = load_u16(p.sup + (n * (K / 256) + g / 8) * 2);
  } else {
    const size_t j = (n * (K / 256) + g / 8) * 2;
    sl.s = load_u8(p.scales + i);
    sl.m = load_u8(p.mins + i);
    sl.d = load_u16(p.sup + j) | (load_u16(p.sup_min + j) << 16);
  }
}

// The slot's W = s (q - kBias) + m for the exact code q: s of its first and second 16 codes (equal but for Q6_K)
// and m (0 without mins; with them the format's min plus kBias s), in fp32 (d * code is exact).
template <int F>
__device__ __forceinline__ void slot_scales(const Slot& sl, float& s0, float& s1, float& m) {
  if constexpr (F == Q6_K) {
    const float d = half_at(sl.d, 0);
    s0 = d * static_cast<float>(static_cast<int8_t>(sl.s & 0xFF));
    s1 = d * static_cast<float>(static_cast<int8_t>((sl.s >> 8) & 0xFF));
    m = 0.0f;
  } else if constexpr (F == Q5_0 || F == Q5_1) {
    s0 = s1 = half_at(sl.s, 0);
    m = F == Q5_1 ? fmaf(Fmt<F>::kBias, s0, half_at(sl.m, 0)) : 0.0f;
  } else {
    s0 = s1 = half_at(sl.d, 0) * static_cast<float>(sl.s);
    m = fmaf(Fmt<F>::kBias, s0, -(half_at(sl.d, 1) * static_cast<float>(sl.m)));
  }
}

// Block `block` of WARPS warps, R rows a warp, D steps in flight, over rows row_base .. row_base + N - 1 of the
// weight (a stacked expert's rows: row_base = e N); y[n] for the block's rows n < N. run: grid = ceil(N / (WARPS R)).
template <int F, int N, int K, int WARPS, int R, int D, int BIAS, int ACT = PLAIN>
__device__ __forceinline__ void run_rows(int block, size_t row_base, const void* __restrict__ x_ptr,
                                         const void* __restrict__ qweight_, const void* __restrict__ qhigh_,
                                         const void* __restrict__ scales_, const void* __restrict__ mins_,
                                         const void* __restrict__ sup_, const void* __restrict__ sup_min_,
                                         const void* __restrict__ bias, __half* __restrict__ y) {
  using Fm = Fmt<F>;
  using L = gemv::Layout<gemv::Q4>;
  static_assert(K % 32 == 0 && (!Fm::kSuper || K % 256 == 0), "K must be whole groups / super blocks");
  static_assert(D >= 1 && D <= 8 && R >= 1 && R <= 8, "launch shape");
  constexpr int C = K / 32;              // groups (lane loads) per row
  constexpr int S = (C + 31) / 32;       // warp steps per row
  constexpr int KP = S * 32 * 32;        // K padded to whole steps (x is zero there)
  constexpr int THREADS = WARPS * 32;
  constexpr int XCHUNKS = KP / 8;        // 16-byte chunks of x
  constexpr int HIGH = Fm::kHigh;

  __shared__ uint4 xs[XCHUNKS];
  __shared__ float xsum[Fm::kMin ? S * 32 : 1];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int row0 = (block * WARPS + warp) * R;
  const Pieces pieces{static_cast<const uint8_t*>(qweight_), static_cast<const uint8_t*>(qhigh_),
                      static_cast<const uint8_t*>(scales_), static_cast<const uint8_t*>(mins_),
                      static_cast<const uint8_t*>(sup_), static_cast<const uint8_t*>(sup_min_)};

  size_t rowi[R];
#pragma unroll
  for (int r = 0; r < R; ++r) rowi[r] = row_base + static_cast<size_t>(row0 + r < N ? row0 + r : N - 1);  // past N: N-1

  Slot ring[D][R];
  auto load_step = [&](int step, int d) {
    const bool ok = step < S && (C % 32 == 0 || step * 32 + lane < C);
    const int g = index_or_zero(ok, step * 32 + lane);  // in the row where !ok too (stream.cuh)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (ok) {
        load_slot<F, K>(ring[d][r], pieces, rowi[r], g);
      } else {
        zero_slot(ring[d][r]);
      }
    }
  };
  pdl::launch_dependents();
#pragma unroll
  for (int d = 0; d < D; ++d) load_step(d, d);
  pdl::wait();

  const __half* xh = static_cast<const __half*>(x_ptr);
  auto stage = [&](int i, uint4 u) {
    const int c = i / L::kChunks;
    xs[L::slot(c, i % L::kChunks)] = gemv::pair_order<gemv::Q4>(u);
    if constexpr (Fm::kMin) {  // sum of x over group c: its 4 chunks sit in adjacent lanes
      float part = gemv::sum8(u);
      part += __shfl_xor_sync(0xffffffffu, part, 1);
      part += __shfl_xor_sync(0xffffffffu, part, 2);
      if (i % L::kChunks == 0) xsum[c] = part;
    }
  };
  auto chunk_at = [&](int e0, bool aligned) -> uint4 {
    if (aligned) return __ldg(reinterpret_cast<const uint4*>(xh + e0));
    uint16_t h[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) h[e] = __ldg(reinterpret_cast<const unsigned short*>(xh) + e0 + e);
    return make_uint4(h[0] | (uint32_t(h[1]) << 16), h[2] | (uint32_t(h[3]) << 16),
                      h[4] | (uint32_t(h[5]) << 16), h[6] | (uint32_t(h[7]) << 16));
  };
  auto x_chunk = [&](int i, bool aligned) -> uint4 {
    const bool in = 8 * i < K;
    if (!in) return make_uint4(0, 0, 0, 0);
    const int e0 = index_or_zero(in, 8 * i);  // chunk 0 where !in: the loads may be hoisted (stream.cuh)
    if (ACT == SWIGLU) return gemv::swiglu8(chunk_at(e0, aligned), chunk_at(K + e0, aligned));
    return chunk_at(e0, aligned);
  };
  if ((reinterpret_cast<uintptr_t>(x_ptr) & 15) == 0) {
#pragma unroll
    for (int i0 = 0; i0 < XCHUNKS; i0 += THREADS) {
      const int i = i0 + threadIdx.x;
      if (XCHUNKS % THREADS == 0 || i < XCHUNKS) stage(i, x_chunk(i, true));
    }
  } else {
    for (int i = threadIdx.x; i < XCHUNKS; i += THREADS) stage(i, x_chunk(i, false));
  }
  __syncthreads();

  const Consts<F> k;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;

#pragma unroll
  for (int base = 0; base < S; base += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int step = base + d;
      if (step < S) {
        const int c = step * 32 + lane;
        uint32_t xv[16];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint4 v = xs[L::slot(c, j)];
          xv[4 * j] = v.x;
          xv[4 * j + 1] = v.y;
          xv[4 * j + 2] = v.z;
          xv[4 * j + 3] = v.w;
        }
        const float x_sum = Fm::kMin ? xsum[c] : 0.0f;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const Slot& sl = ring[d][r];
          const uint32_t words[4] = {sl.w.x, sl.w.y, sl.w.z, sl.w.w};
          const uint32_t hi4 = HIGH == 1 ? sl.hi[0] >> 4 : 0u;
          float part[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {  // words 0-1 and 2-3: Q6_K's two 16-groups
            __half2 p = __float2half2_rn(0.0f);
#pragma unroll
            for (int q = 0; q < 2; ++q) {
              const int j = 2 * h + q;
              const uint32_t H = HIGH ? spread_high<F>(sl.hi, hi4, j) : 0u;
              p = dot_word<F>(words[j], H, xv + 4 * j, k, p);
            }
            const float2 f = __half22float2(p);
            part[h] = f.x + f.y;
          }
          float s0, s1, m;
          slot_scales<F>(sl, s0, s1, m);
          float a = fmaf(s0 * Fm::kVS, part[0], acc[r]);
          a = fmaf(s1 * Fm::kVS, part[1], a);
          if constexpr (Fm::kMin) a = fmaf(m, x_sum, a);
          acc[r] = a;
        }
        load_step(step + D, d);  // refill this slot of the ring
      }
    }
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
  }
  float out = acc[0];
#pragma unroll
  for (int r = 1; r < R; ++r) out = lane == r ? acc[r] : out;
  const int n = row0 + lane;
  if (lane < R && n < N) {
    if constexpr (BIAS == HALF_BIAS) out += __half2float(static_cast<const __half*>(bias)[n]);
    if constexpr (BIAS == FLOAT_BIAS) out += static_cast<const float*>(bias)[n];
    y[n] = __float2half(out);
  }
}

template <int F, int N, int K, int WARPS, int R, int D, int BIAS, int ACT = PLAIN>
__device__ __forceinline__ void run(const void* __restrict__ x_ptr, const void* __restrict__ qweight_,
                                    const void* __restrict__ qhigh_, const void* __restrict__ scales_,
                                    const void* __restrict__ mins_, const void* __restrict__ sup_,
                                    const void* __restrict__ sup_min_, const void* __restrict__ bias,
                                    __half* __restrict__ y) {
  run_rows<F, N, K, WARPS, R, D, BIAS, ACT>(blockIdx.x, 0, x_ptr, qweight_, qhigh_, scales_, mins_, sup_, sup_min_,
                                            bias, y);
}

}  // namespace kgemv
}  // namespace ember

#endif  // EMBER_KGEMV_CUH
