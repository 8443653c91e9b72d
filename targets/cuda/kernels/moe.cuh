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
// Only the selected experts' rows are read: at decode batch 1 this is the GEMV over top_k experts.
//
// Batched decode and prefill (more than one token) take the grouped GEMM instead, after route:
// sort<E, TOPK, BM>(T, ids, rows, pos, tiles, count): one block of 1024 threads counts the slots of each expert,
//   gives every slot its place in expert order (pos[slot] = place, rows[place] = slot; the order inside an expert
//   is the atomics' and does not matter: every output row depends on its own input row only) and lists the
//   BM-row tiles of every expert (tiles[3 i ..] = expert, first place, end place; count[0] = number of tiles).
// gemm<F, N, K, GATED, TOPK, BM, BN, WM, WN, STAGES>(tiles, count, rows, x, weights..., y): mma.sync m16n8k16
//   tiles (fp16 in, fp32 accumulate) of y[place, N] = A[place, K] . W[e]^T over each tile's expert e, the packed
//   weights dequantized in registers as prefill_qgemm.cuh does (same fragment plan). GATED (the gate_up step): A is
//   x's row of the slot's token, gathered through rows, and a block holds the gate and up tiles of the same rows,
//   so its epilogue writes h = silu(gate) * up (fp16, in expert order); else (down) A is h in expert order.
// combine<H, TOPK, A>(T, pos, weights, ys, y): y[t, n] = sum_j weights[t, j] ys[pos[t TOPK + j], n] (fp32).
// A grid of tiles_bound(slots) x N / BN blocks is launched without the host knowing the counts; blocks past
// count[0] return at once.
//
// Weights are stacked [E, N, K] (expert e's rows start e * N rows in): F = Q4 (uint32 words of 8 codes, s (q - 8)),
// Q4_1 (s q + m), Q8 (int8, s q), F16, BF16; fp16 scales/mins [E, N, K / group]. A lane reads 16 bytes of a row a
// step (32 4-bit codes = a group of 32, or part of a group of 128), so K must be a multiple of 32.
#ifndef EMBER_MOE_CUH
#define EMBER_MOE_CUH
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemv.cuh"
#include "kgemv.cuh"
#include "lowbatch.cuh"

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
    if (!(p[i] >= 0.0f)) p[i] = 0.0f;  // NaN logits (an overflowed model) route like -inf: ids stay in range
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

// gate_up / down: the per-weight kernels below (gate_up_any / down_any) with one 4-/8-bit or half format
template <int F, int H, int I, int TOPK, int WARPS, typename A>
__device__ __forceinline__ void gate_up(int T, const void* x_ptr, const void* ids_ptr, const void* gw, const void* gs,
                                        const void* gm, const void* uw, const void* us, const void* um, int group,
                                        void* h_ptr);
template <int F, int H, int I, int TOPK, int WARPS, typename A>
__device__ __forceinline__ void down(int T, const void* h_ptr, const void* ids_ptr, const void* weights_ptr,
                                     const void* dw, const void* ds, const void* dm, int group, void* y_ptr);

