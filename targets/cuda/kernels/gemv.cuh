// ember's weight-only GEMV for decode at batch 1: y[N] (fp16) = x[K] (fp16) . W[N, K]^T (+ bias), W packed as
// ir/ops_quant.py lays it out (row-major, K contiguous):
//   Q4 / Q4_MIN  uint32 [N, K/8], nibble i of word j is k = 8j + i; fp16 scales (and mins) [N, ceil(K/G)]
//   Q8           int8 [N, K]; fp16 scales [N, ceil(K/G)]
// Values: Q4 s*(q-8), Q4_MIN s*q + m, Q8 s*q.
//
// Plan (why each piece is there: ../shared/guide/tvm-quant-gemv.md measured TVM's schedules at 36-73 % of copy
// bandwidth, limited by instructions per weight, not by bytes):
// - A lane loads 16 bytes of one row per step (32 codes of Q4 = one group of 32; 16 codes of Q8), a warp a
//   contiguous 512-byte run; each warp owns R rows, so one x fragment serves R rows. D steps of loads are in
//   flight per lane before the first use (a register ring refilled right after each step is consumed).
// - Codes become fp16 without I2F: (bits | 0x6400) is the half 1024 + code, one LOP3 for two nibbles; one HFMA2
//   turns it into (q - 8) / 8 (Q4) or q / 128 (Q8), exactly, so |value| <= 1 and fp16 partial sums stay in range.
// - x is staged once per block into shared memory in the order the nibble pairs come out ({x0,x4}, {x1,x5}, ...
//   per 8 values for Q4), with a 16-byte-slot swizzle so that the 64-byte-strided lane reads hit distinct banks.
// - Products accumulate in fp16x2 over PER words (PER * 8 codes of Q4), then in fp32; the group scale is applied
//   once per lane-load, in fp32 (s * sum instead of sum of s * q). Q4_MIN adds (m + 8s) * sum(x over the 32
//   codes), the sums of x computed in fp32 while staging.
// Everything is a template over the shape, so loops unroll and shared arrays are sized at compile time; TVM's
// generated kernel (one launch_thread per axis, body = one call_extern) calls run<...>() with its pointers.
// Measured on an H200 (docs/measurements/2026-12-02-h200-gemv.md): ~4.4 TB/s of weights in steady state (the
// gate_up and LM head shapes), plus a fixed ~2.3 us per launch that dominates the small layers.
#ifndef EMBER_GEMV_CUH
#define EMBER_GEMV_CUH
#include <cstdint>
#include <cuda_fp16.h>

#include "pdl.cuh"
#include "stream.cuh"

namespace ember {
namespace gemv {

enum Scheme : int { Q4 = 0, Q4_MIN = 1, Q8 = 2 };
enum Bias : int { NO_BIAS = 0, HALF_BIAS = 1, FLOAT_BIAS = 2 };

__device__ __forceinline__ __half2 as_half2(uint32_t bits) {
  __half2 h;
  memcpy(&h, &bits, sizeof(h));
  return h;
}

// (ptxas issues only ~4 of a lane's prologue loads of load_stream (stream.cuh) ahead of the staging barrier and
// the rest after it, volatile or not; the cp.async ring below avoids that, but measured no faster except on very
// small layers.)
__device__ __forceinline__ __half load_half(const __half* p) { return __ldg(p); }

// The other way to keep loads in flight (ASYNC=1): 16-byte cp.async copies into a shared-memory ring, which
// ptxas issues where they stand; each lane reads back only what it copied itself, so waiting on its own groups is
// enough.
__device__ __forceinline__ void copy_async(void* smem, const void* global) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(global) : "memory");
}
__device__ __forceinline__ void copy_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int PENDING>
__device__ __forceinline__ void copy_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory"); }

// (a & MASK) | magic in one LOP3: ptxas takes one immediate per LOP3, so the magic must come in a register
// (written plainly, the and and the or compile to two LOP3s).
template <uint32_t MASK>
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t magic) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "n"(MASK), "r"(magic));
  return r;
}

