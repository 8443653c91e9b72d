// ember's residual add + RMSNorm in one kernel (the add_rms_norm op of ir/ops_fused.py), for fp16 activations:
//   sum = a + b (rounded to fp16, as a separate add would),  out = sum * rsqrt(mean(sum^2) + eps) * w
// with the norm in fp32 on the fp16 sum. One block per row; a thread holds VEC 16-byte chunks of the row in
// registers, so the row is read once and both outputs are written once. At decode this replaces two launches
// (the add cannot join the epilogue of ember's opaque GEMV kernels) by one.
#ifndef EMBER_NORM_CUH
#define EMBER_NORM_CUH
#include <cstdint>
#include <cuda_fp16.h>

#include "pdl.cuh"
#include "stream.cuh"

namespace ember {
namespace norm {

__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// H: row width (a multiple of 8); THREADS: block size; VEC: chunks of 8 halves per thread (THREADS * VEC * 8 >= H).
template <int H, int THREADS, int VEC>
__device__ __forceinline__ void add_rms_norm(const void* a_ptr, const void* b_ptr, const void* w_ptr, void* sum_ptr,
                                             void* out_ptr, float eps) {
  static_assert(H % 8 == 0, "the row must be whole 16-byte chunks");
  static_assert(THREADS % 32 == 0 && THREADS * VEC * 8 >= H, "the block must cover the row");
  constexpr int CHUNKS = H / 8;
  __shared__ float scratch[32];
  const size_t row = blockIdx.x;
  const uint4* a = reinterpret_cast<const uint4*>(a_ptr) + row * CHUNKS;
  const uint4* b = reinterpret_cast<const uint4*>(b_ptr) + row * CHUNKS;
  const uint4* w = reinterpret_cast<const uint4*>(w_ptr);
  uint4* sum = reinterpret_cast<uint4*>(sum_ptr) + row * CHUNKS;
  uint4* out = reinterpret_cast<uint4*>(out_ptr) + row * CHUNKS;

  pdl::launch_dependents();
  pdl::wait();  // a and b come from the kernels before
  __half2 s[VEC][4];
  float sq = 0.0f;
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    const int c = v * THREADS + threadIdx.x;
    if (CHUNKS % THREADS == 0 || c < CHUNKS) {
      const int at = index_or_zero(CHUNKS % THREADS == 0 || c < CHUNKS, c);  // the loads may be hoisted (stream.cuh)
      const uint4 ua = __ldg(a + at), ub = __ldg(b + at);
      const __half2* ha = reinterpret_cast<const __half2*>(&ua);
      const __half2* hb = reinterpret_cast<const __half2*>(&ub);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[v][j] = __hadd2(ha[j], hb[j]);
        const float2 f = __half22float2(s[v][j]);
        sq = fmaf(f.x, f.x, fmaf(f.y, f.y, sq));
      }
      sum[c] = *reinterpret_cast<const uint4*>(s[v]);
    }
  }
  const float scale = rsqrtf(block_sum(sq, scratch) / static_cast<float>(H) + eps);
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    const int c = v * THREADS + threadIdx.x;
    if (CHUNKS % THREADS == 0 || c < CHUNKS) {
      const uint4 uw = __ldg(w + index_or_zero(CHUNKS % THREADS == 0 || c < CHUNKS, c));
      const __half2* hw = reinterpret_cast<const __half2*>(&uw);
      uint4 res;
      __half2* hr = reinterpret_cast<__half2*>(&res);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __half22float2(s[v][j]);
        const float2 g = __half22float2(hw[j]);
        hr[j] = __floats2half2_rn(f.x * scale * g.x, f.y * scale * g.y);
      }
      out[c] = res;
    }
  }
}

}  // namespace norm
}  // namespace ember
#endif  // EMBER_NORM_CUH
