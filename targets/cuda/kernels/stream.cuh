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

// `ok ? i : 0` as a value the optimizer cannot see through, for the index of a load under a guard. nvcc may hoist
// a guarded __ldg above its guard, and inside `if (ok)` it may rewrite `ok ? i : 0` as plain `i`: the hoisted load
// then reads at `i` where the guard is false. compute-sanitizer's initcheck caught lowbatch.cuh reading scales past
// the last row that way (warps without a k-tile); outside the sanitizer it was an illegal address. An index from
// here stays 0 where !ok in every copy of the load.
__device__ __forceinline__ int index_or_zero(bool ok, int i) {
  int r = ok ? i : 0;
  asm("" : "+r"(r));
  return r;
}

}  // namespace ember
#endif  // EMBER_STREAM_CUH
