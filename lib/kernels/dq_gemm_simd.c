/* Run-time choice of the integer product kernels, the repacked weights they read, the packing
 * of activation tiles and the split of the work over threads (layouts in dq_gemm_simd.h). */
#include <string.h>

#include "dq_cpu.h"
#include "dq_gemm_simd.h"
#include "dq_pool.h"

#if defined(__GNUC__) && defined(__x86_64__)
#define DQ_GEMM_X86 1
#include <emmintrin.h>
#else
#define DQ_GEMM_X86 0
#endif

/* Below this many multiply-adds per thread, handing work to a pool thread costs more than it
 * saves. Low enough that a one-token product of a 4096-wide layer (2 MiB of 4-bit weights a
 * thread) is split: a GEMV is bound by memory, and a second core adds its bandwidth (a
 * 7B-shaped decode step went from 3.8 to 6.0 tokens/s on 2 idle cores, doc/performance.md). */
#define MACS_PER_THREAD ((int64_t)1 << 22)

bool dq__gemm_isa_supported(int32_t isa)
{
    switch (isa) {
    case DQ_GEMM_ISA_PORTABLE:
        return true;
#if DQ_GEMM_X86
    /* The float kernels of both sets multiply-add with FMA. */
    case DQ_GEMM_ISA_AVX2:
        return dq__cpu_has(DQ_CPU_AVX2 | DQ_CPU_FMA);
    case DQ_GEMM_ISA_AVX512:
        return dq__cpu_has(DQ_CPU_AVX2 | DQ_CPU_FMA | DQ_CPU_AVX512F | DQ_CPU_AVX512BW |
                           DQ_CPU_AVX512VL | DQ_CPU_AVX512VNNI);
    case DQ_GEMM_ISA_AMX:
        return dq__gemm_isa_supported(DQ_GEMM_ISA_AVX512) && dq__cpu_has(DQ_CPU_AMX_INT8);
#endif
    default:
        return false;
    }
}

int32_t dq__gemm_isa_best(void)
{
    if (dq__gemm_isa_supported(DQ_GEMM_ISA_AMX))
        return DQ_GEMM_ISA_AMX;
    if (dq__gemm_isa_supported(DQ_GEMM_ISA_AVX512))
        return DQ_GEMM_ISA_AVX512;
    if (dq__gemm_isa_supported(DQ_GEMM_ISA_AVX2))
        return DQ_GEMM_ISA_AVX2;
    return DQ_GEMM_ISA_PORTABLE;
}

/* ---- repacked weights ---- */

static void wpack_free(const dq_context *ctx, void *kernel)
{
    dq__wpack *wp = kernel;
    if (!wp)
        return;
    if (!(wp->flags & DQ__WPACK_BORROWED_CODES))
        dq__free(ctx, wp->codes);
    if (!(wp->flags & DQ__WPACK_BORROWED_META))
        dq__free(ctx, wp->meta);
    dq__free(ctx, wp);
}

static int64_t steps_of(int64_t len)
{
    return (len + DQ_GEMM_STEP - 1) / DQ_GEMM_STEP;
}

dq_status dq__wpack_layout(int32_t bits, int64_t rows, int64_t cols, int64_t group_len,
                           dq__wpack *wp)
{
    memset(wp, 0, sizeof *wp);
    if ((bits != 4 && bits != 8) || rows <= 0 || cols <= 0 || group_len <= 0 ||
        group_len > cols)
        return DQ_FAIL(NULL, DQ_ERR_INVALID_ARG, "bits %d, %lld x %lld, groups of %lld",
                       (int)bits, (long long)rows, (long long)cols, (long long)group_len);
    /* Bounds that keep every count below in int64 (files may declare any shape). */
    if (rows > INT64_MAX / 2 || cols > INT64_MAX / 256)
        return DQ_FAIL(NULL, DQ_ERR_OVERFLOW, "%lld x %lld", (long long)rows, (long long)cols);
    const int64_t groups = cols / group_len + (cols % group_len != 0);
    wp->bits = bits;
    wp->blocks = (rows + DQ_GEMM_BLOCK - 1) / DQ_GEMM_BLOCK;
    wp->groups = groups;
    wp->group_steps = steps_of(group_len);
    wp->last_steps = steps_of(cols - (groups - 1) * group_len);
    wp->steps = (groups - 1) * wp->group_steps + wp->last_steps;
    wp->step_bytes = bits == 4 ? 64 : 128;
    wp->block_bytes = wp->steps * wp->step_bytes;
    if (!dq__mul_size((size_t)wp->blocks, (size_t)wp->block_bytes, &wp->code_bytes) ||
        !dq__mul_size((size_t)wp->blocks, (size_t)groups, &wp->meta_count) ||
        wp->meta_count > SIZE_MAX / sizeof(dq__gemm_meta))
        return DQ_FAIL(NULL, DQ_ERR_OVERFLOW, "%lld x %lld", (long long)rows, (long long)cols);
    return DQ_OK;
}