// Eight 4-bit codes (one word) times x, x given as {x0,x4}, {x1,x5}, {x2,x6}, {x3,x7}; the values are (q-8)/8.
__device__ __forceinline__ __half2 dot_q4_word(uint32_t w, const uint32_t* x, __half2 acc) {
  const uint32_t magic = 0x64006400u;
  const __half2 lo_mul = as_half2(0x30003000u);  // 1/8:   (1024 + q) / 8 - 129 = (q - 8) / 8
  const __half2 lo_add = as_half2(0xD808D808u);  // -129
  const __half2 hi_mul = as_half2(0x20002000u);  // 1/128: (1024 + 16q) / 128 - 9 = (q - 8) / 8
  const __half2 hi_add = as_half2(0xC880C880u);  // -9
  const uint32_t w8 = w >> 8;
  const __half2 v04 = __hfma2(as_half2(and_or<0x000F000Fu>(w, magic)), lo_mul, lo_add);
  const __half2 v15 = __hfma2(as_half2(and_or<0x00F000F0u>(w, magic)), hi_mul, hi_add);
  const __half2 v26 = __hfma2(as_half2(and_or<0x000F000Fu>(w8, magic)), lo_mul, lo_add);
  const __half2 v37 = __hfma2(as_half2(and_or<0x00F000F0u>(w8, magic)), hi_mul, hi_add);
  acc = __hfma2(v04, as_half2(x[0]), acc);
  acc = __hfma2(v15, as_half2(x[1]), acc);
  acc = __hfma2(v26, as_half2(x[2]), acc);
  acc = __hfma2(v37, as_half2(x[3]), acc);
  return acc;
}

// Four int8 codes (one word) times x, x in natural pairs {x0,x1}, {x2,x3}; the values are q/128.
__device__ __forceinline__ __half2 dot_q8_word(uint32_t w, const uint32_t* x, __half2 acc) {
  const uint32_t u = w ^ 0x80808080u;  // two's complement byte b -> b + 128 in 0..255
  const __half2 mul = as_half2(0x20002000u);  // 1/128: (1024 + b + 128) / 128 - 9 = b / 128
  const __half2 add = as_half2(0xC880C880u);  // -9
  const __half2 v01 = __hfma2(as_half2(__byte_perm(u, 0x64646464u, 0x5140)), mul, add);
  const __half2 v23 = __hfma2(as_half2(__byte_perm(u, 0x64646464u, 0x5342)), mul, add);
  acc = __hfma2(v01, as_half2(x[0]), acc);
  acc = __hfma2(v23, as_half2(x[1]), acc);
  return acc;
}

__device__ __forceinline__ float sum_half2(__half2 h) {
  const float2 f = __half22float2(h);
  return f.x + f.y;
}

template <int SCHEME>
struct Layout {
  static constexpr int kValues = SCHEME == Q8 ? 16 : 32;  // codes per 16-byte lane load
  static constexpr int kChunks = kValues / 8;              // 16-byte x slots (8 halves) per lane load
  static constexpr int kPairsPerWord = SCHEME == Q8 ? 2 : 4;  // half2 of x per weight word
  static constexpr float kValueScale = SCHEME == Q8 ? 128.0f : 8.0f;  // value = code term / kValueScale
  // Slot of x chunk j (0..kChunks-1) of lane load c in shared memory: conflict-free 16-byte lane reads.
  __device__ static __forceinline__ int slot(int c, int j) {
    return SCHEME == Q8 ? 2 * c + (j ^ ((c >> 2) & 1)) : 4 * c + (j ^ ((c >> 1) & 3));
  }
};

// Eight halves (a 16-byte chunk of x) in the order the weight words pair them.
template <int SCHEME>
__device__ __forceinline__ uint4 pair_order(uint4 u) {
  if (SCHEME == Q8) return u;
  return make_uint4(__byte_perm(u.x, u.z, 0x5410), __byte_perm(u.x, u.z, 0x7632),
                    __byte_perm(u.y, u.w, 0x5410), __byte_perm(u.y, u.w, 0x7632));
}

__device__ __forceinline__ float sum8(uint4 u) {
  return sum_half2(as_half2(u.x)) + sum_half2(as_half2(u.y)) + sum_half2(as_half2(u.z)) + sum_half2(as_half2(u.w));
}

// acc + one lane load of one row: the 16 weight bytes wv against x (xv as the layout pairs it), in fp16x2 over
// PER words, then scaled in fp32.
template <int SCHEME, int PER>
__device__ __forceinline__ float accumulate(float acc, uint4 wv, const uint32_t* xv, __half scale, __half min,
                                            float x_sum) {
  const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
  float part = 0.0f;
#pragma unroll
  for (int p = 0; p < 4; p += PER) {
    __half2 h = __float2half2_rn(0.0f);
#pragma unroll
    for (int q = 0; q < PER; ++q) {
      const int word = p + q;
      if (SCHEME == Q8) {
        h = dot_q8_word(words[word], xv + 2 * word, h);
      } else {
        h = dot_q4_word(words[word], xv + 4 * word, h);
      }
    }
    part += sum_half2(h);
  }
  const float s = __half2float(scale);
  acc = fmaf(s * Layout<SCHEME>::kValueScale, part, acc);
  if (SCHEME == Q4_MIN) acc = fmaf(fmaf(8.0f, s, __half2float(min)), x_sum, acc);
  return acc;
}

