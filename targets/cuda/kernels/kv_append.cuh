// ember's versions of the two kernels TVM's paged KV cache runs before attention, for fp16 / bf16:
//   rotary: qkv [S, HQ + 2 HKV, D] -> q [S, HQ, D], k [S, HKV, D] rotated at position_map[s]; v [S, HKV, D] copied
//           (TVM's `llama_rope_with_position_map`, relax/frontend/nn/llm/position_embedding.py)
//   append: k, v [S, HKV, D] -> pages [P, 2 (K, V), HKV, PAGE, D] at slot position_map[s] (page = slot / PAGE,
//           row = slot % PAGE), tokens whose slot is -1 skipped (TVM's `_kv_cache_transpose_append`)
// TVM's runtime calls them as two packed functions with disjoint arguments (the rope gets neither the pages nor
// the slots, the append neither qkv nor the positions), so they cannot be one launch; each is one launch of
// 16-byte loads and stores that follows the PDL contract (pdl.cuh).
//
// Rope arithmetic follows TVM's, in fp32: the exponent of element d is (2 d mod RD) / RD, the angle
// pos * scale / theta^e (llama3: orig = 1 / theta^e, smooth = clamp(alpha orig - beta, 0, 1), angle =
// pos * scale * ((1 - smooth) orig inv_factor + smooth orig)); cos and sin are rounded to the storage dtype before
// out = cos * x[d] + sin * (d < RD / 2 ? -x[d + RD / 2] : x[d - RD / 2]); elements d >= RD are copied.
#ifndef EMBER_KV_APPEND_CUH
#define EMBER_KV_APPEND_CUH
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "pdl.cuh"

namespace ember {
namespace kv {

constexpr int kRopeDefault = 0;
constexpr int kRopeLlama3 = 1;

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void from_float(float x, __half* out) { *out = __float2half_rn(x); }
__device__ __forceinline__ void from_float(float x, __nv_bfloat16* out) { *out = __float2bfloat16_rn(x); }
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  T t;
  from_float(x, &t);
  return to_float(t);
}

// One thread per (token, head, 8-element chunk) of qkv; 1-D grid. D % 8 == 0, RD % 16 == 0 (a chunk never
// straddles the two halves of the rotated part), RD <= D.
template <int D, int RD, int HQ, int HKV, int VARIANT, typename T>
__device__ __forceinline__ void rotary(const T* __restrict__ qkv, const int* __restrict__ position_map,
                                       T* __restrict__ q, T* __restrict__ k, T* __restrict__ v, int seq_len,
                                       int64_t apply_rope, float theta, float scale, float inv_factor, float alpha,
                                       float beta) {
  static_assert(D % 8 == 0 && RD % 16 == 0 && RD <= D, "chunks of 8 that do not straddle the rotated halves");
  constexpr int CHUNKS = D / 8;
  constexpr int HEADS = HQ + 2 * HKV;
  ember::pdl::launch_dependents();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(seq_len) * HEADS * CHUNKS) return;
  const int c = static_cast<int>(i % CHUNKS);
  const int h = static_cast<int>((i / CHUNKS) % HEADS);
  const int s = static_cast<int>(i / (CHUNKS * HEADS));
  T* dst = h < HQ ? q + (static_cast<int64_t>(s) * HQ + h) * D
         : h < HQ + HKV ? k + (static_cast<int64_t>(s) * HKV + (h - HQ)) * D
         : v + (static_cast<int64_t>(s) * HKV + (h - HQ - HKV)) * D;
  const T* src = qkv + (static_cast<int64_t>(s) * HEADS + h) * D;
  ember::pdl::wait();
  const uint4 own = *reinterpret_cast<const uint4*>(src + c * 8);
  if (h >= HQ + HKV || apply_rope <= 0 || c * 8 >= RD) {
    *reinterpret_cast<uint4*>(dst + c * 8) = own;
    return;
  }
  constexpr int HALF = RD / 2;
  const bool low = c * 8 < HALF;
  const uint4 other = *reinterpret_cast<const uint4*>(src + c * 8 + (low ? HALF : -HALF));
  const T* x = reinterpret_cast<const T*>(&own);
  const T* y = reinterpret_cast<const T*>(&other);
  const float pos = static_cast<float>(position_map[s]) * scale;
  uint4 result;
  T* out = reinterpret_cast<T*>(&result);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int d = c * 8 + j;
    const float e = static_cast<float>(d * 2 % RD) / static_cast<float>(RD);
    float angle;
    if (VARIANT == kRopeLlama3) {
      const float orig = 1.0f / powf(theta, e);
      const float smooth = fmaxf(0.0f, fminf(1.0f, alpha * orig - beta));
      angle = pos * ((1.0f - smooth) * orig * inv_factor + smooth * orig);
    } else {
      angle = pos / powf(theta, e);
    }
    const float cs = round_to<T>(cosf(angle)), sn = round_to<T>(sinf(angle));
    const float partner = low ? -to_float(y[j]) : to_float(y[j]);
    from_float(cs * to_float(x[j]) + sn * partner, out + j);
  }
  *reinterpret_cast<uint4*>(dst + c * 8) = result;
}

// One thread per (token, kv head, 8-element chunk) of k (and the same chunk of v); 1-D grid.
template <int D, int HKV, int PAGE, typename T>
__device__ __forceinline__ void append(T* __restrict__ pages, const T* __restrict__ k, const T* __restrict__ v,
                                       const int* __restrict__ position_map, int64_t num_tokens) {
  static_assert(D % 8 == 0, "rows of whole 16-byte chunks");
  constexpr int CHUNKS = D / 8;
  ember::pdl::launch_dependents();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_tokens * HKV * CHUNKS) return;
  const int c = static_cast<int>(i % CHUNKS);
  const int h = static_cast<int>((i / CHUNKS) % HKV);
  const int64_t s = i / (CHUNKS * HKV);
  ember::pdl::wait();
  const int slot = position_map[s];
  if (slot == -1) return;
  const int64_t row = s * HKV * D + h * D + c * 8;
  const int64_t base = ((static_cast<int64_t>(slot / PAGE) * 2 * HKV + h) * PAGE + slot % PAGE) * D + c * 8;
  const uint4 kc = *reinterpret_cast<const uint4*>(k + row);
  const uint4 vc = *reinterpret_cast<const uint4*>(v + row);
  *reinterpret_cast<uint4*>(pages + base) = kc;
  *reinterpret_cast<uint4*>(pages + base + static_cast<int64_t>(HKV) * PAGE * D) = vc;
}

}  // namespace kv
}  // namespace ember
#endif  // EMBER_KV_APPEND_CUH
