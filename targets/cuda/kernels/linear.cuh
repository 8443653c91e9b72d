// ember's decode kernels for `linear` with fp16 weights (q0f16): y[b, N] (fp16) = x[b, K] (fp16) . W[N, K]^T
// (+ bias), W row-major fp16 (K contiguous), fp32 accumulation. Decode reads every weight once per step, so both
// kernels are built to stream W at the copy bandwidth:
//
// gemv<...>() (decode at batch 1): a lane loads 16 bytes (8 halves) of one row per step, a warp a contiguous
//   512-byte run; a warp owns R rows (one x fragment serves them all) and keeps D steps of loads in flight per lane
//   (a register ring refilled right after each step is consumed). x is staged once per block in shared memory in
//   natural order (lane c reads 16-byte slot c: conflict-free). Products are summed in fp32 (the weights and x
//   converted pairwise), then over the warp by shuffles.
//
// mma<...>(b, ...) (batched decode, b rows, any b): mma.sync m16n8k16 (fp16 in, fp32 accumulate) with A = 16 batch
//   rows of x and B = W^T of 8 weight rows, read straight from global memory into the B fragments: a dot product
//   over k does not change when the same permutation of k is applied to x and W, so lane (g = lane/4, t = lane%4)
//   loads the 16 bytes of weight row g at k = k0 + 8t (a quad: 64 contiguous bytes of the row; a k-tile of 32)
//   and uses halves {0,1}/{2,3} as b0b1/b2b3 of mma step 0 and {4,5}/{6,7} of step 1. Its A fragment is then x
//   of batch rows g and g + 8 at the same physical k: the 16 bytes of each row at k0 + 8t, halves {0,1} (a0a1 /
//   a2a3) and {2,3} (a4a5 / a6a7) for step 0, {4,5} and {6,7} for step 1 (natural order, no shuffling).
//   A block owns NT 8-row n-tiles, its WARPS warps split K (k-tiles warp, warp + WARPS, ...) and are reduced
//   through shared memory at the end; per warp, one x fragment serves the NT n-tiles and D k-tiles of weight and
//   x loads are in flight per lane. Batch rows come in chunks of 16 (one mma M), CH chunks per pass over the
//   weights, more passes for b > 16 CH (the block's weights then come again, mostly from L2).
//
// Programmatic dependent launch (pdl.cuh): the first weight loads are issued before wait(), x is read after it.
#ifndef EMBER_LINEAR_CUH
#define EMBER_LINEAR_CUH
#include <cstdint>
#include <cuda_fp16.h>

#include "pdl.cuh"
#include "stream.cuh"

namespace ember {
namespace linear {

enum Bias : int { NO_BIAS = 0, HALF_BIAS = 1, FLOAT_BIAS = 2 };

__device__ __forceinline__ float2 to_float2(uint32_t bits) {
  __half2 h;
  memcpy(&h, &bits, sizeof(h));
  return __half22float2(h);
}

// 8 halves of x at p (zero if !valid); aligned: p is 16-byte aligned.
__device__ __forceinline__ uint4 load_x8(const __half* p, bool valid, bool aligned) {
  if (!valid) return make_uint4(0, 0, 0, 0);
  if (aligned) return __ldg(reinterpret_cast<const uint4*>(p));
  uint16_t h[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) h[e] = __ldg(reinterpret_cast<const unsigned short*>(p) + e);
  return make_uint4(h[0] | (uint32_t(h[1]) << 16), h[2] | (uint32_t(h[3]) << 16), h[4] | (uint32_t(h[5]) << 16),
                    h[6] | (uint32_t(h[7]) << 16));
}

template <int BIAS>
__device__ __forceinline__ float add_bias(float v, const void* bias_ptr, int n) {
  if (BIAS == HALF_BIAS) v += __half2float(reinterpret_cast<const __half*>(bias_ptr)[n]);
  if (BIAS == FLOAT_BIAS) v += reinterpret_cast<const float*>(bias_ptr)[n];
  return v;
}

// ---- batch 1 ------------------------------------------------------------------------------------------------------
// One block: WARPS warps, warp w owns rows (blockIdx.x * WARPS + w) * R + 0..R-1.
template <int N, int K, int WARPS, int R, int D, int BIAS>
__device__ __forceinline__ void gemv(const void* x_ptr, const void* w_ptr, const void* bias_ptr, void* y_ptr) {
  static_assert(K % 8 == 0, "K must be whole 16-byte loads");
  static_assert(D >= 1 && D <= 16 && R >= 1 && R <= 32, "launch shape");
  constexpr int C = K / 8;            // 16-byte loads per row
  constexpr int S = (C + 31) / 32;    // warp steps per row
  constexpr int THREADS = WARPS * 32;
  constexpr int XCHUNKS = S * 32;     // x padded to whole steps (zero there)

  __shared__ uint4 xs[XCHUNKS];
  ember::pdl::launch_dependents();

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int row0 = (blockIdx.x * WARPS + warp) * R;
  const uint4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int n = row0 + r < N ? row0 + r : N - 1;  // rows past N load row N-1 and store nothing
    wrow[r] = reinterpret_cast<const uint4*>(w_ptr) + static_cast<size_t>(n) * C;
  }

