// ember's decode GEMV (batch 1) for the GGUF formats kept native: y[N] (fp16) = x[K] (fp16) . W[N, K]^T (+ bias),
// W in ir/ops_quant.py's planar layout (row-major, K contiguous):
//   qweight  uint32 [N, K/8]   low nibbles, k = 8j + i in nibble i of word j
//   qhigh    uint32            Q5_*: [N, K/32], bit i of word j is bit 4 of k = 32j + i
//                              Q6_K: [N, K/16], bits 2i..2i+1 of word j are bits 4-5 of k = 16j + i
//   Q5_0 / Q5_1: fp16 scales (and mins) [N, K/32]: W = s (q - 16) | s q + m
//   Q4_K / Q5_K: uint8 scale / min codes [N, K/32], fp16 d / dmin [N, K/256]: W = (d c) q - (dmin cm)
//   Q6_K:        int8 scale codes [N, K/16], fp16 d [N, K/256]: W = (d c) (q - 32)
//
// Plan (the bandwidth one of gemv.cuh, with the layout's extra streams):
// - A lane owns 32 consecutive k of a row per step: one 16-byte load of codes (one 32-group), plus 4 bytes (5-bit)
//   or 8 bytes (6-bit) of high bits and the group's 1-2 scale bytes; a warp's lanes read contiguous runs of every
//   stream. Each warp owns R rows, so one x fragment (registers, from global through L1) serves R rows; the loop
//   over the K/1024 steps is unrolled so that a lane's loads of several steps are in flight.
// - Codes become fp16 without I2F: (bits | 0x6400) is the half 1024 + code (one LOP3 per two nibbles, high bits
//   or'ed in above the nibble), then one HSUB2 removes 1024 (+ 16 / 32 for the symmetric formats): exact in fp16.
//   Nibble pairs come out as (k, k + 4) of a word, so x is permuted into that order with PRMT.
// - Products sum in fp16x2 over one word (8 codes, |code| <= 32: no overflow for activations < ~250), then fp32;
//   the group scale (d * code, fp32) multiplies the group's sum, and the min term m * sum(x of the group) (x
//   summed in fp32) is computed once per lane and step for all R rows.
// - pdl.cuh contract: weights may be read before pdl::wait(), x only after.
#ifndef EMBER_KGEMV_CUH
#define EMBER_KGEMV_CUH
#include <cstdint>
#include <cuda_fp16.h>

#include "pdl.cuh"

namespace ember {
namespace kgemv {

enum Format : int { Q5_0 = 5, Q5_1 = 6, Q4_K = 7, Q5_K = 8, Q6_K = 9 };
enum Bias : int { NO_BIAS = 0, HALF_BIAS = 1, FLOAT_BIAS = 2 };

__device__ __forceinline__ __half2 as_h2(uint32_t bits) {
  __half2 h;
  memcpy(&h, &bits, sizeof(h));
  return h;
}
__device__ __forceinline__ uint32_t as_u32(__half2 h) {
  uint32_t u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

// The 5th/6th code bits of the pair (k = 8j + t, 8j + t + 4) of word j of a lane's 32 codes, at bits 4(-5) and
// 20(-21), ready to be or'ed into the nibble pair.
template <int F>
__device__ __forceinline__ uint32_t high_pair(const uint32_t* hi, int j, int t) {
  if constexpr (F == Q6_K) {
    const uint32_t h = hi[j >> 1] >> (16 * (j & 1) + 2 * t);  // k % 16 = 8 (j & 1) + t
    return ((h & 3u) << 4) | ((h & 0x300u) << 12);
  } else if constexpr (F == Q5_0 || F == Q5_1 || F == Q5_K) {
    const uint32_t h = hi[0] >> (8 * j + t);
    return ((h & 1u) << 4) | ((h & 0x10u) << 16);
  } else {
    return 0u;
  }
}

// One lane's 32 codes (4 words) against its x (16 half2 in pair order): the fp32 sums of each half (16 codes),
// codes already centred (q - 16 / q - 32) for the symmetric formats.
template <int F>
__device__ __forceinline__ void dot32(const uint4 w, const uint32_t* hi, const __half2* xp, float& lo, float& hi16) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
  constexpr float kBias = (F == Q5_0) ? 16.0f : (F == Q6_K) ? 32.0f : 0.0f;
  const __half2 offset = __float2half2_rn(1024.0f + kBias);
  float sums[2] = {0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    __half2 acc = __float2half2_rn(0.0f);
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const uint32_t bits = ((words[j] >> (4 * t)) & 0x000F000Fu) | high_pair<F>(hi, j, t) | 0x64006400u;
      acc = __hfma2(__hsub2(as_h2(bits), offset), xp[4 * j + t], acc);
    }
    const float2 f = __half22float2(acc);
    sums[j >> 1] += f.x + f.y;
  }
  lo = sums[0];
  hi16 = sums[1];
}

// x[32 * g .. 32 * g + 32) as 16 half2 in dot32's order: per 8 values, (x0, x4), (x1, x5), (x2, x6), (x3, x7).
__device__ __forceinline__ void load_x(const __half* x, int g, __half2* xp, float& xsum) {
  const uint4* p = reinterpret_cast<const uint4*>(x + 32 * g);
  xsum = 0.0f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint4 v = __ldg(p + j);  // x0x1 x2x3 x4x5 x6x7
    xp[4 * j + 0] = as_h2(__byte_perm(v.x, v.z, 0x5410));
    xp[4 * j + 1] = as_h2(__byte_perm(v.x, v.z, 0x7632));
    xp[4 * j + 2] = as_h2(__byte_perm(v.y, v.w, 0x5410));
    xp[4 * j + 3] = as_h2(__byte_perm(v.y, v.w, 0x7632));
    const float2 a = __half22float2(__hadd2(xp[4 * j], xp[4 * j + 1]));
    const float2 b = __half22float2(__hadd2(xp[4 * j + 2], xp[4 * j + 3]));
    xsum += (a.x + a.y) + (b.x + b.y);
  }
}

