// ember's Hopper prefill GEMM for 16-bit weights: y[M, N] = x[M, K] . W[N, K]^T, fp32 accumulation on wgmma, x/W/y
// fp16 or bf16, all row-major with K (or N) contiguous; M is the token count of a (ragged) prefill, any value.
// sm_90a only (TMA, mbarriers, wgmma); prefill_gemm.cu keeps CUTLASS 2 for sm_80.
//
// Warp-specialized: a block is one producer warpgroup and two consumer warpgroups. One producer thread streams
// k-tiles of 64 (128 bytes: the swizzle row) of the x tile (128 rows) and the W tile (BN rows) with TMA into a
// STAGES-deep ring of shared memory, 128-byte swizzled, each slot guarded by a `full` mbarrier (TMA's transaction
// count) and an `empty` one (one arrival per consumer warp). Each consumer warpgroup owns 64 rows of the tile and
// issues four m64nBNk16 wgmmas per k-tile from shared memory, keeping one k-tile in flight while it waits for the
// next. TMA zero-fills rows and k beyond the tensors, so M, N and K need only be multiples of 8 (16-byte rows);
// the epilogue stores the rows and columns that exist.
//
// Blocks are ordered in groups of kGroupM row tiles (rows fastest), so that a wave of blocks shares its W tiles
// through L2 instead of streaming all of W once per row tile. A grid under half the SMs splits K; the splits'
// fp32 partials are summed in order by a second kernel (the same bits every run).
#ifndef EMBER_PREFILL_GEMM_SM90_CUH
#define EMBER_PREFILL_GEMM_SM90_CUH
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "tma.cuh"

