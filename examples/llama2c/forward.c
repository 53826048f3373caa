/* The transformer: RMSNorm, rotary attention with grouped key/value heads, SwiGLU FFN. */
#include "forward.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int32_t l2c_input_of(int32_t which)
{
    static const int32_t inputs[L2C_N_LINEARS] = {L2C_IN_QKV, L2C_IN_QKV, L2C_IN_QKV, L2C_IN_WO,
                                                  L2C_IN_W13, L2C_IN_W2,  L2C_IN_W13};
    return inputs[which];
}

const char *l2c_input_name(int32_t input)
{
    static const char *names[L2C_N_INPUTS] = {"qkv", "wo", "w13", "w2"};
    return names[input];
}

void l2c_net_init_fp32(l2c_net *net, const l2c_model *m, l2c_linear (*lin)[L2C_N_LINEARS])
{
    memset(net, 0, sizeof *net);
    net->m = m;
    net->lin = lin;
    for (int32_t l = 0; l < m->c.n_layers; l++)
        for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
            lin[l][k].w = l2c_model_weight(m, l, k, &lin[l][k].out_dim, &lin[l][k].in_dim);
            lin[l][k].q = NULL;
        }
}

/* ---- the engine's own parallel loops ---- */

typedef void part_fn(void *arg, int32_t part, int32_t n_parts);

typedef struct part_thread {
    part_fn *fn;
    void *arg;
    int32_t part, n;
} part_thread;

static void *part_main(void *p)
{
    const part_thread *t = p;
    t->fn(t->arg, t->part, t->n);
    return NULL;
}

/* Multiply-adds a part must hold before a thread is started for it (a start costs 0.05-0.4 ms,
 * the time of about 2^22 multiply-adds), or before it goes to a waiting thread of the net's
 * pool (a few microseconds). */
#define WORK_PER_PART ((int64_t)1 << 22)
#define WORK_PER_POOL_PART ((int64_t)1 << 15)
#define MAX_PARTS 64

/* Parts a loop of `work` multiply-adds uses on the net's threads. */
static int32_t parts_for(const l2c_net *net, int64_t work)
{
    int64_t n = net->n_threads < 1 ? 1 : net->n_threads;
    int64_t useful = work / (net->pool ? WORK_PER_POOL_PART : WORK_PER_PART);
    n = n < useful ? n : useful;
    n = n < MAX_PARTS ? n : MAX_PARTS;
    return n < 1 ? 1 : (int32_t)n;
}

/* fn(arg, p, n) for p = 0..n-1: on the net's pool, or part 0 on the calling thread and the
 * others on threads started for the call (a part whose thread cannot start runs here). Parts
 * write disjoint outputs, so the result does not depend on n or on where they run. */
static void run_parts(const l2c_net *net, int32_t n, part_fn *fn, void *arg)
{
    if (net->pool && n > 1 && dq_context_parallel(net->pool, fn, arg, n) == DQ_OK)
        return;
    pthread_t th[MAX_PARTS];
    part_thread pt[MAX_PARTS];
    int started[MAX_PARTS];
    for (int32_t p = 1; p < n; p++) {
        pt[p] = (part_thread){fn, arg, p, n};
        started[p] = pthread_create(&th[p], NULL, part_main, &pt[p]) == 0;
    }
    fn(arg, 0, n);
    for (int32_t p = 1; p < n; p++) {
        if (started[p])
            pthread_join(th[p], NULL);
        else
            fn(arg, p, n);
    }
}

static void split(int64_t count, int32_t part, int32_t n, int64_t *begin, int64_t *end)
{
    *begin = count * part / n;
    *end = count * (part + 1) / n;
}

/* 16 floats. Each lane of the loops below (a token, a key, a channel) goes through the same
 * roundings in the same order as the scalar loop it replaces (multiply, then add: the build
 * has -ffp-contract=off), so the vector loops give the scalar loops' bits. */
typedef float v16 __attribute__((vector_size(64)));
#define LANES 16

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* 16 floats read from any float address. */
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
#define load16(p) (*(const v16u *)(const void *)(p))

/* ---- float products: y[t, o] = sum_i x[t, i] w[o, i] ---- */

/* One token's row: four partial sums (i mod 4) keep several additions in flight. */
static float dot_row(const float *xt, const float *wo, int64_t in)
{
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= in; i += 4) {
        s0 += xt[i] * wo[i];
        s1 += xt[i + 1] * wo[i + 1];
        s2 += xt[i + 2] * wo[i + 2];
        s3 += xt[i + 3] * wo[i + 3];
    }
    for (; i < in; i++)
        s0 += xt[i] * wo[i];
    return (s0 + s1) + (s2 + s3);
}

/* dot_row for up to 16 tokens at once, one lane each: xs [in][16] holds the tokens' values
 * channel by channel; outputs o0..o1, two at a time. */
