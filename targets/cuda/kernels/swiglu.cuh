// What a GEMV stages as its x (gemv.cuh, linear.cuh): the input itself (PLAIN) or, for the down projection,
// SwiGLU of the fused gate_up output (SWIGLU: the kernel reads [gate | up], 2K halves), so the separate swiglu
// kernel and its launch go away.
#ifndef EMBER_SWIGLU_CUH
#define EMBER_SWIGLU_CUH
#include <cstdint>
#include <cuda_fp16.h>

namespace ember {

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

}  // namespace ember
#endif  // EMBER_SWIGLU_CUH
