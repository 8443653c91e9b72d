// ember's prefill GEMMs for 16-bit weights: y[M, N] = x[M, K] . W[N, K]^T, fp32 accumulation, x/W/y fp16 or bf16
// (EMBER_GEMM_BF16), all row-major with K (or N) contiguous. M is the token count of a (ragged) prefill, any value.
//
// One translation unit compiled by nvcc at `ember compile` (targets/cuda/prefill_gemm.py) into an object that is
// linked into model.so; the Relax VM calls the exported packed function EMBER_GEMM_NAME (call_dps_packed).
// It holds one kernel per arch and picks the one of the device it runs on:
//   sm_90: ember's warp-specialized TMA + wgmma kernel (prefill_gemm_sm90.cuh; Hopper-only instructions, compiled
//          for sm_90a only), or with EMBER_GEMM_CUTLASS90 CUTLASS 3's cooperative kernel (the A/B reference; it
//          takes ~50 s of nvcc on one core where ember's takes ~5 s);
//   sm_80: CUTLASS 2 multistage mma.sync GEMM (cp.async), for A100-class devices (EMBER_GEMM_SM80).
// The kernels run on the stream TVM's runtime has set for the device (TVMFFIEnvGetStream).
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#ifndef EMBER_GEMM_BF16
#define EMBER_GEMM_BF16 0
#endif
#ifndef EMBER_GEMM_CUTLASS90
#define EMBER_GEMM_CUTLASS90 0
#endif
#define EMBER_GEMM_CUTLASS (EMBER_GEMM_SM80 || (EMBER_GEMM_SM90 && EMBER_GEMM_CUTLASS90))

#if EMBER_GEMM_CUTLASS
#include <cutlass/cutlass.h>
#include <cutlass/bfloat16.h>
#include <cutlass/half.h>
#endif
#if EMBER_GEMM_SM80
#include <cutlass/gemm/device/gemm.h>
#endif
#if EMBER_GEMM_SM90 && EMBER_GEMM_CUTLASS90
#include <cute/tensor.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/util/packed_stride.hpp>
#endif
#if EMBER_GEMM_SM90 && !EMBER_GEMM_CUTLASS90
#include "prefill_gemm_sm90.cuh"
#include "split_workspace.cuh"
#endif

namespace ember {
namespace prefill_gemm {

#if EMBER_GEMM_BF16
using Element = __nv_bfloat16;  // what ember's kernel computes in
#else
using Element = __half;
#endif
#if EMBER_GEMM_CUTLASS
#if EMBER_GEMM_BF16
using T = cutlass::bfloat16_t;
#else
using T = cutlass::half_t;
#endif
using Accum = float;
#endif

#if EMBER_GEMM_SM90 && EMBER_GEMM_CUTLASS90
namespace sm90 {
using namespace cute;
// 128x128 output tiles, 64-wide k steps (128 bytes: the TMA swizzle), one CTA per cluster: the token count M is
// often below 256, where a 2-CTA cluster would leave half of them without a tile.
using TileShape = Shape<_128, _128, _64>;
using ClusterShape = Shape<_1, _1, _1>;
constexpr int kAlign = 16 / sizeof(T);

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, Accum, Accum, T, cutlass::layout::RowMajor, kAlign, T,
    cutlass::layout::RowMajor, kAlign, cutlass::epilogue::TmaWarpSpecializedCooperative>::CollectiveOp;

using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, T, cutlass::layout::RowMajor, kAlign, T,
    cutlass::layout::ColumnMajor, kAlign, Accum, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;

using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

cutlass::Status run(int m, int n, int k, const T* x, const T* w, T* y, cudaStream_t stream) {
  auto stride_a = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, make_shape(m, k, 1));
  auto stride_b = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, make_shape(n, k, 1));
  auto stride_c = cutlass::make_cute_packed_stride(typename Kernel::StrideC{}, make_shape(m, n, 1));
  auto stride_d = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, make_shape(m, n, 1));
  typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                {m, n, k, 1},
                                {x, stride_a, w, stride_b},
                                {{Accum(1), Accum(0)}, y, stride_c, y, stride_d}};
  if (Gemm::get_workspace_size(args) != 0) return cutlass::Status::kErrorWorkspaceNull;  // never for kGemm
  Gemm gemm;
  cutlass::Status status = gemm.can_implement(args);
  if (status != cutlass::Status::kSuccess) return status;
  status = gemm.initialize(args, nullptr, stream);
  if (status != cutlass::Status::kSuccess) return status;
  return gemm.run(stream);
}
}  // namespace sm90
#endif

#if EMBER_GEMM_SM80
namespace sm80 {
// x row-major (M x K), W^T column-major (K x N, i.e. W row-major), y row-major; 128x128x32 tiles of 4 warps
// (64x64 each), 4 cp.async stages.
using Gemm = cutlass::gemm::device::Gemm<
    T, cutlass::layout::RowMajor, T, cutlass::layout::ColumnMajor, T, cutlass::layout::RowMajor, Accum,
    cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, cutlass::gemm::GemmShape<128, 128, 32>,
    cutlass::gemm::GemmShape<64, 64, 32>, cutlass::gemm::GemmShape<16, 8, 16>,
    cutlass::epilogue::thread::LinearCombination<T, 128 / cutlass::sizeof_bits<T>::value, Accum, Accum>,
    cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, 4>;

cutlass::Status run(int m, int n, int k, const T* x, const T* w, T* y, cudaStream_t stream) {
  typename Gemm::Arguments args({m, n, k}, {x, k}, {w, k}, {y, n}, {y, n}, {Accum(1), Accum(0)});
  Gemm gemm;
  cutlass::Status status = gemm.can_implement(args);
  if (status != cutlass::Status::kSuccess) return status;
  return gemm(args, nullptr, stream);
}
}  // namespace sm80
#endif

