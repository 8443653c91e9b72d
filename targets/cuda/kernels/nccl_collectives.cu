// ember's NCCL collectives for cuda tensor-parallel builds (DESIGN.md, "Tensor parallelism").
//
// One translation unit compiled by nvcc at `ember compile` (targets/cuda/nccl.py) into an object linked into the
// artifact's model.so. The Relax VM calls the two collectives with Disco's signatures (targets/lower_collective.py):
//   ember_tp_nccl_allreduce(send, ShapeTuple([kind]), in_group, recv)   kind: Disco's ReduceKind (0 = sum)
//   ember_tp_nccl_allgather(send, in_group, recv)                      ranks' sends concatenated on axis 0
// and ember's runtime (runtime/nccl.py) sets them up from one process whose shard threads drive one GPU each:
//   ember_tp_nccl_open(path) -> NCCL's version         dlopen of libnccl.so.2 (nothing is linked: a library
//                                                      without a GPU or NCCL still loads)
//   ember_tp_nccl_unique_id() -> 128 bytes             ncclGetUniqueId, on one rank, handed to every rank
//   ember_tp_nccl_init(rank, nranks, device, id)       ncclCommInitRank on the calling thread (every rank's thread
//                                                      at once: it returns when all have joined)
//   ember_tp_nccl_destroy(device)                      the device's communicator freed
//   ember_tp_nccl_abort(device)                        ncclCommAbort from any thread: the device's pending
//                                                      collectives end (a rank that failed left them waiting)
// The communicators are kept per CUDA device (the collectives find theirs by the tensor's device): one group of
// shards per process at a time. The collectives run on the stream TVM's runtime has set for the device
// (TVMFFIEnvGetStream), where the library's kernels run, so no synchronization is added.
#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include <cuda_runtime.h>
#include <nccl.h>

#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

