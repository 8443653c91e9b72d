/* Decode attention over TVM's paged KV cache on the cpu (one query token per sequence), float32.
 *
 * Same inputs and outputs as the paged KV cache's cpu kernel `batch_decode_paged_kv_cpu` (relax.frontend.nn.llm):
 * pages [num_pages, 2 (k, v), H_kv, page_size, D]; sequence b owns pages page_values[page_indptr[b] ..
 * page_indptr[b+1]) with last_page_len[b] slots used in its last page; scores in the log2 domain,
 * q.k * sm_scale * log2(e); `lse` is the log2-sum-exp of each head. TVM's kernel is one serial scalar loop.
 *
 * Here one work item is (sequence, kv head, key segment): the query heads sharing a kv head (GQA) are done
 * together, so each key and value row is read once for all of them, with an online softmax over blocks of keys
 * (vector dot products over D, probabilities by a vectorized exp2). A sequence's keys are split into segments
 * when there are fewer (sequence, kv head) pairs than threads; the segments' partial softmax states are merged
 * afterwards (as flash-decoding does). */
#include <math.h>
#include <stdlib.h>

#include "ember_native.h"

#define KEY_BLOCK 64
#define MAX_HEAD_DIM 256
#define MAX_GROUP 8 /* query heads per kv head done in one pass; larger groups take several passes */
#define MIN_SEGMENT 128 /* keys: shorter segments cost more in merging than they save */

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
  int32_t segments;
  float* partial; /* segments > 1: per (b, h, segment): m, denom, acc[D] */
  int32_t window; /* > 0: a sliding window (HF's convention): the query sees the last `window` keys */
  float softcap;  /* > 0: scores s = q.k * sm_scale become softcap * tanh(s / softcap) (then scale is sm_scale) */
} DecodeArgs;

EMBER_INLINE int64_t seq_len(const DecodeArgs* a, int64_t b) {
  const int32_t npages = a->page_indptr[b + 1] - a->page_indptr[b];
  return npages > 0 ? (int64_t)(npages - 1) * a->page_size + a->last_page_len[b] : 0;
}

/* The first key the query of sequence b sees. */
EMBER_INLINE int64_t first_key(const DecodeArgs* a, int64_t b) {
  const int64_t len = seq_len(a, b);
  return a->window > 0 && len > a->window ? len - a->window : 0;
}

EMBER_INLINE const float* kv_row(const DecodeArgs* a, int64_t b, int64_t pos, int32_t which, int32_t hk) {
  const int32_t ps = a->page_size;
  const int64_t page = a->page_values[a->page_indptr[b] + pos / ps];
  return a->pages + (((page * 2 + which) * a->h_kv + hk) * ps + pos % ps) * a->d;
}

/* Heads h0 .. h0+G of sequence b (all on kv head hk) over keys [k0, k1): the softmax state (m, denom, acc)
 * written normalized to out/lse, or raw to the partial buffer when the keys are one segment of several. */
