// ember's mixture-of-experts kernels (ir/ops_moe.py) for the cuda target: routing and the SwiGLU experts, with the
// expert ids read on the device (indirect weight indexing), so a step needs no host work and CUDA graphs keep
// working. Three launches per block (targets/cuda/native_moe.py):
//
// route<E, TOPK, NORM, A>(T, logits, ids, weights): one warp per token; each lane holds E / 32 logits, the warp
//   takes max and sum for softmax (fp32), then TOPK rounds of a warp argmax (ties to the lower expert id, as the cpu
//   kernel), renormalized when NORM. ids / weights: [T * TOPK] (int32 / fp32).
// gate_up<F, H, I, TOPK, WARPS, A>(T, x, ids, gate, up, h): one warp per (slot, row i) over the slot's expert e =
//   ids[slot]: h[slot, i] = silu(gate[e, i] . x[t]) * (up[e, i] . x[t]) in fp32 (t = slot / TOPK).
// down<F, H, I, TOPK, WARPS, A>(T, h, ids, weights, down, y): one warp per (token, row n):
//   y[t, n] = sum_j weights[t, j] * (down[ids[t, j], n] . h[t * TOPK + j]), in fp32, stored as A.
// Only the selected experts' rows are read: at decode (few tokens) this is the GEMV over top_k experts. Prefill runs
// the same kernels (each slot re-reads its expert's rows, mostly from L2); a grouped GEMM (slots sorted by expert,
// per-expert tiles) is the faster path still to come.
//
// Weights are stacked [E, N, K] (expert e's rows start e * N rows in): F = Q4 (uint32 words of 8 codes, s (q - 8)),
// Q4_1 (s q + m), Q8 (int8, s q), F16, BF16; fp16 scales/mins [E, N, K / group]. A lane reads 16 bytes of a row a
// step (32 4-bit codes = a group of 32, or part of a group of 128), so K must be a multiple of 32.
#ifndef EMBER_MOE_CUH
#define EMBER_MOE_CUH
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace ember {
namespace moe {

enum Fmt : int { Q4 = 0, Q4_1 = 1, Q8 = 2, F16 = 3, BF16 = 4 };

__device__ __forceinline__ float to_f(half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ void from_f(float v, half* out) { *out = __float2half(v); }
__device__ __forceinline__ void from_f(float v, __nv_bfloat16* out) { *out = __float2bfloat16(v); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename X>
__device__ __forceinline__ float xv(const X* x, int k) {
  return to_f(x[k]);
}

// dot(row `row` of a stacked [rows, K] weight, x[0:K]) over one warp (every lane gets the sum)
template <int F, int K, typename X>
__device__ __forceinline__ float warp_dot(const void* w, const void* s, const void* m, int64_t row, int group,
                                          const X* x) {
  const int lane = threadIdx.x & 31;
  float acc = 0.0f;
  if (F == Q4 || F == Q4_1) {
    const uint4* wr = reinterpret_cast<const uint4*>(static_cast<const uint32_t*>(w) + row * (K / 8));
    const int groups = (K + group - 1) / group;
    const half* sr = static_cast<const half*>(s) + row * groups;
    const half* mr = static_cast<const half*>(m) + row * groups;
    for (int c = lane; c < K / 32; c += 32) {
      uint4 q = wr[c];
      const int k0 = c * 32;
      const float sc = __half2float(sr[k0 / group]);
      const float mn = F == Q4_1 ? __half2float(mr[k0 / group]) : -8.0f * sc;
      const uint32_t words[4] = {q.x, q.y, q.z, q.w};
      float part = 0.0f, xs = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float v = xv(x, k0 + 8 * j + i);
          part += float((words[j] >> (4 * i)) & 15u) * v;
          xs += v;
        }
      acc += sc * part + mn * xs;
    }
  } else if (F == Q8) {
    const int4* wr = reinterpret_cast<const int4*>(static_cast<const int8_t*>(w) + row * K);
    const int groups = (K + group - 1) / group;
    const half* sr = static_cast<const half*>(s) + row * groups;
    for (int c = lane; c < K / 16; c += 32) {
      int4 q = wr[c];
      const int k0 = c * 16;
      const int8_t* codes = reinterpret_cast<const int8_t*>(&q);
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < 16; ++i) part += float(codes[i]) * xv(x, k0 + i);
      acc += __half2float(sr[k0 / group]) * part;
    }
  } else {
    const int4* wr = reinterpret_cast<const int4*>(static_cast<const uint16_t*>(w) + row * K);
    for (int c = lane; c < K / 8; c += 32) {
      int4 q = wr[c];
      const int k0 = c * 8;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        float wv;
        if (F == F16)
          wv = __half2float(reinterpret_cast<const half*>(&q)[i]);
        else
          wv = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(&q)[i]);
        acc += wv * xv(x, k0 + i);
      }
    }
  }
  return warp_sum(acc);
}