template <int E, int TOPK, int BM>
__device__ __forceinline__ void sort(int T, const void* ids_ptr, void* rows_ptr, void* pos_ptr, void* tiles_ptr,
                                     void* count_ptr) {
  static_assert(E <= 1024, "one thread per expert");
  __shared__ int count[E], first[E], cursor[E];
  __shared__ int warp_rows[32], warp_tiles[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int slots = T * TOPK;
  const int* ids = static_cast<const int*>(ids_ptr);
  if (tid < E) count[tid] = 0, cursor[tid] = 0;
  __syncthreads();
  for (int s = tid; s < slots; s += blockDim.x) atomicAdd(&count[ids[s]], 1);
  __syncthreads();
  const int mine = tid < E ? count[tid] : 0;
  const int my_tiles = (mine + BM - 1) / BM;
  int rows_incl = mine, tiles_incl = my_tiles;  // inclusive scans over the experts, warp by warp
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int r = __shfl_up_sync(0xffffffffu, rows_incl, o), t = __shfl_up_sync(0xffffffffu, tiles_incl, o);
    if (lane >= o) rows_incl += r, tiles_incl += t;
  }
  if (lane == 31) warp_rows[warp] = rows_incl, warp_tiles[warp] = tiles_incl;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    int r = lane < warps ? warp_rows[lane] : 0, t = lane < warps ? warp_tiles[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int ro = __shfl_up_sync(0xffffffffu, r, o), to = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) r += ro, t += to;
    }
    if (lane < warps) warp_rows[lane] = r, warp_tiles[lane] = t;
  }
  __syncthreads();
  const int row0 = rows_incl - mine + (warp > 0 ? warp_rows[warp - 1] : 0);
  const int tile0 = tiles_incl - my_tiles + (warp > 0 ? warp_tiles[warp - 1] : 0);
  int* tiles = static_cast<int*>(tiles_ptr);
  if (tid < E) {
    first[tid] = row0;
    for (int i = 0; i < my_tiles; ++i) {
      tiles[3 * (tile0 + i)] = tid;
      tiles[3 * (tile0 + i) + 1] = row0 + i * BM;
      tiles[3 * (tile0 + i) + 2] = row0 + mine;
    }
  }
  if (tid == blockDim.x - 1) static_cast<int*>(count_ptr)[0] = tile0 + my_tiles;
  __syncthreads();
  int* rows = static_cast<int*>(rows_ptr);
  int* pos = static_cast<int*>(pos_ptr);
  for (int s = tid; s < slots; s += blockDim.x) {
    const int e = ids[s];
    const int p = first[e] + atomicAdd(&cursor[e], 1);
    pos[s] = p;
    rows[p] = s;
  }
}

__device__ __forceinline__ void copy16(void* smem, const void* global, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(global), "r"(valid ? 16 : 0)
               : "memory");
}

// B fragments of mma steps 0 and 1 (b[0..3]) of weight row r of a stage, k = 8t .. 8t + 7 of the k-tile
template <int F>
__device__ __forceinline__ void b_fragments(const uint4* stage, int r, int t, __half s, __half m, uint32_t* b) {
  if constexpr (F == Q8) {
    const uint2 words = reinterpret_cast<const uint2*>(stage)[r * 4 + t];
    lowbatch::dequant_q8(words.x, __half2half2(s), b);
    lowbatch::dequant_q8(words.y, __half2half2(s), b + 2);
  } else if constexpr (F == F16) {
    const uint4 v = stage[r * 4 + t];
    b[0] = v.x, b[1] = v.y, b[2] = v.z, b[3] = v.w;
  } else {
    const uint32_t word = reinterpret_cast<const uint32_t*>(stage)[r * 4 + t];
    constexpr int S = F == Q4_1 ? lowbatch::Q4_MIN : lowbatch::Q4;
    lowbatch::dequant_q4<S>(word, __half2half2(s), __half2half2(F == Q4_1 ? m : s), b);
  }
}