ALWAYS_INLINE void dot_lanes(const float *xs, int64_t rows, int64_t in, const float *w,
                             int64_t o0, int64_t o1, int64_t out, float *y)
{
    int64_t o = o0;
    for (; o + 2 <= o1; o += 2) {
        const float *wa = w + o * in, *wb = wa + in;
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
        int64_t i = 0;
        for (; i + 4 <= in; i += 4) {
            const v16 x0 = load16(xs + i * LANES), x1 = load16(xs + (i + 1) * LANES);
            const v16 x2 = load16(xs + (i + 2) * LANES), x3 = load16(xs + (i + 3) * LANES);
            a0 += x0 * wa[i], a1 += x1 * wa[i + 1], a2 += x2 * wa[i + 2], a3 += x3 * wa[i + 3];
            b0 += x0 * wb[i], b1 += x1 * wb[i + 1], b2 += x2 * wb[i + 2], b3 += x3 * wb[i + 3];
        }
        for (; i < in; i++) {
            const v16 xi = load16(xs + i * LANES);
            a0 += xi * wa[i], b0 += xi * wb[i];
        }
        const v16 ya = (a0 + a1) + (a2 + a3), yb = (b0 + b1) + (b2 + b3);
        for (int64_t t = 0; t < rows; t++)
            y[t * out + o] = ya[t], y[t * out + o + 1] = yb[t];
    }
    for (; o < o1; o++) {
        const float *wo = w + o * in;
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        int64_t i = 0;
        for (; i + 4 <= in; i += 4) {
            a0 += load16(xs + i * LANES) * wo[i];
            a1 += load16(xs + (i + 1) * LANES) * wo[i + 1];
            a2 += load16(xs + (i + 2) * LANES) * wo[i + 2];
            a3 += load16(xs + (i + 3) * LANES) * wo[i + 3];
        }
        for (; i < in; i++)
            a0 += load16(xs + i * LANES) * wo[i];
        const v16 yo = (a0 + a1) + (a2 + a3);
        for (int64_t t = 0; t < rows; t++)
            y[t * out + o] = yo[t];
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx512f"))) static void dot_lanes_avx512(const float *xs, int64_t rows,
                                                                 int64_t in, const float *w,
                                                                 int64_t o0, int64_t o1,
                                                                 int64_t out, float *y)
{
    dot_lanes(xs, rows, in, w, o0, o1, out, y);
}
#endif

static void dot_lanes_best(const float *xs, int64_t rows, int64_t in, const float *w, int64_t o0,
                           int64_t o1, int64_t out, float *y)
{
#if defined(__GNUC__) && defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) {
        dot_lanes_avx512(xs, rows, in, w, o0, o1, out, y);
        return;
    }
#endif
    dot_lanes(xs, rows, in, w, o0, o1, out, y);
}

/* Tiles with fewer tokens run one token at a time (lanes would idle). */
#define MIN_LANE_ROWS 4

typedef struct matmul_job {
    const float *x, *w;
    int64_t rows, in, out;
    float *y;
    int failed[MAX_PARTS];
} matmul_job;

/* Outputs [o0, o1) of every token; each part works on its own outputs. */
static void matmul_part(void *arg, int32_t part, int32_t n)
{
    matmul_job *j = arg;
    int64_t o0, o1;
    split(j->out, part, n, &o0, &o1);
    if (o0 >= o1)
        return;
    float *xs = NULL;
    if (j->rows >= MIN_LANE_ROWS && !(xs = malloc((size_t)(j->in * LANES) * sizeof *xs))) {
        j->failed[part] = 1;
        return;
    }
    int64_t t0 = 0;
    for (; xs && t0 + MIN_LANE_ROWS <= j->rows; t0 += LANES) {
        const int64_t rows = j->rows - t0 < LANES ? j->rows - t0 : LANES;
        const float *xt = j->x + t0 * j->in;
        for (int64_t i = 0; i < j->in; i++)
            for (int64_t t = 0; t < LANES; t++)
                xs[i * LANES + t] = t < rows ? xt[t * j->in + i] : 0.0f;
        dot_lanes_best(xs, rows, j->in, j->w, o0, o1, j->out, j->y + t0 * j->out);
    }
    for (int64_t t = t0; t < j->rows; t++)
        for (int64_t o = o0; o < o1; o++)
            j->y[t * j->out + o] = dot_row(j->x + t * j->in, j->w + o * j->in, j->in);
    free(xs);
}

/* y [rows, out] = x [rows, in] w^T (w [out, in]); every element as dot_row computes it, whatever
 * the tile or the thread. Returns 0 or -1 (out of memory, message printed). */
static int matmul_wt(const l2c_net *net, const float *x, int64_t rows, int64_t in,
                     const float *w, int64_t out, float *y)
{
    matmul_job j = {x, w, rows, in, out, y, {0}};
    const int32_t n = parts_for(net, rows * in * out);
    run_parts(net, n, matmul_part, &j);
    for (int32_t p = 0; p < n; p++)
        if (j.failed[p]) {
            fprintf(stderr, "out of memory\n");
            return -1;
        }
    return 0;
}

int l2c_matmul(int32_t n_threads, const float *x, int64_t rows, int64_t in, const float *w,
               int64_t out, float *y)
{
    l2c_net net;
    memset(&net, 0, sizeof net);
    net.n_threads = n_threads;
    return matmul_wt(&net, x, rows, in, w, out, y);
}

/* Buffers of one forward call, reused by every block: a 512-token prompt would otherwise map
 * and fault in about 100 MB of fresh pages per block (the linears' workspace included). */
typedef struct fwd_scratch {
    float *xb, *y, *q, *k, *v, *h1, *h3;
    void *work; /* the quantized linears' workspace, grown on demand */
    size_t work_bytes;
} fwd_scratch;

static int scratch_init(fwd_scratch *s, const l2c_model *m, int64_t n)
{
    const int64_t dim = m->c.dim, hid = m->c.hidden_dim, kv = m->kv_dim, qd = m->q_dim;
    const int64_t wide = qd > dim ? qd : dim;
    memset(s, 0, sizeof *s);
    s->xb = malloc((size_t)(n * wide) * sizeof *s->xb);
    s->y = malloc((size_t)(n * dim) * sizeof *s->y);
    s->q = malloc((size_t)(n * qd) * sizeof *s->q);
    s->k = malloc((size_t)(n * kv) * sizeof *s->k);
    s->v = malloc((size_t)(n * kv) * sizeof *s->v);
    s->h1 = malloc((size_t)(n * hid) * sizeof *s->h1);
    s->h3 = malloc((size_t)(n * hid) * sizeof *s->h3);
    if (!s->xb || !s->y || !s->q || !s->k || !s->v || !s->h1 || !s->h3) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    return 0;
}

static void scratch_free(fwd_scratch *s)
{
    free(s->xb);
    free(s->y);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->h1);
    free(s->h3);
    free(s->work);
    memset(s, 0, sizeof *s);
}