namespace ember {
namespace gemm90 {
// Internal linkage: every library that includes this keeps its own kernels and launch flags.
namespace {

constexpr int kTileK = 64;     // elements of one k-tile: 128 bytes of 16-bit values, one swizzle row
constexpr int kRowBytes = 128;
constexpr int kBM = 128;       // rows of a tile: two consumer warpgroups of 64
constexpr int kThreads = 384;  // producer + two consumers
constexpr int kGroupM = 16;    // row tiles per raster group

using tma::bar_arrive;
using tma::bar_expect;
using tma::bar_init;
using tma::bar_wait;
using tma::smem_addr;
using tma::tma_load;

// ---- wgmma ----------------------------------------------------------------------------------------------------------

// wgmma shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row atoms 1024 bytes apart.
__device__ __forceinline__ uint64_t descriptor(uint32_t addr) {
  uint64_t d = (addr & 0x3FFFFu) >> 4;
  d |= uint64_t(1) << 16;          // leading byte offset (unused by swizzled K-major layouts)
  d |= uint64_t(1024 >> 4) << 32;  // stride byte offset: the next 8 rows
  d |= uint64_t(1) << 62;          // 128-byte swizzle
  return d;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }

#define EMBER_F8(b) "+f"(d[b]), "+f"(d[b + 1]), "+f"(d[b + 2]), "+f"(d[b + 3]), "+f"(d[b + 4]), "+f"(d[b + 5]), \
    "+f"(d[b + 6]), "+f"(d[b + 7])
#define EMBER_F64(b) EMBER_F8(b), EMBER_F8(b + 8), EMBER_F8(b + 16), EMBER_F8(b + 24), EMBER_F8(b + 32), \
    EMBER_F8(b + 40), EMBER_F8(b + 48), EMBER_F8(b + 56)
#define EMBER_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define EMBER_D128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define EMBER_WGMMA(shape, type, dregs, a, b) \
  "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\nwgmma.mma_async.sync.aligned." shape ".f32." type "." type " " dregs \
  ", " a ", " b ", p, 1, 1, 0, 0;\n}\n"

// d[64 x BN] += a[64 x 16] . b[BN x 16]^T, both K-major in shared memory
template <class T, int BN>
__device__ __forceinline__ void wgmma(float* d, uint64_t a, uint64_t b) {
  constexpr bool bf16 = std::is_same<T, __nv_bfloat16>::value;
  if constexpr (BN == 128 && !bf16)
    asm volatile(EMBER_WGMMA("m64n128k16", "f16", EMBER_D64, "%64", "%65") : EMBER_F64(0) : "l"(a), "l"(b));
  else if constexpr (BN == 128)
    asm volatile(EMBER_WGMMA("m64n128k16", "bf16", EMBER_D64, "%64", "%65") : EMBER_F64(0) : "l"(a), "l"(b));
  else if constexpr (!bf16)
    asm volatile(EMBER_WGMMA("m64n256k16", "f16", EMBER_D128, "%128", "%129")
                 : EMBER_F64(0), EMBER_F64(64) : "l"(a), "l"(b));
  else
    asm volatile(EMBER_WGMMA("m64n256k16", "bf16", EMBER_D128, "%128", "%129")
                 : EMBER_F64(0), EMBER_F64(64) : "l"(a), "l"(b));
}
#undef EMBER_WGMMA
#undef EMBER_D128
#undef EMBER_D64
#undef EMBER_F64
#undef EMBER_F8

// Keeps an accumulator of an in-flight wgmma where it is until this point: the compiler does not know that the
// asynchronous instruction still writes it.
__device__ __forceinline__ void hold(float& r) { asm volatile("" : "+f"(r)::"memory"); }

template <class T>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  uint32_t out;
  if constexpr (std::is_same<T, __half>::value) {
    const __half2 h = __floats2half2_rn(a, b);
    memcpy(&out, &h, 4);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    memcpy(&out, &h, 4);
  }
  return out;
}

// ---- the kernel -----------------------------------------------------------------------------------------------------

template <int BN, int STAGES>
struct Layout {
  static constexpr int kX = kBM * kRowBytes;  // x tile per stage
  static constexpr int kW = BN * kRowBytes;   // W tile per stage
  static constexpr int kBytes = STAGES * (kX + kW) + 2 * STAGES * 8 + 1024;  // + barriers + room to align to 1024
};

template <class T, int BN, int STAGES>
__global__ void __launch_bounds__(kThreads, 1)
kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap w_map, int m, int n, int k,
       T* __restrict__ y, float* __restrict__ partial) {
// Hopper code only in the sm_90a pass of a multi-arch object (the sm_80 cubin holds an empty kernel, never launched)
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = Layout<BN, STAGES>;
  extern __shared__ uint8_t raw[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + 1023) & ~uintptr_t(1023));
  uint8_t* xs = base;                 // [STAGES][128 rows x 128 B], swizzled by TMA
  uint8_t* ws = xs + STAGES * L::kX;  // [STAGES][BN rows x 128 B]
  uint64_t* full = reinterpret_cast<uint64_t*>(ws + STAGES * L::kW);
  uint64_t* empty = full + STAGES;

  // the block's tile: groups of kGroupM row tiles, rows fastest within a group
  const int tiles_m = (m + kBM - 1) / kBM, tiles_n = (n + BN - 1) / BN;
  const int group = blockIdx.x / (kGroupM * tiles_n);
  const int first_m = group * kGroupM;
  const int group_m = min(kGroupM, tiles_m - first_m);
  const int local = blockIdx.x - group * kGroupM * tiles_n;
  const int row0 = (first_m + local % group_m) * kBM;
  const int col0 = (local / group_m) * BN;
  // split-K (gridDim.y splits): this block's k-tiles [kt_begin, kt_begin + kt_count)
  const int k_tiles = (k + kTileK - 1) / kTileK;
  const int per_split = (k_tiles + gridDim.y - 1) / gridDim.y;
  const int kt_begin = blockIdx.y * per_split;
  const int kt_count = max(0, min(per_split, k_tiles - kt_begin));

