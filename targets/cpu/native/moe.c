/* Mixture-of-experts block (ir/ops_moe.py) on the cpu: routing, then one GEMM per expert over the tokens routed to it.
 *
 * ember_moe: for each token t, p = softmax(logits[t]) in float32, the top_k experts of p (largest first, ties to
 * the lower index), weights p / sum(p) over them when `norm`. Then, per expert e in ascending order (as
 * transformers adds its experts' outputs), the rows of x routed to e are gathered into one [m_e, H] matrix and run
 * through gate and up (ember_linear, the same dequantize-matmul kernels as every linear, parallel over TVM's pool),
 * silu(gate) * up, and down; each output row is added to y[t] times its routing weight. All of it happens inside
 * the compiled library: no per-token work on the Python side.
 *
 * Weights are stacked [E, N, K], each in its own format: any ember_linear format (EMBER_Q4 / Q4_1 / Q8 / F16 / BF16),
 * any ember_linear_k one (the GGUF formats kept native: Q5_0, Q5_1, Q2_K .. Q6_K) or float32 (MOE_F32, a plain loop
 * here). A weight is its pieces in ir/ops_quant.py's order (qweight, qhigh, scales, mins, super, super_mins; absent
 * ones any pointer) with the bytes each piece takes per expert: expert e's piece starts e strides in. Returns 0, or
 * -1 when out of memory. */
#include <math.h>
#include <stdlib.h>

#include "ember_native.h"

int32_t ember_linear(const float* x, const void* w, const void* scales, const void* mins, const float* bias,
                     float* y, int64_t M, int64_t N, int64_t K, int32_t group, int32_t fmt, int32_t has_bias);
int32_t ember_linear_k(const float* x, const void* w, const void* qhigh, const void* scales, const void* mins,
                       const void* sup, const void* sup_min, const float* bias, float* y, int64_t M, int64_t N,
                       int64_t K, int32_t fmt, int32_t has_bias);

enum { MOE_Q5_0 = 5, MOE_F32 = 12 }; /* ember_linear's codes below 5, ember_linear_k's from 5 to 11 */
enum { PIECES = 6 };

typedef struct {
  const uint8_t* piece[PIECES];
  int64_t stride[PIECES]; /* bytes per expert */
  int32_t fmt, group;
} MoeWeight;

typedef struct {
  const float* x;
  const float* w;
  float* y;
  int64_t M, N, K;
} F32Args;

static int f32_task(int task, TVMParallelGroupEnv* env, void* cdata) {
  F32Args* a = (F32Args*)cdata;
  int64_t n0, n1;
  ember_split(a->N, task, env->num_task, 1, &n0, &n1);
  for (int64_t m = 0; m < a->M; ++m)
    for (int64_t n = n0; n < n1; ++n) {
      const float* xr = a->x + m * a->K;
      const float* wr = a->w + n * a->K;
      float acc = 0.0f;
      for (int64_t k = 0; k < a->K; ++k) acc += xr[k] * wr[k];
      a->y[m * a->N + n] = acc;
    }
  return 0;
}

/* y[M, N] = x[M, K] . W_e^T for expert e of a stacked weight */
static int expert_linear(const float* x, const MoeWeight* wt, int64_t e, int64_t N, int64_t K, float* y, int64_t M) {
  const void* p[PIECES];
  for (int i = 0; i < PIECES; ++i) p[i] = wt->piece[i] + e * wt->stride[i];
  if (wt->fmt == MOE_F32) {
    F32Args a = {x, (const float*)p[0], y, M, N, K};
    return ember_parallel(f32_task, &a);
  }
  if (wt->fmt >= MOE_Q5_0) return ember_linear_k(x, p[0], p[1], p[2], p[3], p[4], p[5], x, y, M, N, K, wt->fmt, 0);
  return ember_linear(x, p[0], p[2], p[3], x, y, M, N, K, wt->group, wt->fmt, 0);
}

/* ids[t * k + j], weights[t * k + j]: the experts of token t and their routing weights */
static void route(const float* logits, int64_t T, int64_t E, int32_t k, int32_t norm, int32_t* ids, float* weights,
                  float* p) {
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits + t * E;
    float peak = l[0];
    for (int64_t e = 1; e < E; ++e) peak = l[e] > peak ? l[e] : peak;
    float total = 0.0f;
    for (int64_t e = 0; e < E; ++e) total += (p[e] = expf(l[e] - peak));
    for (int64_t e = 0; e < E; ++e) {
      p[e] /= total;
      if (!(p[e] >= 0.0f)) p[e] = 0.0f; /* NaN logits (an overflowed model) route like -inf: ids stay in range */
    }
    float chosen = 0.0f;
    for (int32_t j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e)
        if (p[e] >= 0.0f && (best < 0 || p[e] > p[best])) best = e;
      ids[t * k + j] = (int32_t)best;
      weights[t * k + j] = p[best];
      chosen += p[best];
      p[best] = -1.0f; /* taken */
    }
    if (norm)
      for (int32_t j = 0; j < k; ++j) weights[t * k + j] /= chosen;
  }
}

