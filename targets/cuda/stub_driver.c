/* Stub libcuda.so.1 for build boxes without an NVIDIA driver.
 *
 * It only lets TVM's libtvm_runtime_cuda.so load, so that `tvm.compile` hands the CUDA source to
 * `tvm_callback_cuda_compile` (nvcc) instead of embedding it. Every call fails with
 * CUDA_ERROR_NO_DEVICE; nothing here can run a kernel.
 * The symbol list is `nm -D --undefined-only tvm/lib/libtvm_runtime_cuda.so | grep ' cu[A-Z]'`
 * for apache-tvm 0.27.0.post1; tests/targets/test_cuda_toolchain.py checks it still covers them.
 */
typedef int CUresult;

#define EMBER_STUB_ERROR 100 /* CUDA_ERROR_NO_DEVICE */
#define EMBER_STUB(name) \
  CUresult name(void) { return EMBER_STUB_ERROR; }

/* Lets ember tell this stub from a real driver that is already loaded under the same soname. */
const char ember_stub_cuda_marker[] = "ember stub libcuda";

/* These two write a string through their second argument: callers print it on errors. */
CUresult cuGetErrorName(CUresult error, const char** p_str) {
  (void)error;
  if (p_str) *p_str = "CUDA_ERROR_NO_DEVICE (ember stub libcuda)";
  return 0;
}

CUresult cuGetErrorString(CUresult error, const char** p_str) {
  (void)error;
  if (p_str) *p_str = "no CUDA driver: ember stub libcuda (build box only)";
  return 0;
}

EMBER_STUB(cuDeviceGetName)
EMBER_STUB(cuFuncSetAttribute)
EMBER_STUB(cuLaunchKernelEx)
EMBER_STUB(cuModuleGetFunction)
EMBER_STUB(cuModuleLoadData)
EMBER_STUB(cuModuleUnload)
EMBER_STUB(cuTensorMapEncodeTiled)