  const int tid = threadIdx.x;
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      bar_init(&full[s], 1);
      bar_init(&empty[s], 8);  // one arrival per consumer warp
    }
    tma::fence_barrier_init();
  }
  __syncthreads();

  if (tid < 128) {  // the producer warpgroup: one thread issues every copy
    if (tid == 0) {
      tma::prefetch(&x_map);
      tma::prefetch(&w_map);
      for (int kt = 0; kt < kt_count; ++kt) {
        const int s = kt % STAGES;
        if (kt >= STAGES) bar_wait(&empty[s], ((kt / STAGES) - 1) & 1);
        bar_expect(&full[s], L::kX + L::kW);
        const int k0 = (kt_begin + kt) * kTileK;
        tma_load(xs + s * L::kX, &x_map, &full[s], k0, row0);
        tma_load(ws + s * L::kW, &w_map, &full[s], k0, col0);
      }
    }
    return;
  }

  // a consumer warpgroup: rows band .. band + 63 of the tile
  const int band = (tid / 128 - 1) * 64;
  const int lane = tid & 31, warp = (tid >> 5) & 3;
  float acc[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
#pragma unroll 1
  for (int kt = 0; kt < kt_count; ++kt) {
    const int s = kt % STAGES;
    bar_wait(&full[s], (kt / STAGES) & 1);
    const uint32_t a0 = smem_addr(xs + s * L::kX + band * kRowBytes);
    const uint32_t b0 = smem_addr(ws + s * L::kW);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kTileK / 16; ++kk) wgmma<T, BN>(acc, descriptor(a0 + kk * 32), descriptor(b0 + kk * 32));
    wgmma_commit();
    wgmma_wait<1>();  // k-tile kt - 1 is done: its slot goes back to the producer
    if (kt > 0 && lane == 0) bar_arrive(&empty[(kt - 1) % STAGES]);
  }
  wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) hold(acc[i]);

  // accumulator d[i]: n8 block j = i / 4, row band + 16 warp + g + 8 ((i % 4) / 2), column 8 j + 2 t + i % 2
  const int r_lo = row0 + band + 16 * warp + (lane >> 2);
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
    const int col = col0 + 8 * j + 2 * (lane & 3);
    if (col >= n) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r_lo + 8 * h;
      if (r >= m) continue;
      if (partial != nullptr)
        *reinterpret_cast<float2*>(partial + (static_cast<size_t>(blockIdx.y) * m + r) * n + col) =
            make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
      else
        *reinterpret_cast<uint32_t*>(y + static_cast<size_t>(r) * n + col) =
            pack2<T>(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
    }
  }
#endif
}

// y = the sum of the splits' fp32 partials [splits][count], 2 values per thread (count is even).
template <class T>
__global__ void reduce_splits(const float2* __restrict__ partial, int splits, size_t count2, uint32_t* __restrict__ y) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= count2) return;
  float2 v = partial[i];
  for (int s = 1; s < splits; ++s) {
    const float2 p = partial[s * count2 + i];
    v.x += p.x, v.y += p.y;
  }
  y[i] = pack2<T>(v.x, v.y);
}

// ---- the host side --------------------------------------------------------------------------------------------------

// A row-major [rows, cols] 16-bit tensor as boxes of `box_rows` x 64, 128-byte swizzled, zeros beyond its edges.
template <class T>
bool tensor_map(CUtensorMap* map, const void* data, int rows, int cols, int box_rows) {
  const CUtensorMapDataType type = std::is_same<T, __half>::value ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                                  : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  return tma::tensor_map_2d(map, type, 2, data, rows, cols, kTileK, box_rows, CU_TENSOR_MAP_SWIZZLE_128B);
}

template <class T, int BN, int STAGES>
static bool opted_in = false;