EMBER_INLINE void attend_impl(const DecodeArgs* a, int64_t b, int32_t hk, int32_t h0, const int32_t G, int64_t k0,
                             int64_t k1, int32_t seg, const int32_t D) {
  const int32_t chunks = D / 16, ps = a->page_size;
  f32x16 qv[MAX_GROUP][MAX_HEAD_DIM / 16], acc[MAX_GROUP][MAX_HEAD_DIM / 16];
  float m[MAX_GROUP], denom[MAX_GROUP];
  float s[MAX_GROUP][KEY_BLOCK] __attribute__((aligned(64)));
  for (int g = 0; g < G; ++g) {
    const float* q = a->q + (b * a->h_qo + h0 + g) * D;
    for (int c = 0; c < chunks; ++c) {
      qv[g][c] = ld_f32(q + 16 * c) * a->scale;
      acc[g][c] = (f32x16){0};
    }
    m[g] = -5e4f; /* TVM's initial state: the lse of an empty sequence is -5e4 */
    denom[g] = 1.0f;
    for (int j = 0; j < KEY_BLOCK; ++j) s[g][j] = 0.0f;
  }
  for (int64_t j0 = k0; j0 < k1; j0 += KEY_BLOCK) {
    const int64_t n = k1 - j0 < KEY_BLOCK ? k1 - j0 : KEY_BLOCK;
    float block_max[MAX_GROUP];
    for (int g = 0; g < G; ++g) block_max[g] = m[g];
    /* keys of one page are contiguous: step the row pointer inside a page, look the page up at its start */
    const float* k = kv_row(a, b, j0, 0, hk);
    for (int64_t j = 0, slot = j0 % ps; j < n; ++j, ++slot) {
      if (slot == ps) k = kv_row(a, b, j0 + j, 0, hk), slot = 0;
      f32x16 kc[MAX_HEAD_DIM / 16];
      for (int c = 0; c < chunks; ++c) kc[c] = ld_f32(k + 16 * c);
      for (int g = 0; g < G; ++g) {
        f32x16 dot = qv[g][0] * kc[0];
        for (int c = 1; c < chunks; ++c) dot += qv[g][c] * kc[c];
        float score = hsum(dot);
        if (a->softcap > 0.0f) score = a->softcap * 1.4426950408889634f * tanhf(score / a->softcap);
        s[g][j] = score;
        block_max[g] = score > block_max[g] ? score : block_max[g];
      }
      k += D;
    }
    for (int g = 0; g < G; ++g) {
      const float rescale = exp2f(m[g] - block_max[g]);
      denom[g] *= rescale;
      for (int c = 0; c < chunks; ++c) acc[g][c] *= rescale;
      m[g] = block_max[g];
      f32x16 total = {0};
      for (int64_t j = 0; j < n; j += 16) { /* lanes past n are computed but never used */
        f32x16 p = exp2_v(ld_f32(&s[g][j]) - m[g]);
        st_f32(&s[g][j], p);
        total += j + 16 <= n ? p : vsel(__builtin_convertvector(iota16(), f32x16) < (float)(n - j), p, splat(0.0f));
      }
      denom[g] += hsum(total);
    }
    const float* v = kv_row(a, b, j0, 1, hk);
    for (int64_t j = 0, slot = j0 % ps; j < n; ++j, ++slot) {
      if (slot == ps) v = kv_row(a, b, j0 + j, 1, hk), slot = 0;
      for (int c = 0; c < chunks; ++c) {
        const f32x16 vc = ld_f32(v + 16 * c);
        for (int g = 0; g < G; ++g) acc[g][c] += vc * s[g][j];
      }
      v += D;
    }
  }
  for (int g = 0; g < G; ++g) {
    const int64_t bh = b * a->h_qo + h0 + g;
    if (a->segments > 1) {
      float* p = a->partial + (bh * a->segments + seg) * (D + 2);
      p[0] = m[g];
      p[1] = denom[g];
      for (int c = 0; c < chunks; ++c) st_f32(p + 2 + 16 * c, acc[g][c]);
    } else {
      for (int c = 0; c < chunks; ++c) st_f32(a->out + bh * D + 16 * c, acc[g][c] / denom[g]);
      a->lse[bh] = m[g] + log2f(denom[g]);
    }
  }
}

/* Specialized for the common head sizes and group widths, so that q, the accumulators and a key row stay in
 * registers (with a run-time D or G they live on the stack). */
#define ATTEND_CASE(d, g) \
  case (d)*16 + (g): attend_impl(a, b, hk, h0, g, k0, k1, seg, d); return;

static void attend(const DecodeArgs* a, int64_t b, int32_t hk, int32_t h0, int32_t G, int64_t k0, int64_t k1,
                   int32_t seg) {
  switch (a->d * 16 + G) {
    ATTEND_CASE(64, 1) ATTEND_CASE(64, 2) ATTEND_CASE(64, 3) ATTEND_CASE(64, 4)
    ATTEND_CASE(64, 5) ATTEND_CASE(64, 6) ATTEND_CASE(64, 7) ATTEND_CASE(64, 8)
    ATTEND_CASE(128, 1) ATTEND_CASE(128, 2) ATTEND_CASE(128, 4) ATTEND_CASE(128, 8)
    default: attend_impl(a, b, hk, h0, G, k0, k1, seg, a->d);
  }
}