/* A workspace of at least `bytes`, or NULL when it cannot grow (the library then allocates
 * its own for the call, as without one). */
static void *scratch_work(fwd_scratch *s, size_t bytes)
{
    if (bytes > s->work_bytes) {
        free(s->work);
        s->work = malloc(bytes);
        s->work_bytes = s->work ? bytes : 0;
    }
    return s->work;
}

static int linear(const l2c_net *net, fwd_scratch *s, const l2c_linear *lin, const float *x,
                  int64_t rows, float *y)
{
    if (!lin->q)
        return matmul_wt(net, x, rows, lin->in_dim, lin->w, lin->out_dim, y);
    size_t bytes = 0;
    void *work = dq_linear_workspace_size(lin->q, rows, &bytes) == DQ_OK && bytes > 0
                     ? scratch_work(s, bytes)
                     : NULL;
    dq_status st = dq_linear_forward(lin->q, x, rows, lin->in_dim, lin->in_dim, y, lin->out_dim,
                                     work, work ? bytes : 0);
    if (st != DQ_OK) {
        fprintf(stderr, "dq_linear_forward: %s\n", dq_status_name(st));
        return -1;
    }
    return 0;
}

/* The linears lin[0..n) that read the same input x: quantized layers that form a group
 * (dq_linear_forward_group: the input is transformed and quantized once, the same bits as
 * one call each), else one at a time. */
static int linear_group(const l2c_net *net, fwd_scratch *s, const l2c_linear *const *lin,
                        int32_t n, const float *x, int64_t rows, float *const *y)
{
    enum { MAX_GROUP = 3 };
    const dq_linear *layers[MAX_GROUP];
    int64_t ldy[MAX_GROUP];
    int grouped = n <= MAX_GROUP;
    for (int32_t i = 0; grouped && i < n; i++) {
        layers[i] = lin[i]->q;
        ldy[i] = lin[i]->out_dim;
        grouped = lin[i]->q != NULL;
    }
    size_t bytes;
    if (grouped && dq_linear_group_workspace_size(layers, n, rows, &bytes) == DQ_OK) {
        void *work = bytes > 0 ? scratch_work(s, bytes) : NULL;
        dq_status st = dq_linear_forward_group(layers, n, x, rows, lin[0]->in_dim,
                                               lin[0]->in_dim, y, ldy, n, work,
                                               work ? bytes : 0);
        if (st != DQ_OK) {
            fprintf(stderr, "dq_linear_forward_group: %s\n", dq_status_name(st));
            return -1;
        }
        return 0;
    }
    for (int32_t i = 0; i < n; i++)
        if (linear(net, s, lin[i], x, rows, y[i]))
            return -1;
    return 0;
}

/* RMSNorm: o = w * x / sqrt(mean(x^2) + eps) (eps 1e-5 in run.c). */
static void rmsnorm(float *o, const float *x, const float *w, int64_t rows, int64_t dim,
                    float eps)
{
    for (int64_t t = 0; t < rows; t++) {
        float ss = 0;
        for (int64_t i = 0; i < dim; i++)
            ss += x[t * dim + i] * x[t * dim + i];
        ss = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++)
            o[t * dim + i] = w[i] * (ss * x[t * dim + i]);
    }
}

/* Rotary angles: cs[2 (t * half + i)] = cos, + 1 = sin of position pos0 + t, pair i of a head, with
 * frequency theta^(-2i / head_size). llama2.c files keep run.c's float arithmetic; Hugging
 * Face models compute the angles in double. */
static void rope_table(const l2c_model *m, int64_t pos0, int64_t rows, float *cs)
{
    int32_t hs = m->head_size, half = hs / 2;
    for (int64_t t = 0; t < rows; t++)
        for (int32_t i = 0; i < half; i++) {
            float *p = cs + 2 * (t * half + i);
            if (m->rope_style == L2C_ROPE_INTERLEAVED) {
                float freq = 1.0f / powf((float)m->rope_theta, (float)(2 * i) / (float)hs);
                float angle = (float)(pos0 + t) * freq;
                p[0] = cosf(angle), p[1] = sinf(angle);
            } else {
                double angle =
                    (double)(pos0 + t) * pow(m->rope_theta, -(double)(2 * i) / (double)hs);
                p[0] = (float)cos(angle), p[1] = (float)sin(angle);
            }
        }
}

/* Rotary embedding of every head of a [rows, width] matrix: on interleaved pairs (2i, 2i+1)
 * or on the pairs (i, i + head_size / 2) of rotate_half. */
static void rope(const l2c_model *m, const float *cs, float *v, int64_t rows, int64_t width)
{
    int32_t hs = m->head_size, half = hs / 2;
    int interleaved = m->rope_style == L2C_ROPE_INTERLEAVED;
    for (int64_t t = 0; t < rows; t++)
        for (int64_t h = 0; h < width; h += hs)
            for (int32_t i = 0; i < half; i++) {
                float c = cs[2 * (t * half + i)], s = cs[2 * (t * half + i) + 1];
                float *a = v + t * width + h + (interleaved ? 2 * i : i);
                float *b = interleaved ? a + 1 : a + half;
                float x = *a, y = *b;
                *a = x * c - y * s;
                *b = x * s + y * c;
            }
}

/* ---- causal attention ---- */

/* Keys of one key/value head as attention reads them: channel-major in blocks of LANES
 * positions, element (position s, channel i) at ((s / LANES) * hs + i) * LANES + s % LANES. */
static inline int64_t key_block_index(int32_t hs, int64_t s, int32_t i)
{
    return ((s / LANES) * hs + i) * LANES + s % LANES;
}

typedef struct att_job {
    const l2c_model *m;
    const float *q, *k, *v; /* q [n, q_dim]; k, v [pos0 + n, kv_dim] */
    const float *kt;        /* or NULL: every head's keys already blocked, kt_head floats apart */
    int64_t kt_head;
    int64_t pos0, n;
    float *out;
    int failed[MAX_PARTS];
} att_job;