dq_status dq__wpack_create(const dq__wprep *w, const uint8_t *codes, const dq__gemm_meta *meta,
                           dq__wpack **out)
{
    *out = NULL;
    dq__wpack layout;
    dq_status st = dq__wpack_layout(w->bits, w->rows, w->cols, w->group_len, &layout);
    if (st != DQ_OK)
        return st;
    const dq_context *ctx = &w->ctx;
    dq__wpack *wp = dq__alloc(ctx, sizeof *wp);
    if (!wp)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "repacked weights");
    *wp = layout;
    if (codes) {
        wp->codes = (uint8_t *)(uintptr_t)codes;
        wp->flags |= DQ__WPACK_BORROWED_CODES;
    } else {
        wp->codes = dq__calloc(ctx, wp->code_bytes, 1);
    }
    if (meta) {
        wp->meta = (dq__gemm_meta *)(uintptr_t)meta;
        wp->flags |= DQ__WPACK_BORROWED_META;
    } else {
        wp->meta = dq__calloc(ctx, wp->meta_count, sizeof *wp->meta);
    }
    if (!wp->codes || !wp->meta) {
        wpack_free(ctx, wp);
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "repacked weights: %zu code bytes, %zu records",
                       layout.code_bytes, layout.meta_count);
    }
    *out = wp;
    return DQ_OK;
}

void dq__wpack_attach(dq__wprep *w, dq__wpack *wp)
{
    w->kernel = wp;
    w->kernel_free = wpack_free;
}

void dq__wpack_store_row(const dq__wprep *w, dq__wpack *wp, int64_t r, const int8_t *src,
                         const float *scales, const int32_t *zeros, const int32_t *code_sums)
{
    const int32_t code_bias = w->bits == 4 ? 8 : 0;
    const int64_t last_len = w->cols - (w->groups - 1) * w->group_len;
    const int64_t blk = r / DQ_GEMM_BLOCK, o = r % DQ_GEMM_BLOCK;
    uint8_t *dst = wp->codes + (size_t)blk * (size_t)wp->block_bytes;
    for (int64_t g = 0; g < w->groups; g++) {
        const int64_t start = g * w->group_len;
        const int64_t len = g + 1 < w->groups ? w->group_len : last_len;
        const int64_t kp0 = g * wp->group_steps * DQ_GEMM_STEP;
        for (int64_t k = 0; k < len; k++) {
            const int64_t kp = kp0 + k;
            const int64_t s = kp / DQ_GEMM_STEP, half = (kp % DQ_GEMM_STEP) / 4, lane = kp % 4;
            const int32_t c = src[start + k];
            if (w->bits == 4)
                dst[s * 64 + 4 * o + lane] |= (uint8_t)((c + code_bias) << (4 * half));
            else
                dst[s * 128 + half * 64 + 4 * o + lane] = (uint8_t)(int8_t)c;
        }
        dq__gemm_meta *m = &wp->meta[(size_t)blk * (size_t)wp->groups + (size_t)g];
        const int32_t zw = zeros[g];
        const int64_t abs_zw = zw < 0 ? -(int64_t)zw : zw;
        wp->max_abs_zero = abs_zw > wp->max_abs_zero ? abs_zw : wp->max_abs_zero;
        m->scale[o] = scales[g];
        m->zero[o] = (int32_t)((uint32_t)zw + (uint32_t)code_bias);
        /* Wrapping arithmetic: the kernels' sums are exact modulo 2^32. */
        m->corr[o] = (int32_t)((uint32_t)code_sums[g] - (uint32_t)len * (uint32_t)zw);
    }
}