#if EMBER_GEMM_SM90 && !EMBER_GEMM_CUTLASS90
namespace sm90 {
// the tile and split-K choice of prefill_gemm_sm90.cuh, the partials in this library's per-device buffer
cudaError_t run(int m, int n, int k, const void* x, const void* w, void* y, int device, cudaStream_t stream) {
  const int sms = split_workspace::sm_count(device);
  const int tile = gemm90::choose(m, n, sms);
  int splits = gemm90::choose_splits(m, n, k, gemm90::kTiles[tile].bn, sms);
  const size_t floats = static_cast<size_t>(splits) * m * n;
  float* partial = splits > 1 ? split_workspace::workspace(device, floats, stream) : nullptr;
  if (partial == nullptr) splits = 1;
  return gemm90::run<Element>(m, n, k, x, w, y, stream, sms, partial, partial != nullptr ? floats : 0, tile, splits);
}
}  // namespace sm90
#endif

// The device's compute capability major; EMBER_GEMM_ARCH=80 picks the sm_80 kernel on any device (tests run it on
// an H200 from a build whose sm_80 code is PTX: tools/prefill_gemm_check.py).
int device_major(int device) {
  static int cached[64] = {0};
  if (device < 0 || device >= 64) return 0;
  if (cached[device] == 0) {
    int major = 0;
    const char* forced = getenv("EMBER_GEMM_ARCH");
    if (forced != nullptr && forced[0] != '\0') {
      major = atoi(forced) / 10;
    } else if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
      return 0;
    }
    cached[device] = major;
  }
  return cached[device];
}

int64_t rows_of(const DLTensor* t) {
  int64_t rows = 1;
  for (int i = 0; i + 1 < t->ndim; ++i) rows *= t->shape[i];
  return rows;
}

template <class P>
P* data_of(DLTensor* t) {
  return reinterpret_cast<P*>(static_cast<char*>(t->data) + t->byte_offset);
}

void prefill_gemm(DLTensor* x, DLTensor* w, DLTensor* y) {
  const int64_t m = rows_of(x), k = x->shape[x->ndim - 1], n = w->shape[0];
  TVM_FFI_ICHECK(w->ndim == 2 && w->shape[1] == k) << "ember_prefill_gemm: weight is not [N, " << k << "]";
  TVM_FFI_ICHECK(rows_of(y) == m && y->shape[y->ndim - 1] == n) << "ember_prefill_gemm: output is not [M, N]";
  TVM_FFI_ICHECK(x->dtype.bits == 16 && w->dtype.bits == 16 && y->dtype.bits == 16)
      << "ember_prefill_gemm: 16-bit tensors only";
  if (m == 0) return;
  const int device = x->device.device_id;
  auto stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(kDLCUDA, device));
  const int major = device_major(device);
  const char* failure = "no kernel for this device's arch in this library";
#if EMBER_GEMM_SM90 && !EMBER_GEMM_CUTLASS90
  if (major == 9) {
    const cudaError_t err = sm90::run(int(m), int(n), int(k), data_of<const Element>(x), data_of<const Element>(w),
                                      data_of<Element>(y), device, stream);
    failure = err == cudaSuccess ? nullptr : cudaGetErrorString(err);
  }
#endif
#if EMBER_GEMM_CUTLASS
  cutlass::Status status = cutlass::Status::kErrorArchMismatch;
#if EMBER_GEMM_SM90 && EMBER_GEMM_CUTLASS90
  if (major == 9) status = sm90::run(int(m), int(n), int(k), data_of<const T>(x), data_of<const T>(w),
                                     data_of<T>(y), stream);
#endif
#if EMBER_GEMM_SM80
  if (major != 9 && major >= 8) status = sm80::run(int(m), int(n), int(k), data_of<const T>(x), data_of<const T>(w),
                                                   data_of<T>(y), stream);
#endif
  if (major != 9 || EMBER_GEMM_CUTLASS90)
    failure = status == cutlass::Status::kSuccess ? nullptr : cutlassGetStatusString(status);
#endif
  TVM_FFI_ICHECK(failure == nullptr) << "ember_prefill_gemm: " << failure << " (M=" << m << ", N=" << n
                                     << ", K=" << k << ", sm_" << major << "x)";
  cudaError_t launched = cudaGetLastError();
  TVM_FFI_ICHECK(launched == cudaSuccess) << "ember_prefill_gemm: " << cudaGetErrorString(launched);
}

}  // namespace prefill_gemm
}  // namespace ember

#ifndef EMBER_GEMM_NAME
#define EMBER_GEMM_NAME ember_prefill_gemm_f16
#endif
// One level of indirection so that EMBER_GEMM_NAME is expanded before TVM's macro pastes it.
#define EMBER_EXPORT(name, function) TVM_FFI_DLL_EXPORT_TYPED_FUNC(name, function)
EMBER_EXPORT(EMBER_GEMM_NAME, ember::prefill_gemm::prefill_gemm);