template <int F, int N, int K, int GATED, int TOPK, int BM, int BN, int WM, int WN, int STAGES>
__device__ __forceinline__ void gemm(int bound, const void* tiles_ptr, const void* count_ptr, const void* rows_ptr,
                                     const void* x_ptr, const void* w0, const void* s0, const void* m0,
                                     const void* w1, const void* s1, const void* m1, int group, void* y_ptr) {
  static_assert(F == Q4 || F == Q4_1 || F == Q8 || F == F16, "fp16 mma operands");
  constexpr int TK = 32;                                    // k per tile
  constexpr int WB = F == Q8 ? 32 : F == F16 ? 64 : 16;     // bytes of one weight row per k-tile
  constexpr int SETS = GATED ? 2 : 1;                       // weight sets (gate and up)
  constexpr int THREADS = WM * WN * 32;
  constexpr int TM = BM / WM / 16;
  constexpr int TN = BN / WN / 8;
  constexpr int KT = K / TK;
  constexpr int X_CHUNKS = BM * 4;                          // 16-byte copies of x per stage
  constexpr int W_CHUNKS = BN * WB / 16;                    // per weight set
  constexpr int X_PER = (X_CHUNKS + THREADS - 1) / THREADS;
  static_assert(K % TK == 0 && N % BN == 0 && BM % (16 * WM) == 0 && BN % (8 * WN) == 0 && STAGES >= 2, "tile");
  __shared__ __align__(16) uint4 xs[STAGES][X_CHUNKS];
  __shared__ __align__(16) uint4 ws[STAGES][SETS][W_CHUNKS];

  const int tile = blockIdx.x % bound, tile_n = blockIdx.x / bound;
  if (tile >= static_cast<const int*>(count_ptr)[0]) return;
  const int* info = static_cast<const int*>(tiles_ptr) + 3 * tile;
  const int e = info[0], place0 = info[1], place_end = info[2];
  const int col0 = tile_n * BN;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int wm = warp / WN, wn = warp % WN;

  const __half* x = static_cast<const __half*>(x_ptr);
  const int* rows = static_cast<const int*>(rows_ptr);
  const __half* xrow[X_PER];  // the source row of each x chunk this thread copies (null past the tile's end)
#pragma unroll
  for (int c = 0; c < X_PER; ++c) {
    const int i = threadIdx.x + c * THREADS;
    const int place = place0 + (i >> 2);
    const bool valid = i < X_CHUNKS && place < place_end;
    const int64_t src = valid ? (GATED ? rows[place] / TOPK : place) : 0;
    xrow[c] = valid ? x + src * K + (i & 3) * 8 : nullptr;
  }
  const uint8_t* wbase[SETS];
  const __half* sbase[SETS];
  const __half* mbase[SETS];
  const int groups = (K + group - 1) / group;
#pragma unroll
  for (int v = 0; v < SETS; ++v) {
    const int64_t row = static_cast<int64_t>(e) * N + col0;
    wbase[v] = static_cast<const uint8_t*>(v ? w1 : w0) + row * (K / TK) * WB;
    sbase[v] = static_cast<const __half*>(v ? s1 : s0) + row * groups;
    mbase[v] = static_cast<const __half*>(v ? m1 : m0) + row * groups;
  }
  auto load_stage = [&](int stage, int kt) {
#pragma unroll
    for (int c = 0; c < X_PER; ++c) {
      const int i = threadIdx.x + c * THREADS;
      if (X_CHUNKS % THREADS != 0 && i >= X_CHUNKS) break;
      copy16(&xs[stage][i], xrow[c] ? xrow[c] + kt * TK : x, xrow[c] != nullptr);
    }
#pragma unroll
    for (int v = 0; v < SETS; ++v)
#pragma unroll
      for (int c = 0; c < (W_CHUNKS + THREADS - 1) / THREADS; ++c) {
        const int i = threadIdx.x + c * THREADS;
        if (W_CHUNKS % THREADS != 0 && i >= W_CHUNKS) break;
        const int r = i / (WB / 16);
        copy16(&ws[stage][v][i], wbase[v] + static_cast<int64_t>(r) * (K / TK) * WB + kt * WB + (i % (WB / 16)) * 16,
               true);
      }
  };
  const int lane_row = wn * (BN / WN) + g;  // this lane's weight rows in the tile: lane_row + 8 j
  auto load_scales = [&](int kt, __half (*s)[TN], __half (*m)[TN]) {
    if constexpr (F != F16) {
      const int at = kt * TK / group;
#pragma unroll
      for (int v = 0; v < SETS; ++v)
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          s[v][j] = sbase[v][(lane_row + 8 * j) * groups + at];
          if (F == Q4_1) m[v][j] = mbase[v][(lane_row + 8 * j) * groups + at];
        }
    }
  };

  float acc[SETS][TM][TN][4];
#pragma unroll
  for (int v = 0; v < SETS; ++v)
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[v][i][j][q] = 0.0f;

#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < KT) load_stage(st, st);
    lowbatch::copy_commit();
  }
  __half sc[SETS][TN], mn[SETS][TN];
  load_scales(0, sc, mn);

#pragma unroll 1
  for (int kt = 0; kt < KT; ++kt) {
    lowbatch::copy_wait<STAGES - 2>();
    __syncthreads();  // stage kt is in; every warp is done with stage kt - 1, refilled now
    const int next = kt + STAGES - 1;
    if (next < KT) load_stage(next % STAGES, next);
    lowbatch::copy_commit();
    __half sc_next[SETS][TN], mn_next[SETS][TN];
    if (kt + 1 < KT) load_scales(kt + 1, sc_next, mn_next);

    const int stage = kt % STAGES;
    uint32_t a[TM][2][4];  // x rows g, g + 8 of each m16 tile: 8 halves at k = 8t (pair order for 4-bit)
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint4 u = xs[stage][(wm * (BM / WM) + 16 * i + g + 8 * h) * 4 + t];
        if (F == Q4 || F == Q4_1) u = lowbatch::pair_order(u);
        a[i][h][0] = u.x, a[i][h][1] = u.y, a[i][h][2] = u.z, a[i][h][3] = u.w;
      }