void dq__gemm_prepare(dq__wprep *w)
{
    if (!w || w->kernel || !w->codes || !w->scales || !w->zeros || !w->code_sums)
        return;
    dq__wpack *wp;
    if (dq__wpack_create(w, NULL, NULL, &wp) != DQ_OK)
        return;
    for (int64_t r = 0; r < w->rows; r++) {
        const size_t gi = (size_t)r * (size_t)w->groups;
        dq__wpack_store_row(w, wp, r, w->codes + (size_t)r * (size_t)w->code_ld, w->scales + gi,
                            w->zeros + gi, w->code_sums + gi);
    }
    dq__wpack_attach(w, wp);
}

/* ---- activation tiles ---- */

typedef struct gemm_job {
    const dq__wprep *w;
    const dq__aq *a;
    const float *bias;
    float *y;
    int64_t ldy;
    dq__apack ap;
    uint8_t *packed; /* NULL when the kernels read the caller's rows */
    int32_t *sums;
    dq__gemm_tiles_fn *tiles;
    bool split_tiles; /* threads take token tiles instead of output blocks */
} gemm_job;

/* Sum of n codes; SSE2 (every x86-64) adds 16 at a time. */
static int32_t code_sum(const uint8_t *u, int64_t n)
{
    int64_t k = 0;
    uint64_t s = 0;
#if DQ_GEMM_X86
    __m128i acc = _mm_setzero_si128();
    for (; k + 16 <= n; k += 16)
        acc = _mm_add_epi64(acc, _mm_sad_epu8(_mm_loadu_si128((const __m128i *)(u + k)),
                                               _mm_setzero_si128()));
    s = (uint64_t)_mm_cvtsi128_si64(acc) +
        (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc));
#endif
    for (; k < n; k++)
        s += u[k];
    return (int32_t)s;
}

/* Per-group code sums of the tile's tokens and, when the layout needs it, the packed copy. */
static void prepare_tile(const gemm_job *job, int64_t tile)
{
    const dq__wprep *w = job->w;
    const dq__wpack *wp = w->kernel;
    const dq__aq *a = job->a;
    int32_t *sums = job->sums + (size_t)tile * (size_t)wp->groups * DQ_GEMM_TILE;
    uint8_t *dst = job->packed ? job->packed + (size_t)tile * (size_t)job->ap.tile_stride : NULL;
    const int64_t t0 = tile * DQ_GEMM_TILE;
    if (dst && a->rows - t0 < DQ_GEMM_TILE)
        memset(dst, 0, (size_t)job->ap.tile_stride);
    for (int64_t i = 0; i < DQ_GEMM_TILE && t0 + i < a->rows; i++) {
        const uint8_t *u = a->codes + (size_t)(t0 + i) * (size_t)a->code_ld;
        for (int64_t g = 0; g < w->groups; g++) {
            const int64_t start = g * w->group_len;
            const int64_t len = g + 1 < w->groups ? w->group_len : w->cols - start;
            sums[g * DQ_GEMM_TILE + i] = code_sum(u + start, len);
            if (!dst)
                continue;
            const int64_t steps = g + 1 < w->groups ? wp->group_steps : wp->last_steps;
            uint8_t *q = dst + g * wp->group_steps * DQ_GEMM_STEP * DQ_GEMM_TILE + 4 * i;
            int64_t k = 0;
            for (; k + 4 <= len; k += 4, q += 4 * DQ_GEMM_TILE)
                memcpy(q, u + start + k, 4);
            for (; k < steps * DQ_GEMM_STEP; k += 4, q += 4 * DQ_GEMM_TILE) {
                uint8_t four[4] = {0, 0, 0, 0};
                if (k < len)
                    memcpy(four, u + start + k, (size_t)(len - k));
                memcpy(q, four, 4);
            }
        }
    }
}

static void prepare_part(void *arg, int32_t part, int32_t n)
{
    const gemm_job *job = arg;
    int64_t begin, end;
    dq__split(job->ap.tiles, part, n, &begin, &end);
    for (int64_t t = begin; t < end; t++)
        prepare_tile(job, t);
}

