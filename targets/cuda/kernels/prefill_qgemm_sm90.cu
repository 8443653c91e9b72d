// The packed function around prefill_qgemm_sm90.cuh's wgmma GEMM for quantized weights, compiled by nvcc at
// `ember compile` (targets/cuda/prefill_qgemm.py) for sm_90a and linked into model.so; the Relax VM calls
// EMBER_QGEMM_NAME(x, qweight, scales[, mins], y) through call_dps_packed. One object per (scheme, group).
//
// The tile is chosen per call from m and N by a wave model: each tile's measured large-m rate on an H200 times
// the fraction of its last wave of blocks that is full, so that a 512-token prompt does not run 64 big blocks on
// 132 SMs; 4-bit weights also have the tiles of prefill_qgemm_sm90_rs.cuh (the weights as wgmma's register
// operand: 1.15x at 2048 tokens); a grid that still fills less than half the
// SMs (a short prompt) splits K, the splits summed in order by a second kernel (deterministic).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include <cuda_runtime.h>

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#include "prefill_qgemm_sm90.cuh"
#include "prefill_qgemm_sm90_rs.cuh"
#include "prefill_qgemm_sm90_ws.cuh"
#include "split_workspace.cuh"

#ifndef EMBER_QGEMM_SCHEME
#define EMBER_QGEMM_SCHEME 0
#endif
#ifndef EMBER_QGEMM_GROUP
#define EMBER_QGEMM_GROUP 32
#endif
#ifndef EMBER_QGEMM_NAME
#define EMBER_QGEMM_NAME ember_prefill_qgemm_q4_g32
#endif