/* Key blocks whose scores are summed side by side (independent addition chains). */
#define KEY_BLOCKS 4
#define QUERIES 4 /* queries of one head at a time */
#define V_CHUNK 4 /* 16-channel vectors of the output per pass over the values */

/* Positions a blocked key array holds for `len` keys: whole groups of KEY_BLOCKS blocks. */
static int64_t key_blocks_cap(int64_t len)
{
    return (len + LANES * KEY_BLOCKS - 1) / (LANES * KEY_BLOCKS) * (LANES * KEY_BLOCKS);
}

/* Queries t0..t0+nq-1 of head h (nq is QUERIES or 1, a constant once inlined: the queries
 * share every key and value load, and a lone query computes no copies). Scores of 16 keys at
 * once (kt: the head's blocked keys), the softmax one key at a time, the weighted values 16
 * channels at once (vh: the head's values, position s at vh + s * vld). Each score, weight
 * and output element goes through the scalar loop's operations in its order (see v16),
 * whatever nq. att: QUERIES rows (att_ld apart) of the scores of every key block. */
ALWAYS_INLINE void attend_queries(const att_job *j, int32_t h, int64_t t0, const int32_t nq,
                                  const float *kt, const float *vh, int64_t vld, float *att,
                                  int64_t att_ld)
{
    const l2c_model *m = j->m;
    const int32_t hs = m->head_size, dim = m->q_dim;
    const float scale = 1.0f / sqrtf((float)hs);
    const int64_t last0 = j->pos0 + t0, last_n = last0 + nq - 1; /* the later queries see more */
    const float *qh[QUERIES];
    for (int32_t q = 0; q < nq; q++)
        qh[q] = j->q + (t0 + q) * dim + (int64_t)h * hs;
    for (int64_t b = 0; b * LANES <= last_n; b += KEY_BLOCKS) {
        const float *kb = kt + b * hs * LANES;
        v16 d[QUERIES][KEY_BLOCKS];
        for (int32_t q = 0; q < nq; q++)
            for (int32_t u = 0; u < KEY_BLOCKS; u++)
                d[q][u] = (v16){0};
        for (int32_t i = 0; i < hs; i++)
            for (int32_t u = 0; u < KEY_BLOCKS; u++) {
                const v16 kv16 = load16(kb + ((int64_t)u * hs + i) * LANES);
                for (int32_t q = 0; q < nq; q++)
                    d[q][u] += kv16 * qh[q][i];
            }
        for (int32_t q = 0; q < nq; q++)
            for (int32_t u = 0; u < KEY_BLOCKS; u++) {
                const v16 sc = d[q][u] * scale;
                memcpy(att + q * att_ld + (b + u) * LANES, &sc, sizeof sc);
            }
    }
    for (int32_t q = 0; q < nq; q++) {
        float *aq = att + q * att_ld;
        const int64_t last = last0 + q;
        float mx = -INFINITY;
        for (int64_t s = 0; s <= last; s++)
            mx = aq[s] > mx ? aq[s] : mx;
        float sum = 0;
        for (int64_t s = 0; s <= last; s++) {
            aq[s] = expf(aq[s] - mx);
            sum += aq[s];
        }
        for (int64_t s = 0; s <= last; s++)
            aq[s] = aq[s] / sum;
    }
    /* Outputs: every query sums its keys 0..last in order; keys 0..last0 together. */
    int32_t i = 0;
    for (; i + V_CHUNK * LANES <= hs; i += V_CHUNK * LANES) {
        v16 o[QUERIES][V_CHUNK];
        for (int32_t q = 0; q < nq; q++)
            for (int32_t u = 0; u < V_CHUNK; u++)
                o[q][u] = (v16){0};
        for (int64_t s = 0; s <= last0; s++)
            for (int32_t u = 0; u < V_CHUNK; u++) {
                const v16 vv = load16(vh + s * vld + i + u * LANES);
                for (int32_t q = 0; q < nq; q++)
                    o[q][u] += vv * att[q * att_ld + s];
            }
        for (int32_t q = 1; q < nq; q++)
            for (int64_t s = last0 + 1; s <= last0 + q; s++)
                for (int32_t u = 0; u < V_CHUNK; u++)
                    o[q][u] += load16(vh + s * vld + i + u * LANES) * att[q * att_ld + s];
        for (int32_t q = 0; q < nq; q++)
            memcpy(j->out + (t0 + q) * dim + (int64_t)h * hs + i, o[q], sizeof o[q]);
    }
    for (int32_t q = 0; q < nq; q++) { /* narrow heads: one query at a time */
        const float *aq = att + q * att_ld;
        float *oh = j->out + (t0 + q) * dim + (int64_t)h * hs;
        int32_t c = i;
        for (; c + LANES <= hs; c += LANES) {
            v16 o = {0};
            for (int64_t s = 0; s <= last0 + q; s++)
                o += load16(vh + s * vld + c) * aq[s];
            memcpy(oh + c, &o, sizeof o);
        }
        for (; c < hs; c++) {
            float o = 0;
            for (int64_t s = 0; s <= last0 + q; s++)
                o += aq[s] * vh[s * vld + c];
            oh[c] = o;
        }
    }
}

/* Heads [h0, h1) of the job, QUERIES queries at a time, then the rest one by one. kt: room
 * for one head's blocked keys when the job has none (built here, once per key/value head); vt
 * (or NULL): room for one head's values, copied together for many queries (rows kv_dim apart,
 * a multiple of 4 KiB, evict each other from the cache), read in place for a few. */