template <int E, int TOPK, int NORM, typename A>
__device__ __forceinline__ void route(int T, const void* logits_ptr, void* ids_ptr, void* weights_ptr) {
  constexpr int PER = (E + 31) / 32;
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (t >= T) return;
  const A* logits = static_cast<const A*>(logits_ptr) + (int64_t)t * E;
  int* ids = static_cast<int*>(ids_ptr) + (int64_t)t * TOPK;
  float* weights = static_cast<float*>(weights_ptr) + (int64_t)t * TOPK;
  float p[PER];
  float peak = __int_as_float(0xff800000);  // -inf
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int e = lane + 32 * i;
    p[i] = e < E ? to_f(logits[e]) : __int_as_float(0xff800000);
    peak = fmaxf(peak, p[i]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) peak = fmaxf(peak, __shfl_xor_sync(0xffffffffu, peak, o));
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    p[i] = lane + 32 * i < E ? __expf(p[i] - peak) : 0.0f;
    total += p[i];
  }
  total = warp_sum(total);
  float chosen = 0.0f, mine = 0.0f;
  for (int j = 0; j < TOPK; ++j) {
    float best = -1.0f;
    int arg = E;
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int e = lane + 32 * i;
      if (e < E && p[i] > best) best = p[i], arg = e;  // ascending e within a lane: ties keep the lower id
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oa = __shfl_xor_sync(0xffffffffu, arg, o);
      if (ob > best || (ob == best && oa < arg)) best = ob, arg = oa;
    }
    const float w = best / total;
    chosen += w;
    if (lane == j) mine = w;
    if (lane == 0) ids[j] = arg;
#pragma unroll
    for (int i = 0; i < PER; ++i)
      if (lane + 32 * i == arg) p[i] = -2.0f;  // taken
  }
  if (lane < TOPK) weights[lane] = NORM ? mine / chosen : mine;
}

template <int F, int H, int I, int TOPK, int WARPS, typename A>
__device__ __forceinline__ void gate_up(int T, const void* x_ptr, const void* ids_ptr, const void* gw, const void* gs,
                                        const void* gm, const void* uw, const void* us, const void* um, int group,
                                        void* h_ptr) {
  constexpr int BLOCKS_PER_SLOT = (I + WARPS - 1) / WARPS;
  const int slot = blockIdx.x / BLOCKS_PER_SLOT;
  const int i = (blockIdx.x % BLOCKS_PER_SLOT) * WARPS + threadIdx.x / 32;
  if (slot >= T * TOPK || i >= I) return;
  const int e = static_cast<const int*>(ids_ptr)[slot];
  const A* x = static_cast<const A*>(x_ptr) + (int64_t)(slot / TOPK) * H;
  const int64_t row = (int64_t)e * I + i;
  const float g = warp_dot<F, H>(gw, gs, gm, row, group, x);
  const float u = warp_dot<F, H>(uw, us, um, row, group, x);
  if ((threadIdx.x & 31) == 0) static_cast<float*>(h_ptr)[(int64_t)slot * I + i] = g / (1.0f + __expf(-g)) * u;
}

template <int F, int H, int I, int TOPK, int WARPS, typename A>
__device__ __forceinline__ void down(int T, const void* h_ptr, const void* ids_ptr, const void* weights_ptr,
                                     const void* dw, const void* ds, const void* dm, int group, void* y_ptr) {
  constexpr int BLOCKS_PER_TOKEN = (H + WARPS - 1) / WARPS;
  const int t = blockIdx.x / BLOCKS_PER_TOKEN;
  const int n = (blockIdx.x % BLOCKS_PER_TOKEN) * WARPS + threadIdx.x / 32;
  if (t >= T || n >= H) return;
  const int* ids = static_cast<const int*>(ids_ptr) + (int64_t)t * TOPK;
  const float* weights = static_cast<const float*>(weights_ptr) + (int64_t)t * TOPK;
  float acc = 0.0f;
  for (int j = 0; j < TOPK; ++j) {
    const float* h = static_cast<const float*>(h_ptr) + ((int64_t)t * TOPK + j) * I;
    acc += weights[j] * warp_dot<F, I>(dw, ds, dm, (int64_t)ids[j] * H + n, group, h);
  }
  if ((threadIdx.x & 31) == 0) from_f(acc, static_cast<A*>(y_ptr) + (int64_t)t * H + n);
}

}  // namespace moe
}  // namespace ember
#endif  // EMBER_MOE_CUH
