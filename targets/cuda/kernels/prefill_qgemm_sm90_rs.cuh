// ember's Hopper prefill GEMM for 4-bit weights with the weights as wgmma's register operand (the "RS" form):
// y[m, N] = x[m, K] . W[N, K]^T computed as y^T = W . x^T. A block covers WG * 64 weight rows (features: wgmma's M,
// 64 per warpgroup) and BT tokens (wgmma's N); the x tile, K-major and 128-byte swizzled as in
// prefill_qgemm_sm90.cuh, is the shared-memory B operand of every warpgroup. Each warp turns its own 16 weight
// rows of a k-tile into A fragments in registers: no fp16 weight tile in shared memory, and no barrier between
// the conversion and the tensor cores, so the dequantization of k-tile kt + 1 runs while wgmma works on kt (the
// shared-memory kernel converts between two barriers, and is issue-bound there: its probes in
// docs/measurements/2026-12-03-h200-prefill-qgemm).
//
// A fragment of warp w (rows 16w .. 16w+15 of its warpgroup's 64), lane (g = lane / 4, t = lane % 4), k16 step s:
// {row g, k 2t, 2t+1}, {row g+8, k 2t, 2t+1}, {row g, k 2t+8, 2t+9}, {row g+8, k 2t+8, 2t+9}: one byte (two
// nibbles) of each of four packed words, gathered into one word by byte permutes and converted with lowbatch.cuh's
// magic-number arithmetic, so every weight is rounded once to fp16, as in the other kernels. Q4 and Q4_MIN only.
#ifndef EMBER_PREFILL_QGEMM_SM90_RS_CUH
#define EMBER_PREFILL_QGEMM_SM90_RS_CUH
#include "prefill_qgemm_sm90.cuh"