namespace ember {
namespace qgemm90 {
namespace {

constexpr int S = EMBER_QGEMM_SCHEME;
constexpr int G = EMBER_QGEMM_GROUP;

enum Kind { kSmem, kRS, kWS };  // both operands in shared memory; weights from registers (cp.async; TMA producer)
struct Tile {
  int bm, bn, per_sm;  // tokens, weight rows (features) per block; per_sm: blocks an SM holds at once
  double rate_128;     // TFLOP/s at m = 128 and at m = 2048 on an H200 (tools/qgemm_check.py); the older tiles
  double rate_2048;    // have one rate (their m = 2048 one), as when only that was measured
  Kind kind;           // kRS and kWS: 4-bit only
};
// Both operands in shared memory: 128x256, 128x128, 128x64; weights from registers: 128 tokens x 128 features (one
// and two blocks an SM), 128 x 256, 256 x 128; fed by a TMA producer warp: 128 x 128, 128 tokens x 64 features
// (two blocks an SM). Rates: docs/measurements/2026-12-03-h200-qgemm-rs, 2026-12-07-gpu.
constexpr Tile kTiles[] = {{128, 256, 1, 355.0, 355.0, kSmem}, {128, 128, 1, 240.0, 240.0, kSmem},
                           {128, 64, 2, 232.0, 232.0, kSmem},  {128, 128, 1, 279.0, 279.0, kRS},
                           {128, 128, 2, 330.0, 330.0, kRS},   {128, 256, 1, 316.0, 316.0, kRS},
                           {256, 128, 1, 412.0, 412.0, kRS},
                           // measured on an H100 (2026-12-07-gpu/call1b/qgemm-ws.jsonl; the older tiles' rates came out
                           // the same there as on the H200): faster than every other tile at m = 77..2048
                           {128, 128, 1, 390.0, 430.0, kWS},   {128, 64, 2, 330.0, 420.0, kWS}};
constexpr int kTileCount = sizeof(kTiles) / sizeof(kTiles[0]);

// The tile's rate at this many tokens (between its 128- and 2048-token rates, by log m) times the fullness of its
// last wave of blocks and the share of its token rows that are real (a 256-token tile on a 128-token prompt
// computes half zeros).
int choose(int64_t m, int64_t n, int sms) {
  int best = -1;
  double best_score = 0.0;
  const double at = std::min(1.0, std::max(0.0, std::log2(static_cast<double>(m) / 128.0) / 4.0));
  for (int i = 0; i < kTileCount; ++i) {
    const Tile& t = kTiles[i];
    if ((t.kind != kSmem && S == Q8) || n % t.bn != 0) continue;
    const int64_t tiles_m = (m + t.bm - 1) / t.bm;
    const int64_t blocks = tiles_m * (n / t.bn);
    const int64_t slots = static_cast<int64_t>(sms) * t.per_sm;
    const int64_t waves = (blocks + slots - 1) / slots;
    const double rate = t.rate_128 + (t.rate_2048 - t.rate_128) * at;
    const double score = rate * static_cast<double>(blocks) / static_cast<double>(waves * slots) *
                         static_cast<double>(m) / static_cast<double>(tiles_m * t.bm);
    if (score > best_score) best = i, best_score = score;
  }
  return best;
}

// Split-K for grids that leave most SMs idle (a short prompt): enough splits to about fill them, each split at
// least 8 k-tiles of 64.
int choose_splits(int64_t m, int64_t n, int64_t k, const Tile& t, int sms) {
  const int64_t blocks = (m + t.bm - 1) / t.bm * (n / t.bn);
  const int64_t slots = static_cast<int64_t>(sms) * t.per_sm;
  if (2 * blocks > slots) return 1;
  const int64_t by_grid = slots / blocks, by_k = k / kTileK / 8;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({by_grid, by_k, 8})));
}

using split_workspace::sm_count;
using split_workspace::workspace;

int64_t rows_of(const DLTensor* t) {
  int64_t rows = 1;
  for (int i = 0; i + 1 < t->ndim; ++i) rows *= t->shape[i];
  return rows;
}

const void* data_of(const DLTensor* t) { return static_cast<const char*>(t->data) + t->byte_offset; }

void run(DLTensor* x, DLTensor* w, DLTensor* scales, DLTensor* mins, DLTensor* y) {
  const int64_t m = rows_of(x), k = x->shape[x->ndim - 1], n = w->shape[0];
  TVM_FFI_ICHECK(rows_of(y) == m && y->shape[y->ndim - 1] == n) << "ember_prefill_qgemm: output is not [M, N]";
  TVM_FFI_ICHECK(x->dtype.bits == 16 && y->dtype.bits == 16) << "ember_prefill_qgemm: fp16 x and y only";
  TVM_FFI_ICHECK(scales->ndim == 2 && scales->shape[0] == n && scales->shape[1] * G == k)
      << "ember_prefill_qgemm: scales are not [" << n << ", " << k / G << "]";
  if (m == 0) return;
  const int device = x->device.device_id;
  auto stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(kDLCUDA, device));
  const void* mp = mins != nullptr ? data_of(mins) : data_of(scales);
  const int tile = choose(m, n, sm_count(device));
  TVM_FFI_ICHECK(tile >= 0 && k % kTileK == 0) << "ember_prefill_qgemm: no tile for N=" << n << ", K=" << k;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  void* yp = const_cast<void*>(data_of(y));
  int splits = choose_splits(m, n, k, kTiles[tile], sm_count(device));
  float* partial = splits > 1 ? workspace(device, static_cast<size_t>(splits) * m * n, stream) : nullptr;
  if (partial == nullptr) splits = 1;
  const void *xp = data_of(x), *wp = data_of(w), *sp = data_of(scales);
  cudaError_t err = cudaErrorInvalidValue;
  if (tile == 0) err = launch<S, G, 128, 256, 4>(mi, ni, ki, xp, wp, sp, mp, yp, stream, splits, partial);
  if (tile == 1) err = launch<S, G, 128, 128, 4>(mi, ni, ki, xp, wp, sp, mp, yp, stream, splits, partial);
  if (tile == 2) err = launch<S, G, 128, 64, 4>(mi, ni, ki, xp, wp, sp, mp, yp, stream, splits, partial);
#if EMBER_QGEMM_SCHEME != 2
  if (tile == 3) err = launch_rs<S, G, 2, 128, 4, 1>(mi, ni, ki, xp, wp, sp, mp, yp, stream, splits, partial);
  if (tile == 4) err = launch_rs<S, G, 2, 128, 4, 2>(mi, ni, ki, xp, wp, sp, mp, yp, stream, splits, partial);
  if (tile == 5) err = launch_rs<S, G, 4, 128, 4, 1>(mi, ni, ki, xp, wp, sp, mp, yp, stream, splits, partial);
  if (tile == 6) err = launch_rs<S, G, 2, 256, 4, 1>(mi, ni, ki, xp, wp, sp, mp, yp, stream, splits, partial);
  if (tile == 7) err = launch_ws<S, G, 2, 128, 6, 1>(mi, ni, ki, xp, wp, sp, mp, yp, stream, splits, partial);
  if (tile == 8) err = launch_ws<S, G, 1, 128, 6, 2>(mi, ni, ki, xp, wp, sp, mp, yp, stream, splits, partial);
#endif
  TVM_FFI_ICHECK(err == cudaSuccess) << "ember_prefill_qgemm: " << cudaGetErrorString(err) << " (M=" << m
                                     << ", N=" << n << ", K=" << k << ")";
}

#if EMBER_QGEMM_SCHEME == 1  // Q4_MIN: scales and mins
void entry(DLTensor* x, DLTensor* w, DLTensor* scales, DLTensor* mins, DLTensor* y) { run(x, w, scales, mins, y); }
#else
void entry(DLTensor* x, DLTensor* w, DLTensor* scales, DLTensor* y) { run(x, w, scales, nullptr, y); }
#endif

}  // namespace
}  // namespace qgemm90
}  // namespace ember

// One level of indirection so that EMBER_QGEMM_NAME is expanded before TVM's macro pastes it.
#define EMBER_EXPORT(name, function) TVM_FFI_DLL_EXPORT_TYPED_FUNC(name, function)
EMBER_EXPORT(EMBER_QGEMM_NAME, ember::qgemm90::entry);
