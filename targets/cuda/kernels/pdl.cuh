// Programmatic dependent launch (Hopper and later): a kernel launched with the PDL attribute may start while the
// kernel before it in the stream is still running. Its blocks get scheduled and can do work that needs nothing
// from the predecessor (load weights, compute addresses) and then wait() before they read anything the
// predecessor wrote or write anything at all; launch_dependents() tells the next PDL kernel it may start.
// Both are no-ops below sm_90 and when the kernel was launched without the attribute (targets/cuda/pdl.py tags
// only the kernels that call wait()). ../shared/guide: CUDA programming guide, "Programmatic Dependent Launch".
#ifndef EMBER_PDL_CUH
#define EMBER_PDL_CUH

namespace ember {
namespace pdl {

// Blocks until every grid this one depends on has finished and its memory writes are visible.
__device__ __forceinline__ void wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next PDL kernel in the stream launch once every block of this grid has called this (or exited). Safe
// anywhere: the dependent still wait()s for this grid to finish before touching its results.
__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace pdl
}  // namespace ember

#endif  // EMBER_PDL_CUH