#pragma unroll
    for (int v = 0; v < SETS; ++v)
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        uint32_t b[4];
        b_fragments<F>(ws[stage][v], lane_row + 8 * j, t, F == F16 ? __half() : sc[v][j],
                       F == Q4_1 ? mn[v][j] : __half(), b);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int st = 0; st < 2; ++st) {
            const uint32_t frag[4] = {a[i][0][2 * st], a[i][1][2 * st], a[i][0][2 * st + 1], a[i][1][2 * st + 1]};
            lowbatch::mma(acc[v][i][j], frag, b[2 * st], b[2 * st + 1]);
          }
      }
    if constexpr (F != F16) {
#pragma unroll
      for (int v = 0; v < SETS; ++v)
#pragma unroll
        for (int j = 0; j < TN; ++j) sc[v][j] = sc_next[v][j], mn[v][j] = mn_next[v][j];
    }
  }
  lowbatch::copy_wait<0>();

  // acc[v][i][j][q]: place place0 + wm (BM / WM) + 16 i + g + 8 (q / 2), column col0 + wn (BN / WN) + 8 j + 2 t
  // + q % 2
  __half* y = static_cast<__half*>(y_ptr);
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int place = place0 + wm * (BM / WM) + 16 * i + g + 8 * h;
      if (place >= place_end) continue;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int n = col0 + wn * (BN / WN) + 8 * j + 2 * t;
        float v0 = acc[0][i][j][2 * h], v1 = acc[0][i][j][2 * h + 1];
        if constexpr (GATED) {
          v0 = v0 / (1.0f + __expf(-v0)) * acc[SETS - 1][i][j][2 * h];
          v1 = v1 / (1.0f + __expf(-v1)) * acc[SETS - 1][i][j][2 * h + 1];
        }
        *reinterpret_cast<__half2*>(y + static_cast<int64_t>(place) * N + n) = __floats2half2_rn(v0, v1);
      }
    }
}

// Decode GEMVs over the selected experts with gemv.cuh's kernel (its tuned lane loads, steps in flight, staged
// x): one grid runs a GEMV block of every slot's expert, the weight pointers offset to expert ids[slot].
// gemv_gate_up: gu[slot] = [gate_e x_t | up_e x_t] (fp16, 2I); gemv_down: ys[slot] = down_e silu(g) * u (gemv's
// SWIGLU input staging reads gu[slot]); then combine<..., 0> adds the slots of each token.
template <int F, int K>
__device__ __forceinline__ int64_t gemv_row_bytes() {
  return F == Q8 ? K : K / 2;
}

template <int F, int H, int I, int G, int TOPK, int WARPS, int R, int D, int PER, int ASYNC>
__device__ __forceinline__ void gemv_gate_up(int T, const void* x_ptr, const void* ids_ptr, const void* gw,
                                             const void* gs, const void* gm, const void* uw, const void* us,
                                             const void* um, void* gu_ptr) {
  static_assert(F == Q4 || F == Q4_1 || F == Q8, "gemv.cuh's schemes");
  constexpr int PER_WEIGHT = (I + WARPS * R - 1) / (WARPS * R);  // gemv blocks of one expert's gate (or up)
  constexpr int GS = (H + G - 1) / G;
  const int slot = blockIdx.x / (2 * PER_WEIGHT), rest = blockIdx.x % (2 * PER_WEIGHT);
  if (slot >= T * TOPK) return;
  const bool up = rest >= PER_WEIGHT;
  const int64_t e = static_cast<const int*>(ids_ptr)[slot];
  const int64_t rows = e * I;
  const uint8_t* w = static_cast<const uint8_t*>(up ? uw : gw) + rows * gemv_row_bytes<F, H>();
  const __half* s = static_cast<const __half*>(up ? us : gs) + rows * GS;
  const __half* m = static_cast<const __half*>(up ? um : gm) + rows * GS;
  const __half* x = static_cast<const __half*>(x_ptr) + static_cast<int64_t>(slot / TOPK) * H;
  __half* y = static_cast<__half*>(gu_ptr) + static_cast<int64_t>(slot) * 2 * I + (up ? I : 0);
  gemv::run_block<F, I, H, G, WARPS, R, D, PER, ASYNC, gemv::NO_BIAS>(rest % PER_WEIGHT, x, w, s, m, x, y);
}

