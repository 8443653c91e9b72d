// ember's weight-only GEMM for decode at small batch for the GGUF formats kept native (Q5_0, Q5_1, Q4_K, Q5_K,
// Q6_K): y[b, N] (fp16) = x[b, K] (fp16) . W[N, K]^T (+ bias), b a kernel argument, W in kgemv.cuh's planar
// layout. lowbatch.cuh's plan (mma.sync m16n8k16, fp16 in, fp32 accumulate) with kgemv.cuh's streams:
// - A k-tile is 128 k = 4 groups of 32; lane (g = lane/4, t = lane%4) loads group 4 tile + t of weight row g (its
//   16 bytes of codes, high words and scale data: kgemv::load_slot), so a word of codes gives the B registers of
//   two mma steps exactly as lowbatch.cuh's Q4 (pairs {n0,n4}, {n1,n5} / {n2,n6}, {n3,n7}), and the A fragment is
//   x of batch rows g, g + 8 at the same physical k in gemv.cuh's pair order.
// - Codes: kgemv::word_bits (nibble pair under the magic, high bits or'ed above it), then the exact centred code
//   q - c in fp16 (one HADD2 / HFMA2; c as kgemv.cuh), then the group's scale (and min) folded in fp16 (HMUL2 /
//   HFMA2): s = d code and the min term (m + c s) are computed in fp32 and rounded to fp16 once, the product once
//   more (fp16 weights' one rounding, plus the scale's). Q6_K's words 0-1 and 2-3 take their 16-groups' scales.
// - Work split as lowbatch.cuh: a block owns NT 8-row n-tiles, its WARPS warps split K, reduced through shared
//   memory; D k-tiles of loads in flight per lane (the first D issued before pdl::wait(): weights only); batch rows
//   in chunks of 16, CH chunks per pass over the weights, more passes for b > 16 CH (weights again, from L2).
#ifndef EMBER_KLOWBATCH_CUH
#define EMBER_KLOWBATCH_CUH
#include <cstdint>
#include <cuda_fp16.h>

#include "pdl.cuh"
#include "kgemv.cuh"
#include "lowbatch.cuh"

namespace ember {
namespace klowbatch {

enum Bias : int { NO_BIAS = 0, HALF_BIAS = 1, FLOAT_BIAS = 2 };

using kgemv::Fmt;
using lowbatch::bits_of;
using lowbatch::half2_of;

// One word of codes (high bits H spread) as the 4 B registers {v0,v4}, {v1,v5}, {v2,v6}, {v3,v7}, v = s (q - c)
// (+ m).
template <int F>
__device__ __forceinline__ void dequant_word(uint32_t w, uint32_t H, __half2 s, __half2 m, uint32_t* out) {
  constexpr float b = Fmt<F>::kBias;
  const __half2 lo_add = __float2half2_rn(-(1024.0f + b));  // (1024 + q) - 1024 - bias
  const __half2 hi_mul = __float2half2_rn(1.0f / 16.0f);    // (1024 + 16 q) / 16 - 64 - bias
  const __half2 hi_add = __float2half2_rn(-(64.0f + b));
  uint32_t bits[4];
  kgemv::word_bits<F>(w, H, bits);
  __half2 q[4];
  q[0] = __hadd2(half2_of(bits[0]), lo_add);
  q[1] = __hfma2(half2_of(bits[1]), hi_mul, hi_add);
  q[2] = __hadd2(half2_of(bits[2]), lo_add);
  q[3] = __hfma2(half2_of(bits[3]), hi_mul, hi_add);
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = bits_of(Fmt<F>::kMin ? __hfma2(q[i], s, m) : __hmul2(q[i], s));
}

template <int F, int N, int K, int WARPS, int NT, int CH, int D, int BIAS>
__device__ __forceinline__ void run(int b, const void* __restrict__ x_ptr, const void* __restrict__ qweight_,
                                    const void* __restrict__ qhigh_, const void* __restrict__ scales_,
                                    const void* __restrict__ mins_, const void* __restrict__ sup_,
                                    const void* __restrict__ sup_min_, const void* __restrict__ bias_ptr,
                                    void* __restrict__ y_ptr) {
  static_assert(K % 32 == 0 && (!Fmt<F>::kSuper || K % 256 == 0), "K must be whole groups / super blocks");
  static_assert(D >= 1 && D <= 4 && NT >= 1 && CH >= 1 && WARPS >= 1, "launch shape");
  constexpr int C = K / 32;                          // groups per row
  constexpr int KT = (K + 127) / 128;                // k-tiles
  constexpr int ITERS = (KT + WARPS - 1) / WARPS;    // k-tiles per warp (the last ones may be past KT)
  constexpr int THREADS = WARPS * 32;
  constexpr int ACC = CH * NT * 4;                   // fp32 accumulators per lane
  constexpr int HIGH = Fmt<F>::kHigh;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int row_base = blockIdx.x * NT * 8;
  const kgemv::Pieces pieces{static_cast<const uint8_t*>(qweight_), static_cast<const uint8_t*>(qhigh_),
                             static_cast<const uint8_t*>(scales_), static_cast<const uint8_t*>(mins_),
                             static_cast<const uint8_t*>(sup_), static_cast<const uint8_t*>(sup_min_)};
  size_t rowi[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int n = row_base + 8 * j + g;
    rowi[j] = static_cast<size_t>(n < N ? n : N - 1);  // rows past N load row N-1 and store nothing
  }
  const __half* xh = static_cast<const __half*>(x_ptr);
  const bool aligned = (reinterpret_cast<uintptr_t>(x_ptr) & 15) == 0;
  __shared__ float red[WARPS > 1 ? WARPS * ACC * 32 : 1];

  kgemv::Slot ring[D][NT];
  auto load_tile = [&](int it, int d) {
    const int tile = it * WARPS + warp;
    const bool ok = it < ITERS && tile < KT && (C % 4 == 0 || tile * 4 + t < C);
    const int group = index_or_zero(ok, tile * 4 + t);  // this lane's group of the row (in it where !ok too)
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      if (ok) {
        kgemv::load_slot<F, K>(ring[d][j], pieces, rowi[j], group);
      } else {  // past K: zero codes and scales give B = 0 (x is zero there too)
        kgemv::zero_slot(ring[d][j]);
      }
    }
  };
  pdl::launch_dependents();
#pragma unroll
  for (int d = 0; d < D; ++d) load_tile(d, d);
  pdl::wait();  // x comes from the kernel before