namespace ember {
namespace tp_nccl {

namespace ffi = tvm::ffi;

// The NCCL entry points used, resolved from the library that ember_tp_nccl_open loads.
struct Api {
  void* handle = nullptr;
  std::string path;
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclAllGather) all_gather = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  decltype(&ncclGetLastError) last_error = nullptr;
};

std::mutex mutex;
Api api;
struct Comm {
  ncclComm_t comm;
  int ranks;
};
std::unordered_map<int, Comm> comms;  // CUDA device -> this process's communicator on it

const Api& loaded(const char* call) {
  std::lock_guard<std::mutex> lock(mutex);
  if (api.handle == nullptr)
    TVM_FFI_THROW(RuntimeError) << call << ": NCCL is not loaded (ember.runtime.nccl opens libnccl.so.2 first)";
  return api;
}

std::string nccl_message(const Api& a, ncclResult_t status, ncclComm_t comm) {
  std::ostringstream os;
  os << (a.error_string != nullptr ? a.error_string(status) : "error") << " (ncclResult_t " << int(status) << ")";
  const char* last = a.last_error != nullptr ? a.last_error(comm) : nullptr;
  if (last != nullptr && last[0] != '\0') os << ": " << last;
  std::string text = os.str();
  for (char& c : text)
    if (c == '\n' || c == '\r') c = ' ';  // one line
  return text;
}

void check_nccl(const Api& a, ncclResult_t status, const char* call, const char* what, ncclComm_t comm) {
  if (status != ncclSuccess && status != ncclInProgress)
    TVM_FFI_THROW(RuntimeError) << call << ": " << what << " failed: " << nccl_message(a, status, comm);
}

void check_cuda(cudaError_t status, const char* call, const char* what) {
  if (status != cudaSuccess)
    TVM_FFI_THROW(RuntimeError) << call << ": " << what << " failed: " << cudaGetErrorString(status);
}

template <typename F>
void resolve(void* handle, const std::string& path, const char* symbol, F* out) {
  *out = reinterpret_cast<F>(dlsym(handle, symbol));
  if (*out == nullptr) {
    dlclose(handle);
    TVM_FFI_THROW(RuntimeError) << "ember_tp_nccl_open: " << path << " has no " << symbol
                                << " (not an NCCL 2 library)";
  }
}

int64_t open_library(ffi::String path) {
  std::lock_guard<std::mutex> lock(mutex);
  const std::string wanted(path);
  if (api.handle == nullptr) {
    dlerror();
    void* handle = dlopen(wanted.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = dlerror();
      TVM_FFI_THROW(RuntimeError) << "ember_tp_nccl_open: cannot load " << wanted << ": "
                                  << (why != nullptr ? why : "dlopen failed");
    }
    Api a;
    a.handle = handle;
    a.path = wanted;
    resolve(handle, wanted, "ncclGetVersion", &a.get_version);
    resolve(handle, wanted, "ncclGetUniqueId", &a.get_unique_id);
    resolve(handle, wanted, "ncclCommInitRank", &a.comm_init_rank);
    resolve(handle, wanted, "ncclCommDestroy", &a.comm_destroy);
    resolve(handle, wanted, "ncclCommAbort", &a.comm_abort);
    resolve(handle, wanted, "ncclAllReduce", &a.all_reduce);
    resolve(handle, wanted, "ncclAllGather", &a.all_gather);
    resolve(handle, wanted, "ncclGetErrorString", &a.error_string);
    a.last_error = reinterpret_cast<decltype(a.last_error)>(dlsym(handle, "ncclGetLastError"));  // NCCL >= 2.13
    api = a;
  }
  int version = 0;
  check_nccl(api, api.get_version(&version), "ember_tp_nccl_open", "ncclGetVersion", nullptr);
  return version;
}

ffi::Bytes unique_id() {
  const Api& a = loaded("ember_tp_nccl_unique_id");
  ncclUniqueId id;
  check_nccl(a, a.get_unique_id(&id), "ember_tp_nccl_unique_id", "ncclGetUniqueId", nullptr);
  return ffi::Bytes(id.internal, sizeof(id.internal));
}

void destroy_locked(const Api& a, int device) {
  auto it = comms.find(device);
  if (it == comms.end()) return;
  ncclComm_t comm = it->second.comm;
  comms.erase(it);
  a.comm_destroy(comm);
}

void init(int64_t rank, int64_t nranks, int64_t device, ffi::Bytes id) {
  const char* call = "ember_tp_nccl_init";
  const Api& a = loaded(call);
  if (id.size() != NCCL_UNIQUE_ID_BYTES)
    TVM_FFI_THROW(ValueError) << call << ": the unique id has " << id.size() << " bytes, NCCL's has "
                              << NCCL_UNIQUE_ID_BYTES;
  if (nranks < 1 || rank < 0 || rank >= nranks)
    TVM_FFI_THROW(ValueError) << call << ": rank " << rank << " of " << nranks;
  ncclUniqueId uid;
  std::memcpy(uid.internal, id.data(), NCCL_UNIQUE_ID_BYTES);
  {
    std::lock_guard<std::mutex> lock(mutex);
    destroy_locked(a, int(device));  // a group started again on this device replaces the old one
  }
  check_cuda(cudaSetDevice(int(device)), call, "cudaSetDevice");
  ncclComm_t comm = nullptr;
  // blocks until every rank has called: the ranks' threads call at once, without the lock
  check_nccl(a, a.comm_init_rank(&comm, int(nranks), uid, int(rank)), call, "ncclCommInitRank", comm);
  std::lock_guard<std::mutex> lock(mutex);
  comms[int(device)] = Comm{comm, int(nranks)};
}

void destroy(int64_t device) {
  const Api& a = loaded("ember_tp_nccl_destroy");
  std::lock_guard<std::mutex> lock(mutex);
  destroy_locked(a, int(device));
}

// Taken out of the map first, so that a rank's next collective fails at once ("no NCCL communicator") instead of
// waiting on the aborted one; the abort itself runs without the lock (it waits for the device's NCCL kernels).
void abort_comm(int64_t device) {
  const Api& a = loaded("ember_tp_nccl_abort");
  ncclComm_t comm = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = comms.find(int(device));
    if (it == comms.end()) return;
    comm = it->second.comm;
    comms.erase(it);
  }
  check_nccl(a, a.comm_abort(comm), "ember_tp_nccl_abort", "ncclCommAbort", nullptr);
}

// ---- the collectives ----------------------------------------------------------------------------------------------

ncclDataType_t nccl_type(const DLDataType& t, const char* call) {
  if (t.lanes == 1) {
    if (t.code == kDLFloat && t.bits == 16) return ncclFloat16;
    if (t.code == kDLFloat && t.bits == 32) return ncclFloat32;
    if (t.code == kDLFloat && t.bits == 64) return ncclFloat64;
    if (t.code == kDLBfloat && t.bits == 16) return ncclBfloat16;
    if (t.code == kDLInt && t.bits == 8) return ncclInt8;
    if (t.code == kDLInt && t.bits == 32) return ncclInt32;
    if (t.code == kDLInt && t.bits == 64) return ncclInt64;
    if (t.code == kDLUInt && t.bits == 8) return ncclUint8;
  }
  TVM_FFI_THROW(TypeError) << call << ": no NCCL type for dtype code " << int(t.code) << " bits " << int(t.bits)
                           << " lanes " << int(t.lanes);
  return ncclFloat32;  // not reached: the throw above
}

