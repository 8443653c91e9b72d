// ember's stand-in for <metal_stdlib>: just enough of the Metal Shading Language, as freestanding C++17, for clang
// to parse the kernels TVM's metal codegen emits (targets/metal/msl_check.py installs it as `metal_stdlib`).
// It declares what those kernels use, so a misspelled builtin or type is an error. It is looser than Metal:
// address-space qualifiers are erased, attributes are ignored, vector element types are not checked (see
// below), and math functions are templates.
#pragma once

#define kernel
#define device
#define constant
#define threadgroup
#define thread

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
typedef _Float16 half;
typedef __bf16 bfloat;

// Every N-lane vector type is N x 8 bytes (signed, unsigned and floating kinds), so that MSL's element
// conversions between vectors of one lane count, `(float4)char4_value`, parse as C casts (clang rejects a cast
// between vectors of different sizes). The lane count and the names are checked; element types are not.
#define EMBER_VECTORS(T, E) \
  typedef E T##2 __attribute__((ext_vector_type(2))); \
  typedef E T##3 __attribute__((ext_vector_type(3))); \
  typedef E T##4 __attribute__((ext_vector_type(4)));
EMBER_VECTORS(bool, long)
EMBER_VECTORS(char, long)
EMBER_VECTORS(short, long)
EMBER_VECTORS(int, long)
EMBER_VECTORS(long, long)
EMBER_VECTORS(uchar, unsigned long)
EMBER_VECTORS(ushort, unsigned long)
EMBER_VECTORS(uint, unsigned long)
EMBER_VECTORS(ulong, unsigned long)
EMBER_VECTORS(half, double)
EMBER_VECTORS(float, double)
EMBER_VECTORS(bfloat, double)
#undef EMBER_VECTORS

// MSL's vector constructors, `float4(a, b, c, d)` and `float4(x)`: a function-like macro is expanded only where
// the name is followed by `(`, so the typedef above still names the type everywhere else.
#define half2(...) ((half2){__VA_ARGS__})
#define half3(...) ((half3){__VA_ARGS__})
#define half4(...) ((half4){__VA_ARGS__})
#define float2(...) ((float2){__VA_ARGS__})
#define float3(...) ((float3){__VA_ARGS__})
#define float4(...) ((float4){__VA_ARGS__})
#define int2(...) ((int2){__VA_ARGS__})
#define int3(...) ((int3){__VA_ARGS__})
#define int4(...) ((int4){__VA_ARGS__})
#define uint2(...) ((uint2){__VA_ARGS__})
#define uint3(...) ((uint3){__VA_ARGS__})
#define uint4(...) ((uint4){__VA_ARGS__})
#define long2(...) ((long2){__VA_ARGS__})
#define long3(...) ((long3){__VA_ARGS__})
#define long4(...) ((long4){__VA_ARGS__})
#define ulong2(...) ((ulong2){__VA_ARGS__})
#define ushort2(...) ((ushort2){__VA_ARGS__})
#define ushort4(...) ((ushort4){__VA_ARGS__})
#define uchar4(...) ((uchar4){__VA_ARGS__})
#define char4(...) ((char4){__VA_ARGS__})

constexpr half operator""h(long double v) { return (half)v; }
constexpr half operator""h(unsigned long long v) { return (half)v; }

namespace metal {

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
void threadgroup_barrier(mem_flags flags);
void simdgroup_barrier(mem_flags flags);

template <class T, class U> T as_type(U value);  // a bit cast (sizes are not checked)
template <class T, class C> T select(T if_false, T if_true, C condition);

template <class T> T simd_shuffle(T value, ushort lane);
template <class T> T simd_shuffle_up(T value, ushort delta);
template <class T> T simd_shuffle_down(T value, ushort delta);
template <class T> T simd_shuffle_xor(T value, ushort mask);
template <class T> T simd_broadcast(T value, ushort lane);
template <class T> T simd_sum(T value);
template <class T> T simd_max(T value);
template <class T> T simd_min(T value);
template <class T> T simd_prefix_exclusive_sum(T value);
template <class T> T simd_prefix_inclusive_sum(T value);

#define EMBER_UNARY(name) template <class T> T name(T x);
EMBER_UNARY(exp) EMBER_UNARY(exp2) EMBER_UNARY(log) EMBER_UNARY(log2) EMBER_UNARY(sqrt) EMBER_UNARY(rsqrt)
EMBER_UNARY(tanh) EMBER_UNARY(fabs) EMBER_UNARY(abs) EMBER_UNARY(erf) EMBER_UNARY(cos) EMBER_UNARY(sin)
EMBER_UNARY(floor) EMBER_UNARY(ceil) EMBER_UNARY(round) EMBER_UNARY(trunc) EMBER_UNARY(isnan) EMBER_UNARY(isinf)
EMBER_UNARY(sigmoid) EMBER_UNARY(precise_exp) EMBER_UNARY(fast_exp)
#undef EMBER_UNARY
#define EMBER_BINARY(name) template <class T, class U> T name(T x, U y);
EMBER_BINARY(pow) EMBER_BINARY(max) EMBER_BINARY(min) EMBER_BINARY(fmax) EMBER_BINARY(fmin) EMBER_BINARY(fmod)
EMBER_BINARY(atan2)
#undef EMBER_BINARY
template <class T> T fma(T a, T b, T c);
template <class T, class U> T clamp(T x, U lo, U hi);

// simdgroup matrices (Metal 2.3+): 8x8 tiles held by the 32 lanes of a simdgroup.
template <class T, int Rows, int Cols> struct simdgroup_matrix {};
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;
template <class T, int Rows, int Cols> simdgroup_matrix<T, Rows, Cols> make_filled_simdgroup_matrix(T value);
template <class T, int Rows, int Cols>
void simdgroup_load(simdgroup_matrix<T, Rows, Cols>& d, const T* source, ulong elements_per_row = Cols,
                    ulong2 matrix_origin = 0, bool transpose_matrix = false);
template <class T, int Rows, int Cols>
void simdgroup_store(simdgroup_matrix<T, Rows, Cols> a, T* destination, ulong elements_per_row = Cols,
                     ulong2 matrix_origin = 0, bool transpose_matrix = false);
// Metal accepts half or float a/b with a float (or the same-type) accumulator.
template <class D, class A, class B, int M, int N, int K>
void simdgroup_multiply_accumulate(simdgroup_matrix<D, M, N>& d, simdgroup_matrix<A, M, K> a,
                                   simdgroup_matrix<B, K, N> b, simdgroup_matrix<D, M, N> c);

}  // namespace metal