enum Act : int { PLAIN = 0, SWIGLU = 1 };

// SWIGLU input: x_ptr holds [gate | up] (2K halves) and the GEMV's x is silu(gate) * up, computed in fp32 and
// rounded to fp16 while staging, as the separate swiglu kernel (lower_fused.py) would write it.
__device__ __forceinline__ uint4 swiglu8(uint4 gate, uint4 up) {
  const __half2* g = reinterpret_cast<const __half2*>(&gate);
  const __half2* u = reinterpret_cast<const __half2*>(&up);
  uint4 out;
  __half2* o = reinterpret_cast<__half2*>(&out);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 gf = __half22float2(g[j]), uf = __half22float2(u[j]);
    o[j] = __floats2half2_rn(gf.x / (1.0f + __expf(-gf.x)) * uf.x, gf.y / (1.0f + __expf(-gf.y)) * uf.y);
  }
  return out;
}

// Block `block` of the GEMV: WARPS warps, warp w owns rows (block * WARPS + w) * R + 0..R-1 (run() below: the
// block is blockIdx.x; moe.cuh runs several GEMVs, one per selected expert, in one grid).
template <int SCHEME, int N, int K, int G, int WARPS, int R, int D, int PER, int ASYNC, int BIAS, int ACT = PLAIN>
__device__ __forceinline__ void run_block(int block, const void* x_ptr, const void* w_ptr, const void* s_ptr,
                                          const void* m_ptr, const void* bias_ptr, void* y_ptr) {
  using L = Layout<SCHEME>;
  constexpr int V = L::kValues;
  static_assert(K % V == 0, "K must be a multiple of the values per 16-byte load");
  static_assert(G % V == 0, "a lane load must lie inside one group");
  static_assert(PER == 1 || PER == 2 || PER == 4, "PER: words per fp16 partial sum");
  static_assert(D >= 1 && D <= 8, "D: steps in flight");
  constexpr int C = K / V;                    // lane loads per row
  constexpr int S = (C + 31) / 32;            // warp steps per row
  constexpr int KP = S * 32 * V;              // K padded to whole steps (x is zero there)
  constexpr int GS = (K + G - 1) / G;         // scales per row
  constexpr int THREADS = WARPS * 32;
  constexpr int XCHUNKS = KP / 8;             // 16-byte chunks of x
  constexpr bool kMin = SCHEME == Q4_MIN;

  __shared__ uint4 xs[XCHUNKS];
  __shared__ float xsum[kMin ? S * 32 : 1];
  __shared__ uint4 wsm[ASYNC ? WARPS * D * R * 32 : 1];  // ASYNC: each warp's ring of D steps x R rows

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int row0 = (block * WARPS + warp) * R;

  const uint4* wrow[R];
  const __half* srow[R];
  const __half* mrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int n = row0 + r < N ? row0 + r : N - 1;  // rows past N load row N-1 and store nothing
    wrow[r] = reinterpret_cast<const uint4*>(w_ptr) + static_cast<size_t>(n) * C;
    srow[r] = reinterpret_cast<const __half*>(s_ptr) + static_cast<size_t>(n) * GS;
    mrow[r] = reinterpret_cast<const __half*>(m_ptr) + static_cast<size_t>(n) * GS;
  }

  uint4 wr[ASYNC ? 1 : D][R];
  __half sr[D][R];
  __half mr[D][R];
  uint4* ring = wsm + warp * D * R * 32 + lane;  // ASYNC: slot (d, r) at ring[(d * R + r) * 32]
  auto load_step = [&](int step, int d) {
    const bool ok = step < S && (C % 32 == 0 || step * 32 + lane < C);
    const int c = index_or_zero(ok, step * 32 + lane);  // in the row where !ok too (stream.cuh)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (ok) {
        if (ASYNC) {
          copy_async(ring + (d * R + r) * 32, wrow[r] + c);
        } else {
          wr[d][r] = load_stream(wrow[r] + c);
        }
        sr[d][r] = load_half(srow[r] + c * V / G);
        if (kMin) mr[d][r] = load_half(mrow[r] + c * V / G);
      } else {  // padding: zero scale and min (x is zero there too, so any code gives 0)
        if (!ASYNC) wr[d][r] = make_uint4(0, 0, 0, 0);
        sr[d][r] = __float2half(0.0f);
        mr[d][r] = __float2half(0.0f);
      }
    }
    if (ASYNC) copy_commit();  // one group per step, empty or not, so that wait_group counts steps
  };
  // The first D steps of weights are requested before x is staged: the loads overlap the staging and, launched
  // with PDL, the end of the kernel that writes x (weights are never written during a step).
  pdl::launch_dependents();
