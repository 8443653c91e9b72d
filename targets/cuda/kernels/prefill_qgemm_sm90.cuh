// ember's Hopper prefill GEMM for quantized weights: y[m, N] (fp16) = x[m, K] (fp16) . W[N, K]^T, fp32
// accumulation on wgmma, W in gemv.cuh's packed layout (Q4 / Q4_MIN uint32 [N, K/8], nibble i of word j is
// k = 8j + i; Q8 int8 [N, K]; fp16 scales (and mins) [N, K/G]). sm_90a only (wgmma); prefill_qgemm.cuh's
// mma.sync kernel serves other archs.
//
// A block computes a BM x BN tile of y with BM/64 warpgroups (one m64 wgmma row band each) and no warp
// specialization: every thread copies, dequantizes and issues. K goes in k-tiles of 64 through a STAGES-deep
// cp.async ring of shared memory holding the x tile (fp16, BM rows of 128 bytes) and the packed weight tile (BN rows
// of 32 bytes for 4-bit, 64 for 8-bit). Each k-tile of weights is dequantized once per block, from the ring into
// one of three fp16 tiles (BN rows of 128 bytes), while the wgmmas of the tiles before run; wgmma reads both operands
// from shared memory (K-major, 128-byte swizzle: 16-byte chunk c of row r sits at chunk c ^ (r % 8), in
// 1024-byte atoms of 8 rows). The dequantized values are those of the other kernels (one fp16 rounding per
// weight: lowbatch.cuh's dequantizers), so the numbers match prefill_qgemm.cuh's up to the summation order.
//
// The launcher (`launch<...>`) needs the dynamic shared memory opt-in once per instantiation; it is the only host
// code here, so tools/qgemm_check.py can call it without TVM.
#ifndef EMBER_PREFILL_QGEMM_SM90_CUH
#define EMBER_PREFILL_QGEMM_SM90_CUH
#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "lowbatch.cuh"

namespace ember {
namespace qgemm90 {
// Internal linkage: every library that includes this has its own kernels and launch flags (two models' libraries
// in one process must not share a template's static, which would otherwise be a process-wide unique symbol).
namespace {

using lowbatch::Q4;
using lowbatch::Q4_MIN;
using lowbatch::Q8;

constexpr int kTileK = 64;   // halves per smem row: one 128-byte swizzle row
constexpr int kRowBytes = 128;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void copy16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}

// Byte offset of 16-byte chunk c of row r in a K-major 128-byte-swizzled tile.
__device__ __forceinline__ uint32_t swizzled(int r, int c) {
  return static_cast<uint32_t>(r * kRowBytes + ((c ^ (r & 7)) << 4));
}

// wgmma shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row atoms 1024 bytes apart.
__device__ __forceinline__ uint64_t descriptor(uint32_t addr) {
  uint64_t d = (addr & 0x3FFFFu) >> 4;
  d |= uint64_t(1) << 16;            // leading byte offset (unused by swizzled K-major layouts)
  d |= uint64_t(1024 >> 4) << 32;    // stride byte offset: the next 8 rows
  d |= uint64_t(1) << 62;            // 128-byte swizzle
  return d;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// d[64 x N] += a[64 x 16] . b[N x 16]^T, both K-major in shared memory (scale-d 1, no transposes)
__device__ __forceinline__ void wgmma_n64(float* d, uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31} "
      ", %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b));
}

__device__ __forceinline__ void wgmma_n128(float* d, uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
      "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63} "
      ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b));
}

__device__ __forceinline__ void wgmma_n256(float* d, uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
      "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, "
      "%74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, "
      "%92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, "
      "%108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, "
      "%123, %124, %125, %126, %127} "
      ", %128, %129, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]),
        "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),
        "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]),
        "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]),
        "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(a), "l"(b));
}


template <int BN>
__device__ __forceinline__ void wgmma(float* d, uint64_t a, uint64_t b) {
  if constexpr (BN == 64) wgmma_n64(d, a, b);
  else if constexpr (BN == 128) wgmma_n128(d, a, b);
  else wgmma_n256(d, a, b);
}