static int decode_task(int task, TVMParallelGroupEnv* env, void* cdata) {
  const DecodeArgs* a = (const DecodeArgs*)cdata;
  const int32_t group = a->h_qo / a->h_kv;
  int64_t begin, end;
  ember_split(a->batch * a->h_kv * a->segments, task, env->num_task, 1, &begin, &end);
  for (int64_t item = begin; item < end; ++item) {
    const int32_t seg = (int32_t)(item % a->segments);
    const int64_t bk = item / a->segments, b = bk / a->h_kv;
    const int32_t hk = (int32_t)(bk % a->h_kv);
    const int64_t len = seq_len(a, b), first = first_key(a, b);
    const int64_t per = (len - first + a->segments - 1) / a->segments;
    const int64_t k0 = first + seg * per < len ? first + seg * per : len, k1 = k0 + per < len ? k0 + per : len;
    for (int32_t h = 0; h < group; h += MAX_GROUP)
      attend(a, b, hk, hk * group + h, group - h < MAX_GROUP ? group - h : MAX_GROUP, k0, k1, seg);
  }
  return 0;
}

/* The segments of every (sequence, head), merged: out = sum 2^(m_s - M) acc_s / sum 2^(m_s - M) denom_s. */
static void merge_segments(const DecodeArgs* a) {
  const int32_t D = a->d, S = a->segments;
  for (int64_t bh = 0; bh < a->batch * a->h_qo; ++bh) {
    const float* p = a->partial + bh * S * (D + 2);
    float top = p[0];
    for (int32_t s = 1; s < S; ++s) top = p[s * (D + 2)] > top ? p[s * (D + 2)] : top;
    float denom = 0.0f;
    float* o = a->out + bh * D;
    for (int32_t i = 0; i < D; ++i) o[i] = 0.0f;
    for (int32_t s = 0; s < S; ++s) {
      const float* q = p + s * (D + 2);
      const float w = exp2f(q[0] - top);
      denom += q[1] * w;
      for (int32_t i = 0; i < D; ++i) o[i] += q[2 + i] * w;
    }
    for (int32_t i = 0; i < D; ++i) o[i] /= denom;
    a->lse[bh] = top + log2f(denom);
  }
}

/* Called from TIR (targets/cpu/attention.py). D must be a multiple of 16 and at most MAX_HEAD_DIM. */
int32_t ember_decode_attention(const float* q, const float* pages, const int32_t* page_indptr,
                               const int32_t* page_values, const int32_t* last_page_len, float* out, float* lse,
                               int64_t batch, int32_t h_qo, int32_t h_kv, int32_t d, int32_t page_size,
                               float sm_scale, int32_t window, float softcap) {
  if (d % 16 || d > MAX_HEAD_DIM || h_kv <= 0 || h_qo % h_kv) return -1;
  DecodeArgs a = {q, pages, page_indptr, page_values, last_page_len, out, lse, batch, h_qo, h_kv, d, page_size,
                  softcap > 0.0f ? sm_scale : sm_scale * 1.4426950408889634f, 1, NULL, window, softcap};
  if (batch <= 0) return 0;
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t seen = seq_len(&a, b) - first_key(&a, b);
    longest = seen > longest ? seen : longest;
  }
  /* enough work items for two per thread (the pool size is unknown here: assume up to 8 threads) */
  const int64_t pairs = batch * h_kv, want = (16 + pairs - 1) / pairs, most = longest / MIN_SEGMENT;
  a.segments = (int32_t)(want < most ? want : most > 1 ? most : 1);
  if (a.segments > 1) {
    a.partial = (float*)malloc((size_t)(batch * h_qo * a.segments * (d + 2)) * sizeof(float));
    if (a.partial == NULL) return -1;
  }
  int rc = ember_parallel(decode_task, &a);
  if (a.segments > 1) {
    merge_segments(&a);
    free(a.partial);
  }
  return rc;
}