// Launches one tile shape; splits > 1: split-K through `workspace` (splits * m * n floats).
template <class T, int BN, int STAGES>
cudaError_t launch(int m, int n, int k, const void* x, const void* w, void* y, cudaStream_t stream, int splits = 1,
                   float* workspace = nullptr) {
  using L = Layout<BN, STAGES>;
  if (m <= 0 || n % 8 != 0 || k % 8 != 0 || (splits > 1 && workspace == nullptr)) return cudaErrorInvalidValue;
  auto* fn = kernel<T, BN, STAGES>;
  if (!opted_in<T, BN, STAGES>) {  // per function and process; setting it twice is harmless
    cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, L::kBytes);
    if (err != cudaSuccess) return err;
    opted_in<T, BN, STAGES> = true;
  }
  CUtensorMap x_map, w_map;
  if (!tensor_map<T>(&x_map, x, m, k, kBM) || !tensor_map<T>(&w_map, w, n, k, BN)) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>((m + kBM - 1) / kBM * ((n + BN - 1) / BN)), splits > 1 ? splits : 1);
  fn<<<grid, kThreads, L::kBytes, stream>>>(x_map, w_map, m, n, k, static_cast<T*>(y),
                                            splits > 1 ? workspace : nullptr);
  if (splits > 1) {
    const size_t count2 = static_cast<size_t>(m) * n / 2;
    reduce_splits<T><<<static_cast<unsigned>((count2 + 255) / 256), 256, 0, stream>>>(
        reinterpret_cast<const float2*>(workspace), splits, count2, static_cast<uint32_t*>(y));
  }
  return cudaGetLastError();
}

// ---- the tile choice ------------------------------------------------------------------------------------------------

struct Tile {
  int bn;
  double rate;  // TFLOP/s at m = 2048 on an H200 (tools/prefill_gemm_check.py)
};
constexpr Tile kTiles[] = {{256, 600.0}, {128, 520.0}};

// The tile whose large-m rate times the fullness of its last wave is highest (one block per SM).
int choose(int64_t m, int64_t n, int sms) {
  int best = 0;
  double best_score = 0.0;
  for (int i = 0; i < 2; ++i) {
    const int64_t blocks = (m + kBM - 1) / kBM * ((n + kTiles[i].bn - 1) / kTiles[i].bn);
    const int64_t waves = (blocks + sms - 1) / sms;
    const double score = kTiles[i].rate * static_cast<double>(blocks) / static_cast<double>(waves * sms);
    if (score > best_score) best = i, best_score = score;
  }
  return best;
}

// Split-K for grids that leave most SMs idle (a short prompt): enough splits to about fill them, each split at
// least 8 k-tiles.
int choose_splits(int64_t m, int64_t n, int64_t k, int bn, int sms) {
  const int64_t blocks = (m + kBM - 1) / kBM * ((n + bn - 1) / bn);
  if (2 * blocks > sms) return 1;
  const int64_t by_grid = sms / blocks, by_k = (k + kTileK - 1) / kTileK / 8;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({by_grid, by_k, 8})));
}

// y = x . W^T with the chosen tile (and split-K where `workspace` has room for it: workspace_floats).
template <class T>
cudaError_t run(int m, int n, int k, const void* x, const void* w, void* y, cudaStream_t stream, int sms,
                float* workspace, size_t workspace_floats, int force_tile = -1, int force_splits = 0) {
  const int tile = force_tile >= 0 ? force_tile : choose(m, n, sms);
  int splits = force_splits > 0 ? force_splits : choose_splits(m, n, k, kTiles[tile].bn, sms);
  if (splits > 1 && static_cast<size_t>(splits) * m * n > workspace_floats) splits = 1;
  if (tile == 0) return launch<T, 256, 4>(m, n, k, x, w, y, stream, splits, workspace);
  return launch<T, 128, 6>(m, n, k, x, w, y, stream, splits, workspace);
}

}  // namespace
}  // namespace gemm90
}  // namespace ember

#endif  // EMBER_PREFILL_GEMM_SM90_CUH
