// ember's weight-only GEMM for decode at small batch: y[b, N] (fp16) = x[b, K] (fp16) . W[N, K]^T (+ bias), b a
// kernel argument (1..any), W in gemv.cuh's packed layout (Q4 / Q4_MIN uint32 [N, K/8], nibble i of word j is
// k = 8j + i; Q8 int8 [N, K]; fp16 scales (and mins) [N, ceil(K/G)]). Values: Q4 s*(q-8), Q4_MIN s*q + m, Q8 s*q.
//
// Tensor cores without repacking the weights: mma.sync m16n8k16 (fp16 in, fp32 accumulate) with A = 16 batch
// rows of x and B = W^T of 8 weight rows. A dot product over k does not change when the same permutation of k is
// applied to x and W, so each lane's B fragment is made of codes from its own contiguous 16-byte weight load:
// - Q4, a k-tile of 128: lane (g = lane/4, t = lane%4) loads words 4t..4t+3 of weight row g (k = 32t + 8w + i,
//   nibble i of word w). Word w gives the half2 {n0,n4}, {n1,n5} (b0b1, b2b3 of mma step 2w) and {n2,n6},
//   {n3,n7} (step 2w+1). The A fragment of lane (g, t) then holds x of batch rows g and g+8 at the same
//   physical k: the 16-byte chunk of x at 32t + 8w in gemv.cuh's pair order ({x0,x4}, {x1,x5}, {x2,x6}, {x3,x7}):
//   a0a1/a2a3 = pair 2h, a4a5/a6a7 = pair 2h+1 of step 2w+h.
// - Q8, a k-tile of 64: lane (g, t) loads 16 codes of row g at k = 16t; word j (4 codes) is step j with
//   b0b1 = {c0,c1}, b2b3 = {c2,c3}; x in natural order at 16t + 4j.
// The group scale (and min) is folded into B in fp16 before the mma, since the 4 lanes of a k-step read different
// groups: Q4 the exact q-8 (one HADD2 / HFMA2 on the magic-number half 1024 + code), then HMUL2 by s; Q4_MIN the
// exact q, then HFMA2(q, s, m); Q8 the exact code, then HMUL2 by s. One rounding per weight, as fp16 weights have.
//
// Work split: a block owns NT 8-row n-tiles (all its warps the same rows) and its WARPS warps split K (k-tiles
// warp, warp + WARPS, ...), reduced through shared memory at the end; per warp, one x fragment serves the NT
// n-tiles, and D k-tiles of weight loads are in flight per lane (a register ring, as gemv.cuh). Batch rows come
// in chunks of 16 (one mma M); CH chunks are accumulated per pass over the weights (their x fragments held in
// registers), more passes for b > 16 CH (the block's weights then come again, mostly from L2).
#ifndef EMBER_LOWBATCH_CUH
#define EMBER_LOWBATCH_CUH
#include <cstdint>
#include <cuda_fp16.h>

#include "pdl.cuh"
#include "stream.cuh"