// 8 weights (k = 8j .. 8j+7 of one row) in natural order as 4 half2: Q4 from one word, Q8 from two.
template <int SCHEME>
__device__ __forceinline__ uint4 dequant8(const uint32_t* words, __half2 s, __half2 m) {
  uint32_t out[4];
  if (SCHEME == Q8) {
    lowbatch::dequant_q8(words[0], s, out);
    lowbatch::dequant_q8(words[1], s, out + 2);
  } else {
    uint32_t pairs[4];  // {n0,n4}, {n1,n5}, {n2,n6}, {n3,n7}
    lowbatch::dequant_q4<SCHEME>(words[0], s, m, pairs);
    out[0] = __byte_perm(pairs[0], pairs[1], 0x5410);  // {n0,n1}
    out[1] = __byte_perm(pairs[2], pairs[3], 0x5410);  // {n2,n3}
    out[2] = __byte_perm(pairs[0], pairs[1], 0x7632);  // {n4,n5}
    out[3] = __byte_perm(pairs[2], pairs[3], 0x7632);  // {n6,n7}
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

template <int SCHEME, int BM, int BN, int STAGES>
struct Layout {
  static constexpr int kThreads = BM / 64 * 128;
  static constexpr int kPacked = SCHEME == Q8 ? 64 : 32;  // bytes of one weight row per k-tile
  static constexpr int kX = BM * kRowBytes;
  static constexpr int kW = BN * kRowBytes;
  static constexpr int kQ = BN * kPacked;
  static constexpr int kBytes = STAGES * (kX + kQ) + 3 * kW + 1024;  // + room to align to 1024
};

template <int SCHEME, int G, int BM, int BN, int STAGES>
__global__ void __launch_bounds__(Layout<SCHEME, BM, BN, STAGES>::kThreads)
kernel(int m, int n, int k, const __half* __restrict__ x, const uint8_t* __restrict__ w,
       const __half* __restrict__ scales, const __half* __restrict__ mins, __half* __restrict__ y,
       float* __restrict__ partial) {
  using L = Layout<SCHEME, BM, BN, STAGES>;
  constexpr bool kMin = SCHEME == Q4_MIN;
  extern __shared__ uint8_t raw[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + 1023) & ~uintptr_t(1023));
  uint8_t* xs = base;                          // [STAGES][BM rows x 128 B], swizzled
  uint8_t* ws = xs + STAGES * L::kX;           // [3][BN rows x 128 B], swizzled fp16
  uint8_t* qs = ws + 3 * L::kW;                // [STAGES][BN rows x kPacked B]

  const int tiles_n = n / BN;
  const int row0 = (blockIdx.x / tiles_n) * BM;
  const int col0 = (blockIdx.x % tiles_n) * BN;
  // split-K (gridDim.y splits, for small m): this block's k-tiles [kt_begin, kt_begin + kt_count); its fp32 sum
  // goes to partial[split] and reduce_splits() adds the splits in order (the same bits on every run)
  const int per_split = (k / kTileK + gridDim.y - 1) / gridDim.y;
  const int kt_begin = blockIdx.y * per_split;
  const int kt_count = max(0, min(per_split, k / kTileK - kt_begin));
  const int groups = k / G;
  const int tid = threadIdx.x;

  auto load = [&](int stage, int kt) {
    const uint32_t xdst = smem_addr(xs + stage * L::kX);
#pragma unroll
    for (int i = tid; i < BM * 8; i += L::kThreads) {
      const int r = i >> 3, c = i & 7;
      const bool valid = row0 + r < m;
      const __half* src = valid ? x + static_cast<size_t>(row0 + r) * k + (kt_begin + kt) * kTileK + c * 8 : x;
      copy16(xdst + swizzled(r, c), src, valid);
    }
    const uint32_t qdst = smem_addr(qs + stage * L::kQ);
    constexpr int chunks = L::kPacked / 16;
#pragma unroll
    for (int i = tid; i < BN * chunks; i += L::kThreads) {
      const int r = i / chunks, c = i % chunks;
      const uint8_t* src = w + static_cast<size_t>(col0 + r) * (static_cast<size_t>(k) * L::kPacked / kTileK) +
                           (kt_begin + kt) * L::kPacked + c * 16;
      copy16(qdst + i * 16, src, true);
    }
  };
  // The packed k-tile kt (ring slot `stage`) as fp16 into tile `buf`. Item i = tid + THREADS j is half h = i % 2
  // of row i / 2: 32 weights (4 chunks of 8, one group: G is a multiple of 32), one scale (and min) from global
  // memory a k-tile ahead, its codes in one 16-byte load (two for 8-bit).
  constexpr int kItems = (BN * 2 + L::kThreads - 1) / L::kThreads;
  auto load_scales = [&](int kt, __half* s, __half* mn) {
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int i = tid + j * L::kThreads, r = i >> 1, h = i & 1;
      if (BN * 2 % L::kThreads != 0 && i >= BN * 2) break;
      const size_t at = static_cast<size_t>(col0 + r) * groups + ((kt_begin + kt) * kTileK + 32 * h) / G;
#ifdef EMBER_QGEMM_PROBE_NO_SCALES  // tools/qgemm_check.py's cost probes (wrong numbers, on purpose)
      s[j] = __float2half(0.01f);
      mn[j] = s[j];
      (void)at;
#else
      s[j] = scales[at];
      if (kMin) mn[j] = mins[at];
#endif
    }
  };
  auto dequant = [&](int stage, int buf, const __half* s, const __half* mn) {
    const uint8_t* q = qs + stage * L::kQ;
    uint8_t* out = ws + buf * L::kW;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int i = tid + j * L::kThreads, r = i >> 1, h = i & 1;
      if (BN * 2 % L::kThreads != 0 && i >= BN * 2) break;
      const __half2 s2 = __half2half2(s[j]);
      const __half2 m2 = __half2half2(kMin ? mn[j] : s[j]);
      const uint4* src = reinterpret_cast<const uint4*>(q + r * L::kPacked + h * (L::kPacked / 2));
      uint32_t words[SCHEME == Q8 ? 8 : 4];
      const uint4 u0 = src[0];
      words[0] = u0.x, words[1] = u0.y, words[2] = u0.z, words[3] = u0.w;
      if (SCHEME == Q8) {
        const uint4 u1 = src[1];
        words[4] = u1.x, words[5] = u1.y, words[6] = u1.z, words[7] = u1.w;
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const uint32_t* w8 = SCHEME == Q8 ? words + 2 * c : words + c;
        *reinterpret_cast<uint4*>(out + swizzled(r, 4 * h + c)) = dequant8<SCHEME>(w8, s2, m2);
      }
    }
  };

  static_assert(STAGES >= 3, "a ring of 3 or more k-tiles");
  float acc[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < kt_count) load(s, s);
    lowbatch::copy_commit();
  }
  __half sc[kItems], mn[kItems];
  if (kt_count > 0) load_scales(0, sc, mn);
  lowbatch::copy_wait<STAGES - 2>();
  __syncthreads();
  if (kt_count > 0) dequant(0, 0, sc, mn);
  if (kt_count > 1) load_scales(1, sc, mn);
  fence_async_shared();
  __syncthreads();

  // Two wgmma groups in flight: k-tile kt is issued before the block waits for kt - 1, so the tensor cores have
  // work queued while the block dequantizes kt + 1 (into the third fp16 tile, free since kt - 2 finished) and
  // refills the ring slot of kt - 1.
  const int band = (tid >> 7) * 64;  // this warpgroup's rows of the tile
