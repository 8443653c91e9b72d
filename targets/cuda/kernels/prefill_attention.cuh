// ember's tensor-core attention for a prefill: over the new tokens (TVM's `batch_prefill_ragged_kv`,
// relax/frontend/nn/llm/kv_cache.py: the keys and values of this forward; `ragged`) and over the cached pages of a
// chunked or prefix-cached prefill (TVM's `batch_prefill_paged_kv`; `paged`, see PagedKV). Ragged:
//   q [N, HKV * GROUP, D], k, v [NKV, HKV, D]; sequence b owns rows q_indptr[b] .. q_indptr[b + 1] of q and
//   kv_indptr[b] .. kv_indptr[b + 1] of k / v; out [N, HKV * GROUP, D], lse [N, HKV * GROUP] (float32)
// TVM's conventions (as decode_attention.cuh): scores in the log2 domain, s = q.k * sm_scale * log2(e),
// lse = max + log2(sum 2^(s - max)); causal: row i (of q_len) sees keys j < n_kv - q_len + i + 1; a row that
// sees no key gets out = 0 and lse = -5e4. A sliding window W > 0 (HF's convention: a query sees itself and W - 1
// keys before it) also hides the keys before pos - W + 1, where pos is the row's position among the keys:
// n_kv - q_len + i when causal (the keys end with the chunk's own), n_kv + i otherwise (the cached pages before a
// chunk); the block starts at the first key tile its first row sees. `by_sign`: the window applies only where
// sm_scale < 0 (|sm_scale| is the scale; Gemma's local layers); `softcap` > 0: s = softcap * tanh(q.k * sm_scale /
// softcap) * log2(e) (Gemma 2).
//
// Plan (flash attention 2 on mma.sync m16n8k16, fp32 accumulation): one block of 4 warps per (tile of 64 query
// rows of one sequence, query head); the tiles of all sequences are numbered one after the other (blockIdx.x; the
// grid's tile count is an upper bound and the blocks past the last tile return). Warp w owns rows 16w .. 16w + 15
// of the tile: its Q fragments stay in registers for the whole block. Keys come 64 at a time: the block stages K
// and V of the tile in shared memory (rows padded by 8 halves: the 32-bit K fragment reads and the ldmatrix rows
// of V hit distinct banks), each warp computes its 16 x 64 scores (B = K^T straight from K's rows), masks,
// updates the online softmax of its rows (a quad of lanes shares a row), turns the scores into the A fragments of
// P in registers (the accumulator layout of two n-tiles is the A layout of one k-step) and adds P V, V's B
// fragments loaded transposed by ldmatrix. Head dim 256 (Gemma): keys come 32 at a time (K and V tiles within the
// 48 KB of static shared memory) and the Q fragments are read again from global memory (L1) at every key tile, as
// keeping them beside the 16 x 256 fp32 output in registers would spill.
// PDL (pdl.cuh): wait() before the first read.
#ifndef EMBER_PREFILL_ATTENTION_CUH
#define EMBER_PREFILL_ATTENTION_CUH
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "pdl.cuh"

namespace ember {
namespace prefill {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kTvmEmpty = -5e4f;  // TVM's initial running max: the lse of a row without keys

__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1, const __half*) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1, const __nv_bfloat16*) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack(float lo, float hi, const __half*) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t pack(float lo, float hi, const __nv_bfloat16*) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Where the keys and values of sequence b are. Ragged: k, v [NKV, HKV, D], rows kv_indptr[b] .. kv_indptr[b + 1].
template <int D, int HKV, typename T>
struct RaggedKV {
  const T* __restrict__ k;
  const T* __restrict__ v;
  const int* __restrict__ kv_indptr;
  int kv0 = 0;
  __device__ __forceinline__ int bind(int b) {  // the sequence's key count
    kv0 = kv_indptr[b];
    return kv_indptr[b + 1] - kv0;
  }
  __device__ __forceinline__ size_t k_at(int key, int hk) const {
    return (static_cast<size_t>(kv0 + key) * HKV + hk) * D;
  }
  __device__ __forceinline__ size_t v_at(int key, int hk) const { return k_at(key, hk); }
  __device__ __forceinline__ const T* k_base() const { return k; }
  __device__ __forceinline__ const T* v_base() const { return v; }
};

// Paged (TVM's cache pages [pages, 2 (k, v), HKV, PS, D]): sequence b owns page_values[page_indptr[b] ..
// page_indptr[b + 1]], all full but the last, which holds last_page_len[b] keys (TVM's layout without its sliding window).
template <int D, int HKV, int PS, typename T>
struct PagedKV {
  const T* __restrict__ pages;
  const int* __restrict__ page_indptr;
  const int* __restrict__ page_values;
  const int* __restrict__ last_page_len;
  int p0 = 0;
  __device__ __forceinline__ int bind(int b) {
    p0 = page_indptr[b];
    const int n = page_indptr[b + 1] - p0;
    return n > 0 ? (n - 1) * PS + last_page_len[b] : 0;
  }
  __device__ __forceinline__ size_t k_at(int key, int hk) const {
    const size_t page = static_cast<size_t>(page_values[p0 + key / PS]);
    return ((page * 2 * HKV + hk) * PS + key % PS) * D;
  }
  __device__ __forceinline__ size_t v_at(int key, int hk) const {
    return k_at(key, hk) + static_cast<size_t>(HKV) * PS * D;
  }
  __device__ __forceinline__ const T* k_base() const { return pages; }
  __device__ __forceinline__ const T* v_base() const { return pages; }
};