// Scale and min (fp32) of group g (Q6_K: of its two 16-groups) of row n.
template <int F, int K>
__device__ __forceinline__ void group_scales(const void* scales, const void* mins, const __half* sup,
                                             const __half* sup_min, int n, int g, float& s0, float& s1, float& m) {
  if constexpr (F == Q5_0 || F == Q5_1) {
    s0 = s1 = __half2float(__ldg(static_cast<const __half*>(scales) + n * (K / 32) + g));
    m = F == Q5_1 ? __half2float(__ldg(static_cast<const __half*>(mins) + n * (K / 32) + g)) : 0.0f;
  } else if constexpr (F == Q6_K) {
    const float d = __half2float(__ldg(sup + n * (K / 256) + g / 8));
    const char2 c = __ldg(reinterpret_cast<const char2*>(static_cast<const int8_t*>(scales) + n * (K / 16)) + g);
    s0 = d * static_cast<float>(c.x);
    s1 = d * static_cast<float>(c.y);
    m = 0.0f;
  } else {
    const float d = __half2float(__ldg(sup + n * (K / 256) + g / 8));
    const float dm = __half2float(__ldg(sup_min + n * (K / 256) + g / 8));
    s0 = s1 = d * static_cast<float>(__ldg(static_cast<const uint8_t*>(scales) + n * (K / 32) + g));
    m = -(dm * static_cast<float>(__ldg(static_cast<const uint8_t*>(mins) + n * (K / 32) + g)));
  }
}

// Block of WARPS warps, R rows a warp; grid = ceil(N / (WARPS * R)).
template <int F, int N, int K, int WARPS, int R, int BIAS>
__device__ __forceinline__ void run(const __half* __restrict__ x, const void* __restrict__ qweight_,
                                    const void* __restrict__ qhigh_, const void* __restrict__ scales,
                                    const void* __restrict__ mins, const void* __restrict__ sup_,
                                    const void* __restrict__ sup_min_, const void* __restrict__ bias,
                                    __half* __restrict__ y) {
  // unused pieces come as any pointer (the codes): typed here
  const uint32_t* qweight = static_cast<const uint32_t*>(qweight_);
  const uint32_t* qhigh = static_cast<const uint32_t*>(qhigh_);
  const __half* sup = static_cast<const __half*>(sup_);
  const __half* sup_min = static_cast<const __half*>(sup_min_);
  static_assert(K % 32 == 0, "K must be whole 32-groups");
  constexpr int GROUPS = K / 32;
  constexpr int STEPS = (GROUPS + 31) / 32;
  constexpr int HIGH = (F == Q6_K) ? 2 : (F == Q4_K) ? 0 : 1;  // high-bit words per 32-group
  pdl::launch_dependents();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = (blockIdx.x * WARPS + warp) * R;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  pdl::wait();
#pragma unroll 4
  for (int step = 0; step < STEPS; ++step) {
    const int g = step * 32 + lane;
    if (GROUPS % 32 != 0 && g >= GROUPS) break;
    uint4 w[R];
    uint32_t hi[R][HIGH > 0 ? HIGH : 1];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int n = row0 + r < N ? row0 + r : N - 1;
      w[r] = __ldg(reinterpret_cast<const uint4*>(qweight + n * (K / 8)) + g);
#pragma unroll
      for (int h = 0; h < HIGH; ++h) hi[r][h] = __ldg(qhigh + n * (K / 32 * HIGH) + g * HIGH + h);
    }
    __half2 xp[16];
    float xsum;
    load_x(x, g, xp, xsum);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int n = row0 + r < N ? row0 + r : N - 1;
      float lo, up, s0, s1, m;
      dot32<F>(w[r], hi[r], xp, lo, up);
      group_scales<F, K>(scales, mins, sup, sup_min, n, g, s0, s1, m);
      acc[r] += s0 * lo + s1 * up + m * xsum;
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
  }
  if (lane < R && row0 + lane < N) {
    float v = acc[0];
#pragma unroll
    for (int r = 1; r < R; ++r)
      if (lane == r) v = acc[r];
    const int n = row0 + lane;
    if constexpr (BIAS == HALF_BIAS) v += __half2float(static_cast<const __half*>(bias)[n]);
    if constexpr (BIAS == FLOAT_BIAS) v += static_cast<const float*>(bias)[n];
    y[n] = __float2half(v);
  }
}

}  // namespace kgemv
}  // namespace ember

#endif  // EMBER_KGEMV_CUH