#pragma unroll 1
  for (int kt = 0; kt < kt_count; ++kt) {
    const uint32_t a0 = smem_addr(xs + (kt % STAGES) * L::kX + band * kRowBytes);
    const uint32_t b0 = smem_addr(ws + (kt % 3) * L::kW);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kTileK / 16; ++kk) wgmma<BN>(acc, descriptor(a0 + kk * 32), descriptor(b0 + kk * 32));
    wgmma_commit();
    if (kt + 1 < kt_count) {
      __half sc_next[kItems], mn_next[kItems];
      if (kt + 2 < kt_count) load_scales(kt + 2, sc_next, mn_next);
      lowbatch::copy_wait<STAGES - 3>();  // k-tile kt + 1 (this thread's copies); the ring is refilled below
      __syncthreads();                    // ... everyone's; and every warpgroup is past wgmma kt - 2
#ifndef EMBER_QGEMM_PROBE_NO_DEQUANT
      dequant((kt + 1) % STAGES, (kt + 1) % 3, sc, mn);
#endif
      fence_async_shared();
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        sc[j] = sc_next[j];
        if (kMin) mn[j] = mn_next[j];
      }
    }
    wgmma_wait<1>();  // this warpgroup's kt - 1 is done
    __syncthreads();  // every warpgroup's: the ring slot of kt - 1 is free; the fp16 tile of kt + 1 is written
    const int next = kt + STAGES - 1;
    if (next < kt_count) load(next % STAGES, next);
    lowbatch::copy_commit();
  }
  wgmma_wait<0>();

  // accumulator d[i]: n8 block j = i / 4, row band + 16 warp + g + 8 ((i % 4) / 2), column 8 j + 2 t + i % 2
  const int warp = (tid >> 5) & 3, lane = tid & 31;
  const int r_lo = row0 + band + 16 * warp + (lane >> 2);
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
    const int col = col0 + 8 * j + 2 * (lane & 3);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r_lo + 8 * h;
      if (r >= m) continue;
      if (partial != nullptr)
        *reinterpret_cast<float2*>(partial + (static_cast<size_t>(blockIdx.y) * m + r) * n + col) =
            make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
      else
        *reinterpret_cast<__half2*>(y + static_cast<size_t>(r) * n + col) =
            __floats2half2_rn(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
    }
  }
}