static void compute_part(void *arg, int32_t part, int32_t n)
{
    gemm_job *job = arg;
    const dq__wpack *wp = job->w->kernel;
    int64_t tb = 0, te = job->ap.tiles, bb = 0, be = wp->blocks;
    if (job->split_tiles)
        dq__split(job->ap.tiles, part, n, &tb, &te);
    else
        dq__split(wp->blocks, part, n, &bb, &be);
    if (tb < te && bb < be)
        job->tiles(job->w, &job->ap, job->a, job->bias, job->y, job->ldy, tb, te, bb, be);
}

/* ---- portable kernels on threads ---- */

typedef struct ref_job {
    const dq__wprep *w;
    const dq__aq *a;        /* integer product, or */
    const float *x;         /* float activations (weight-only product) */
    int64_t rows, ldx;
    const float *bias;
    float *y;
    int64_t ldy;
} ref_job;

static void ref_part(void *arg, int32_t part, int32_t n)
{
    const ref_job *j = arg;
    int64_t b, e;
    /* Every output is computed on its own, so any split gives the same bits. */
    dq__split(j->w->rows, part, n, &b, &e);
    if (b >= e)
        return;
    if (j->a)
        dq__gemm_w_a_ref_rows(j->w, j->a, j->bias, j->y, j->ldy, b, e);
    else
        dq__gemm_w_f32_ref_rows(j->w, j->x, j->rows, j->ldx, j->bias, j->y, j->ldy, b, e);
}

/* Output rows per thread below which the portable kernels stay on one thread. */
#define REF_MACS_PER_THREAD ((int64_t)1 << 22)

static void run_ref(const dq__wprep *w, const dq__aq *a, const float *x, int64_t rows,
                    int64_t ldx, const float *bias, float *y, int64_t ldy, const dq_context *ctx)
{
    int64_t macs;
    if (__builtin_mul_overflow(rows, w->rows, &macs) ||
        __builtin_mul_overflow(macs, w->cols, &macs))
        macs = INT64_MAX;
    const int64_t useful = macs / REF_MACS_PER_THREAD;
    ref_job j = {w, a, x, rows, ldx, bias, y, ldy};
    dq__parallel(ctx, dq__threads(ctx, useful < w->rows ? useful : w->rows),
                     ref_part, &j);
}

/* Float multiply-adds cost several times an integer one (decoding included): threads pay off
 * from fewer of them, a 4096 x 4096 GEMV already. */
#define W16_MACS_PER_THREAD ((int64_t)1 << 23)

typedef struct w16_job {
    dq__gemm_f32_fn *fn;
    const dq__wprep *w;
    const float *x;
    int64_t rows, ldx;
    const float *bias;
    float *y;
    int64_t ldy;
    bool split_tokens; /* threads take token ranges instead of output blocks */
} w16_job;

/* Every output is computed on its own (dq_gemm_simd.h), so any split gives the same bits. */
static void w16_part(void *arg, int32_t part, int32_t n)
{
    const w16_job *j = arg;
    const dq__wpack *wp = j->w->kernel;
    int64_t b, e;
    if (j->split_tokens) {
        dq__split(j->rows, part, n, &b, &e);
        if (b < e)
            j->fn(j->w, j->x + (size_t)b * (size_t)j->ldx, e - b, j->ldx, j->bias,
                  j->y + (size_t)b * (size_t)j->ldy, j->ldy, 0, wp->blocks);
        return;
    }
    dq__split(wp->blocks, part, n, &b, &e);
    if (b < e)
        j->fn(j->w, j->x, j->rows, j->ldx, j->bias, j->y, j->ldy, b, e);
}