ALWAYS_INLINE void attention_heads(const att_job *j, int32_t h0, int32_t h1, float *att,
                                   float *kt, float *vt)
{
    const l2c_model *m = j->m;
    const int32_t hs = m->head_size, kv_dim = m->kv_dim;
    const int32_t group = m->c.n_heads / m->c.n_kv_heads;
    const int64_t len = j->pos0 + j->n, att_ld = key_blocks_cap(len);
    int32_t kt_head = -1;
    for (int32_t h = h0; h < h1; h++) {
        const int32_t kvh = h / group;
        const int64_t kv_off = (int64_t)kvh * hs;
        const float *kh = kt;
        if (j->kt) {
            kh = j->kt + kvh * j->kt_head;
        } else if (kvh != kt_head) {
            for (int64_t s = 0; s < att_ld; s++)
                for (int32_t i = 0; i < hs; i++)
                    kt[key_block_index(hs, s, i)] = s < len ? j->k[s * kv_dim + kv_off + i] : 0;
        }
        const float *vh = j->v + kv_off;
        int64_t vld = kv_dim;
        if (vt) {
            if (kvh != kt_head)
                for (int64_t s = 0; s < len; s++)
                    memcpy(vt + s * hs, vh + s * kv_dim, (size_t)hs * sizeof *vt);
            vh = vt;
            vld = hs;
        }
        kt_head = kvh;
        int64_t t0 = 0;
        for (; t0 + QUERIES <= j->n; t0 += QUERIES)
            attend_queries(j, h, t0, QUERIES, kh, vh, vld, att, att_ld);
        for (; t0 < j->n; t0++)
            attend_queries(j, h, t0, 1, kh, vh, vld, att, att_ld);
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx512f"))) static void attention_heads_avx512(const att_job *j,
                                                                       int32_t h0, int32_t h1,
                                                                       float *att, float *kt,
                                                                       float *vt)
{
    attention_heads(j, h0, h1, att, kt, vt);
}
#endif

static void attention_part(void *arg, int32_t part, int32_t n)
{
    att_job *j = arg;
    const l2c_model *m = j->m;
    int64_t h0, h1;
    split(m->c.n_heads, part, n, &h0, &h1);
    if (h0 >= h1)
        return;
    const int64_t cap = key_blocks_cap(j->pos0 + j->n);
    float *att = malloc((size_t)(QUERIES * cap) * sizeof *att);
    float *kt = j->kt ? NULL : malloc((size_t)(cap * m->head_size) * sizeof *kt);
    const int copy_v = j->n > QUERIES; /* values read by more than one group of queries */
    float *vt = copy_v ? malloc((size_t)((j->pos0 + j->n) * m->head_size) * sizeof *vt) : NULL;
    if (!att || (!j->kt && !kt) || (copy_v && !vt))
        j->failed[part] = 1;
#if defined(__GNUC__) && defined(__x86_64__)
    else if (__builtin_cpu_supports("avx512f"))
        attention_heads_avx512(j, (int32_t)h0, (int32_t)h1, att, kt, vt);
#endif
    else
        attention_heads(j, (int32_t)h0, (int32_t)h1, att, kt, vt);
    free(att);
    free(kt);
    free(vt);
}

/* Causal attention of the queries q [n] at positions pos0..pos0+n-1 over the keys and values
 * k, v [pos0 + n] of positions 0..pos0+n-1: out[t, head h] = softmax(q_t . k_s / sqrt(hs),
 * s <= pos0 + t) v_s with the key and value head of h. kt (or NULL): the same keys already
 * blocked (key_block_index), kt_head floats per key/value head. Heads are split over the
 * net's threads. Returns 0 or -1 (out of memory, message printed). */
static int attention(const l2c_net *net, const float *q, const float *k, const float *kt,
                     int64_t kt_head, const float *v, int64_t pos0, int64_t n, float *out)
{
    const l2c_model *m = net->m;
    att_job j = {m, q, k, v, kt, kt_head, pos0, n, out, {0}};
    const int64_t work = 2 * (int64_t)m->c.n_heads * m->head_size * n * (pos0 + (n + 1) / 2);
    int32_t parts = parts_for(net, work);
    parts = parts < m->c.n_heads ? parts : m->c.n_heads;
    run_parts(net, parts, attention_part, &j);
    for (int32_t p = 0; p < parts; p++)
        if (j.failed[p]) {
            fprintf(stderr, "out of memory\n");
            return -1;
        }
    return 0;
}

/* ---- keys, values and queries in fewer bits ---- */

int l2c_attn_rotates(const l2c_attn_quant *a)
{
    return a && (a->kv_bits == 4 || a->kv_bits == 8 || a->qk_bits == 4);
}

static int kv_format(const l2c_net *net)
{
    return net->attn ? net->attn->kv_bits : 0;
}

uint16_t l2c_half_from_float(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: quiet, keeping the top payload bits */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) /* 65520 and beyond (infinity included) round to infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: a subnormal half, round(|f| * 2^24) (exact product) */
        float a;
        memcpy(&a, &ax, sizeof a);
        return (uint16_t)(sign | (uint16_t)rintf(a * 16777216.0f));
    }
    /* Rebias the exponent (127 -> 15), round the mantissa to 10 bits, ties to even; a carry
     * moves into the exponent as it should. */
    const uint32_t r = ax - 0x38000000u;
    return (uint16_t)(sign | ((r + 0x0fffu + ((r >> 13) & 1u)) >> 13));
}