  uint4 wr[D][R];
  auto load_step = [&](int step, int d) {
    const bool ok = step < S && (C % 32 == 0 || step * 32 + lane < C);
    const int c = index_or_zero(ok, step * 32 + lane);  // in the row where !ok too (stream.cuh)
#pragma unroll
    for (int r = 0; r < R; ++r) wr[d][r] = ok ? load_stream(wrow[r] + c) : make_uint4(0, 0, 0, 0);
  };
  // The first D steps of weights are requested before waiting on the predecessor and staging x.
#pragma unroll
  for (int d = 0; d < D; ++d) load_step(d, d);

  ember::pdl::wait();
  const __half* xh = reinterpret_cast<const __half*>(x_ptr);
  const bool aligned = (reinterpret_cast<uintptr_t>(x_ptr) & 15) == 0;
#pragma unroll
  for (int i0 = 0; i0 < XCHUNKS; i0 += THREADS) {
    const int i = i0 + threadIdx.x;
    if (XCHUNKS % THREADS == 0 || i < XCHUNKS) xs[i] = load_x8(xh + 8 * i, i < C, aligned);
  }
  __syncthreads();

  float acc[R][2];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = 0.0f;

#pragma unroll
  for (int base = 0; base < S; base += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int step = base + d;
      if (step < S) {
        const uint4 xv = xs[step * 32 + lane];
        const float2 x01 = to_float2(xv.x), x23 = to_float2(xv.y), x45 = to_float2(xv.z), x67 = to_float2(xv.w);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float2 w01 = to_float2(wr[d][r].x), w23 = to_float2(wr[d][r].y);
          const float2 w45 = to_float2(wr[d][r].z), w67 = to_float2(wr[d][r].w);
          acc[r][0] = fmaf(w01.x, x01.x, acc[r][0]);
          acc[r][1] = fmaf(w01.y, x01.y, acc[r][1]);
          acc[r][0] = fmaf(w23.x, x23.x, acc[r][0]);
          acc[r][1] = fmaf(w23.y, x23.y, acc[r][1]);
          acc[r][0] = fmaf(w45.x, x45.x, acc[r][0]);
          acc[r][1] = fmaf(w45.y, x45.y, acc[r][1]);
          acc[r][0] = fmaf(w67.x, x67.x, acc[r][0]);
          acc[r][1] = fmaf(w67.y, x67.y, acc[r][1]);
        }
        load_step(step + D, d);  // refill this slot of the ring
      }
    }
  }

  float out = 0.0f;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float v = acc[r][0] + acc[r][1];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    out = lane == r ? v : out;
  }
  const int n = row0 + lane;
  if (lane < R && n < N) reinterpret_cast<__half*>(y_ptr)[n] = __float2half(add_bias<BIAS>(out, bias_ptr, n));
}