void dq__gemm_w_f32_isa(int32_t isa, const dq__wprep *w, const float *x, int64_t rows,
                        int64_t ldx, const float *bias, float *y, int64_t ldy,
                        const dq_context *ctx)
{
    const dq__wpack *wp = w->kernel;
    dq__gemm_f32_fn *fn = NULL;
    if (wp && rows > 0 && dq__gemm_isa_supported(isa)) {
#if DQ_GEMM_X86
        if (isa >= DQ_GEMM_ISA_AVX512)
            fn = dq__gemm_w16_avx512;
        else if (isa == DQ_GEMM_ISA_AVX2)
            fn = dq__gemm_w16_avx2;
#endif
    }
    if (!fn) {
        run_ref(w, NULL, x, rows, ldx, bias, y, ldy, ctx);
        return;
    }
    int64_t macs;
    if (__builtin_mul_overflow(rows, w->rows, &macs) ||
        __builtin_mul_overflow(macs, w->cols, &macs))
        macs = INT64_MAX;
    const int64_t useful = macs / W16_MACS_PER_THREAD;
    const int64_t parts = wp->blocks > rows ? wp->blocks : rows;
    const int32_t n = dq__threads(ctx, useful < parts ? useful : parts);
    w16_job job = {fn, w, x, rows, ldx, bias, y, ldy, false};
    job.split_tokens = n > 1 && wp->blocks < 4 * (int64_t)n && rows >= 4 * (int64_t)n;
    if (n > 1 && !job.split_tokens && wp->blocks < n)
        job.split_tokens = rows >= n;
    dq__parallel(ctx, n, w16_part, &job);
}

/* The kernels get each group sum modulo 2^32, the reference exactly: they agree when
 * |sum (u - zx)(c - zw)| <= n * (255 + |zx|) * (|c| + |zw|) fits int32, which only extreme
 * zero points (clamped constant rows) can break. */
static bool sums_fit_int32(const dq__wprep *w, const dq__aq *a)
{
    const dq__wpack *wp = w->kernel;
    int64_t max_zx = 0;
    const int64_t n = a->groups ? a->rows * a->groups : a->rows;
    for (int64_t t = 0; t < n; t++) {
        const int64_t z = a->zeros[t] < 0 ? -(int64_t)a->zeros[t] : a->zeros[t];
        max_zx = z > max_zx ? z : max_zx;
    }
    const double bound = (double)w->group_len * (double)(255 + max_zx) *
                         (double)((w->bits == 4 ? 8 : 128) + wp->max_abs_zero);
    return bound <= (double)INT32_MAX;
}

/* The workspace of the integer product: the per-group code sums of every token tile, then
 * (when the kernels cannot read the caller's rows) the packed activation tiles, each part
 * starting on a DQ_ALIGN boundary. No part for weights without the repacked form. */
typedef struct gemm_work_layout {
    size_t sums, packed, total; /* byte offsets of the parts and the whole size */
    bool direct;                /* the kernels read the caller's rows: no packed part */
} gemm_work_layout;

static bool round_align(size_t *n)
{
    if (!dq__add_size(*n, DQ_ALIGN - 1, n))
        return false;
    *n = *n / DQ_ALIGN * DQ_ALIGN;
    return true;
}

static bool gemm_work_layout_of(const dq__wprep *w, int64_t rows, gemm_work_layout *l)
{
    memset(l, 0, sizeof *l);
    const dq__wpack *wp = w->kernel;
    if (!wp || rows <= 0)
        return true;
    /* Groups of whole steps need no padding: the kernels read the caller's rows (no copy). */
    l->direct = w->group_len % DQ_GEMM_STEP == 0 && w->cols % DQ_GEMM_STEP == 0;
    const size_t tiles = (size_t)((rows + DQ_GEMM_TILE - 1) / DQ_GEMM_TILE);
    size_t sums, packed = 0;
    if (!dq__mul_size(tiles, (size_t)wp->groups * DQ_GEMM_TILE, &sums) ||
        !dq__mul_size(sums, sizeof(int32_t), &sums) || !round_align(&sums))
        return false;
    if (!l->direct &&
        (!dq__mul_size(tiles, (size_t)(wp->steps * DQ_GEMM_STEP * DQ_GEMM_TILE), &packed) ||
         !round_align(&packed)))
        return false;
    l->packed = sums;
    return dq__add_size(sums, packed, &l->total);
}

bool dq__gemm_w_a_workspace(const dq__wprep *w, int64_t rows, size_t *bytes)
{
    gemm_work_layout l;
    *bytes = 0;
    if (!gemm_work_layout_of(w, rows, &l))
        return false;
    *bytes = l.total;
    return true;
}

