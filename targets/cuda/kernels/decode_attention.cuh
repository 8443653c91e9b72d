// ember's split-K ("flash decoding") attention over the paged KV cache, for decode (one query row per sequence).
// Same inputs and outputs as TVM's `batch_decode_paged_kv` (relax/frontend/nn/llm/_decode_kernels.py):
//   q      [B, HKV * GROUP, D]                      (fp16 or bf16)
//   pages  [max_pages, 2 (K, V), HKV, PAGE, D]
//   indptr [B + 1], values [nnz_pages]: the pages of sequence b are values[indptr[b] .. indptr[b + 1])
//   last   [B]: tokens in the last page of sequence b (length = (pages - 1) * PAGE + last)
//   out    [B, HKV * GROUP, D], lse [B, HKV * GROUP] (float32)
// TVM's conventions: scores in the log2 domain, s = q.k * sm_scale * log2(e); lse = max + log2(sum 2^(s - max));
// an empty sequence gives out = 0 and lse = -5e4 (TVM's initial state m = -5e4, d = 1). A sliding window W > 0
// (HF's convention) keeps the last W tokens of each sequence: the query is the newest of them. With `by_sign` set,
// the window applies only where sm_scale < 0 (Gemma's local layers: targets/attention_window.py) and |sm_scale| is
// the scale. `softcap` > 0: scores become softcap * tanh(q.k * sm_scale / softcap) before the softmax (Gemma 2).
//
// Plan: the context of each (sequence, kv head) is cut into `chunks` contiguous ranges of tokens (chunks is chosen
// by the host from the batch size and the page count, the same for every sequence of a call). `split` runs one
// block per (chunk, kv head, sequence) with the GROUP query heads of that kv head: a row of K or V is D / 8 lanes
// of 16-byte loads, so a warp reads 32 / (D / 8) tokens at once, U of them in flight per lane; each lane keeps
// the online-softmax state (max, sum, its 8 output columns) of every query head in fp32 registers. The block's
// token slots are merged through shared memory; with one chunk the block writes out and lse itself, otherwise its
// unnormalized partial (o, max, sum) goes to a workspace and `merge` (one block per (sequence, query head))
// combines the chunks. With `fused` set, there is no merge launch: each block counts itself done on an atomic
// counter of its (sequence, kv head) and the last one merges every chunk's partial (the counter is a module-global
// array that this last block sets back to zero, so it needs no clearing between calls).
// PDL (pdl.cuh): both kernels wait() before their first read of q, the page table or the workspace.
#ifndef EMBER_DECODE_ATTENTION_CUH
#define EMBER_DECODE_ATTENTION_CUH
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "pdl.cuh"
#include "stream.cuh"