// ---- batch 2..64 (any b) ------------------------------------------------------------------------------------------
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int N, int K, int WARPS, int NT, int CH, int D, int BIAS>
__device__ __forceinline__ void mma(int b, const void* x_ptr, const void* w_ptr, const void* bias_ptr, void* y_ptr) {
  static_assert(K % 8 == 0, "K must be whole 16-byte loads");
  static_assert(D >= 1 && D <= 8 && NT >= 1 && CH >= 1 && WARPS >= 1, "launch shape");
  constexpr int TK = 32;                          // k per tile (a quad's four 16-byte loads)
  constexpr int KT = (K + TK - 1) / TK;           // k-tiles
  constexpr int ITERS = (KT + WARPS - 1) / WARPS; // k-tiles per warp (the last ones may be past KT)
  constexpr int ROW_LOADS = K / 8;                // 16-byte loads per weight row
  constexpr int THREADS = WARPS * 32;
  constexpr int ACC = CH * NT * 4;                // fp32 accumulators per lane

  __shared__ float red[WARPS > 1 ? WARPS * ACC * 32 : 1];
  ember::pdl::launch_dependents();

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int row_base = blockIdx.x * NT * 8;
  const uint4* wrow[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    int n = row_base + 8 * j + g;
    n = n < N ? n : N - 1;  // rows past N load row N-1 and store nothing
    wrow[j] = reinterpret_cast<const uint4*>(w_ptr) + static_cast<size_t>(n) * ROW_LOADS;
  }
  const __half* xh = reinterpret_cast<const __half*>(x_ptr);
  const bool aligned = (reinterpret_cast<uintptr_t>(x_ptr) & 15) == 0;
  const int chunks = (b + 15) / 16;

  uint4 wr[D][NT];
  uint4 xr[D][CH][2];
  int c0 = 0;  // first chunk of this pass
  auto tile_load = [&](int it) -> int {  // this lane's 16-byte load of a row in k-tile it, or -1 past K
    const int tile = it * WARPS + warp;
    const int load = tile * 4 + t;
    return it < ITERS && tile < KT && (K % TK == 0 || load < ROW_LOADS) ? load : -1;
  };
  auto load_w = [&](int it, int d) {
    const int load = tile_load(it);
#pragma unroll
    for (int j = 0; j < NT; ++j) wr[d][j] = load >= 0 ? load_stream(wrow[j] + load) : make_uint4(0, 0, 0, 0);
  };
  auto load_x = [&](int it, int d) {
    const int load = tile_load(it);
#pragma unroll
    for (int c = 0; c < CH; ++c) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = (c0 + c) * 16 + g + 8 * h;
        const bool valid = load >= 0 && r < b;
        xr[d][c][h] = load_x8(xh + index_or_zero(valid, r * K + 8 * load), valid, aligned);  // row 0 where !valid
      }
    }
  };

  // The first pass's first D k-tiles of weights are requested before waiting on the predecessor.
#pragma unroll
  for (int d = 0; d < D; ++d) load_w(d, d);
  ember::pdl::wait();

  for (; c0 < chunks; c0 += CH) {
    if (c0 > 0) {
#pragma unroll
      for (int d = 0; d < D; ++d) load_w(d, d);
    }
#pragma unroll
    for (int d = 0; d < D; ++d) load_x(d, d);

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
#pragma unroll
          for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int c = 0; c < CH; ++c) {
              if (c == 0 || c0 + c < chunks) {
                const uint4 lo = xr[d][c][0], hi = xr[d][c][1];
                const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y};
                const uint32_t a1[4] = {lo.z, hi.z, lo.w, hi.w};
                mma16816(acc[c][j], a0, wr[d][j].x, wr[d][j].y);
                mma16816(acc[c][j], a1, wr[d][j].z, wr[d][j].w);
              }
            }
          }
          load_w(it + D, d);  // refill this slot of the ring
          load_x(it + D, d);
        }
      }
    }

    // C fragment: acc[c][j][e] is batch row (c0 + c) * 16 + g + 8 (e / 2), weight row row_base + 8 j + 2 t + e % 2
    if (WARPS == 1) {
#pragma unroll
      for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = (c0 + c) * 16 + g + 8 * (e >> 1);
            const int n = row_base + 8 * j + 2 * t + (e & 1);
            if (r < b && n < N) {
              reinterpret_cast<__half*>(y_ptr)[static_cast<size_t>(r) * N + n] =
                  __float2half(add_bias<BIAS>(acc[c][j][e], bias_ptr, n));
            }
          }
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
          reinterpret_cast<__half*>(y_ptr)[static_cast<size_t>(r) * N + n] =
              __float2half(add_bias<BIAS>(v, bias_ptr, n));
        }
      }
      __syncthreads();  // red is reused by the next pass
    }
  }
}

}  // namespace linear
}  // namespace ember
#endif  // EMBER_LINEAR_CUH