#pragma unroll
  for (int d = 0; d < D; ++d) load_step(d, d);
  pdl::wait();

  const __half* xh = reinterpret_cast<const __half*>(x_ptr);
  auto stage = [&](int i, uint4 u) {
    const int c = i / L::kChunks;
    const int j = i % L::kChunks;
    xs[L::slot(c, j)] = pair_order<SCHEME>(u);
    if (kMin) {  // sum of x over lane load c: its chunks sit in adjacent lanes (THREADS is a multiple of 4)
      float part = sum8(u);
      part += __shfl_xor_sync(0xffffffffu, part, 1);
      part += __shfl_xor_sync(0xffffffffu, part, 2);
      if (j == 0) xsum[c] = part;
    }
  };
  auto chunk_at = [&](int e0, bool aligned) -> uint4 {  // the 8 input halves at e0 (aligned: one 16-byte load)
    if (aligned) return __ldg(reinterpret_cast<const uint4*>(xh + e0));
    uint16_t h[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) h[e] = __ldg(reinterpret_cast<const unsigned short*>(xh) + e0 + e);
    return make_uint4(h[0] | (uint32_t(h[1]) << 16), h[2] | (uint32_t(h[3]) << 16),
                      h[4] | (uint32_t(h[5]) << 16), h[6] | (uint32_t(h[7]) << 16));
  };
  auto x_chunk = [&](int i, bool aligned) -> uint4 {  // chunk i of the GEMV's x (zero past K)
    const bool in = 8 * i < K;
    if (!in) return make_uint4(0, 0, 0, 0);
    const int e0 = index_or_zero(in, 8 * i);  // chunk 0 where !in: the loads may be hoisted (stream.cuh)
    if (ACT == SWIGLU) return swiglu8(chunk_at(e0, aligned), chunk_at(K + e0, aligned));
    return chunk_at(e0, aligned);
  };
  if ((reinterpret_cast<uintptr_t>(x_ptr) & 15) == 0) {
#pragma unroll
    for (int i0 = 0; i0 < XCHUNKS; i0 += THREADS) {
      const int i = i0 + threadIdx.x;
      if (XCHUNKS % THREADS == 0 || i < XCHUNKS) stage(i, x_chunk(i, true));
    }
  } else {
    for (int i = threadIdx.x; i < XCHUNKS; i += THREADS) stage(i, x_chunk(i, false));
  }
  __syncthreads();

  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;

#pragma unroll
  for (int base = 0; base < S; base += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int step = base + d;
      if (step < S) {
        const int c = step * 32 + lane;
        uint32_t xv[4 * L::kChunks];
#pragma unroll
        for (int j = 0; j < L::kChunks; ++j) {
          const uint4 v = xs[L::slot(c, j)];
          xv[4 * j] = v.x;
          xv[4 * j + 1] = v.y;
          xv[4 * j + 2] = v.z;
          xv[4 * j + 3] = v.w;
        }
        const float xs_sum = kMin ? xsum[c] : 0.0f;
        if (ASYNC) copy_wait<D - 1>();  // this step's group is done (D - 1 younger ones may be pending)
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const uint4 wv = ASYNC ? ring[(d * R + r) * 32] : wr[ASYNC ? 0 : d][r];
          acc[r] = accumulate<SCHEME, PER>(acc[r], wv, xv, sr[d][r], mr[d][r], xs_sum);
        }
        load_step(step + D, d);  // refill this slot of the ring
      }
    }
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
  }
  float out = acc[0];
#pragma unroll
  for (int r = 1; r < R; ++r) out = lane == r ? acc[r] : out;
  const int n = row0 + lane;
  if (lane < R && n < N) {
    if (BIAS == HALF_BIAS) out += __half2float(reinterpret_cast<const __half*>(bias_ptr)[n]);
    if (BIAS == FLOAT_BIAS) out += reinterpret_cast<const float*>(bias_ptr)[n];
    reinterpret_cast<__half*>(y_ptr)[n] = __float2half(out);
  }
}

template <int SCHEME, int N, int K, int G, int WARPS, int R, int D, int PER, int ASYNC, int BIAS, int ACT = PLAIN>
__device__ __forceinline__ void run(const void* x_ptr, const void* w_ptr, const void* s_ptr, const void* m_ptr,
                                    const void* bias_ptr, void* y_ptr) {
  run_block<SCHEME, N, K, G, WARPS, R, D, PER, ASYNC, BIAS, ACT>(blockIdx.x, x_ptr, w_ptr, s_ptr, m_ptr, bias_ptr,
                                                               y_ptr);
}

}  // namespace gemv
}  // namespace ember
#endif  // EMBER_GEMV_CUH
