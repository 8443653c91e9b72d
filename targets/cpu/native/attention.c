/* Decode attention over TVM's paged KV cache on the cpu (one query token per sequence), float32.
 *
 * Same inputs and outputs as the paged KV cache's cpu kernel `batch_decode_paged_kv_cpu` (relax.frontend.nn.llm):
 * pages [num_pages, 2 (k, v), H_kv, page_size, D]; sequence b owns pages page_values[page_indptr[b] ..
 * page_indptr[b+1]) with last_page_len[b] slots used in its last page; scores in the log2 domain,
 * q.k * sm_scale * log2(e); `lse` is the log2-sum-exp of each head. TVM's kernel is one serial scalar loop; this one
 * runs the (sequence, head) pairs in parallel over TVM's thread pool, with vector dot products over D and an
 * online softmax over blocks of keys. */
#include <math.h>

#include "ember_native.h"

#define KEY_BLOCK 64
#define MAX_HEAD_DIM 256

typedef struct {
  const float* q;
  const float* pages;
  const int32_t* page_indptr;
  const int32_t* page_values;
  const int32_t* last_page_len;
  float* out;
  float* lse;
  int64_t batch;
  int32_t h_qo, h_kv, d, page_size;
  float scale; /* sm_scale * log2(e) */
} DecodeArgs;

static void attend(const DecodeArgs* a, int64_t b, int32_t h) {
  const int32_t D = a->d, ps = a->page_size, hk = h / (a->h_qo / a->h_kv), chunks = D / 16;
  const int32_t first = a->page_indptr[b], npages = a->page_indptr[b + 1] - first;
  const int64_t len = npages > 0 ? (int64_t)(npages - 1) * ps + a->last_page_len[b] : 0;
  const float* q = a->q + (b * a->h_qo + h) * D;
  f32x16 qv[MAX_HEAD_DIM / 16], acc[MAX_HEAD_DIM / 16];
  for (int c = 0; c < chunks; ++c) {
    qv[c] = ld_f32(q + 16 * c) * a->scale;
    acc[c] = (f32x16){0};
  }
  float m = -5e4f, denom = 1.0f; /* TVM's initial state: lse of an empty sequence is -5e4 */
  float s[KEY_BLOCK] __attribute__((aligned(64))) = {0}; /* scores, then probabilities */
  for (int64_t j0 = 0; j0 < len; j0 += KEY_BLOCK) {
    const int64_t n = len - j0 < KEY_BLOCK ? len - j0 : KEY_BLOCK;
    float block_max = m;
    /* keys of one page are contiguous: walk (page, slot) instead of dividing every position */
    int64_t page = j0 / ps, slot = j0 % ps;
    for (int64_t j = 0; j < n; ++j) {
      const float* k = a->pages + (((int64_t)a->page_values[first + page] * 2 * a->h_kv + hk) * ps + slot) * D;
      f32x16 dot = qv[0] * ld_f32(k);
      for (int c = 1; c < chunks; ++c) dot += qv[c] * ld_f32(k + 16 * c);
      s[j] = hsum(dot);
      block_max = s[j] > block_max ? s[j] : block_max;
      if (++slot == ps) slot = 0, ++page;
    }
    const float rescale = exp2f(m - block_max);
    denom *= rescale;
    for (int c = 0; c < chunks; ++c) acc[c] *= rescale;
    m = block_max;
    f32x16 total = {0};
    for (int64_t j = 0; j < n; j += 16) { /* the block's probabilities, 16 at a time (lanes past n are unused) */
      f32x16 p = exp2_v(ld_f32(s + j) - m);
      st_f32(s + j, p);
      total += j + 16 <= n ? p : vsel(__builtin_convertvector(iota16(), f32x16) < (float)(n - j), p, splat(0.0f));
    }
    denom += hsum(total);
    page = j0 / ps, slot = j0 % ps;
    for (int64_t j = 0; j < n; ++j) {
      const float* v = a->pages + ((((int64_t)a->page_values[first + page] * 2 + 1) * a->h_kv + hk) * ps + slot) * D;
      const float p = s[j];
      for (int c = 0; c < chunks; ++c) acc[c] += ld_f32(v + 16 * c) * p;
      if (++slot == ps) slot = 0, ++page;
    }
  }
  float* o = a->out + (b * a->h_qo + h) * D;
  for (int c = 0; c < chunks; ++c) st_f32(o + 16 * c, acc[c] / denom);
  a->lse[b * a->h_qo + h] = m + log2f(denom);
}

static int decode_task(int task, TVMParallelGroupEnv* env, void* cdata) {
  const DecodeArgs* a = (const DecodeArgs*)cdata;
  int64_t begin, end;
  ember_split(a->batch * a->h_qo, task, env->num_task, 1, &begin, &end);
  for (int64_t i = begin; i < end; ++i) attend(a, i / a->h_qo, (int32_t)(i % a->h_qo));
  return 0;
}

/* Called from TIR (targets/cpu/attention.py). D must be a multiple of 16 and at most MAX_HEAD_DIM. */
int32_t ember_decode_attention(const float* q, const float* pages, const int32_t* page_indptr,
                               const int32_t* page_values, const int32_t* last_page_len, float* out, float* lse,
                               int64_t batch, int32_t h_qo, int32_t h_kv, int32_t d, int32_t page_size,
                               float sm_scale) {
  if (d % 16 || d > MAX_HEAD_DIM || h_kv <= 0 || h_qo % h_kv) return -1;
  DecodeArgs a = {q, pages, page_indptr, page_values, last_page_len, out, lse, batch, h_qo, h_kv, d, page_size,
                  sm_scale * 1.4426950408889634f};
  if (batch <= 0) return 0;
  return ember_parallel(decode_task, &a);
}