template <int F, int H, int I, int G, int TOPK, int WARPS, int R, int D, int PER, int ASYNC>
__device__ __forceinline__ void gemv_down(int T, const void* gu_ptr, const void* ids_ptr, const void* dw,
                                          const void* ds, const void* dm, void* ys_ptr) {
  static_assert(F == Q4 || F == Q4_1 || F == Q8, "gemv.cuh's schemes");
  constexpr int PER_SLOT = (H + WARPS * R - 1) / (WARPS * R);
  constexpr int GS = (I + G - 1) / G;
  const int slot = blockIdx.x / PER_SLOT;
  if (slot >= T * TOPK) return;
  const int64_t rows = static_cast<int64_t>(static_cast<const int*>(ids_ptr)[slot]) * H;
  const uint8_t* w = static_cast<const uint8_t*>(dw) + rows * gemv_row_bytes<F, I>();
  const __half* s = static_cast<const __half*>(ds) + rows * GS;
  const __half* m = static_cast<const __half*>(dm) + rows * GS;
  const __half* gu = static_cast<const __half*>(gu_ptr) + static_cast<int64_t>(slot) * 2 * I;
  __half* y = static_cast<__half*>(ys_ptr) + static_cast<int64_t>(slot) * H;
  gemv::run_block<F, H, I, G, WARPS, R, D, PER, ASYNC, gemv::NO_BIAS, gemv::SWIGLU>(blockIdx.x % PER_SLOT, gu, w,
                                                                                    s, m, gu, y);
}

// SORTED: slot t TOPK + j's row of ys is pos[t TOPK + j] (the grouped GEMM's expert order); else it is the slot
template <int H, int TOPK, typename A, int SORTED = 1>
__device__ __forceinline__ void combine(int T, const void* pos_ptr, const void* weights_ptr, const void* ys_ptr,
                                        void* y_ptr) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // one (token, column pair)
  if (i >= static_cast<int64_t>(T) * (H / 2)) return;
  const int t = static_cast<int>(i / (H / 2)), n = static_cast<int>(i % (H / 2)) * 2;
  int rows[TOPK];
#pragma unroll
  for (int j = 0; j < TOPK; ++j)
    rows[j] = SORTED ? static_cast<const int*>(pos_ptr)[static_cast<int64_t>(t) * TOPK + j] : t * TOPK + j;
  const int* pos = rows;
  const float* weights = static_cast<const float*>(weights_ptr) + static_cast<int64_t>(t) * TOPK;
  const __half* ys = static_cast<const __half*>(ys_ptr);
  float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
  for (int j = 0; j < TOPK; ++j) {
    const float2 v = __half22float2(*reinterpret_cast<const __half2*>(ys + static_cast<int64_t>(pos[j]) * H + n));
    v0 += weights[j] * v.x;
    v1 += weights[j] * v.y;
  }
  A* y = static_cast<A*>(y_ptr) + static_cast<int64_t>(t) * H + n;
  from_f(v0, y);
  from_f(v1, y + 1);
}

// ---- the GGUF formats kept native (Q5_0, Q5_1, Q2_K .. Q6_K) and a format per weight --------------------------
// gate_up_any<FG, FU, H, I, TOPK, WARPS, A> / down_any<FD, ...>: the per-slot plan (gate_up / down above) with each
// weight in its own format (a Q4_K_M file's Q4_K gate/up and Q6_K down) and every format: a weight is its six
// pointers in ir/ops_quant.py's piece order (qweight, qhigh, scales, mins, super, super_mins; absent ones any
// pointer), then its group size.
// Layouts as kernels/kgemv.cuh and the cpu's native/linear.c read them; a lane takes one 32-block of a row a step,
// dequantized exactly as the cpu kernel does (code times the fp32 group scale plus the group's min term), fp32
// accumulation.
enum WideFmt : int { Q5_0 = 5, Q5_1 = 6, Q4_K = 7, Q5_K = 8, Q6_K = 9, Q2_K = 10, Q3_K = 11 };

struct Weight {
  const void* piece[6];
};

__device__ __forceinline__ float half_bits(const void* p, int64_t i) {
  return __half2float(__ushort_as_half(__ldg(static_cast<const unsigned short*>(p) + i)));
}

