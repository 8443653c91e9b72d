// ember's Hopper prefill GEMM for 4-bit weights, warp-specialized: prefill_qgemm_sm90_rs.cuh's register-operand
// form (y^T = W . x^T; each warp converts its own 16 weight rows of a k-tile into wgmma A fragments, x is the
// shared-memory B operand) fed by TMA instead of cp.async. One producer warp streams the x tile (BT tokens, 128-byte
// swizzled) and the packed weight tile (WG * 64 rows of 32 bytes) of each k-tile into a STAGES-deep ring guarded
// by mbarriers (`full`: TMA's byte count; `empty`: one arrival per consumer warp); the consumer warpgroups never
// meet at a block barrier, so the conversion of k-tile kt + 1 and the scale loads of kt + 3 run while wgmma works
// on kt, and a warpgroup that waits on its wgmma does not hold the others. Written for short prompts (a 128-token
// prefill: the rs kernel's k-tile chain of cp.async wait, block barrier, conversion and wgmma wait left 64 % of
// cycles without an eligible warp there, docs/measurements/2026-12-03-h200-qgemm-rs). Q4 and Q4_MIN.
#ifndef EMBER_PREFILL_QGEMM_SM90_WS_CUH
#define EMBER_PREFILL_QGEMM_SM90_WS_CUH
#include "prefill_qgemm_sm90_rs.cuh"
#include "tma.cuh"

namespace ember {
namespace qgemm90 {
namespace {

template <int WG, int BT, int STAGES>
struct LayoutWS {
  static constexpr int kConsumers = WG * 128;
  static constexpr int kThreads = kConsumers + 32;  // + the producer warp
  static constexpr int kRows = WG * 64;             // weight rows (features) per block
  static constexpr int kX = BT * kRowBytes;         // x tile per stage
  static constexpr int kQ = kRows * 32;             // packed weight tile per stage: 8 words per row
  static constexpr int kBytes = STAGES * (kX + kQ) + 2 * STAGES * 8 + 1024;
};

template <int SCHEME, int G, int WG, int BT, int STAGES, int MIN_BLOCKS>
__global__ void __launch_bounds__(LayoutWS<WG, BT, STAGES>::kThreads, MIN_BLOCKS)
kernel_ws(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap w_map, int m, int n, int k,
          const __half* __restrict__ scales, const __half* __restrict__ mins, __half* __restrict__ y,
          float* __restrict__ partial) {
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(SCHEME == Q4 || SCHEME == Q4_MIN, "4-bit weights only");
  using L = LayoutWS<WG, BT, STAGES>;
  constexpr bool kMin = SCHEME == Q4_MIN;
  constexpr int kGroups = G >= kTileK ? 1 : kTileK / G;  // scale groups per k-tile (G is 32 or a multiple of 64)
  extern __shared__ uint8_t raw[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + 1023) & ~uintptr_t(1023));
  uint8_t* xs = base;                 // [STAGES][BT rows x 128 B], swizzled by TMA
  uint8_t* qs = xs + STAGES * L::kX;  // [STAGES][kRows rows x 32 B]
  uint64_t* full = reinterpret_cast<uint64_t*>(qs + STAGES * L::kQ);
  uint64_t* empty = full + STAGES;

  const int tiles_n = n / L::kRows;
  const int row0 = (blockIdx.x / tiles_n) * BT;        // tokens
  const int col0 = (blockIdx.x % tiles_n) * L::kRows;  // features
  const int per_split = (k / kTileK + gridDim.y - 1) / gridDim.y;  // split-K as in `kernel`
  const int kt_begin = blockIdx.y * per_split;
  const int kt_count = max(0, min(per_split, k / kTileK - kt_begin));
  const int tid = threadIdx.x;
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      tma::bar_init(&full[s], 1);
      tma::bar_init(&empty[s], WG * 4);  // one arrival per consumer warp
    }
    tma::fence_barrier_init();
  }
  __syncthreads();

  if (tid >= L::kConsumers) {  // the producer warp: one thread issues every copy
    if (tid == L::kConsumers) {
      tma::prefetch(&x_map);
      tma::prefetch(&w_map);
      for (int kt = 0; kt < kt_count; ++kt) {
        const int s = kt % STAGES;
        if (kt >= STAGES) tma::bar_wait(&empty[s], ((kt / STAGES) - 1) & 1);
        tma::bar_expect(&full[s], L::kX + L::kQ);
        tma::tma_load(xs + s * L::kX, &x_map, &full[s], (kt_begin + kt) * kTileK, row0);
        tma::tma_load(qs + s * L::kQ, &w_map, &full[s], (kt_begin + kt) * 32, col0);
      }
    }
    return;
  }