void dq__gemm_w_a_isa_work(int32_t isa, const dq__wprep *w, const dq__aq *a, const float *bias,
                           float *y, int64_t ldy, const dq_context *ctx, void *work)
{
    const dq__wpack *wp = w->kernel;
    dq__gemm_tiles_fn *tiles = NULL;
    if (wp && dq__gemm_isa_supported(isa)) {
        if (isa == DQ_GEMM_ISA_AMX)
            tiles = dq__gemm_tiles_amx;
        else if (isa == DQ_GEMM_ISA_AVX512)
            tiles = dq__gemm_tiles_avx512;
        /* vpmaddubsw saturates its int16 pair sums: exact only while u * c pairs stay below
         * 2^15, which 8-bit codes on both sides can exceed. */
        else if (isa == DQ_GEMM_ISA_AVX2 && wp->bits == 4)
            tiles = dq__gemm_tiles_avx2;
    }
    if (a->rows <= 0)
        return;
    /* Grouped activations come in the weights' groups (dq__aq). */
    DQ_ASSERT(a->groups == 0 || a->groups == w->groups);
    gemm_work_layout l;
    /* The layout fits and work holds it: the caller sized work with dq__gemm_w_a_workspace
     * (the portable kernel below is for operands, never for a missing buffer). */
    const bool sized = gemm_work_layout_of(w, a->rows, &l) && work;
    DQ_ASSERT(!tiles || sized);
    if (!tiles || !sums_fit_int32(w, a) || !sized) {
        run_ref(w, a, NULL, a->rows, 0, bias, y, ldy, ctx);
        return;
    }
    gemm_job job = {.w = w, .a = a, .bias = bias, .y = y, .ldy = ldy, .tiles = tiles};
    dq__apack *ap = &job.ap;
    const int64_t n_tiles = (a->rows + DQ_GEMM_TILE - 1) / DQ_GEMM_TILE;
    job.sums = (int32_t *)(void *)((uint8_t *)work + l.sums);
    if (l.direct) {
        *ap = (dq__apack){a->rows, n_tiles, a->codes, DQ_GEMM_TILE * a->code_ld, a->code_ld,
                          DQ_GEMM_STEP, 4, NULL, 1, 0};
    } else {
        const int64_t tile_bytes = wp->steps * DQ_GEMM_STEP * DQ_GEMM_TILE;
        job.packed = (uint8_t *)work + l.packed;
        *ap = (dq__apack){a->rows, n_tiles, job.packed, tile_bytes, 4, 64, 32, NULL, 1, 0};
    }
    ap->sums = job.sums;
    ap->act_token = a->groups ? a->groups : 1;
    ap->act_group = a->groups ? 1 : 0;
    int64_t macs;
    if (__builtin_mul_overflow(a->rows, w->rows, &macs) ||
        __builtin_mul_overflow(macs, w->cols, &macs))
        macs = INT64_MAX;
    const int64_t useful = macs / MACS_PER_THREAD;
    int32_t n = dq__threads(ctx, useful < wp->blocks ? useful : wp->blocks);
    if (n > 1 && wp->blocks < 4 * (int64_t)n && ap->tiles >= 4 * (int64_t)n)
        job.split_tiles = true;
    dq__parallel(ctx, ap->tiles >= n ? n : 1, prepare_part, &job);
    dq__parallel(ctx, n, compute_part, &job);
}

dq_status dq__gemm_w_a_isa(int32_t isa, const dq__wprep *w, const dq__aq *a, const float *bias,
                           float *y, int64_t ldy, const dq_context *ctx)
{
    size_t bytes;
    if (!dq__gemm_w_a_workspace(w, a->rows, &bytes))
        return DQ_FAIL(&w->ctx, DQ_ERR_OVERFLOW, "workspace of %lld tokens overflows size_t",
                       (long long)a->rows);
    void *work = NULL;
    if (bytes > 0 && !(work = dq__alloc(&w->ctx, bytes)))
        return DQ_FAIL(&w->ctx, DQ_ERR_NOMEM, "workspace of %zu bytes", bytes);
    dq__gemm_w_a_isa_work(isa, w, a, bias, y, ldy, ctx, work);
    dq__free(&w->ctx, work);
    return DQ_OK;
}

/* ---- per-token quantization ---- */

typedef struct quant_job {
    dq__quantize_fn *fn;
    const float *x;
    int64_t rows, cols, ldx;
    int32_t bits, scheme;
    float clip;
    uint8_t *codes;
    int64_t code_ld;
    float *scales;
    int32_t *zeros;
} quant_job;