#define MOE_WEIGHT_ARGS(n)                                                                                     \
  const void *n##0, const void *n##1, const void *n##2, const void *n##3, const void *n##4, const void *n##5,     \
      int64_t n##s0, int64_t n##s1, int64_t n##s2, int64_t n##s3, int64_t n##s4, int64_t n##s5, int32_t n##fmt,    \
      int32_t n##group
#define MOE_WEIGHT(n) \
  {{n##0, n##1, n##2, n##3, n##4, n##5}, {n##s0, n##s1, n##s2, n##s3, n##s4, n##s5}, n##fmt, n##group}

/* The entry point called from TIR (targets/cpu/native_moe.py): per weight (gate, up, down) its 6 piece pointers,
 * their 6 strides per expert in bytes, its format code and group size. */
int32_t ember_moe(const float* x, const float* logits, MOE_WEIGHT_ARGS(g), MOE_WEIGHT_ARGS(u), MOE_WEIGHT_ARGS(d),
                  float* y, int64_t T, int64_t E, int64_t H, int64_t I, int32_t k, int32_t norm) {
  const MoeWeight gate = MOE_WEIGHT(g), up = MOE_WEIGHT(u), down = MOE_WEIGHT(d);
  memset(y, 0, (size_t)(T * H) * sizeof(float));
  if (T <= 0) return 0;
  int64_t slots = T * k;
  int32_t* ids = (int32_t*)malloc((size_t)slots * sizeof(int32_t));
  float* weights = (float*)malloc((size_t)slots * sizeof(float));
  float* p = (float*)malloc((size_t)E * sizeof(float));
  int64_t* count = (int64_t*)calloc((size_t)E + 1, sizeof(int64_t));
  int64_t* order = (int64_t*)malloc((size_t)slots * sizeof(int64_t));
  int status = -1;
  float *xg = NULL, *g = NULL, *u = NULL, *yo = NULL;
  if (!ids || !weights || !p || !count || !order) goto done;
  route(logits, T, E, k, norm, ids, weights, p);
  /* counting sort of the (token, slot) pairs by expert, tokens in order within an expert */
  for (int64_t i = 0; i < slots; ++i) count[ids[i] + 1]++;
  int64_t most = 0;
  for (int64_t e = 0; e < E; ++e) {
    most = count[e + 1] > most ? count[e + 1] : most;
    count[e + 1] += count[e];
  }
  {
    int64_t* fill = (int64_t*)malloc((size_t)E * sizeof(int64_t));
    if (!fill) goto done;
    memcpy(fill, count, (size_t)E * sizeof(int64_t));
    for (int64_t i = 0; i < slots; ++i) order[fill[ids[i]]++] = i;
    free(fill);
  }
  xg = (float*)malloc((size_t)(most * H) * sizeof(float));
  g = (float*)malloc((size_t)(most * I) * sizeof(float));
  u = (float*)malloc((size_t)(most * I) * sizeof(float));
  yo = (float*)malloc((size_t)(most * H) * sizeof(float));
  if (!xg || !g || !u || !yo) goto done;
  for (int64_t e = 0; e < E; ++e) {
    int64_t first = count[e], m = count[e + 1] - first;
    if (m == 0) continue;
    for (int64_t r = 0; r < m; ++r) memcpy(xg + r * H, x + (order[first + r] / k) * H, (size_t)H * sizeof(float));
    if (expert_linear(xg, &gate, e, I, H, g, m) != 0) goto done;
    if (expert_linear(xg, &up, e, I, H, u, m) != 0) goto done;
    for (int64_t i = 0; i < m * I; ++i) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    if (expert_linear(g, &down, e, H, I, yo, m) != 0) goto done;
    for (int64_t r = 0; r < m; ++r) {
      int64_t slot = order[first + r];
      float w = weights[slot];
      float* out = y + (slot / k) * H;
      const float* src = yo + r * H;
      for (int64_t h = 0; h < H; ++h) out[h] += w * src[h];
    }
  }
  status = 0;
done:
  free(ids);
  free(weights);
  free(p);
  free(count);
  free(order);
  free(xg);
  free(g);
  free(u);
  free(yo);
  return status;
}