namespace ember {
namespace lowbatch {

enum Scheme : int { Q4 = 0, Q4_MIN = 1, Q8 = 2 };
enum Bias : int { NO_BIAS = 0, HALF_BIAS = 1, FLOAT_BIAS = 2 };

__device__ __forceinline__ uint32_t bits_of(__half2 h) {
  uint32_t u;
  memcpy(&u, &h, sizeof(u));
  return u;
}
__device__ __forceinline__ __half2 half2_of(uint32_t u) {
  __half2 h;
  memcpy(&h, &u, sizeof(h));
  return h;
}

// x through a per-lane shared-memory ring (XA=1): 16-byte cp.async copies issued D k-tiles ahead with the weight
// loads (zero-filled past b or K); each lane reads back only what it copied, so waiting on its own groups suffices.
__device__ __forceinline__ void copy_x_async(void* smem, const void* global, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(global), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void copy_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int PENDING>
__device__ __forceinline__ void copy_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory"); }

template <uint32_t MASK>
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t magic) {  // (a & MASK) | magic, one LOP3
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "n"(MASK), "r"(magic));
  return r;
}

__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One word of 4-bit codes as the 4 half2 B registers {n0,n4}, {n1,n5}, {n2,n6}, {n3,n7}, scaled (and shifted).
template <int SCHEME>
__device__ __forceinline__ void dequant_q4(uint32_t w, __half2 s, __half2 m, uint32_t* out) {
  const uint32_t magic = 0x64006400u;
  // lo nibble: 1024 + q; hi nibble: 1024 + 16q -> (1024 + 16q) / 16 - 64 = q; both exact
  const __half2 lo_add = half2_of(SCHEME == Q4_MIN ? 0xE400E400u : 0xE408E408u);  // -1024 / -1032
  const __half2 hi_mul = half2_of(0x2C002C00u);                                     // 1/16
  const __half2 hi_add = half2_of(SCHEME == Q4_MIN ? 0xD400D400u : 0xD480D480u);  // -64 / -72
  const uint32_t w8 = w >> 8;
  const __half2 q04 = __hadd2(half2_of(and_or<0x000F000Fu>(w, magic)), lo_add);
  const __half2 q15 = __hfma2(half2_of(and_or<0x00F000F0u>(w, magic)), hi_mul, hi_add);
  const __half2 q26 = __hadd2(half2_of(and_or<0x000F000Fu>(w8, magic)), lo_add);
  const __half2 q37 = __hfma2(half2_of(and_or<0x00F000F0u>(w8, magic)), hi_mul, hi_add);
  if (SCHEME == Q4_MIN) {
    out[0] = bits_of(__hfma2(q04, s, m));
    out[1] = bits_of(__hfma2(q15, s, m));
    out[2] = bits_of(__hfma2(q26, s, m));
    out[3] = bits_of(__hfma2(q37, s, m));
  } else {
    out[0] = bits_of(__hmul2(q04, s));
    out[1] = bits_of(__hmul2(q15, s));
    out[2] = bits_of(__hmul2(q26, s));
    out[3] = bits_of(__hmul2(q37, s));
  }
}

// One word of int8 codes as the 2 half2 B registers {c0,c1}, {c2,c3}, scaled.
__device__ __forceinline__ void dequant_q8(uint32_t w, __half2 s, uint32_t* out) {
  const uint32_t u = w ^ 0x80808080u;               // byte b -> b + 128
  const __half2 add = half2_of(0xE480E480u);        // -1152: (1024 + b + 128) - 1152 = b, exact
  out[0] = bits_of(__hmul2(__hadd2(half2_of(__byte_perm(u, 0x64646464u, 0x5140)), add), s));
  out[1] = bits_of(__hmul2(__hadd2(half2_of(__byte_perm(u, 0x64646464u, 0x5342)), add), s));
}

// Eight halves in the order the 4-bit words pair them: {x0,x4}, {x1,x5}, {x2,x6}, {x3,x7}.
__device__ __forceinline__ uint4 pair_order(uint4 u) {
  return make_uint4(__byte_perm(u.x, u.z, 0x5410), __byte_perm(u.x, u.z, 0x7632), __byte_perm(u.y, u.w, 0x5410),
                    __byte_perm(u.y, u.w, 0x7632));
}

template <int SCHEME>
struct Tile {
  static constexpr int kK = SCHEME == Q8 ? 64 : 128;      // k per tile (a quad's four 16-byte loads)
  static constexpr int kLane = kK / 4;                    // k per lane load
  static constexpr int kSteps = kK / 16;                  // mma k-steps per tile
  static constexpr int kXChunks = kLane / 8;              // 16-byte x chunks per lane and batch row
};

// x chunk (8 halves at k) of batch row r, zero past b or K; aligned: the row base is 16-byte aligned.
template <int K>
__device__ __forceinline__ uint4 load_x(const __half* x, int r, int b, int k, bool aligned) {
  const bool valid = r < b && k < K;
  if (!valid) return make_uint4(0, 0, 0, 0);
  const __half* p = x + index_or_zero(valid, r * K + k);  // row 0 where !valid: the loads may be hoisted
  if (aligned) return __ldg(reinterpret_cast<const uint4*>(p));
  uint16_t h[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) h[e] = __ldg(reinterpret_cast<const unsigned short*>(p) + e);
  return make_uint4(h[0] | (uint32_t(h[1]) << 16), h[2] | (uint32_t(h[3]) << 16), h[4] | (uint32_t(h[5]) << 16),
                    h[6] | (uint32_t(h[7]) << 16));
}

template <int SCHEME, int N, int K, int G, int WARPS, int NT, int CH, int D, int XA, int BIAS>
__device__ __forceinline__ void run(int b, const void* x_ptr, const void* w_ptr, const void* s_ptr,
                                    const void* m_ptr, const void* bias_ptr, void* y_ptr) {
  using T = Tile<SCHEME>;
  constexpr bool kMin = SCHEME == Q4_MIN;
  static_assert(K % T::kLane == 0, "K must be a multiple of the codes per 16-byte lane load");
  static_assert(G % T::kLane == 0, "a lane load must lie inside one group");
  static_assert(D >= 1 && D <= 4 && NT >= 1 && CH >= 1 && WARPS >= 1, "launch shape");
  constexpr int KT = (K + T::kK - 1) / T::kK;            // k-tiles
  constexpr int ITERS = (KT + WARPS - 1) / WARPS;        // k-tiles per warp (the last ones may be past KT)
  constexpr int GS = (K + G - 1) / G;                    // scales per row
  constexpr int ROW_LOADS = K / T::kLane;                // 16-byte loads per weight row
  constexpr int THREADS = WARPS * 32;
  constexpr int ACC = CH * NT * 4;                       // fp32 accumulators per lane

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int row_base = blockIdx.x * NT * 8;

  const uint4* wrow[NT];
  const __half* srow[NT];
  const __half* mrow[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    int n = row_base + 8 * j + g;
    n = n < N ? n : N - 1;  // rows past N load row N-1 and store nothing
    wrow[j] = reinterpret_cast<const uint4*>(w_ptr) + static_cast<size_t>(n) * ROW_LOADS;
    srow[j] = reinterpret_cast<const __half*>(s_ptr) + static_cast<size_t>(n) * GS;
    mrow[j] = reinterpret_cast<const __half*>(m_ptr) + static_cast<size_t>(n) * GS;
  }
  const __half* xh = reinterpret_cast<const __half*>(x_ptr);
  const bool aligned = (reinterpret_cast<uintptr_t>(x_ptr) & 15) == 0;
  __shared__ float red[WARPS > 1 ? WARPS * ACC * 32 : 1];
  constexpr int XSLOT = CH * 2 * T::kXChunks;  // 16-byte x copies per lane and k-tile
  __shared__ uint4 xring[XA ? WARPS * D * XSLOT * 32 : 1];
  uint4* xr = xring + warp * D * XSLOT * 32 + lane;  // XA: copy (d, i) at xr[(d * XSLOT + i) * 32]
  // XA needs 16-byte aligned rows (else the direct loads, which handle any alignment)
  const bool use_xa = XA && aligned;

  pdl::launch_dependents();
  pdl::wait();  // x (read with the weights in load_tile) comes from the kernel before
  const int chunks = (b + 15) / 16;
  for (int c0 = 0; c0 < chunks; c0 += CH) {
    float acc[CH][NT][4];
#pragma unroll
    for (int c = 0; c < CH; ++c)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[c][j][e] = 0.0f;

    uint4 wr[D][NT];
    __half sr[D][NT];
    __half mr[D][NT];
    auto load_tile = [&](int it, int d) {
      const int tile = it * WARPS + warp;
      const int load = tile * 4 + t;  // this lane's 16-byte load of the row
      const bool ok = it < ITERS && tile < KT && (K % T::kK == 0 || load < ROW_LOADS);
      const int at = index_or_zero(ok, load);  // in the row where !ok too: the loads may be hoisted (stream.cuh)
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        if (ok) {
          wr[d][j] = load_stream(wrow[j] + at);
          sr[d][j] = __ldg(srow[j] + at * T::kLane / G);
          if (kMin) mr[d][j] = __ldg(mrow[j] + at * T::kLane / G);
        } else {  // past K: zero codes, scale and min give B = 0 (x is zero there too)
          wr[d][j] = make_uint4(0, 0, 0, 0);
          sr[d][j] = __float2half(0.0f);
          mr[d][j] = __float2half(0.0f);
        }
      }
      if (XA && use_xa) {
        const int k0 = tile * T::kK + t * T::kLane;
#pragma unroll
        for (int c = 0; c < CH; ++c) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int r = (c0 + c) * 16 + g + 8 * h;
#pragma unroll
            for (int q = 0; q < T::kXChunks; ++q) {
              const int k = k0 + 8 * q;
              const bool valid = r < b && k < K;  // else zero-filled
              const __half* p = valid ? xh + static_cast<size_t>(r) * K + k : xh;
              if (ok) copy_x_async(xr + (d * XSLOT + (c * 2 + h) * T::kXChunks + q) * 32, p, valid);
            }
          }
        }
        copy_commit();  // one group per tile, empty or not, so that wait_group counts tiles
      }
    };