// One block per (query tile = blockIdx.x, query head = blockIdx.y), 128 threads.
template <int D, int HKV, int GROUP, typename T, bool CAPPED, typename KV>
__device__ __forceinline__ void attend(const T* __restrict__ q, const int* __restrict__ q_indptr, KV kv,
                                       T* __restrict__ out, float* __restrict__ lse, int batch, int causal,
                                       float sm_scale, int window, int by_sign, float softcap) {
  static_assert(D % 16 == 0, "head dim: whole mma k-steps");
  constexpr bool QREG = D <= 128;  // the Q fragments stay in registers
  constexpr int BM = 64, BN = QREG ? 64 : 32, THREADS = 128, LD = D + 8, HQ = HKV * GROUP;
  constexpr int KS = D / 16;   // k-steps of the scores
  constexpr int NS = BN / 8;   // n-tiles of the scores
  constexpr int NO = D / 8;    // n-tiles of the output
  constexpr int CH = D / 8;    // 16-byte chunks of a row
  __shared__ __align__(16) T ks[BN * LD];
  __shared__ __align__(16) T vs[BN * LD];

  ember::pdl::launch_dependents();
  ember::pdl::wait();
  int b = 0, first = 0;  // this block's sequence, and the number of tiles before it
  for (; b < batch; ++b) {
    const int tiles = (q_indptr[b + 1] - q_indptr[b] + BM - 1) / BM;
    if (static_cast<int>(blockIdx.x) < first + tiles) break;
    first += tiles;
  }
  if (b == batch) return;
  const int h = blockIdx.y, hk = h / GROUP;
  const int q0 = q_indptr[b], q_len = q_indptr[b + 1] - q0;
  const int n_kv = kv.bind(b);
  const int m0 = (static_cast<int>(blockIdx.x) - first) * BM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int rows[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};  // this lane's rows (in the sequence)

  if (by_sign) {
    if (sm_scale < 0.f) sm_scale = -sm_scale;
    else window = 0;
  }
  // a0: row g, k 2t; a1: row g + 8; a2: row g, k 2t + 8; a3: row g + 8, k 2t + 8 (of k-step s)
  auto q_fragment = [&](int s, int e) -> uint32_t {
    const int r = rows[e & 1];
    const int d = 16 * s + 2 * t + (e >> 1) * 8;
    return r < q_len ? *reinterpret_cast<const uint32_t*>(q + (static_cast<size_t>(q0 + r) * HQ + h) * D + d) : 0u;
  };
  uint32_t qa[QREG ? KS : 1][4];
  if constexpr (QREG) {
#pragma unroll
    for (int s = 0; s < KS; ++s) {
#pragma unroll
      for (int e = 0; e < 4; ++e) qa[s][e] = q_fragment(s, e);
    }
  }
  const float scale = CAPPED ? sm_scale / softcap : sm_scale * kLog2e;
  const float cap_log2 = softcap * kLog2e;
  float m[2] = {kTvmEmpty, kTvmEmpty}, l[2] = {0.f, 0.f};
  float o[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  const int pos0 = causal ? n_kv - q_len : n_kv;  // the position of row 0 among the keys
  int limit[2], low[2];  // the keys each row sees: low <= key < limit
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    limit[i] = causal ? min(pos0 + rows[i] + 1, n_kv) : n_kv;
    low[i] = window > 0 ? max(pos0 + rows[i] - window + 1, 0) : 0;
  }
  const int last_row = min(m0 + BM, q_len) - 1;
  const int kv_end = causal ? min(pos0 + last_row + 1, n_kv) : n_kv;  // the same in the whole block
  const int kv_begin = window > 0 ? max(pos0 + m0 - window + 1, 0) / BN * BN : 0;

  for (int n0 = kv_begin; n0 < kv_end; n0 += BN) {
    __syncthreads();  // the previous tile is no longer read
    for (int i = threadIdx.x; i < BN * CH; i += THREADS) {
      const int r = i / CH, c = i % CH, key = n0 + r;
      uint4 kk = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (key < n_kv) {
        kk = *reinterpret_cast<const uint4*>(kv.k_base() + kv.k_at(key, hk) + c * 8);
        vv = *reinterpret_cast<const uint4*>(kv.v_base() + kv.v_at(key, hk) + c * 8);
      }
      *reinterpret_cast<uint4*>(ks + r * LD + c * 8) = kk;
      *reinterpret_cast<uint4*>(vs + r * LD + c * 8) = vv;
    }
    __syncthreads();

    float s[NS][4];
#pragma unroll
    for (int n = 0; n < NS; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
    if constexpr (QREG) {
#pragma unroll
      for (int n = 0; n < NS; ++n) {
        const T* krow = ks + (n * 8 + g) * LD + 2 * t;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
          const uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow + 16 * kk);
          const uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + 16 * kk + 8);
          mma(s[n], qa[kk], b0, b1, static_cast<const T*>(nullptr));
        }
      }
    } else {  // one k-step of Q at a time, from global memory
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        uint32_t qk[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) qk[e] = q_fragment(kk, e);
#pragma unroll
        for (int n = 0; n < NS; ++n) {
          const T* krow = ks + (n * 8 + g) * LD + 2 * t + 16 * kk;
          const uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow);
          const uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + 8);
          mma(s[n], qk, b0, b1, static_cast<const T*>(nullptr));
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {  // row i: accumulator entries 2i and 2i + 1
      float mx = m[i];
#pragma unroll
      for (int n = 0; n < NS; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = n0 + n * 8 + 2 * t + e;
          const float raw = s[n][2 * i + e] * scale;
          const float x = key < limit[i] && key >= low[i] ? (CAPPED ? cap_log2 * tanhf(raw) : raw) : -INFINITY;
          s[n][2 * i + e] = x;
          mx = fmaxf(mx, x);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float corr = exp2f(m[i] - mx);
      m[i] = mx;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < NS; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float p = exp2f(s[n][2 * i + e] - mx);
          s[n][2 * i + e] = p;
          sum += p;
        }
      }
      l[i] = l[i] * corr + sum;