  const int chunks = (b + 15) / 16;
  for (int c0 = 0; c0 < chunks; c0 += CH) {
    if (c0 > 0) {  // another pass over the weights (mostly from L2)
#pragma unroll
      for (int d = 0; d < D; ++d) load_tile(d, d);
    }
    float acc[CH][NT][4];
#pragma unroll
    for (int c = 0; c < CH; ++c)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[c][j][e] = 0.0f;

#pragma unroll 1
    for (int base = 0; base < ITERS; base += D) {
#pragma unroll
      for (int d = 0; d < D; ++d) {
        const int it = base + d;
        if (ITERS % D == 0 || it < ITERS) {
          const int tile = it * WARPS + warp;
          if (tile < KT) {
            const int k0 = tile * 128 + t * 32;  // this lane's physical k
            uint32_t xa[CH][2][16];  // A fragments of every chunk: x rows g and g + 8 at k0 .. k0 + 32
#pragma unroll
            for (int c = 0; c < CH; ++c) {
              const int r0 = (c0 + c) * 16 + g;
#pragma unroll
              for (int h = 0; h < 2; ++h) {
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                  const uint4 v = lowbatch::pair_order(lowbatch::load_x<K>(xh, r0 + 8 * h, b, k0 + 8 * q, aligned));
                  xa[c][h][4 * q] = v.x;
                  xa[c][h][4 * q + 1] = v.y;
                  xa[c][h][4 * q + 2] = v.z;
                  xa[c][h][4 * q + 3] = v.w;
                }
              }
            }
#pragma unroll
            for (int j = 0; j < NT; ++j) {
              const kgemv::Slot& sl = ring[d][j];
              float s0, s1, m;
              kgemv::slot_scales<F>(sl, s0, s1, m);
              const __half2 sa = __float2half2_rn(s0), sb = __float2half2_rn(s1), mh = __float2half2_rn(m);
              const uint32_t words[4] = {sl.w.x, sl.w.y, sl.w.z, sl.w.w};
              const uint32_t hi4 = HIGH == 1 ? sl.hi[0] >> 4 : 0u;
#pragma unroll
              for (int w = 0; w < 4; ++w) {
                const uint32_t H = HIGH ? kgemv::spread_high<F>(sl.hi, hi4, w) : 0u;
                uint32_t bq[4];
                dequant_word<F>(words[w], H, w < 2 ? sa : sb, mh, bq);
#pragma unroll
                for (int c = 0; c < CH; ++c) {
                  if (c0 + c < chunks) {
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                      const uint32_t a[4] = {xa[c][0][4 * w + 2 * h], xa[c][1][4 * w + 2 * h],
                                             xa[c][0][4 * w + 2 * h + 1], xa[c][1][4 * w + 2 * h + 1]};
                      lowbatch::mma(acc[c][j], a, bq[2 * h], bq[2 * h + 1]);
                    }
                  }
                }
              }
            }
          }
          load_tile(it + D, d);  // refill this slot of the ring
        }
      }
    }

    // C fragment: acc[c][j][e] is batch row (c0 + c) * 16 + g + 8 (e / 2), weight row row_base + 8 j + 2 t + e % 2
    auto store = [&](int r, int n, float v) {
      if (r < b && n < N) {
        if (BIAS == HALF_BIAS) v += __half2float(static_cast<const __half*>(bias_ptr)[n]);
        if (BIAS == FLOAT_BIAS) v += static_cast<const float*>(bias_ptr)[n];
        static_cast<__half*>(y_ptr)[static_cast<size_t>(r) * N + n] = __float2half(v);
      }
    };
    if (WARPS == 1) {
#pragma unroll
      for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            store((c0 + c) * 16 + g + 8 * (e >> 1), row_base + 8 * j + 2 * t + (e & 1), acc[c][j][e]);
    } else {
#pragma unroll
      for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) red[(warp * ACC + (c * NT + j) * 4 + e) * 32 + lane] = acc[c][j][e];
      __syncthreads();
      for (int i = threadIdx.x; i < ACC * 32; i += THREADS) {
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) v += red[w * ACC * 32 + i];
        const int slot = i >> 5;  // (c * NT + j) * 4 + e of lane i % 32
        const int l = i & 31;
        const int e = slot & 3;
        const int j = (slot >> 2) % NT;
        const int c = (slot >> 2) / NT;
        store((c0 + c) * 16 + (l >> 2) + 8 * (e >> 1), row_base + 8 * j + 2 * (l & 3) + (e & 1), v);
      }
      __syncthreads();  // red is reused by the next pass
    }
  }
}

}  // namespace klowbatch
}  // namespace ember
#endif  // EMBER_KLOWBATCH_CUH