float l2c_half_to_float(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    uint32_t x;
    if (e == 0) {
        const float f = (float)mant * 5.9604644775390625e-8f; /* 2^-24 */
        return sign ? -f : f;
    }
    x = sign | (e == 31 ? 0x7f800000u | (mant << 13) : ((e + 112u) << 23) | (mant << 13));
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

/* libduquant's layout of layer l's keys (rotated when the net rotates) or values. */
static dq_kv_params kv_params(const l2c_net *net, int32_t l, int values)
{
    const l2c_attn_quant *a = net->attn;
    const float *clip = values ? a->v_clip : a->k_clip;
    dq_kv_params p;
    dq_kv_params_init(&p, sizeof p);
    p.bits = a->kv_bits;
    p.head_size = net->m->head_size;
    p.n_heads = net->m->c.n_kv_heads;
    p.flags = !values && l2c_attn_rotates(a) ? DQ_KV_F_ROTATE : 0;
    p.clip_ratio = clip ? clip[l] : 1.0f;
    return p;
}

static int kv_fail(dq_status st, const char *what, int32_t l)
{
    fprintf(stderr, "%s (layer %d): %s\n", what, (int)l, dq_status_name(st));
    return -1;
}

/* Bytes of one token's keys (or values) in the net's cache format (not float32). */
static int kv_token_bytes(const l2c_net *net, size_t *bytes)
{
    if (kv_format(net) == 16) {
        *bytes = (size_t)net->m->kv_dim * sizeof(uint16_t);
        return 0;
    }
    dq_kv_params p = kv_params(net, 0, 0);
    dq_status st = dq_kv_size(&p, 1, bytes);
    return st ? kv_fail(st, "dq_kv_size", 0) : 0;
}

/* Keys and values [n, kv_dim] of layer l (keys already rotated when the net rotates and the
 * format is half precision) into tokens first..first+n-1 of kb and vb (cap tokens). */
static int kv_store(const l2c_net *net, int32_t l, const float *k, const float *v, int64_t n,
                    uint8_t *kb, uint8_t *vb, size_t token_bytes, int64_t cap, int64_t first)
{
    const int64_t kv = net->m->kv_dim;
    if (kv_format(net) == 16) {
        uint16_t *kh = (uint16_t *)(void *)kb + first * kv;
        uint16_t *vh = (uint16_t *)(void *)vb + first * kv;
        for (int64_t i = 0; i < n * kv; i++) {
            kh[i] = l2c_half_from_float(k[i]);
            vh[i] = l2c_half_from_float(v[i]);
        }
        return 0;
    }
    const size_t bytes = (size_t)cap * token_bytes;
    dq_kv_params pk = kv_params(net, l, 0), pv = kv_params(net, l, 1);
    dq_status st = dq_kv_quantize(&pk, k, n, kv, kb, bytes, first);
    if (st == DQ_OK)
        st = dq_kv_quantize(&pv, v, n, kv, vb, bytes, first);
    return st ? kv_fail(st, "dq_kv_quantize", l) : 0;
}

/* Tokens 0..len-1 of kb and vb back to float keys and values [len, kv_dim]. */
static int kv_load(const l2c_net *net, int32_t l, const uint8_t *kb, const uint8_t *vb,
                   size_t token_bytes, int64_t cap, int64_t len, float *k, float *v)
{
    const int64_t kv = net->m->kv_dim;
    if (kv_format(net) == 16) {
        const uint16_t *kh = (const uint16_t *)(const void *)kb;
        const uint16_t *vh = (const uint16_t *)(const void *)vb;
        for (int64_t i = 0; i < len * kv; i++) {
            k[i] = l2c_half_to_float(kh[i]);
            v[i] = l2c_half_to_float(vh[i]);
        }
        return 0;
    }
    const size_t bytes = (size_t)cap * token_bytes;
    dq_kv_params pk = kv_params(net, l, 0), pv = kv_params(net, l, 1);
    const int32_t hs = net->m->head_size;
    for (int32_t h = 0; h < pk.n_heads; h++) {
        dq_status st = dq_kv_dequantize(&pk, kb, bytes, h, 0, len, k + (int64_t)h * hs, kv);
        if (st == DQ_OK)
            st = dq_kv_dequantize(&pv, vb, bytes, h, 0, len, v + (int64_t)h * hs, kv);
        if (st)
            return kv_fail(st, "dq_kv_dequantize", l);
    }
    return 0;
}

/* Queries [n, q_dim] and keys [n, kv_dim] as attention sees them: rotated per head when the
 * net rotates (keys of the 4/8-bit formats are rotated as they are quantized), queries then
 * quantized per head to qk_bits. */
static int attn_inputs(const l2c_net *net, int32_t l, float *q, float *k, int64_t n)
{
    const l2c_attn_quant *a = net->attn;
    if (!l2c_attn_rotates(a))
        return 0;
    const l2c_model *m = net->m;
    dq_kv_params p;
    dq_kv_params_init(&p, sizeof p);
    p.head_size = m->head_size;
    p.n_heads = m->c.n_heads;
    dq_status st = dq_kv_rotate(&p, q, n, m->q_dim);
    if (st)
        return kv_fail(st, "dq_kv_rotate (queries)", l);
    if (a->kv_bits != 4 && a->kv_bits != 8) {
        p.n_heads = m->c.n_kv_heads;
        if ((st = dq_kv_rotate(&p, k, n, m->kv_dim)) != DQ_OK)
            return kv_fail(st, "dq_kv_rotate (keys)", l);
    }
    if (a->qk_bits != 4)
        return 0;
    p.bits = 4;
    p.n_heads = m->c.n_heads;
    size_t token, bytes;
    if ((st = dq_kv_size(&p, 1, &token)) != DQ_OK)
        return kv_fail(st, "dq_kv_size", l);
    uint8_t *buf = malloc(token);
    if (!buf) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    bytes = token;
    for (int64_t t = 0; t < n && st == DQ_OK; t++) {
        float *qt = q + t * m->q_dim;
        st = dq_kv_quantize(&p, qt, 1, m->q_dim, buf, bytes, 0);
        for (int32_t h = 0; h < p.n_heads && st == DQ_OK; h++)
            st = dq_kv_dequantize(&p, buf, bytes, h, 0, 1, qt + (int64_t)h * p.head_size,
                                  p.head_size);
    }
    free(buf);
    return st ? kv_fail(st, "4-bit queries", l) : 0;
}

static int observe(const l2c_net *net, int32_t layer, int32_t input, const float *x, int64_t n,
                   int64_t cols)
{
    return net->observe ? net->observe(net->observe_user, layer, input, x, n, cols) : 0;
}

typedef struct swiglu_job {
    float *h1;
    const float *h3;
    int64_t count;
} swiglu_job;

static void swiglu_part(void *arg, int32_t part, int32_t n)
{
    swiglu_job *j = arg;
    int64_t i0, i1;
    split(j->count, part, n, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) /* SwiGLU: silu(w1 x) * (w3 x) */
        j->h1[i] = j->h1[i] / (1.0f + expf(-j->h1[i])) * j->h3[i];
}

/* h1 = silu(h1) * h3 elementwise, split over the net's threads for a prompt (an exp costs
 * about as much as 16 multiply-adds). */
static void swiglu(const l2c_net *net, float *h1, const float *h3, int64_t count)
{
    swiglu_job j = {h1, h3, count};
    run_parts(net, parts_for(net, 16 * count), swiglu_part, &j);
}

/* Block `l` of the net on the hidden states x [n, dim] of positions pos0..pos0+n-1, in place;
 * cs: the rotary table of those positions. Without a cache pos0 is 0 and the block attends
 * over its own keys and values; with one, the keys and values of the n positions are stored
 * in layer l's slots of the cache and the block attends over positions 0..pos0+n-1 there. */
static int block(const l2c_net *net, fwd_scratch *s, int32_t l, float *x, int64_t n,
                 const float *cs, int64_t pos0, l2c_kv_cache *cache)
{
    const l2c_model *m = net->m;
    int64_t dim = m->c.dim, hid = m->c.hidden_dim, kv = m->kv_dim, qd = m->q_dim;
    float *xb = s->xb, *y = s->y, *q = s->q, *k = s->k, *v = s->v, *h1 = s->h1, *h3 = s->h3;
    int rc = -1;
    const l2c_linear *lin = net->lin[l];
    rmsnorm(xb, x, m->rms_att + l * dim, n, dim, m->norm_eps);
    if ((rc = observe(net, l, L2C_IN_QKV, xb, n, dim)) != 0)
        goto out;
    rc = -1;
    const l2c_linear *qkv[3] = {&lin[L2C_WQ], &lin[L2C_WK], &lin[L2C_WV]};
    float *const qkv_out[3] = {q, k, v};
    if (linear_group(net, s, qkv, 3, xb, n, qkv_out))
        goto out;
    rope(m, cs, q, n, qd);
    rope(m, cs, k, n, kv);
    if (net->kv_observe && (rc = net->kv_observe(net->kv_observe_user, l, k, v, n, kv)) != 0)
        goto out;
    rc = -1;
    if (attn_inputs(net, l, q, k, n))
        goto out;
    if (kv_format(net) != 0) {
        /* Keys and values go through the cache format: stored, then read back as floats (the
         * same values with or without a cache: each token's heads are stored on their own). */
        const int64_t len = pos0 + n;
        uint8_t *kb = NULL, *vb = NULL;
        int64_t cap = n, first = 0;
        size_t tb = 0;
        if (cache) {
            tb = cache->token_bytes;
            kb = cache->kq + (size_t)l * (size_t)cache->cap * tb;
            vb = cache->vq + (size_t)l * (size_t)cache->cap * tb;
            cap = cache->cap, first = pos0;
        } else if (kv_token_bytes(net, &tb) == 0) {
            kb = malloc((size_t)n * tb);
            vb = malloc((size_t)n * tb);
        }
        float *kf = cache ? malloc((size_t)(len * kv) * sizeof *kf) : k;
        float *vf = cache ? malloc((size_t)(len * kv) * sizeof *vf) : v;
        int e = !kb || !vb || !kf || !vf;
        if (e)
            fprintf(stderr, "out of memory\n");
        e = e || kv_store(net, l, k, v, n, kb, vb, tb, cap, first) ||
            kv_load(net, l, kb, vb, tb, cap, len, kf, vf) ||
            attention(net, q, kf, NULL, 0, vf, pos0, n, xb);
        if (!cache) {
            free(kb);
            free(vb);
        } else {
            free(kf);
            free(vf);
        }
        if (e)
            goto out;
    } else if (cache) {
        /* Keys go in blocked, as attention reads them: no per-step transposition. */
        const int64_t kcap = key_blocks_cap(cache->cap), hs = m->head_size;
        float *ck = cache->k + (int64_t)l * kcap * kv;
        float *cv = cache->v + (int64_t)l * cache->cap * kv;
        for (int64_t t = 0; t < n; t++)
            for (int64_t c = 0; c < kv; c++)
                ck[c / hs * kcap * hs + key_block_index((int32_t)hs, pos0 + t, (int32_t)(c % hs))] =
                    k[t * kv + c];
        memcpy(cv + pos0 * kv, v, (size_t)(n * kv) * sizeof *v);
        if (attention(net, q, NULL, ck, kcap * hs, cv, pos0, n, xb))
            goto out;
    } else if (attention(net, q, k, NULL, 0, v, 0, n, xb))
        goto out;
    if ((rc = observe(net, l, L2C_IN_WO, xb, n, qd)) != 0)
        goto out;
    rc = -1;
    if (linear(net, s, &lin[L2C_WO], xb, n, y))
        goto out;
    for (int64_t i = 0; i < n * dim; i++)
        x[i] += y[i];
    rmsnorm(xb, x, m->rms_ffn + l * dim, n, dim, m->norm_eps);
    if ((rc = observe(net, l, L2C_IN_W13, xb, n, dim)) != 0)
        goto out;
    rc = -1;
    const l2c_linear *w13[2] = {&lin[L2C_W1], &lin[L2C_W3]};
    float *const w13_out[2] = {h1, h3};
    if (linear_group(net, s, w13, 2, xb, n, w13_out))
        goto out;
    swiglu(net, h1, h3, n * hid);
    if ((rc = observe(net, l, L2C_IN_W2, h1, n, hid)) != 0)
        goto out;
    rc = -1;
    if (linear(net, s, &lin[L2C_W2], h1, n, y))
        goto out;
    for (int64_t i = 0; i < n * dim; i++)
        x[i] += y[i];
    rc = 0;
out:
    return rc;
}

void l2c_embed(const l2c_model *m, const int32_t *tokens, int64_t n, float *x)
{
    int64_t dim = m->c.dim;
    for (int64_t t = 0; t < n; t++)
        memcpy(x + t * dim, m->tok_emb + (int64_t)tokens[t] * dim, (size_t)dim * sizeof *x);
}

int l2c_forward_block(const l2c_net *net, int32_t layer, float *x, int64_t n)
{
    float *cs = malloc((size_t)(n * net->m->head_size) * sizeof *cs);
    if (!cs) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    rope_table(net->m, 0, n, cs);
    fwd_scratch s;
    int rc = scratch_init(&s, net->m, n) ? -1 : block(net, &s, layer, x, n, cs, 0, NULL);
    scratch_free(&s);
    free(cs);
    return rc;
}

int l2c_forward(const l2c_net *net, const int32_t *tokens, int64_t n, float *logits)
{
    const l2c_model *m = net->m;
    int64_t dim = m->c.dim;
    float *x = malloc((size_t)(n * dim) * sizeof *x);
    float *xb = malloc((size_t)(n * dim) * sizeof *xb);
    float *cs = malloc((size_t)(n * m->head_size) * sizeof *cs);
    fwd_scratch s;
    int rc = -1;
    if (scratch_init(&s, m, n))
        goto out;
    if (!x || !xb || !cs) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    rope_table(m, 0, n, cs);
    l2c_embed(m, tokens, n, x);
    for (int32_t l = 0; l < m->c.n_layers; l++)
        if ((rc = block(net, &s, l, x, n, cs, 0, NULL)) != 0)
            goto out;
    rmsnorm(xb, x, m->rms_final, n, dim, m->norm_eps);
    rc = matmul_wt(net, xb, n, dim, m->wcls, m->c.vocab_size, logits);
out:
    scratch_free(&s);
    free(x);
    free(xb);
    free(cs);
    return rc;
}

int l2c_kv_cache_init(l2c_kv_cache *c, const l2c_model *m, int64_t cap)
{
    l2c_net net;
    memset(&net, 0, sizeof net);
    net.m = m;
    return l2c_kv_cache_init_net(c, &net, cap);
}

int l2c_kv_cache_init_net(l2c_kv_cache *c, const l2c_net *net, int64_t cap)
{
    const l2c_model *m = net->m;
    memset(c, 0, sizeof *c);
    if (cap <= 0 || cap > m->c.seq_len)
        cap = m->c.seq_len;
    c->kv_bits = kv_format(net);
    if (c->kv_bits != 0) {
        if (kv_token_bytes(net, &c->token_bytes))
            return -1;
        size_t bytes = (size_t)((int64_t)m->c.n_layers * cap) * c->token_bytes;
        c->kq = malloc(bytes);
        c->vq = malloc(bytes);
    } else {
        size_t count = (size_t)((int64_t)m->c.n_layers * cap * m->kv_dim);
        size_t kcount = (size_t)((int64_t)m->c.n_layers * key_blocks_cap(cap) * m->kv_dim);
        c->k = calloc(kcount, sizeof *c->k); /* zero past the keys, as attention pads them */
        c->v = malloc(count * sizeof *c->v);
    }
    if (c->kv_bits != 0 ? !c->kq || !c->vq : !c->k || !c->v) {
        fprintf(stderr, "out of memory (key/value cache of %lld positions)\n", (long long)cap);
        l2c_kv_cache_free(c);
        return -1;
    }
    c->cap = cap;
    c->n_layers = m->c.n_layers;
    c->kv_dim = m->kv_dim;
    return 0;
}

void l2c_kv_cache_free(l2c_kv_cache *c)
{
    free(c->k);
    free(c->v);
    free(c->kq);
    free(c->vq);
    memset(c, 0, sizeof *c);
}

int l2c_forward_cached(const l2c_net *net, l2c_kv_cache *c, const int32_t *tokens, int64_t n,
                       float *logits, int32_t last_only)
{
    const l2c_model *m = net->m;
    int64_t dim = m->c.dim, pos0 = c->len;
    if (n <= 0 || n > c->cap - pos0 || c->n_layers != m->c.n_layers || c->kv_dim != m->kv_dim ||
        c->kv_bits != kv_format(net)) {
        fprintf(stderr,
                "l2c_forward_cached: %lld tokens at position %lld do not fit a cache of %lld "
                "positions (%d layers, kv width %d, kv bits %d) for this model and net\n",
                (long long)n, (long long)pos0, (long long)c->cap, (int)c->n_layers,
                (int)c->kv_dim, (int)c->kv_bits);
        return -1;
    }
    float *x = malloc((size_t)(n * dim) * sizeof *x);
    float *xb = malloc((size_t)(n * dim) * sizeof *xb);
    float *cs = malloc((size_t)(n * m->head_size) * sizeof *cs);
    fwd_scratch s;
    int rc = -1;
    if (scratch_init(&s, m, n))
        goto out;
    if (!x || !xb || !cs) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    rope_table(m, pos0, n, cs);
    l2c_embed(m, tokens, n, x);
    for (int32_t l = 0; l < m->c.n_layers; l++)
        if ((rc = block(net, &s, l, x, n, cs, pos0, c)) != 0)
            goto out;
    int64_t first = last_only ? n - 1 : 0;
    rmsnorm(xb, x + first * dim, m->rms_final, n - first, dim, m->norm_eps);
    if ((rc = matmul_wt(net, xb, n - first, dim, m->wcls, m->c.vocab_size, logits)) != 0)
        goto out;
    c->len = pos0 + n;
out:
    scratch_free(&s);
    free(x);
    free(xb);
    free(cs);
    return rc;
}