// The 32 values of 32-block b of row `row` of a stacked weight in a WideFmt (K columns), in fp32, as the cpu kernel
// dequantizes them: code times the fp32 group scale plus the group's min term.
template <int F, int K>
__device__ __forceinline__ void decode32(const Weight& wt, int64_t row, int b, float* v) {
  static_assert(F >= Q5_0 && F <= Q3_K, "moe.cuh's wide formats");
  constexpr bool crumbs = F == Q2_K || F == Q3_K;      // 2-bit qweight fields
  constexpr bool six = F == Q6_K;
  constexpr bool has_hi = !(F == Q4_K || F == Q2_K);
  constexpr int GROUPS = (six || crumbs) ? K / 16 : K / 32;  // scale entries per row
  static_assert(K % 32 == 0 && (F <= Q5_1 || K % 256 == 0), "K-quants take rows of whole super blocks");
  const uint32_t* w = static_cast<const uint32_t*>(wt.piece[0]) + row * (crumbs ? K / 16 : K / 8);
  const uint32_t* hi = static_cast<const uint32_t*>(wt.piece[1]) + row * (six ? K / 16 : K / 32);
  uint32_t words[4];
  uint32_t high[2] = {0u, 0u};
#pragma unroll
  for (int j = 0; j < (crumbs ? 2 : 4); ++j) words[j] = __ldg(w + (crumbs ? 2 : 4) * b + j);
  if (has_hi) {
    high[0] = __ldg(hi + (six ? 2 * b : b));
    if (six) high[1] = __ldg(hi + 2 * b + 1);
  }
  float s0, s1, c0, c1, offset = 0.0f;
  if (F == Q5_0 || F == Q5_1) {
    s0 = s1 = half_bits(wt.piece[2], row * GROUPS + b);
    c0 = c1 = F == Q5_1 ? half_bits(wt.piece[3], row * GROUPS + b) : 0.0f;
    offset = F == Q5_0 ? 16.0f : 0.0f;
  } else {
    const int64_t super = row * (K / 256) + b / 8;
    const float d = half_bits(wt.piece[4], super);
    if (six || F == Q3_K) {  // int8 scale codes per 16: W = d c (q - 32 | q - 4)
      const int8_t* sc = static_cast<const int8_t*>(wt.piece[2]) + row * GROUPS;
      s0 = d * float(__ldg(sc + 2 * b));
      s1 = d * float(__ldg(sc + 2 * b + 1));
      c0 = c1 = 0.0f;
      offset = six ? 32.0f : 4.0f;
    } else if (F == Q2_K) {  // a byte per 16: scale code | min code << 4
      const uint8_t* sc = static_cast<const uint8_t*>(wt.piece[2]) + row * GROUPS;
      const float dm = half_bits(wt.piece[5], super);
      const uint32_t a = __ldg(sc + 2 * b), c = __ldg(sc + 2 * b + 1);
      s0 = d * float(a & 15u);
      s1 = d * float(c & 15u);
      c0 = -(dm * float(a >> 4));
      c1 = -(dm * float(c >> 4));
    } else {  // Q4_K, Q5_K: uint8 scale and min codes per 32
      const float dm = half_bits(wt.piece[5], super);
      s0 = s1 = d * float(__ldg(static_cast<const uint8_t*>(wt.piece[2]) + row * GROUPS + b));
      c0 = c1 = -(dm * float(__ldg(static_cast<const uint8_t*>(wt.piece[3]) + row * GROUPS + b)));
    }
  }
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    uint32_t code;
    if (crumbs) {
      code = (words[i / 16] >> (2 * (i % 16))) & 3u;
      if (has_hi) code |= ((high[0] >> i) & 1u) << 2;
    } else {
      code = (words[i / 8] >> (4 * (i % 8))) & 15u;
      if (six) code |= ((high[i / 16] >> (2 * (i % 16))) & 3u) << 4;
      else if (has_hi) code |= ((high[0] >> i) & 1u) << 4;
    }
    v[i] = (float(code) - offset) * (i < 16 ? s0 : s1) + (i < 16 ? c0 : c1);
  }
}

// dot(row `row` of a stacked weight in format F (K columns), x[0:K]) over one warp (every lane gets the sum)
template <int F, int K, typename X>
__device__ __forceinline__ float warp_dot_any(const Weight& wt, int64_t row, int group, const X* x) {
  if constexpr (F < Q5_0) {
    return warp_dot<F, K>(wt.piece[0], wt.piece[2], wt.piece[3], row, group, x);
  } else {
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
    for (int b = lane; b < K / 32; b += 32) {
      float v[32];
      decode32<F, K>(wt, row, b, v);
#pragma unroll
      for (int i = 0; i < 32; ++i) acc += v[i] * xv(x, b * 32 + i);
    }
    return warp_sum(acc);
  }
}