namespace ember {
namespace attn {

constexpr int kMaxCounters = 8192;  // (sequence, kv head) pairs the fused merge can count; more: the merge launch
__device__ unsigned int done_counters[kMaxCounters];  // zero at module load, reset by the last block of each pair

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kEmpty = -1e30f;   // running max before any token (finite: 2^(kEmpty - kEmpty) must be 1, not NaN)
constexpr float kTvmEmptyLse = -5e4f;

__device__ __forceinline__ float2 to_float2(uint32_t bits, const __half*) {
  __half2 h;
  memcpy(&h, &bits, sizeof(h));
  return __half22float2(h);
}
__device__ __forceinline__ float2 to_float2(uint32_t bits, const __nv_bfloat16*) {
  __nv_bfloat162 h;
  memcpy(&h, &bits, sizeof(h));
  return __bfloat1622float2(h);
}
__device__ __forceinline__ void store(__half* p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

// 8 values from one 16-byte load, as floats
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float* f) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = to_float2(w[i], static_cast<const T*>(nullptr));
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

// One block per (chunk = blockIdx.x, kv head = blockIdx.y, sequence = blockIdx.z), 32 * WARPS threads.
// ws_o [B, HKV, GROUP, chunks, D], ws_ml [B, HKV, GROUP, chunks, 2]: written only when chunks > 1.
// CAPPED: the scores are soft-capped (softcap > 0 then), a separate instantiation so that the others carry no tanh
template <int D, int HKV, int GROUP, int PAGE, int WARPS, int U, typename T, bool CAPPED = false>
__device__ __forceinline__ void split(const T* __restrict__ q, const T* __restrict__ pages,
                                      const int* __restrict__ indptr, const int* __restrict__ values,
                                      const int* __restrict__ last, T* __restrict__ out, float* __restrict__ lse,
                                      float* __restrict__ ws_o, float* __restrict__ ws_ml, int chunks,
                                      float sm_scale, int fused, int window, int by_sign, float softcap) {
  static_assert(D % 8 == 0 && 32 % (D / 8) == 0, "a row of K must be a power-of-two number of lanes <= 32");
  constexpr int LANES = D / 8;          // lanes per row
  constexpr int ROWS = 32 / LANES;      // rows (tokens) per warp at once
  constexpr int SLOTS = WARPS * ROWS;   // token slots per block
  constexpr int NT = 32 * WARPS;
  const int c = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int col = lane % LANES;
  const int slot = warp * ROWS + lane / LANES;
  ember::pdl::launch_dependents();
  ember::pdl::wait();

  if (by_sign) {
    if (sm_scale < 0.f) sm_scale = -sm_scale;
    else window = 0;
  }
  const int p0 = indptr[b], p1 = indptr[b + 1];
  const int len = p1 > p0 ? (p1 - p0 - 1) * PAGE + last[b] : 0;
  const int first = window > 0 ? max(len - window, 0) : 0;  // the oldest token the query sees
  const int per = (len - first + chunks - 1) / chunks;
  const int start = min(len, first + c * per), end = min(len, start + per);

  const float scale = CAPPED ? sm_scale : sm_scale * kLog2e;  // capped: tanh takes the plain score
  const float cap_log2 = softcap * kLog2e;
  const float inv_cap = CAPPED ? 1.f / softcap : 0.f;
  float qf[GROUP][8];
#pragma unroll
  for (int h = 0; h < GROUP; ++h) {
    const T* row = q + (static_cast<size_t>(b) * HKV * GROUP + kvh * GROUP + h) * D + col * 8;
    unpack8<T>(*reinterpret_cast<const uint4*>(row), qf[h]);
#pragma unroll
    for (int i = 0; i < 8; ++i) qf[h][i] *= scale;
  }
  float m[GROUP], l[GROUP], acc[GROUP][8];
#pragma unroll
  for (int h = 0; h < GROUP; ++h) {
    m[h] = kEmpty;
    l[h] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[h][i] = 0.f;
  }

  const int* pt = values + p0;
  const size_t page_stride = static_cast<size_t>(2) * HKV * PAGE * D;  // one page: K then V of every kv head
  const size_t v_offset = static_cast<size_t>(HKV) * PAGE * D;
  const T* head = pages + static_cast<size_t>(kvh) * PAGE * D + col * 8;

  // the same trip count in every thread of the block (the row reductions shuffle within the warp)
  for (int t0 = start; t0 < end; t0 += SLOTS * U) {
    uint4 kr[U], vr[U];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = t0 + u * SLOTS + slot;
      ok[u] = t < end;
      if (ok[u]) {
        const T* row = head + static_cast<size_t>(pt[t / PAGE]) * page_stride + static_cast<size_t>(t % PAGE) * D;
        kr[u] = load_stream(row);
        vr[u] = load_stream(row + v_offset);
      } else {
        kr[u] = make_uint4(0, 0, 0, 0);
        vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
    float s[U][GROUP];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float k[8];
      unpack8<T>(kr[u], k);
#pragma unroll
      for (int h = 0; h < GROUP; ++h) {
        float x = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) x = fmaf(qf[h][i], k[i], x);
#pragma unroll
        for (int o = LANES / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
        s[u][h] = CAPPED ? cap_log2 * tanhf(x * inv_cap) : x;
      }
    }
#pragma unroll
    for (int h = 0; h < GROUP; ++h) {
      float mx = m[h];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = ok[u] ? fmaxf(mx, s[u][h]) : mx;
      const float corr = exp2f(m[h] - mx);
      m[h] = mx;
      l[h] *= corr;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[h][i] *= corr;
#pragma unroll
      for (int u = 0; u < U; ++u) s[u][h] = ok[u] ? exp2f(s[u][h] - mx) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float v[8];
      unpack8<T>(vr[u], v);
#pragma unroll
      for (int h = 0; h < GROUP; ++h) {
        l[h] += s[u][h];
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[h][i] = fmaf(s[u][h], v[i], acc[h][i]);
      }
    }
  }

  // merge the block's token slots
  __shared__ float sh_o[SLOTS][GROUP][D];
  __shared__ float sh_m[SLOTS][GROUP], sh_l[SLOTS][GROUP];
  __shared__ float sh_w[SLOTS][GROUP];  // 2^(m_slot - M)
  __shared__ float sh_max[GROUP], sh_sum[GROUP];
#pragma unroll
  for (int h = 0; h < GROUP; ++h) {
#pragma unroll
    for (int i = 0; i < 8; ++i) sh_o[slot][h][col * 8 + i] = acc[h][i];
    if (col == 0) {
      sh_m[slot][h] = m[h];
      sh_l[slot][h] = l[h];
    }
  }
  __syncthreads();
  if (threadIdx.x < GROUP) {
    const int h = threadIdx.x;
    float mx = kEmpty;
    for (int j = 0; j < SLOTS; ++j) mx = fmaxf(mx, sh_m[j][h]);
    float sum = 0.f;
    for (int j = 0; j < SLOTS; ++j) {
      const float w = exp2f(sh_m[j][h] - mx);
      sh_w[j][h] = w;
      sum += w * sh_l[j][h];
    }
    sh_max[h] = mx;
    sh_sum[h] = sum;
  }
  __syncthreads();
  const int qh0 = kvh * GROUP;
  for (int e = threadIdx.x; e < GROUP * D; e += NT) {
    const int h = e / D, i = e % D;
    float o = 0.f;
#pragma unroll
    for (int j = 0; j < SLOTS; ++j) o = fmaf(sh_w[j][h], sh_o[j][h][i], o);
    const float sum = sh_sum[h];
    if (chunks == 1) {
      const size_t row = static_cast<size_t>(b) * HKV * GROUP + qh0 + h;
      store(out + row * D + i, sum > 0.f ? o / sum : 0.f);
      if (i == 0) lse[row] = sum > 0.f ? sh_max[h] + log2f(sum) : kTvmEmptyLse;
    } else {
      const size_t part = (static_cast<size_t>(b) * HKV * GROUP + qh0 + h) * chunks + c;
      ws_o[part * D + i] = o;
      if (i == 0) {
        ws_ml[2 * part] = sh_max[h];
        ws_ml[2 * part + 1] = sum;
      }
    }
  }
  if (chunks == 1 || !fused) return;

  // fused merge: the last block of this (sequence, kv head) to finish combines the chunks
  __shared__ bool sh_last;
  __threadfence();  // this block's partials are visible device-wide before it counts itself done
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned int* counter = done_counters + b * HKV + kvh;
    sh_last = atomicAdd(counter, 1u) == static_cast<unsigned int>(chunks - 1);
    if (sh_last) *counter = 0u;  // every block of this pair has counted: ready for the next call
  }
  __syncthreads();
  if (!sh_last) return;
  __threadfence();
  // per head: the max over chunks, the chunk weights 2^(m_c - M) (in sh_o, free now: chunks <= SLOTS * D) and
  // the weighted sum
  float* weights = &sh_o[0][0][0];
  constexpr int CAP = SLOTS * D;
  static_assert(CAP * GROUP <= SLOTS * GROUP * D, "weights fit in sh_o");
  const size_t pair0 = (static_cast<size_t>(b) * HKV * GROUP + qh0) * chunks;
  for (int h = warp; h < GROUP; h += WARPS) {
    const float* ml = ws_ml + 2 * (pair0 + static_cast<size_t>(h) * chunks);
    float mx = kEmpty;
    for (int j = lane; j < chunks; j += 32) mx = fmaxf(mx, __ldcg(ml + 2 * j));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.f;
    for (int j = lane; j < chunks; j += 32) {
      const float w = exp2f(__ldcg(ml + 2 * j) - mx);
      weights[h * CAP + j] = w;
      sum = fmaf(w, __ldcg(ml + 2 * j + 1), sum);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) {
      sh_max[h] = mx;
      sh_sum[h] = sum;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < GROUP * D; e += NT) {
    const int h = e / D, i = e % D;
    const float* po = ws_o + (pair0 + static_cast<size_t>(h) * chunks) * D + i;
    float o = 0.f;
    for (int j = 0; j < chunks; ++j) o = fmaf(weights[h * CAP + j], __ldcg(po + static_cast<size_t>(j) * D), o);
    const float sum = sh_sum[h];
    const size_t row = static_cast<size_t>(b) * HKV * GROUP + qh0 + h;
    store(out + row * D + i, sum > 0.f ? o / sum : 0.f);
    if (i == 0) lse[row] = sum > 0.f ? sh_max[h] + log2f(sum) : kTvmEmptyLse;
  }
}

// One block per (sequence, query head) = blockIdx.x, D threads: combines the chunks' partials.
template <int D, typename T>
__device__ __forceinline__ void merge(const float* __restrict__ ws_o, const float* __restrict__ ws_ml,
                                      T* __restrict__ out, float* __restrict__ lse, int chunks) {
  ember::pdl::launch_dependents();
  ember::pdl::wait();
  const size_t bh = blockIdx.x;
  const int i = threadIdx.x;
  const float* ml = ws_ml + 2 * bh * chunks;
  float mx = kEmpty;
  for (int c = 0; c < chunks; ++c) mx = fmaxf(mx, ml[2 * c]);
  float sum = 0.f, o = 0.f;
  const float* po = ws_o + bh * chunks * D + i;
  for (int c = 0; c < chunks; ++c) {
    const float w = exp2f(ml[2 * c] - mx);
    sum = fmaf(w, ml[2 * c + 1], sum);
    o = fmaf(w, po[static_cast<size_t>(c) * D], o);
  }
  store(out + bh * D + i, sum > 0.f ? o / sum : 0.f);
  if (i == 0) lse[bh] = sum > 0.f ? mx + log2f(sum) : kTvmEmptyLse;
}

}  // namespace attn
}  // namespace ember
#endif  // EMBER_DECODE_ATTENTION_CUH