namespace ember {
namespace qgemm90 {
namespace {

__device__ __forceinline__ void wgmma_rs_n64(float* d, const uint32_t* a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31} "
      ", {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

__device__ __forceinline__ void wgmma_rs_n128(float* d, const uint32_t* a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, "
      "%43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63} "
      ", {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

__device__ __forceinline__ void wgmma_rs_n256(float* d, const uint32_t* a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, "
      "%43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, "
      "%85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, "
      "%105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, "
      "%122, %123, %124, %125, %126, %127} "
      ", {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]),
        "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]),
        "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]),
        "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]),
        "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]),
        "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]),
        "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]),
        "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]),
        "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

template <int BT>
__device__ __forceinline__ void wgmma_rs(float* d, const uint32_t* a, uint64_t b) {
  if constexpr (BT == 64) wgmma_rs_n64(d, a, b);
  else if constexpr (BT == 128) wgmma_rs_n128(d, a, b);
  else wgmma_rs_n256(d, a, b);
}

// Keeps a register operand of an in-flight wgmma where it is until this point (after the wait): the compiler does
// not know the instruction still reads it.
__device__ __forceinline__ void hold(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void hold(float& r) { asm volatile("" : "+f"(r)::"memory"); }

template <int SCHEME, int WG, int BT, int STAGES>
struct LayoutRS {
  static constexpr int kThreads = WG * 128;
  static constexpr int kRows = WG * 64;        // weight rows (features) per block
  static constexpr int kX = BT * kRowBytes;    // x tile per stage
  static constexpr int kQ = kRows * 32;        // packed weight tile per stage: 8 words per row
  static constexpr int kBytes = STAGES * (kX + kQ) + 1024;
};

// Four packed words' byte t as one word: {lo row, k-step word}, {hi row, same}, {lo row, next word}, {hi row, next}
// -> 8 weights, scaled per row, as the four A registers of one k16 step.
template <int SCHEME>
__device__ __forceinline__ void fragment(uint32_t lo0, uint32_t hi0, uint32_t lo1, uint32_t hi1, uint32_t sel,
                                         __half2 s_lo, __half2 m_lo, __half2 s_hi, __half2 m_hi, uint32_t* a) {
  const uint32_t u = __byte_perm(__byte_perm(lo0, hi0, sel), __byte_perm(lo1, hi1, sel), 0x5410);
  const uint32_t magic = 0x64006400u;
  const __half2 lo_add = lowbatch::half2_of(SCHEME == Q4_MIN ? 0xE400E400u : 0xE408E408u);  // -1024 / -1032
  const __half2 hi_mul = lowbatch::half2_of(0x2C002C00u);                                     // 1/16
  const __half2 hi_add = lowbatch::half2_of(SCHEME == Q4_MIN ? 0xD400D400u : 0xD480D480u);  // -64 / -72
  const uint32_t u8 = u >> 8;
  // {n0, n4}, {n1, n5}: the lo row's k 2t, 2t+8 and 2t+1, 2t+9; {n2, n6}, {n3, n7}: the hi row's
  __half2 q04 = __hadd2(lowbatch::half2_of(lowbatch::and_or<0x000F000Fu>(u, magic)), lo_add);
  __half2 q15 = __hfma2(lowbatch::half2_of(lowbatch::and_or<0x00F000F0u>(u, magic)), hi_mul, hi_add);
  __half2 q26 = __hadd2(lowbatch::half2_of(lowbatch::and_or<0x000F000Fu>(u8, magic)), lo_add);
  __half2 q37 = __hfma2(lowbatch::half2_of(lowbatch::and_or<0x00F000F0u>(u8, magic)), hi_mul, hi_add);
  if (SCHEME == Q4_MIN) {
    q04 = __hfma2(q04, s_lo, m_lo), q15 = __hfma2(q15, s_lo, m_lo);
    q26 = __hfma2(q26, s_hi, m_hi), q37 = __hfma2(q37, s_hi, m_hi);
  } else {
    q04 = __hmul2(q04, s_lo), q15 = __hmul2(q15, s_lo);
    q26 = __hmul2(q26, s_hi), q37 = __hmul2(q37, s_hi);
  }
  const uint32_t v04 = lowbatch::bits_of(q04), v15 = lowbatch::bits_of(q15);
  const uint32_t v26 = lowbatch::bits_of(q26), v37 = lowbatch::bits_of(q37);
  a[0] = __byte_perm(v04, v15, 0x5410);  // {n0, n1}: lo row, k 2t, 2t+1
  a[1] = __byte_perm(v26, v37, 0x5410);  // {n2, n3}: hi row
  a[2] = __byte_perm(v04, v15, 0x7632);  // {n4, n5}: lo row, k 2t+8, 2t+9
  a[3] = __byte_perm(v26, v37, 0x7632);  // {n6, n7}: hi row
}

template <int SCHEME, int G, int WG, int BT, int STAGES, int MIN_BLOCKS>
__global__ void __launch_bounds__(WG * 128, MIN_BLOCKS)
kernel_rs(int m, int n, int k, const __half* __restrict__ x, const uint8_t* __restrict__ w,
          const __half* __restrict__ scales, const __half* __restrict__ mins, __half* __restrict__ y,
          float* __restrict__ partial) {
  static_assert(SCHEME == Q4 || SCHEME == Q4_MIN, "4-bit weights only");
  static_assert(STAGES >= 3, "a ring of 3 or more k-tiles");
  using L = LayoutRS<SCHEME, WG, BT, STAGES>;
  constexpr bool kMin = SCHEME == Q4_MIN;
  constexpr int kGroups = G >= kTileK ? 1 : kTileK / G;  // scale groups per k-tile (G is 32 or a multiple of 64)
  extern __shared__ uint8_t raw[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + 1023) & ~uintptr_t(1023));
  uint8_t* xs = base;                  // [STAGES][BT rows x 128 B], swizzled
  uint8_t* qs = xs + STAGES * L::kX;   // [STAGES][kRows rows x 32 B]

  const int tiles_n = n / L::kRows;
  const int row0 = (blockIdx.x / tiles_n) * BT;        // tokens
  const int col0 = (blockIdx.x % tiles_n) * L::kRows;  // features
  const int per_split = (k / kTileK + gridDim.y - 1) / gridDim.y;  // split-K as in `kernel`
  const int kt_begin = blockIdx.y * per_split;
  const int kt_count = max(0, min(per_split, k / kTileK - kt_begin));
  const int groups = k / G;
  const int tid = threadIdx.x;
  const int lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int lo_row = (tid >> 7) * 64 + ((tid >> 5) & 3) * 16 + g;  // this thread's rows: lo_row, lo_row + 8
  const uint32_t sel = static_cast<uint32_t>(t | ((t + 4) << 4));

  auto load = [&](int stage, int kt) {
    const uint32_t xdst = smem_addr(xs + stage * L::kX);
#pragma unroll
    for (int i = tid; i < BT * 8; i += L::kThreads) {
      const int r = i >> 3, c = i & 7;
      const bool valid = row0 + r < m;
      const __half* src = valid ? x + static_cast<size_t>(row0 + r) * k + (kt_begin + kt) * kTileK + c * 8 : x;
      copy16(xdst + swizzled(r, c), src, valid);
    }
    const uint32_t qdst = smem_addr(qs + stage * L::kQ);
#pragma unroll
    for (int i = tid; i < L::kRows * 2; i += L::kThreads) {
      const int r = i >> 1, c = i & 1;
      const uint8_t* src = w + static_cast<size_t>(col0 + r) * (static_cast<size_t>(k) / 2) +
                           (kt_begin + kt) * 32 + c * 16;
      copy16(qdst + i * 16, src, true);
    }
  };
  // this thread's two rows' scales (and mins) of k-tile kt, from global memory a k-tile ahead
  auto load_scales = [&](int kt, __half (&s)[2][kGroups], __half (&mn)[2][kGroups]) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < kGroups; ++j) {
        const size_t at = static_cast<size_t>(col0 + lo_row + 8 * h) * groups +
                          ((kt_begin + kt) * kTileK + j * G) / G;
        s[h][j] = scales[at];
        if (kMin) mn[h][j] = mins[at];
      }
  };
  auto fragments = [&](int stage, const __half (&s)[2][kGroups], const __half (&mn)[2][kGroups],
                       uint32_t (&a)[4][4]) {
    const uint4* lo = reinterpret_cast<const uint4*>(qs + stage * L::kQ + lo_row * 32);
    const uint4* hi = reinterpret_cast<const uint4*>(qs + stage * L::kQ + (lo_row + 8) * 32);
    const uint4 l0 = lo[0], l1 = lo[1], h0 = hi[0], h1 = hi[1];
    const uint32_t lw[8] = {l0.x, l0.y, l0.z, l0.w, l1.x, l1.y, l1.z, l1.w};
    const uint32_t hw[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
#pragma unroll
    for (int step = 0; step < 4; ++step) {
      const int j = step * kGroups / 4;
      const __half2 s_lo = __half2half2(s[0][j]), s_hi = __half2half2(s[1][j]);
      const __half2 m_lo = kMin ? __half2half2(mn[0][j]) : s_lo, m_hi = kMin ? __half2half2(mn[1][j]) : s_hi;
      fragment<SCHEME>(lw[2 * step], hw[2 * step], lw[2 * step + 1], hw[2 * step + 1], sel, s_lo, m_lo, s_hi, m_hi,
                       a[step]);
    }
  };

  float acc[BT / 2];
#pragma unroll
  for (int i = 0; i < BT / 2; ++i) acc[i] = 0.0f;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < kt_count) load(s, s);
    lowbatch::copy_commit();
  }
  __half sc[2][kGroups], mn[2][kGroups];
  if (kt_count > 0) load_scales(0, sc, mn);
  uint32_t fa[4][4], fb[4][4];
  lowbatch::copy_wait<STAGES - 2>();
  __syncthreads();
  if (kt_count > 0) fragments(0, sc, mn, fa);
  if (kt_count > 1) load_scales(1, sc, mn);