// dequant<F, K>(rows, w0..w5, out): the stacked weight's rows (all experts: E N of them) as fp16 [rows, K], one
// thread per 32-block; the grouped plan's fp16 GEMM reads them (prefill of the GGUF formats).
template <int F, int K>
__device__ __forceinline__ void dequant(int64_t rows, const void* w0, const void* w1, const void* w2, const void* w3,
                                        const void* w4, const void* w5, void* out_ptr) {
  const Weight wt = {{w0, w1, w2, w3, w4, w5}};
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * (K / 32)) return;
  const int64_t row = i / (K / 32);
  const int b = static_cast<int>(i % (K / 32));
  float v[32];
  decode32<F, K>(wt, row, b, v);
  uint4* out = reinterpret_cast<uint4*>(static_cast<__half*>(out_ptr) + row * K + b * 32);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    __half2 h[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) h[j] = __floats2half2_rn(v[8 * q + 2 * j], v[8 * q + 2 * j + 1]);
    out[q] = *reinterpret_cast<const uint4*>(h);
  }
}

template <int FG, int FU, int H, int I, int TOPK, int WARPS, typename A>
__device__ __forceinline__ void gate_up_any(int T, const void* x_ptr, const void* ids_ptr, const void* g0,
                                            const void* g1, const void* g2, const void* g3, const void* g4,
                                            const void* g5, int gate_group, const void* u0, const void* u1,
                                            const void* u2, const void* u3, const void* u4, const void* u5,
                                            int up_group, void* h_ptr) {
  const Weight gate = {{g0, g1, g2, g3, g4, g5}}, up = {{u0, u1, u2, u3, u4, u5}};
  constexpr int BLOCKS_PER_SLOT = (I + WARPS - 1) / WARPS;
  const int slot = blockIdx.x / BLOCKS_PER_SLOT;
  const int i = (blockIdx.x % BLOCKS_PER_SLOT) * WARPS + threadIdx.x / 32;
  if (slot >= T * TOPK || i >= I) return;
  const int e = static_cast<const int*>(ids_ptr)[slot];
  const A* x = static_cast<const A*>(x_ptr) + (int64_t)(slot / TOPK) * H;
  const int64_t row = (int64_t)e * I + i;
  const float g = warp_dot_any<FG, H>(gate, row, gate_group, x);
  const float u = warp_dot_any<FU, H>(up, row, up_group, x);
  if ((threadIdx.x & 31) == 0) static_cast<float*>(h_ptr)[(int64_t)slot * I + i] = g / (1.0f + __expf(-g)) * u;
}

template <int FD, int H, int I, int TOPK, int WARPS, typename A>
__device__ __forceinline__ void down_any(int T, const void* h_ptr, const void* ids_ptr, const void* weights_ptr,
                                         const void* d0, const void* d1, const void* d2, const void* d3,
                                         const void* d4, const void* d5, int group, void* y_ptr) {
  const Weight down = {{d0, d1, d2, d3, d4, d5}};
  constexpr int BLOCKS_PER_TOKEN = (H + WARPS - 1) / WARPS;
  const int t = blockIdx.x / BLOCKS_PER_TOKEN;
  const int n = (blockIdx.x % BLOCKS_PER_TOKEN) * WARPS + threadIdx.x / 32;
  if (t >= T || n >= H) return;
  const int* ids = static_cast<const int*>(ids_ptr) + (int64_t)t * TOPK;
  const float* weights = static_cast<const float*>(weights_ptr) + (int64_t)t * TOPK;
  float acc = 0.0f;
  for (int j = 0; j < TOPK; ++j) {
    const float* h = static_cast<const float*>(h_ptr) + ((int64_t)t * TOPK + j) * I;
    acc += weights[j] * warp_dot_any<FD, I>(down, (int64_t)ids[j] * H + n, group, h);
  }
  if ((threadIdx.x & 31) == 0) from_f(acc, static_cast<A*>(y_ptr) + (int64_t)t * H + n);
}