static void quant_part(void *arg, int32_t part, int32_t n)
{
    const quant_job *q = arg;
    int64_t b, e;
    dq__split(q->rows, part, n, &b, &e);
    if (b < e)
        q->fn(q->x + (size_t)b * (size_t)q->ldx, e - b, q->cols, q->ldx, q->bits, q->scheme,
              q->clip, q->codes + (size_t)b * (size_t)q->code_ld, q->code_ld, q->scales + b,
              q->zeros + b);
}

/* The per-token quantizer of an instruction set (the portable one when the CPU lacks it). */
static dq__quantize_fn *quantize_fn_for(int32_t isa)
{
    if (isa >= DQ_GEMM_ISA_AVX512 && dq__gemm_isa_supported(isa))
        return dq__quantize_tokens_avx512;
    if (isa == DQ_GEMM_ISA_AVX2 && dq__gemm_isa_supported(isa))
        return dq__quantize_tokens_avx2;
    return dq__quantize_tokens_ref;
}

/* Elements per thread below which quantizing on one more thread does not pay. */
#define QUANT_PER_THREAD ((int64_t)1 << 22)

void dq__quantize_tokens_isa(int32_t isa, const float *x, int64_t rows, int64_t cols,
                             int64_t ldx, int32_t bits, int32_t scheme, float clip,
                             uint8_t *codes, int64_t code_ld, float *scales, int32_t *zeros,
                             const dq_context *ctx)
{
    quant_job q = {quantize_fn_for(isa), x,    rows,    cols,   ldx,  bits,
                   scheme,               clip, codes,   code_ld, scales, zeros};
    int64_t elems;
    if (__builtin_mul_overflow(rows, cols, &elems))
        elems = INT64_MAX;
    const int64_t useful = elems / QUANT_PER_THREAD;
    dq__parallel(ctx, dq__threads(ctx, useful < rows ? useful : rows), quant_part,
                     &q);
}

/* ---- per-group quantization ---- */

typedef struct group_quant_job {
    dq__quantize_fn *fn;
    const float *x;
    int64_t rows, cols, ldx, group_len;
    int32_t bits, scheme;
    float clip;
    uint8_t *codes;
    int64_t code_ld;
    float *scales;
    int32_t *zeros;
} group_quant_job;

/* A token's groups are quantized as rows of group_len elements (the per-token kernels' own
 * arithmetic), the shorter last group as one more row: the codes land in place, the scales
 * and zero points token-major. */
static void group_quant_part(void *arg, int32_t part, int32_t n)
{
    const group_quant_job *q = arg;
    int64_t b, e;
    dq__split(q->rows, part, n, &b, &e);
    const int64_t gl = q->group_len, full = q->cols / gl, rest = q->cols - full * gl;
    const int64_t groups = full + (rest > 0);
    for (int64_t t = b; t < e; t++) {
        const float *src = q->x + (size_t)t * (size_t)q->ldx;
        uint8_t *dst = q->codes + (size_t)t * (size_t)q->code_ld;
        const size_t i = (size_t)t * (size_t)groups;
        if (full > 0)
            q->fn(src, full, gl, gl, q->bits, q->scheme, q->clip, dst, gl, q->scales + i,
                  q->zeros + i);
        if (rest > 0)
            q->fn(src + full * gl, 1, rest, rest, q->bits, q->scheme, q->clip, dst + full * gl,
                  rest, q->scales + i + (size_t)full, q->zeros + i + (size_t)full);
        if (q->code_ld > q->cols)
            memset(dst + q->cols, 0, (size_t)(q->code_ld - q->cols));
    }
}

void dq__quantize_groups_isa(int32_t isa, const float *x, int64_t rows, int64_t cols,
                             int64_t ldx, int64_t group_len, int32_t bits, int32_t scheme,
                             float clip, uint8_t *codes, int64_t code_ld, float *scales,
                             int32_t *zeros, const dq_context *ctx)
{
    group_quant_job q = {quantize_fn_for(isa), x, rows, cols, ldx, group_len, bits, scheme,
                         clip, codes, code_ld, scales, zeros};
    int64_t elems;
    if (__builtin_mul_overflow(rows, cols, &elems))
        elems = INT64_MAX;
    const int64_t useful = elems / QUANT_PER_THREAD;
    dq__parallel(ctx, dq__threads(ctx, useful < rows ? useful : rows), group_quant_part, &q);
}
