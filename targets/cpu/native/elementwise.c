/* Row-wise float32 kernels around the linear layers on the cpu: SwiGLU and (residual add +) RMSNorm.
 *
 * With the matmuls in native code (linear.c), nothing fuses into their epilogues any more, so the residual add
 * joins the norm instead: ember_add_rms_norm writes a + b and its normalized form in one pass. exp is a
 * vectorized polynomial (relative error ~2e-7): a libm call per element is what made TVM's SwiGLU slow here.
 * Rows are split over TVM's thread pool when there is enough work to pay for a launch. */
#include <math.h>

#include "ember_native.h"

#define PARALLEL_MIN_ELEMENTS 32768

EMBER_INLINE f32x16 silu_v(f32x16 g) { return g / (1.0f + exp2_v(g * -1.4426950408889634f)); }

EMBER_INLINE float silu_s(float g) { return g / (1.0f + expf(-g)); }

typedef struct {
  const float *a, *b, *w;
  float *sum, *out;
  int64_t rows, width;
  float eps;
} RowArgs;

/* out[r, i] = silu(x[r, i]) * x[r, width + i], x of width 2 * width */
static void swiglu_rows(const RowArgs* r, int64_t r0, int64_t r1) {
  const int64_t I = r->width;
  for (int64_t row = r0; row < r1; ++row) {
    const float* gate = r->a + row * 2 * I;
    const float* up = gate + I;
    float* y = r->out + row * I;
    int64_t i = 0;
    for (; i + 16 <= I; i += 16) st_f32(y + i, silu_v(ld_f32(gate + i)) * ld_f32(up + i));
    for (; i < I; ++i) y[i] = silu_s(gate[i]) * up[i];
  }
}

/* sum = a + b (when b is given), out = sum * rsqrt(mean(sum^2) + eps) * w */
static void rms_rows(const RowArgs* r, int64_t r0, int64_t r1) {
  const int64_t W = r->width, W16 = W & ~(int64_t)15;
  for (int64_t row = r0; row < r1; ++row) {
    const float* a = r->a + row * W;
    const float* b = r->b ? r->b + row * W : NULL;
    float* s = r->sum ? r->sum + row * W : NULL;
    f32x16 sq = {0};
    float tail = 0.0f;
    for (int64_t i = 0; i < W16; i += 16) {
      f32x16 v = ld_f32(a + i);
      if (b) {
        v += ld_f32(b + i);
        st_f32(s + i, v);
      }
      sq += v * v;
    }
    for (int64_t i = W16; i < W; ++i) {
      float v = a[i] + (b ? b[i] : 0.0f);
      if (b) s[i] = v;
      tail += v * v;
    }
    const float* src = b ? s : a;
    float scale = 1.0f / sqrtf((hsum(sq) + tail) / (float)W + r->eps);
    float* y = r->out + row * W;
    for (int64_t i = 0; i < W16; i += 16) st_f32(y + i, ld_f32(src + i) * scale * ld_f32(r->w + i));
    for (int64_t i = W16; i < W; ++i) y[i] = src[i] * scale * r->w[i];
  }
}

static int swiglu_task(int task, TVMParallelGroupEnv* env, void* cdata) {
  const RowArgs* r = (const RowArgs*)cdata;
  int64_t r0, r1;
  ember_split(r->rows, task, env->num_task, 1, &r0, &r1);
  swiglu_rows(r, r0, r1);
  return 0;
}

static int rms_task(int task, TVMParallelGroupEnv* env, void* cdata) {
  const RowArgs* r = (const RowArgs*)cdata;
  int64_t r0, r1;
  ember_split(r->rows, task, env->num_task, 1, &r0, &r1);
  rms_rows(r, r0, r1);
  return 0;
}

int32_t ember_swiglu(const float* x, float* y, int64_t rows, int64_t width) {
  RowArgs r = {x, NULL, NULL, NULL, y, rows, width, 0.0f};
  if (rows * width < PARALLEL_MIN_ELEMENTS || rows < 2) {
    swiglu_rows(&r, 0, rows);
    return 0;
  }
  return ember_parallel(swiglu_task, &r);
}

/* b and sum may be NULL (a plain RMSNorm of a) */
int32_t ember_rms_norm(const float* a, const float* b, const float* w, float* sum, float* out, int64_t rows,
                       int64_t width, float eps) {
  RowArgs r = {a, b, w, sum, out, rows, width, eps};
  if (rows * width < PARALLEL_MIN_ELEMENTS || rows < 2) {
    rms_rows(&r, 0, rows);
    return 0;
  }
  return ember_parallel(rms_task, &r);
}
