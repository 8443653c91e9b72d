// ember's prefill GEMM for quantized weights: y[m, N] (fp16) = x[m, K] (fp16) . W[N, K]^T (+ bias), m the token
// count (a kernel argument), W in gemv.cuh's packed layout (Q4 / Q4_MIN uint32 [N, K/8], nibble i of word j is
// k = 8j + i; Q8 int8 [N, K]; fp16 scales (and mins) [N, ceil(K/G)]), dequantized inside the mainloop: the weights
// go from global to shared memory packed, and from there into registers, where they become mma B fragments.
//
// A block computes a BM x BN tile of y (BM tokens, BN weight rows) with WM x WN warps, each a (BM/WM) x (BN/WN)
// warp tile of mma.sync m16n8k16 (fp16 in, fp32 accumulate). K goes in k-tiles of 32 through a STAGES-deep
// cp.async ring of shared memory: the x tile (BM rows of 64 bytes) and the packed weight tile (BN rows of 16 bytes
// for 4-bit, 32 for 8-bit), zero-filled past m. A dot product over k does not change when the same permutation
// of k is applied to x and W, so lane (g = lane/4, t = lane%4) takes its B fragments of weight row g from one
// word (Q4: word t of the k-tile, codes k = 8t .. 8t+7) or two (Q8: words 2t, 2t+1), exactly as lowbatch.cuh's
// kernel does (whose dequantizers and mma this file uses), and its A fragments of x rows g and g+8 from the
// 16 bytes at k = 8t of the same tile (pair order for 4-bit): mma step s of the tile uses k = 8t + 4s .. 8t+4s+3.
// Those reads are conflict-free: a quarter warp reads 128 contiguous bytes of x, a warp 128 (Q4) or 256 (Q8)
// contiguous bytes of weights. The group scale (and min) of each weight row comes from global memory one k-tile
// ahead (G is a multiple of 32: a k-tile lies in one group) and is folded into B in fp16 before the mma.
//
// Programmatic dependent launch (pdl.cuh): wait() first (the weights are few next to x's reuse).
#ifndef EMBER_PREFILL_QGEMM_CUH
#define EMBER_PREFILL_QGEMM_CUH
#include <cstdint>
#include <cuda_fp16.h>

#include "lowbatch.cuh"
#include "pdl.cuh"

namespace ember {
namespace qgemm {

using lowbatch::Q4;
using lowbatch::Q4_MIN;
using lowbatch::Q8;
using lowbatch::NO_BIAS;
using lowbatch::HALF_BIAS;
using lowbatch::FLOAT_BIAS;

constexpr int kTileK = 32;

__device__ __forceinline__ void copy16(void* smem, const void* global, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(global), "r"(valid ? 16 : 0)
               : "memory");
}

template <int SCHEME, int N, int K, int G, int BIAS, int BM, int BN, int WM, int WN, int STAGES>
__device__ __forceinline__ void run(int m, const void* x_ptr, const void* w_ptr, const void* s_ptr,
                                    const void* m_ptr, const void* bias_ptr, void* y_ptr) {
  constexpr bool kMin = SCHEME == Q4_MIN;
  constexpr int WB = SCHEME == Q8 ? 32 : 16;  // bytes of one weight row per k-tile
  constexpr int THREADS = WM * WN * 32;
  constexpr int TM = BM / WM / 16;  // m16 tiles per warp
  constexpr int TN = BN / WN / 8;   // n8 tiles per warp
  constexpr int KT = K / kTileK;
  constexpr int GS = (K + G - 1) / G;  // scales per weight row
  static_assert(K % kTileK == 0 && G % kTileK == 0, "k-tiles of 32 inside one group");
  static_assert(N % BN == 0 && BM % (16 * WM) == 0 && BN % (8 * WN) == 0 && STAGES >= 2, "tile shape");
  constexpr int X_CHUNKS = BM * kTileK * 2 / 16;  // 16-byte copies per stage
  constexpr int W_CHUNKS = BN * WB / 16;

  __shared__ __align__(16) uint4 xs[STAGES][BM * 4];              // [row][4 x 16 bytes]
  __shared__ __align__(16) uint4 ws[STAGES][BN * WB / 16];        // [row][WB bytes]

  pdl::launch_dependents();
  pdl::wait();  // x comes from the kernel before
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int wm = warp / WN;
  const int wn = warp % WN;
  const int tile_n = blockIdx.x % (N / BN);
  const int tile_m = blockIdx.x / (N / BN);
  const int row0 = tile_m * BM;
  const int col0 = tile_n * BN;

  const __half* x = reinterpret_cast<const __half*>(x_ptr);
  const uint8_t* w = reinterpret_cast<const uint8_t*>(w_ptr);
  const __half* scales = reinterpret_cast<const __half*>(s_ptr);
  const __half* mins = reinterpret_cast<const __half*>(m_ptr);

  auto load_stage = [&](int stage, int kt) {
#pragma unroll
    for (int c = 0; c < (X_CHUNKS + THREADS - 1) / THREADS; ++c) {
      const int i = threadIdx.x + c * THREADS;
      if (X_CHUNKS % THREADS != 0 && i >= X_CHUNKS) break;
      const int r = i >> 2;
      const int row = row0 + r;
      const bool valid = row < m;
      const __half* src = valid ? x + static_cast<size_t>(row) * K + kt * kTileK + (i & 3) * 8 : x;
      copy16(&xs[stage][i], src, valid);
    }
#pragma unroll
    for (int c = 0; c < (W_CHUNKS + THREADS - 1) / THREADS; ++c) {
      const int i = threadIdx.x + c * THREADS;
      if (W_CHUNKS % THREADS != 0 && i >= W_CHUNKS) break;
      const int r = i / (WB / 16);
      const uint8_t* src = w + static_cast<size_t>(col0 + r) * (K * WB / kTileK) + kt * WB + (i % (WB / 16)) * 16;
      copy16(&ws[stage][i], src, true);
    }
  };

  // this lane's weight rows: col0 + wn * (BN / WN) + 8 j + g
  const int lane_col = col0 + wn * (BN / WN) + g;
  auto load_scales = [&](int kt, __half* s, __half* mn) {
    const int group = kt * kTileK / G;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const size_t at = static_cast<size_t>(lane_col + 8 * j) * GS + group;
      s[j] = __ldg(scales + at);
      if (kMin) mn[j] = __ldg(mins + at);
    }
  };