#pragma unroll
      for (int n = 0; n < NO; ++n) {
        o[n][2 * i] *= corr;
        o[n][2 * i + 1] *= corr;
      }
    }
#pragma unroll
    for (int j = 0; j < BN / 16; ++j) {  // keys 16j .. 16j + 15 of the tile: n-tiles 2j and 2j + 1 of s
      uint32_t pa[4];
      pa[0] = pack(s[2 * j][0], s[2 * j][1], static_cast<const T*>(nullptr));
      pa[1] = pack(s[2 * j][2], s[2 * j][3], static_cast<const T*>(nullptr));
      pa[2] = pack(s[2 * j + 1][0], s[2 * j + 1][1], static_cast<const T*>(nullptr));
      pa[3] = pack(s[2 * j + 1][2], s[2 * j + 1][3], static_cast<const T*>(nullptr));
      const T* vrow = vs + (16 * j + (lane & 15)) * LD;
#pragma unroll
      for (int n = 0; n < NO; ++n) {
        uint32_t b0, b1;
        const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(vrow + n * 8));
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                     : "=r"(b0), "=r"(b1) : "r"(addr));
        mma(o[n], pa, b0, b1, static_cast<const T*>(nullptr));
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float total = l[i];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const int r = rows[i];
    if (r >= q_len) continue;
    const size_t row = static_cast<size_t>(q0 + r) * HQ + h;
    const float inv = total > 0.f ? 1.f / total : 0.f;
#pragma unroll
    for (int n = 0; n < NO; ++n) {
      *reinterpret_cast<uint32_t*>(out + row * D + n * 8 + 2 * t) =
          pack(o[n][2 * i] * inv, o[n][2 * i + 1] * inv, static_cast<const T*>(nullptr));
    }
    if (t == 0) lse[row] = total > 0.f ? m[i] + log2f(total) : kTvmEmpty;
  }
}

// CAPPED: the scores are soft-capped (softcap > 0 then), a separate instantiation so that the others carry no tanh
template <int D, int HKV, int GROUP, typename T, bool CAPPED = false>
__device__ __forceinline__ void ragged(const T* __restrict__ q, const int* __restrict__ q_indptr,
                                       const T* __restrict__ k, const T* __restrict__ v,
                                       const int* __restrict__ kv_indptr, T* __restrict__ out,
                                       float* __restrict__ lse, int batch, int causal, float sm_scale,
                                       int window, int by_sign, float softcap) {
  attend<D, HKV, GROUP, T, CAPPED>(q, q_indptr, RaggedKV<D, HKV, T>{k, v, kv_indptr}, out, lse, batch, causal, sm_scale,
                           window, by_sign, softcap);
}

// TVM's `batch_prefill_paged_kv` (the cached pages of the sequences of a prefill chunk).
template <int D, int HKV, int GROUP, int PS, typename T, bool CAPPED = false>
__device__ __forceinline__ void paged(const T* __restrict__ q, const int* __restrict__ q_indptr,
                                      const T* __restrict__ pages, const int* __restrict__ page_indptr,
                                      const int* __restrict__ page_values, const int* __restrict__ last_page_len,
                                      T* __restrict__ out, float* __restrict__ lse, int batch, int causal,
                                      float sm_scale, int window, int by_sign, float softcap) {
  attend<D, HKV, GROUP, T, CAPPED>(q, q_indptr, PagedKV<D, HKV, PS, T>{pages, page_indptr, page_values, last_page_len}, out,
                           lse, batch, causal, sm_scale, window, by_sign, softcap);
}

}  // namespace prefill
}  // namespace ember
#endif  // EMBER_PREFILL_ATTENTION_CUH