#pragma unroll
    for (int d = 0; d < D; ++d) load_tile(d, d);

#pragma unroll 1
    for (int base = 0; base < ITERS; base += D) {
#pragma unroll
      for (int d = 0; d < D; ++d) {
        const int it = base + d;
        if (ITERS % D == 0 || it < ITERS) {
          const int tile = it * WARPS + warp;
          if (tile < KT) {
            const int k0 = tile * T::kK + t * T::kLane;  // this lane's physical k
            // A fragments of every chunk: x rows g and g + 8 at k0 .. k0 + kLane
            uint32_t xa[CH][2][T::kXChunks * 4];
            if (XA && use_xa) copy_wait<D - 1>();  // this tile's group is done (D - 1 younger ones may be pending)
#pragma unroll
            for (int c = 0; c < CH; ++c) {
              const int r0 = (c0 + c) * 16 + g;
#pragma unroll
              for (int h = 0; h < 2; ++h) {
#pragma unroll
                for (int q = 0; q < T::kXChunks; ++q) {
                  uint4 v = XA && use_xa ? xr[(d * XSLOT + (c * 2 + h) * T::kXChunks + q) * 32]
                                         : load_x<K>(xh, r0 + 8 * h, b, k0 + 8 * q, aligned);
                  if (SCHEME != Q8) v = pair_order(v);
                  xa[c][h][4 * q] = v.x;
                  xa[c][h][4 * q + 1] = v.y;
                  xa[c][h][4 * q + 2] = v.z;
                  xa[c][h][4 * q + 3] = v.w;
                }
              }
            }
#pragma unroll
            for (int j = 0; j < NT; ++j) {
              const __half2 s = __half2half2(sr[d][j]);
              const __half2 m = __half2half2(mr[d][j]);
              const uint32_t words[4] = {wr[d][j].x, wr[d][j].y, wr[d][j].z, wr[d][j].w};
#pragma unroll
              for (int w = 0; w < 4; ++w) {
                if (SCHEME == Q8) {
                  uint32_t bq[2];
                  dequant_q8(words[w], s, bq);
#pragma unroll
                  for (int c = 0; c < CH; ++c) {
                    if (c0 + c < chunks) {
                      const uint32_t a[4] = {xa[c][0][2 * w], xa[c][1][2 * w], xa[c][0][2 * w + 1],
                                             xa[c][1][2 * w + 1]};
                      mma(acc[c][j], a, bq[0], bq[1]);
                    }
                  }
                } else {
                  uint32_t bq[4];
                  dequant_q4<SCHEME>(words[w], s, m, bq);
#pragma unroll
                  for (int c = 0; c < CH; ++c) {
                    if (c0 + c < chunks) {
#pragma unroll
                      for (int h = 0; h < 2; ++h) {
                        const uint32_t a[4] = {xa[c][0][4 * w + 2 * h], xa[c][1][4 * w + 2 * h],
                                               xa[c][0][4 * w + 2 * h + 1], xa[c][1][4 * w + 2 * h + 1]};
                        mma(acc[c][j], a, bq[2 * h], bq[2 * h + 1]);
                      }
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
    auto store = [&](int c, int j, int e, float v) {
      const int r = (c0 + c) * 16 + g + 8 * (e >> 1);
      const int n = row_base + 8 * j + 2 * t + (e & 1);
      if (r < b && n < N) {
        if (BIAS == HALF_BIAS) v += __half2float(reinterpret_cast<const __half*>(bias_ptr)[n]);
        if (BIAS == FLOAT_BIAS) v += reinterpret_cast<const float*>(bias_ptr)[n];
        reinterpret_cast<__half*>(y_ptr)[static_cast<size_t>(r) * N + n] = __float2half(v);
      }
    };
    if (WARPS == 1) {
#pragma unroll
      for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) store(c, j, e, acc[c][j][e]);
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
        const int r = (c0 + c) * 16 + (l >> 2) + 8 * (e >> 1);
        const int n = row_base + 8 * j + 2 * (l & 3) + (e & 1);
        if (r < b && n < N) {
          if (BIAS == HALF_BIAS) v += __half2float(reinterpret_cast<const __half*>(bias_ptr)[n]);
          if (BIAS == FLOAT_BIAS) v += reinterpret_cast<const float*>(bias_ptr)[n];
          reinterpret_cast<__half*>(y_ptr)[static_cast<size_t>(r) * N + n] = __float2half(v);
        }
      }
      __syncthreads();  // red is reused by the next pass
    }
  }
}

}  // namespace lowbatch
}  // namespace ember
#endif  // EMBER_LOWBATCH_CUH
