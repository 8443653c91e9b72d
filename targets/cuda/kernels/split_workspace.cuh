// Host helpers of the prefill GEMMs' packed functions: the device's SM count and the split-K partials' buffer.
#ifndef EMBER_SPLIT_WORKSPACE_CUH
#define EMBER_SPLIT_WORKSPACE_CUH
#include <cstddef>

#include <cuda_runtime.h>

namespace ember {
namespace split_workspace {
namespace {  // internal linkage: each library keeps its own buffers

// The split-K partials: one buffer per device, grown (never while the stream is being captured into a graph);
// nullptr when there is none of that size (the caller then runs without split-K).
float* workspace(int device, size_t floats, cudaStream_t stream) {
  static float* buffers[64] = {nullptr};
  static size_t sizes[64] = {0};
  if (device < 0 || device >= 64) return nullptr;
  if (sizes[device] >= floats) return buffers[device];
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capturing) != cudaSuccess || capturing != cudaStreamCaptureStatusNone)
    return nullptr;
  if (cudaStreamSynchronize(stream) != cudaSuccess) return nullptr;  // the old buffer may still be in use
  if (buffers[device] != nullptr) cudaFree(buffers[device]);
  buffers[device] = nullptr, sizes[device] = 0;
  if (cudaMalloc(&buffers[device], floats * sizeof(float)) != cudaSuccess) {
    buffers[device] = nullptr;
    cudaGetLastError();  // a failed allocation only means no split-K
    return nullptr;
  }
  sizes[device] = floats;
  return buffers[device];
}

int sm_count(int device) {
  static int cached[64] = {0};
  if (device < 0 || device >= 64) return 132;
  if (cached[device] == 0) {
    int sms = 0;
    cached[device] = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess ? sms : 132;
  }
  return cached[device];
}

}  // namespace
}  // namespace split_workspace
}  // namespace ember

#endif  // EMBER_SPLIT_WORKSPACE_CUH
