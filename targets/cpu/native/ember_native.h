/* Shared pieces of ember's native cpu kernels: portable vector types, loads, conversions, and TVM's thread pool.
 *
 * The kernels use GCC/Clang vector extensions on 16 float lanes: compiled for x86-64-v4 they become AVX-512
 * instructions, for x86-64-v3 pairs of AVX2 instructions, for a generic target SSE2 (or NEON on aarch64).
 * Work is split over TVM's thread pool, so TVM_NUM_THREADS governs these kernels like every TIR kernel; the
 * runtime fills __TVMBackendParallelLaunch when it loads the library (it is also how TIR's parallel loops call
 * the pool). Without it (a library loaded by something else) the kernels run on one thread. */
#ifndef EMBER_NATIVE_H
#define EMBER_NATIVE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__))
#include <immintrin.h>
#endif

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));

#define EMBER_INLINE static inline __attribute__((always_inline))

/* ---- TVM thread pool (tvm/runtime/c_backend_api.h) ---- */
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
/* weak: TIR code in the same library defines the same weak slot; the runtime writes the pool's entry into it */
__attribute__((weak)) int (*__TVMBackendParallelLaunch)(FTVMParallelLambda, void*, int) = NULL;

EMBER_INLINE int ember_parallel(FTVMParallelLambda fn, void* cdata) {
  if (__TVMBackendParallelLaunch != NULL) return __TVMBackendParallelLaunch(fn, cdata, 0);
  TVMParallelGroupEnv env = {NULL, 1};
  return fn(0, &env, cdata);
}

/* [begin, end) of task `task` of `ntask` over n items, chunk starts aligned to `align` */
EMBER_INLINE void ember_split(int64_t n, int task, int ntask, int64_t align, int64_t* begin, int64_t* end) {
  int64_t per = (n + ntask - 1) / ntask;
  per = (per + align - 1) / align * align;
  int64_t b = (int64_t)task * per, e = b + per;
  *begin = b < n ? b : n;
  *end = e < n ? e : n;
}

/* ---- loads and conversions ---- */
EMBER_INLINE f32x16 ld_f32(const float* p) {
  f32x16 v;
  memcpy(&v, p, sizeof v);
  return v;
}
EMBER_INLINE void st_f32(float* p, f32x16 v) { memcpy(p, &v, sizeof v); }
EMBER_INLINE u8x16 ld_u8(const uint8_t* p) {
  u8x16 v;
  memcpy(&v, p, sizeof v);
  return v;
}
EMBER_INLINE f32x16 splat(float s) { return (f32x16){0} + s; }
EMBER_INLINE i32x16 iota16(void) { return (i32x16){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }
/* mask ? a : b, lane-wise (mask lanes are 0 or -1, as vector comparisons give) */
EMBER_INLINE f32x16 vsel(i32x16 mask, f32x16 a, f32x16 b) { return (f32x16)(((i32x16)a & mask) | ((i32x16)b & ~mask)); }
/* byte -> float widening through the ISA's own instructions (GCC scalarizes some vector-extension forms) */
EMBER_INLINE f32x16 u8_to_f32(u8x16 v) {
#if defined(__AVX2__) && !defined(__AVX512F__) /* GCC splits the 16-lane form badly on AVX2 */
  __m128i b;
  memcpy(&b, &v, 16);
  __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
  __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)));
  f32x16 r;
  memcpy(&r, &lo, 32);
  memcpy((char*)&r + 32, &hi, 32);
  return r;
#else
  return __builtin_convertvector(__builtin_convertvector(v, i32x16), f32x16);
#endif
}
EMBER_INLINE f32x16 i8_to_f32(const int8_t* p) {
#if defined(__AVX512F__)
  __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
  f32x16 r;
  memcpy(&r, &f, sizeof r);
  return r;
#elif defined(__AVX2__)
  __m128i b = _mm_loadu_si128((const __m128i*)p);
  __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
  f32x16 r;
  memcpy(&r, &lo, 32);
  memcpy((char*)&r + 32, &hi, 32);
  return r;
#else
  i8x16 v;
  memcpy(&v, p, sizeof v);
  return __builtin_convertvector(__builtin_convertvector(v, i32x16), f32x16);
#endif
}

EMBER_INLINE float f16_to_f32(uint16_t h) {
  _Float16 v;
  memcpy(&v, &h, sizeof v);
  return (float)v;
}
EMBER_INLINE f32x16 f16x16_to_f32(const uint16_t* p) {
#if defined(__AVX512F__)
  f32x16 r;
  __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
  memcpy(&r, &v, sizeof r);
  return r;
#elif defined(__F16C__)
  f32x16 r;
  __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
  __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + 8)));
  memcpy(&r, &lo, 32);
  memcpy((char*)&r + 32, &hi, 32);
  return r;
#else
  f32x16 r;
  for (int i = 0; i < 16; ++i) r[i] = f16_to_f32(p[i]);
  return r;
#endif
}
EMBER_INLINE f32x16 bf16x16_to_f32(const uint16_t* p) {
  u16x16 h;
  memcpy(&h, p, sizeof h);
  u32x16 w = __builtin_convertvector(h, u32x16) << 16;
  f32x16 r;
  memcpy(&r, &w, sizeof r);
  return r;
}
EMBER_INLINE float bf16_to_f32(uint16_t h) {
  uint32_t w = (uint32_t)h << 16;
  float r;
  memcpy(&r, &w, sizeof r);
  return r;
}

EMBER_INLINE float hsum(f32x16 v) {
  typedef float f32x8 __attribute__((vector_size(32)));
  typedef float f32x4 __attribute__((vector_size(16)));
  f32x8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  f32x4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

/* 2^x for x in [-126, 126]: 2^n * 2^f with n = round(x), f in [-0.5, 0.5], 2^f by Cephes' exp2f polynomial */
EMBER_INLINE f32x16 exp2_v(f32x16 x) {
  x = vsel(x < -126.0f, splat(-126.0f), x);
  x = vsel(x > 126.0f, splat(126.0f), x);
  f32x16 n = __builtin_convertvector(__builtin_convertvector(x + vsel(x >= 0.0f, splat(0.5f), splat(-0.5f)), i32x16), f32x16);
  f32x16 f = x - n;
  f32x16 p = splat(1.535336188319500e-4f);
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  i32x16 bits = (__builtin_convertvector(n, i32x16) + 127) << 23;
  f32x16 scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

#endif