  float acc[TM][TN][4];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load_stage(s, s);
    lowbatch::copy_commit();
  }
  __half sc[TN], mn[TN];
  load_scales(0, sc, mn);

#pragma unroll 1
  for (int kt = 0; kt < KT; ++kt) {
    lowbatch::copy_wait<STAGES - 2>();
    __syncthreads();  // stage kt is in; every warp is done with stage kt - 1, which is refilled now
    const int next = kt + STAGES - 1;
    if (next < KT) load_stage(next % STAGES, next);
    lowbatch::copy_commit();
    __half sc_next[TN], mn_next[TN];
    if (kt + 1 < KT) load_scales(kt + 1, sc_next, mn_next);

    const int stage = kt % STAGES;
    uint32_t a[TM][2][4];  // x rows g, g + 8 of each m16 tile: 8 halves at k = 8t (pair order for 4-bit)
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * (BM / WM) + 16 * i + g + 8 * h;
        uint4 v = xs[stage][r * 4 + t];
        if (SCHEME != Q8) v = lowbatch::pair_order(v);
        a[i][h][0] = v.x;
        a[i][h][1] = v.y;
        a[i][h][2] = v.z;
        a[i][h][3] = v.w;
      }
    }
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int r = wn * (BN / WN) + 8 * j + g;
      const __half2 s2 = __half2half2(sc[j]);
      uint32_t b[4];  // step s: b[2s], b[2s + 1]
      if (SCHEME == Q8) {
        const uint2 words = reinterpret_cast<const uint2*>(&ws[stage][0])[r * 4 + t];
        lowbatch::dequant_q8(words.x, s2, b);
        lowbatch::dequant_q8(words.y, s2, b + 2);
      } else {
        const uint32_t word = reinterpret_cast<const uint32_t*>(&ws[stage][0])[r * 4 + t];
        lowbatch::dequant_q4<SCHEME>(word, s2, __half2half2(kMin ? mn[j] : sc[j]), b);
      }
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          const uint32_t frag[4] = {a[i][0][2 * s], a[i][1][2 * s], a[i][0][2 * s + 1], a[i][1][2 * s + 1]};
          lowbatch::mma(acc[i][j], frag, b[2 * s], b[2 * s + 1]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      sc[j] = sc_next[j];
      if (kMin) mn[j] = mn_next[j];
    }
  }
  lowbatch::copy_wait<0>();

  // C fragment: acc[i][j][e] is token row0 + wm (BM/WM) + 16 i + g + 8 (e / 2), weight row lane_col + 8 j - g
  // + 2 t + e % 2
  __half* y = reinterpret_cast<__half*>(y_ptr);
#pragma unroll
  for (int i = 0; i < TM; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row0 + wm * (BM / WM) + 16 * i + g + 8 * h;
      if (r >= m) continue;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int n = col0 + wn * (BN / WN) + 8 * j + 2 * t;
        float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
        if (BIAS == HALF_BIAS) {
          const __half2 bias = *reinterpret_cast<const __half2*>(reinterpret_cast<const __half*>(bias_ptr) + n);
          v0 += __low2float(bias);
          v1 += __high2float(bias);
        }
        if (BIAS == FLOAT_BIAS) {
          v0 += reinterpret_cast<const float*>(bias_ptr)[n];
          v1 += reinterpret_cast<const float*>(bias_ptr)[n + 1];
        }
        *reinterpret_cast<__half2*>(y + static_cast<size_t>(r) * N + n) = __floats2half2_rn(v0, v1);
      }
    }
  }
}

}  // namespace qgemm
}  // namespace ember

#endif  // EMBER_PREFILL_QGEMM_CUH