int64_t elements(const DLTensor* t, const char* call, const char* which) {
  int64_t n = 1, stride = 1;
  bool compact = true;
  for (int i = t->ndim - 1; i >= 0; --i) {
    if (t->strides != nullptr && t->shape[i] != 1 && t->strides[i] != stride) compact = false;
    stride *= t->shape[i];
    n *= t->shape[i];
  }
  if (!compact) TVM_FFI_THROW(ValueError) << call << ": " << which << " is not contiguous";
  if (t->device.device_type != kDLCUDA)
    TVM_FFI_THROW(ValueError) << call << ": " << which << " is not on a CUDA device (device type "
                              << int(t->device.device_type) << ")";
  return n;
}

template <typename P>
P* data_of(const DLTensor* t) {
  return reinterpret_cast<P*>(static_cast<char*>(t->data) + t->byte_offset);
}

// The device's communicator, with the calling thread's current device set to it (NCCL enqueues for it).
Comm comm_for(const DLTensor* send, const DLTensor* recv, const char* call) {
  const int device = send->device.device_id;
  if (recv->device.device_id != device)
    TVM_FFI_THROW(ValueError) << call << ": send on cuda:" << device << ", recv on cuda:" << recv->device.device_id;
  Comm comm{nullptr, 0};
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = comms.find(device);
    if (it != comms.end()) comm = it->second;
  }
  if (comm.comm == nullptr)
    TVM_FFI_THROW(RuntimeError) << call << ": no NCCL communicator on cuda:" << device
                                << " (a tensor-parallel artifact runs through Engine.load_sharded / --devices)";
  int current = -1;
  check_cuda(cudaGetDevice(&current), call, "cudaGetDevice");
  if (current != device) check_cuda(cudaSetDevice(device), call, "cudaSetDevice");
  return comm;
}

cudaStream_t stream_of(int device) {
  return static_cast<cudaStream_t>(TVMFFIEnvGetStream(kDLCUDA, device));
}

void allreduce(DLTensor* send, ffi::Shape kind, bool in_group, DLTensor* recv) {
  const char* call = "ember_tp_nccl_allreduce";
  const Api& a = loaded(call);
  if (kind.size() != 1) TVM_FFI_THROW(ValueError) << call << ": the reduce kind is " << kind.size() << " values";
  static const ncclRedOp_t ops[] = {ncclSum, ncclProd, ncclMin, ncclMax, ncclAvg};  // Disco's ReduceKind order
  const int64_t k = kind[0];
  if (k < 0 || k > 4) TVM_FFI_THROW(ValueError) << call << ": unknown reduce kind " << k;
  const int64_t n = elements(send, call, "send");
  if (elements(recv, call, "recv") != n)
    TVM_FFI_THROW(ValueError) << call << ": send has " << n << " elements, recv " << elements(recv, call, "recv");
  const ncclDataType_t type = nccl_type(send->dtype, call);
  if (nccl_type(recv->dtype, call) != type) TVM_FFI_THROW(TypeError) << call << ": send and recv dtypes differ";
  const Comm comm = comm_for(send, recv, call);
  check_nccl(a, a.all_reduce(data_of<const void>(send), data_of<void>(recv), size_t(n), type, ops[k], comm.comm,
                             stream_of(send->device.device_id)),
             call, "ncclAllReduce", comm.comm);
}

void allgather(DLTensor* send, bool in_group, DLTensor* recv) {
  const char* call = "ember_tp_nccl_allgather";
  const Api& a = loaded(call);
  const int64_t n = elements(send, call, "send"), total = elements(recv, call, "recv");
  const ncclDataType_t type = nccl_type(send->dtype, call);
  if (nccl_type(recv->dtype, call) != type) TVM_FFI_THROW(TypeError) << call << ": send and recv dtypes differ";
  const Comm comm = comm_for(send, recv, call);
  if (total != n * comm.ranks)
    TVM_FFI_THROW(ValueError) << call << ": recv has " << total << " elements, not " << comm.ranks << " ranks x "
                              << n;
  check_nccl(a, a.all_gather(data_of<const void>(send), data_of<void>(recv), size_t(n), type, comm.comm,
                             stream_of(send->device.device_id)),
             call, "ncclAllGather", comm.comm);
}

}  // namespace tp_nccl
}  // namespace ember

TVM_FFI_DLL_EXPORT_TYPED_FUNC(ember_tp_nccl_open, ember::tp_nccl::open_library);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ember_tp_nccl_unique_id, ember::tp_nccl::unique_id);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ember_tp_nccl_init, ember::tp_nccl::init);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ember_tp_nccl_destroy, ember::tp_nccl::destroy);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ember_tp_nccl_abort, ember::tp_nccl::abort_comm);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ember_tp_nccl_allreduce, ember::tp_nccl::allreduce);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ember_tp_nccl_allgather, ember::tp_nccl::allgather);
