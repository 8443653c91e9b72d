/* The paged KV cache's "split qkv + rotary embedding" step on the cpu, float32.
 *
 * Same contract as TVM's `fused_rope` (relax.frontend.nn.llm.position_embedding.llama_rope_with_position_map):
 * qkv [n, h_q + 2 h_kv, D] -> q [n, h_q, D], k [n, h_kv, D] (rotated, non-interleaved halves, the first
 * rotary_dim features) and v [n, h_kv, D] (copied). TVM evaluates pow, cos and sin for every element of every
 * head; here the inverse frequencies are computed once per call and cos/sin once per (token, frequency) for all
 * heads. Frequencies follow TVM's formulas: default theta^(-2i/rotary_dim), or llama3's smoothed scaling when
 * factor > 0. */
#include <math.h>

#include "ember_native.h"

#define MAX_ROTARY 512
#define PARALLEL_MIN_TOKENS 8

typedef struct {
  const float* qkv;
  const int32_t* pos;
  float *q, *k, *v;
  int64_t n;
  int32_t h_q, h_kv, d, rot, apply;
  float scale;
  const float* freq; /* per frequency i: theta^(2i/rotary_dim) to divide by (default), or the llama3 inverse */
  int divide;
} RopeArgs;

static void rotate_head(const float* x, float* y, const float* c, const float* s, int32_t d, int32_t rot) {
  const int32_t half = rot / 2;
  for (int32_t i = 0; i < half; ++i) {
    y[i] = x[i] * c[i] - x[i + half] * s[i];
    y[i + half] = x[i + half] * c[i] + x[i] * s[i];
  }
  if (d > rot) memcpy(y + rot, x + rot, (size_t)(d - rot) * sizeof(float));
}

static void rope_tokens(const RopeArgs* a, int64_t t0, int64_t t1) {
  const int32_t D = a->d, half = a->rot / 2, heads = a->h_q + 2 * a->h_kv;
  float c[MAX_ROTARY / 2], s[MAX_ROTARY / 2];
  for (int64_t t = t0; t < t1; ++t) {
    const float* row = a->qkv + t * heads * D;
    if (a->apply) {
      const float p = (float)a->pos[t] * a->scale;
      for (int32_t i = 0; i < half; ++i) {
        float f = a->divide ? p / a->freq[i] : p * a->freq[i];
        c[i] = cosf(f);
        s[i] = sinf(f);
      }
    }
    for (int32_t h = 0; h < a->h_q + a->h_kv; ++h) {
      float* out = h < a->h_q ? a->q + (t * a->h_q + h) * D : a->k + (t * a->h_kv + h - a->h_q) * D;
      if (a->apply)
        rotate_head(row + h * D, out, c, s, D, a->rot);
      else
        memcpy(out, row + h * D, (size_t)D * sizeof(float));
    }
    memcpy(a->v + t * a->h_kv * D, row + (a->h_q + a->h_kv) * D, (size_t)a->h_kv * D * sizeof(float));
  }
}

static int rope_task(int task, TVMParallelGroupEnv* env, void* cdata) {
  const RopeArgs* a = (const RopeArgs*)cdata;
  int64_t t0, t1;
  ember_split(a->n, task, env->num_task, 1, &t0, &t1);
  rope_tokens(a, t0, t1);
  return 0;
}

int32_t ember_rope_split(const float* qkv, const int32_t* pos, float* q, float* k, float* v, int64_t n,
                         int32_t h_q, int32_t h_kv, int32_t d, int32_t rotary_dim, int64_t apply_rope, float scale,
                         float theta, float factor, float low_freq_factor, float high_freq_factor,
                         float original_max_positions) {
  if (rotary_dim > MAX_ROTARY || rotary_dim > d || rotary_dim % 2) return -1;
  float freq[MAX_ROTARY / 2];
  const int llama3 = factor > 0.0f;
  for (int32_t i = 0; i < rotary_dim / 2; ++i) {
    float power = powf(theta, (float)(2 * i) / (float)rotary_dim);
    freq[i] = power;
    if (llama3) { /* long wavelengths scaled by 1/factor, a smooth blend in between */
      float f = 1.0f / power;
      float inv_diff = 1.0f / (high_freq_factor - low_freq_factor);
      float alpha = original_max_positions / (2.0f * (float)M_PI) * inv_diff, beta = low_freq_factor * inv_diff;
      float smooth = fmaxf(0.0f, fminf(1.0f, alpha * f - beta));
      freq[i] = (1.0f - smooth) * f / factor + smooth * f;
    }
  }
  RopeArgs a = {qkv, pos, q, k, v, n, h_q, h_kv, d, rotary_dim, apply_rope > 0, scale, freq, !llama3};
  if (n < PARALLEL_MIN_TOKENS) {
    rope_tokens(&a, 0, n);
    return 0;
  }
  return ember_parallel(rope_task, &a);
}