  // One k-tile: its fragments `cur` are ready; issue its wgmmas, wait for the k-tile before (its fragments `next`
  // and its x slot are free then), convert k-tile kt + 1 into `next` while the tensor cores run, refill the ring.
  auto step = [&](int kt, uint32_t (&cur)[4][4], uint32_t (&next)[4][4]) {
    const uint32_t x0 = smem_addr(xs + (kt % STAGES) * L::kX);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kTileK / 16; ++kk) wgmma_rs<BT>(acc, cur[kk], descriptor(x0 + kk * 32));
    wgmma_commit();
    wgmma_wait<1>();  // this warpgroup's kt - 1 is done
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) hold(next[i][j]);
    if (kt + 1 < kt_count) {
      __half sc_next[2][kGroups], mn_next[2][kGroups];
      if (kt + 2 < kt_count) load_scales(kt + 2, sc_next, mn_next);
      lowbatch::copy_wait<STAGES - 3>();  // k-tile kt + 1 (this thread's copies)
      __syncthreads();                    // ... everyone's; every warpgroup is past kt - 1: its slot is free
      fragments((kt + 1) % STAGES, sc, mn, next);
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int j = 0; j < kGroups; ++j) {
          sc[h][j] = sc_next[h][j];
          if (kMin) mn[h][j] = mn_next[h][j];
        }
    } else {
      __syncthreads();
    }
    const int refill = kt + STAGES - 1;
    if (refill < kt_count) load(refill % STAGES, refill);
    lowbatch::copy_commit();
  };