// kgemv_gate_up<FG, FU, ...> / kgemv_down<FD, ...>: the gemv plan (gemv_gate_up / gemv_down above) for the GGUF
// formats kgemv.cuh takes (Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; gate and up may differ, as down may): kgemv::run_rows over
// the rows of each slot's expert (row_base = e N), its tuned lane loads, staged x and, for down, its SWIGLU staging
// of gu[slot] = [gate | up]. Weights as gate_up_any's: six pointers each.
template <int FG, int FU, int H, int I, int TOPK, int WARPS, int R, int D>
__device__ __forceinline__ void kgemv_gate_up(int T, const void* x_ptr, const void* ids_ptr, const void* g0,
                                              const void* g1, const void* g2, const void* g3, const void* g4,
                                              const void* g5, const void* u0, const void* u1, const void* u2,
                                              const void* u3, const void* u4, const void* u5, void* gu_ptr) {
  constexpr int PER_WEIGHT = (I + WARPS * R - 1) / (WARPS * R);  // blocks of one expert's gate (or up)
  const int slot = blockIdx.x / (2 * PER_WEIGHT), rest = blockIdx.x % (2 * PER_WEIGHT);
  if (slot >= T * TOPK) return;
  const bool up = rest >= PER_WEIGHT;
  const size_t rows = static_cast<size_t>(static_cast<const int*>(ids_ptr)[slot]) * I;
  const __half* x = static_cast<const __half*>(x_ptr) + static_cast<int64_t>(slot / TOPK) * H;
  __half* y = static_cast<__half*>(gu_ptr) + static_cast<int64_t>(slot) * 2 * I + (up ? I : 0);
  if constexpr (FG == FU) {
    kgemv::run_rows<FG, I, H, WARPS, R, D, kgemv::NO_BIAS>(rest % PER_WEIGHT, rows, x, up ? u0 : g0, up ? u1 : g1,
                                                           up ? u2 : g2, up ? u3 : g3, up ? u4 : g4, up ? u5 : g5,
                                                           x, y);
  } else if (up) {
    kgemv::run_rows<FU, I, H, WARPS, R, D, kgemv::NO_BIAS>(rest - PER_WEIGHT, rows, x, u0, u1, u2, u3, u4, u5, x, y);
  } else {
    kgemv::run_rows<FG, I, H, WARPS, R, D, kgemv::NO_BIAS>(rest, rows, x, g0, g1, g2, g3, g4, g5, x, y);
  }
}

template <int FD, int H, int I, int TOPK, int WARPS, int R, int D>
__device__ __forceinline__ void kgemv_down(int T, const void* gu_ptr, const void* ids_ptr, const void* d0,
                                           const void* d1, const void* d2, const void* d3, const void* d4,
                                           const void* d5, void* ys_ptr) {
  constexpr int PER_SLOT = (H + WARPS * R - 1) / (WARPS * R);
  const int slot = blockIdx.x / PER_SLOT;
  if (slot >= T * TOPK) return;
  const size_t rows = static_cast<size_t>(static_cast<const int*>(ids_ptr)[slot]) * H;
  const __half* gu = static_cast<const __half*>(gu_ptr) + static_cast<int64_t>(slot) * 2 * I;
  __half* y = static_cast<__half*>(ys_ptr) + static_cast<int64_t>(slot) * H;
  kgemv::run_rows<FD, H, I, WARPS, R, D, kgemv::NO_BIAS, kgemv::SWIGLU>(blockIdx.x % PER_SLOT, rows, gu, d0, d1, d2,
                                                                         d3, d4, d5, gu, y);
}

template <int F, int H, int I, int TOPK, int WARPS, typename A>
__device__ __forceinline__ void gate_up(int T, const void* x_ptr, const void* ids_ptr, const void* gw, const void* gs,
                                        const void* gm, const void* uw, const void* us, const void* um, int group,
                                        void* h_ptr) {
  gate_up_any<F, F, H, I, TOPK, WARPS, A>(T, x_ptr, ids_ptr, gw, gw, gs, gm, gw, gw, group, uw, uw, us, um, uw, uw,
                                          group, h_ptr);
}

template <int F, int H, int I, int TOPK, int WARPS, typename A>
__device__ __forceinline__ void down(int T, const void* h_ptr, const void* ids_ptr, const void* weights_ptr,
                                     const void* dw, const void* ds, const void* dm, int group, void* y_ptr) {
  down_any<F, H, I, TOPK, WARPS, A>(T, h_ptr, ids_ptr, weights_ptr, dw, dw, ds, dm, dw, dw, group, y_ptr);
}

}  // namespace moe
}  // namespace ember
#endif  // EMBER_MOE_CUH