  const int groups = k / G;
  const int lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int lo_row = (tid >> 7) * 64 + ((tid >> 5) & 3) * 16 + g;  // this thread's rows: lo_row, lo_row + 8
  const uint32_t sel = static_cast<uint32_t>(t | ((t + 4) << 4));
  struct Scales {
    __half s[2][kGroups], m[2][kGroups];
  };
  auto load_scales = [&](int kt, Scales& out) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < kGroups; ++j) {
        const size_t at = static_cast<size_t>(col0 + lo_row + 8 * h) * groups +
                          ((kt_begin + kt) * kTileK + j * G) / G;
        out.s[h][j] = scales[at];
        if (kMin) out.m[h][j] = mins[at];
      }
  };
  auto fragments = [&](int stage, const Scales& sc, uint32_t (&a)[4][4]) {
    const uint4* lo = reinterpret_cast<const uint4*>(qs + stage * L::kQ + lo_row * 32);
    const uint4* hi = reinterpret_cast<const uint4*>(qs + stage * L::kQ + (lo_row + 8) * 32);
    const uint4 l0 = lo[0], l1 = lo[1], h0 = hi[0], h1 = hi[1];
    const uint32_t lw[8] = {l0.x, l0.y, l0.z, l0.w, l1.x, l1.y, l1.z, l1.w};
    const uint32_t hw[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
#pragma unroll
    for (int step = 0; step < 4; ++step) {
      const int j = step * kGroups / 4;
      const __half2 s_lo = __half2half2(sc.s[0][j]), s_hi = __half2half2(sc.s[1][j]);
      const __half2 m_lo = kMin ? __half2half2(sc.m[0][j]) : s_lo, m_hi = kMin ? __half2half2(sc.m[1][j]) : s_hi;
      fragment<SCHEME>(lw[2 * step], hw[2 * step], lw[2 * step + 1], hw[2 * step + 1], sel, s_lo, m_lo, s_hi, m_hi,
                       a[step]);
    }
  };

  float acc[BT / 2];
#pragma unroll
  for (int i = 0; i < BT / 2; ++i) acc[i] = 0.0f;
  Scales sc1, sc2;  // the scales of k-tiles kt + 1 and kt + 2
  uint32_t fa[4][4], fb[4][4];
  if (kt_count > 0) {
    Scales sc0;
    load_scales(0, sc0);
    if (kt_count > 1) load_scales(1, sc1);
    if (kt_count > 2) load_scales(2, sc2);
    tma::bar_wait(&full[0], 0);
    fragments(0, sc0, fa);
  }

  // One k-tile: its fragments `cur` are ready; issue its wgmmas, wait for the k-tile before (its fragments `next`
  // and its ring slot are free then), convert k-tile kt + 1 into `next` while the tensor cores run.
  auto step = [&](int kt, uint32_t (&cur)[4][4], uint32_t (&next)[4][4]) {
    const uint32_t x0 = tma::smem_addr(xs + (kt % STAGES) * L::kX);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kTileK / 16; ++kk) wgmma_rs<BT>(acc, cur[kk], descriptor(x0 + kk * 32));
    wgmma_commit();
    wgmma_wait<1>();  // this warpgroup's kt - 1 is done
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) hold(next[i][j]);
    if (kt > 0 && lane == 0) tma::bar_arrive(&empty[(kt - 1) % STAGES]);
    if (kt + 1 < kt_count) {
      tma::bar_wait(&full[(kt + 1) % STAGES], ((kt + 1) / STAGES) & 1);
      fragments((kt + 1) % STAGES, sc1, next);
      sc1 = sc2;
      if (kt + 3 < kt_count) load_scales(kt + 3, sc2);
    }
  };
#pragma unroll 1
  for (int kt = 0; kt < kt_count; kt += 2) {
    step(kt, fa, fb);
    if (kt + 1 < kt_count) step(kt + 1, fb, fa);
  }
  wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < BT / 2; ++i) hold(acc[i]);

  // the epilogue of kernel_rs: lanes g and g ^ 1 swap halves so that each stores two adjacent features of a token
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
#endif
}

template <int SCHEME, int G, int WG, int BT, int STAGES, int MIN_BLOCKS>
static bool opted_in_ws = false;

// Launches one warp-specialized tile shape (as `launch_rs`): WG consumer warpgroups of 64 features, BT tokens.
template <int SCHEME, int G, int WG, int BT, int STAGES, int MIN_BLOCKS = 1>
cudaError_t launch_ws(int m, int n, int k, const void* x, const void* w, const void* scales, const void* mins,
                      void* y, cudaStream_t stream, int splits = 1, float* workspace = nullptr) {
  using L = LayoutWS<WG, BT, STAGES>;
  if (n % L::kRows != 0 || k % kTileK != 0 || k % G != 0 || (G < kTileK && kTileK % G != 0) || m <= 0)
    return cudaErrorInvalidValue;
  auto* fn = kernel_ws<SCHEME, G, WG, BT, STAGES, MIN_BLOCKS>;
  if (!opted_in_ws<SCHEME, G, WG, BT, STAGES, MIN_BLOCKS>) {
    cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, L::kBytes);
    if (err != cudaSuccess) return err;
    opted_in_ws<SCHEME, G, WG, BT, STAGES, MIN_BLOCKS> = true;
  }
  if (splits > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  CUtensorMap x_map, w_map;
  if (!tma::tensor_map_2d(&x_map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, x, m, k, kTileK, BT,
                          CU_TENSOR_MAP_SWIZZLE_128B) ||
      !tma::tensor_map_2d(&w_map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, w, n, k / 2, 32, L::kRows,
                          CU_TENSOR_MAP_SWIZZLE_NONE))
    return cudaErrorInvalidValue;
  const dim3 grid((m + BT - 1) / BT * (n / L::kRows), splits > 1 ? splits : 1);
  fn<<<grid, L::kThreads, L::kBytes, stream>>>(x_map, w_map, m, n, k, static_cast<const __half*>(scales),
                                               static_cast<const __half*>(mins), static_cast<__half*>(y),
                                               splits > 1 ? workspace : nullptr);
  if (splits > 1) sum_splits(m, n, y, stream, splits, workspace);
  return cudaGetLastError();
}

}  // namespace
}  // namespace qgemm90
}  // namespace ember

#endif  // EMBER_PREFILL_QGEMM_SM90_WS_CUH