#pragma unroll 1
  for (int kt = 0; kt < kt_count; kt += 2) {
    step(kt, fa, fb);
    if (kt + 1 < kt_count) step(kt + 1, fb, fa);
  }
  wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < BT / 2; ++i) hold(acc[i]);

  // accumulator d[i]: feature lo_row + 8 ((i % 4) / 2), token 8 (i / 4) + 2t + i % 2. Lanes g and g ^ 1 swap
  // halves so that each stores two adjacent features of one token: even g token 2t, odd g token 2t + 1.
  const bool even = (g & 1) == 0;
#pragma unroll
  for (int j = 0; j < BT / 8; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
      const float got = __shfl_xor_sync(0xFFFFFFFFu, even ? v1 : v0, 4);
      const int token = row0 + 8 * j + 2 * t + (even ? 0 : 1);
      const int feature = col0 + lo_row + 8 * h - (even ? 0 : 1);
      if (token >= m) continue;
      const float first = even ? v0 : got, second = even ? got : v1;
      if (partial != nullptr)
        *reinterpret_cast<float2*>(partial + (static_cast<size_t>(blockIdx.y) * m + token) * n + feature) =
            make_float2(first, second);
      else
        *reinterpret_cast<__half2*>(y + static_cast<size_t>(token) * n + feature) = __floats2half2_rn(first, second);
    }
  }
}

template <int SCHEME, int G, int WG, int BT, int STAGES, int MIN_BLOCKS>
static bool opted_in_rs = false;

// Launches one RS tile shape (as `launch`): WG warpgroups of 64 features, BT tokens per block.
template <int SCHEME, int G, int WG, int BT, int STAGES, int MIN_BLOCKS = 1>
cudaError_t launch_rs(int m, int n, int k, const void* x, const void* w, const void* scales, const void* mins,
                      void* y, cudaStream_t stream, int splits = 1, float* workspace = nullptr) {
  using L = LayoutRS<SCHEME, WG, BT, STAGES>;
  if (n % L::kRows != 0 || k % kTileK != 0 || k % G != 0 || (G < kTileK && kTileK % G != 0) || m <= 0)
    return cudaErrorInvalidValue;
  auto* fn = kernel_rs<SCHEME, G, WG, BT, STAGES, MIN_BLOCKS>;
  if (!opted_in_rs<SCHEME, G, WG, BT, STAGES, MIN_BLOCKS>) {
    cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, L::kBytes);
    if (err != cudaSuccess) return err;
    opted_in_rs<SCHEME, G, WG, BT, STAGES, MIN_BLOCKS> = true;
  }
  if (splits > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  const dim3 grid((m + BT - 1) / BT * (n / L::kRows), splits > 1 ? splits : 1);
  fn<<<grid, L::kThreads, L::kBytes, stream>>>(m, n, k, static_cast<const __half*>(x), static_cast<const uint8_t*>(w),
                                               static_cast<const __half*>(scales), static_cast<const __half*>(mins),
                                               static_cast<__half*>(y), splits > 1 ? workspace : nullptr);
  if (splits > 1) sum_splits(m, n, y, stream, splits, workspace);
  return cudaGetLastError();
}

}  // namespace
}  // namespace qgemm90
}  // namespace ember

#endif  // EMBER_PREFILL_QGEMM_SM90_RS_CUH