// y = the sum of the splits' fp32 partial tiles [splits][count], 4 values per thread (count % 4 == 0).
__global__ void reduce_splits(const float4* __restrict__ partial, int splits, size_t count4, uint2* __restrict__ y) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= count4) return;
  float4 v = partial[i];
  for (int s = 1; s < splits; ++s) {
    const float4 p = partial[s * count4 + i];
    v.x += p.x, v.y += p.y, v.z += p.z, v.w += p.w;
  }
  const __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
  uint2 out;
  memcpy(&out.x, &lo, 4);
  memcpy(&out.y, &hi, 4);
  y[i] = out;
}

// y (fp16 [m, n]) = the sum of a split-K launch's `splits` fp32 partial tiles in `workspace`.
inline void sum_splits(int m, int n, void* y, cudaStream_t stream, int splits, const float* workspace) {
  const size_t count4 = static_cast<size_t>(m) * n / 4;
  reduce_splits<<<static_cast<unsigned>((count4 + 255) / 256), 256, 0, stream>>>(
      reinterpret_cast<const float4*>(workspace), splits, count4, static_cast<uint2*>(y));
}

// A namespace-scope static (internal linkage): a function-local static of a template would be a process-wide
// unique symbol, shared by every library that holds the same instantiation.
template <int SCHEME, int G, int BM, int BN, int STAGES>
static bool opted_in = false;

// Launches one tile shape; returns the CUDA error (cudaErrorInvalidValue for shapes it does not take).
// splits > 1: split-K through `workspace` (splits * m * n floats).
template <int SCHEME, int G, int BM, int BN, int STAGES>
cudaError_t launch(int m, int n, int k, const void* x, const void* w, const void* scales, const void* mins, void* y,
                   cudaStream_t stream, int splits = 1, float* workspace = nullptr) {
  using L = Layout<SCHEME, BM, BN, STAGES>;
  if (n % BN != 0 || k % kTileK != 0 || k % G != 0 || m <= 0) return cudaErrorInvalidValue;
  auto* fn = kernel<SCHEME, G, BM, BN, STAGES>;
  if (!opted_in<SCHEME, G, BM, BN, STAGES>) {  // per function and process; setting it twice is harmless
    cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, L::kBytes);
    if (err != cudaSuccess) return err;
    opted_in<SCHEME, G, BM, BN, STAGES> = true;
  }
  if (splits > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  const dim3 grid((m + BM - 1) / BM * (n / BN), splits > 1 ? splits : 1);
  fn<<<grid, L::kThreads, L::kBytes, stream>>>(m, n, k, static_cast<const __half*>(x), static_cast<const uint8_t*>(w),
                                               static_cast<const __half*>(scales), static_cast<const __half*>(mins),
                                               static_cast<__half*>(y), splits > 1 ? workspace : nullptr);
  if (splits > 1) sum_splits(m, n, y, stream, splits, workspace);
  return cudaGetLastError();
}

}  // namespace
}  // namespace qgemm90
}  // namespace ember

#endif  // EMBER_PREFILL_QGEMM_SM90_CUH
