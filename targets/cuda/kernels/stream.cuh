// The 16-byte global load every ember kernel uses for data it reads once per call (weights, K and V pages):
// read-only path, no L1 allocation.
#ifndef EMBER_STREAM_CUH
#define EMBER_STREAM_CUH
#include <cstdint>

namespace ember {

__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

}  // namespace ember
#endif  // EMBER_STREAM_CUH
