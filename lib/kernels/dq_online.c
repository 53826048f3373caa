/* Fused online transform + per-token quantization (see dq_online.h): compiling a plan into
 * stages, the tile driver, its thread split, the portable block product and the fast
 * Walsh-Hadamard transform of Hadamard stages. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "dq_cpu.h"
#include "dq_gemm_simd.h"
#include "dq_half.h"
#include "dq_online.h"
#include "dq_pool.h"
#include "dq_rotation.h"

/* Bytes of one of a worker's two float tile buffers: two of them plus the matrices being
 * read stay within a 1 MiB L2. */
#define TILE_BUF_BYTES ((size_t)288 << 10)
/* Row tile of the widest kernel: tiles are a multiple of it when they hold that many rows. */
#define TILE_ROW_MULT 6
#define TILE_MAX_ROWS 96
/* A lone token (decode) would leave every thread but one idle: its stages' blocks are split
 * over the threads instead, once a stage reads at least this many bytes of matrices (below,
 * the meeting of the threads costs more than it saves). */
#define SPLIT_MIN_BYTES ((size_t)128 << 10)
/* Smallest block run as a fast Walsh-Hadamard transform. At 64 the dense product (16 KiB,
 * in L1) costs about as much for prompts (the transform is 1.0-1.2x faster there), and small
 * models keep the dense products' bits. */
#define HAD_MIN_BLOCK 128

/* One block-diagonal product: block b (columns [b * bs, b * bs + len)) is multiplied by
 * mat[b]; its input element k is in[gather[b * bs + k]] when gather is set. */
typedef struct stage {
    const dq_rotation *rot; /* the plan's rotation (borrowed) */
    int32_t bs;
    int64_t n_blocks;
    int64_t n_shared; /* leading blocks that share one matrix (1: none share) */
    const float **mat;
    /* Set (DQ_CONTEXT_F_HALF_MATRICES): half-precision copies of mat, which the products read
     * instead. */
    const uint16_t **mat16;
    const int32_t *gather;
    /* Set: every matrix is diag(a) H (H Sylvester's, entries +-1): the product is
     * v = in * had_scale (cols values, block b's at b * bs) and a fast Walsh-Hadamard
     * transform of v, with the smoothing folded in for the first stage. */
    const float *had_scale;
} stage;

struct dq__online {
    dq_context ctx;
    int64_t cols;
    int32_t n_stages;
    stage *stages;
    const float *div;            /* smoothing factors the tile is divided by, or NULL */
    const int32_t *final_gather; /* permutation read through by the quantizer, or NULL */
    int64_t tile_rows;
    int64_t buf_ld;              /* floats per tile-buffer row */
    size_t split_min_bytes;      /* a lone token's stage split over threads from this size */
    int32_t n_had;               /* stages with had_scale */
    bool fast_had;               /* run those as transforms (false: as dense products) */
    const float *had_div;        /* smoothing folded into had_scale, for the dense fallback */
    /* owned storage */
    const float **mat_ptrs;
    const uint16_t **mat16_ptrs;
    uint16_t *halves;
    int32_t *gathers;
    float *folded;
    float *smooth;
    float *had_scales;
};

void dq__online_free(dq__online *on)
{
    if (!on)
        return;
    dq_context c = on->ctx;
    dq__free(&c, on->stages);
    dq__free(&c, (void *)on->mat_ptrs);
    dq__free(&c, (void *)on->mat16_ptrs);
    dq__free(&c, on->halves);
    dq__free(&c, on->gathers);
    dq__free(&c, on->folded);
    dq__free(&c, on->smooth);
    dq__free(&c, on->had_scales);
    dq__free(&c, on);
    dq__context_drop(&c);
}

int64_t dq__online_tile_rows(const dq__online *on)
{
    return on->tile_rows;
}

void dq__online_set_split_bytes(dq__online *on, size_t bytes)
{
    on->split_min_bytes = bytes;
}

int32_t dq__online_hadamard_stages(const dq__online *on)
{
    return on->fast_had ? on->n_had : 0;
}

bool dq__online_stage_half(const dq__online *on, int32_t s)
{
    return s >= 0 && s < on->n_stages && on->stages[s].mat16 != NULL;
}

void dq__online_set_fast_hadamard(dq__online *on, bool fast)
{
    on->fast_had = fast;
}

/* Tokens per tile for buffer rows of buf_ld floats. */
static int64_t tile_rows_for(int64_t buf_ld)
{
    int64_t t = (int64_t)(TILE_BUF_BYTES / ((size_t)buf_ld * sizeof(float)));
    if (t > TILE_MAX_ROWS)
        t = TILE_MAX_ROWS;
    if (t >= TILE_ROW_MULT)
        t -= t % TILE_ROW_MULT;
    return t < 1 ? 1 : t;
}

static bool is_identity(const int64_t *p, int64_t n)
{
    for (int64_t j = 0; j < n; j++)
        if (p[j] != j)
            return false;
    return true;
}

/* Rotation slots of the plan that are not the identity. */
static dq_status count_stages(const dq_plan *plan, int32_t n_rot, int32_t *n_stages,
                              int64_t *n_mat_ptrs)
{
    *n_stages = 0;
    *n_mat_ptrs = 0;
    for (int32_t i = 0; i < n_rot; i++) {
        const dq_rotation *r;
        dq_status st = dq_plan_rotation(plan, i, &r);
        if (st != DQ_OK)
            return st;
        if (r) {
            (*n_stages)++;
            *n_mat_ptrs += r->n_blocks;
        }
    }
    return DQ_OK;
}

/* Scales row k of every first-stage matrix by 1 / s of the channel that row multiplies, into
 * a copy the size of the rotation's own data (one matrix per block). */
static dq_status fold_smoothing(dq__online *on, const dq_rotation *r, const float *s)
{
    stage *st0 = &on->stages[0];
    size_t total = 0;
    for (int64_t b = 0; b < st0->n_blocks; b++) {
        const size_t n = (size_t)dq__block_len(on->cols, st0->bs, b);
        total += n * n;
    }
    on->folded = dq__alloc(&on->ctx, total * sizeof(float));
    if (!on->folded)
        return DQ_FAIL(&on->ctx, DQ_ERR_NOMEM, "%zu bytes of smoothing-folded matrices",
                       total * sizeof(float));
    size_t off = 0;
    for (int64_t b = 0; b < st0->n_blocks; b++) {
        const int32_t n = dq__block_len(on->cols, st0->bs, b);
        const float *src = r->data + r->mat_offset[r->mat_of_block[b]];
        float *dst = on->folded + off;
        for (int32_t k = 0; k < n; k++) {
            const int64_t ch = (int64_t)b * st0->bs + k;
            /* Divide, as the unfused route divides the activations. */
            const float sk = s[st0->gather ? st0->gather[ch] : ch];
            const size_t row = (size_t)k * (size_t)n;
            for (int32_t c = 0; c < n; c++)
                dst[row + (size_t)c] = src[row + (size_t)c] / sk;
        }
        st0->mat[b] = dst;
        off += (size_t)n * (size_t)n;
        st0->n_shared = 1; /* one matrix per block now */
    }
    return DQ_OK;
}

/* Whether m (n x n, row-major, n a power of two >= 8) is exactly diag(a) H_n, a_i = m[i][0]:
 * m[i][j] has a_i's bits with the sign flipped where popcount(i & j) is odd. The flip of
 * column 8q + r is that of r (row's low[r]) xor that of 8q (chunk[q], built by doubling: bit
 * 8h of i flips the upper half of every run of 2h chunks), so the inner loop is 8 wide with
 * no bit count. sign: n / 8 words of scratch. */
bool dq__online_is_hadamard(const float *m, int32_t n, uint32_t *sign)
{
    const uint32_t neg = UINT32_C(0x80000000);
    uint32_t *chunk = sign;
    for (int32_t i = 0; i < n; i++) {
        const float *row = m + (size_t)i * (size_t)n;
        uint32_t a, low[8], diff = 0;
        memcpy(&a, row, sizeof a);
        for (int32_t r = 0; r < 8; r++)
            low[r] = a ^ ((__builtin_popcount((unsigned)(i & r)) & 1) ? neg : 0u);
        chunk[0] = 0;
        for (int32_t h = 1; h < n / 8; h *= 2) {
            const uint32_t flip = (i & (8 * h)) ? neg : 0u;
            for (int32_t q = 0; q < h; q++)
                chunk[h + q] = chunk[q] ^ flip;
        }
        for (int32_t q = 0; q < n / 8; q++) {
            uint32_t v[8];
            memcpy(v, row + 8 * q, sizeof v);
            for (int32_t r = 0; r < 8; r++)
                diff |= v[r] ^ low[r] ^ chunk[q];
        }
        if (diff != 0)
            return false;
    }
    return true;
}

/* Whether stage sg (width cols) runs as fast transforms: whole blocks of a power of two no
 * smaller than HAD_MIN_BLOCK, every matrix diag(a) H. */
static bool hadamard_stage(const stage *sg, int64_t cols, uint32_t *sign)
{
    const int32_t bs = sg->bs;
    if (bs < HAD_MIN_BLOCK || (bs & (bs - 1)) != 0 || sg->n_blocks * bs != cols)
        return false;
    for (int64_t b = 0; b < sg->n_blocks; b++)
        if ((b == 0 || sg->mat[b] != sg->mat[b - 1]) &&
            !dq__online_is_hadamard(sg->mat[b], bs, sign))
            return false;
    return true;
}

/* had_scale of every Hadamard stage (row k's a_k of block b's matrix at b * bs + k). */
static dq_status find_hadamard(dq__online *on)
{
    const int64_t cols = on->cols;
    bool *had = dq__calloc(&on->ctx, (size_t)on->n_stages + 1, sizeof(bool));
    uint32_t *sign = dq__alloc(&on->ctx, ((size_t)cols / 8 + 1) * sizeof(uint32_t));
    dq_status st = DQ_OK;
    if (!had || !sign)
        goto nomem;
    for (int32_t s = 0; s < on->n_stages; s++)
        if ((had[s] = hadamard_stage(&on->stages[s], cols, sign)))
            on->n_had++;
    if (on->n_had > 0) {
        on->had_scales = dq__alloc(&on->ctx, (size_t)on->n_had * (size_t)cols * sizeof(float));
        if (!on->had_scales)
            goto nomem;
    }
    float *next = on->had_scales;
    for (int32_t s = 0; s < on->n_stages; s++) {
        if (!had[s])
            continue;
        stage *sg = &on->stages[s];
        for (int64_t b = 0; b < sg->n_blocks; b++)
            for (int32_t k = 0; k < sg->bs; k++)
                next[b * sg->bs + k] = sg->mat[b][(size_t)k * (size_t)sg->bs];
        sg->had_scale = next;
        next += cols;
    }
    goto out;
nomem:
    st = DQ_FAIL(&on->ctx, DQ_ERR_NOMEM, "Hadamard detection of %lld channels",
                 (long long)cols);
out:
    dq__free(&on->ctx, had);
    dq__free(&on->ctx, sign);
    return st;
}

/* The smoothing division folded into a first Hadamard stage's scales (the first of
 * had_scales): a_k / s, the value the dense fold gives row k (negation commutes with
 * division). */
static void fold_smoothing_hadamard(dq__online *on, const float *s)
{
    const int32_t *g = on->stages[0].gather;
    for (int64_t c = 0; c < on->cols; c++)
        on->had_scales[c] /= s[g ? g[c] : c];
}

/* Half-precision copies of every dense stage's matrices (a shared matrix once): the stages
 * the fast transform runs read no matrix and get none. */
static dq_status make_halves(dq__online *on, int64_t n_ptrs)
{
    size_t total = 0;
    for (int32_t s = 0; s < on->n_stages; s++)
        if (!on->stages[s].had_scale)
            total += dq__rotation_floats(on->stages[s].rot);
    if (total == 0)
        return DQ_OK;
    on->halves = dq__alloc(&on->ctx, total * sizeof(uint16_t));
    on->mat16_ptrs = dq__calloc(&on->ctx, (size_t)n_ptrs, sizeof *on->mat16_ptrs);
    if (!on->halves || !on->mat16_ptrs)
        return DQ_FAIL(&on->ctx, DQ_ERR_NOMEM, "%zu bytes of half-precision matrices",
                       total * sizeof(uint16_t));
    uint16_t *next = on->halves;
    const uint16_t **ptrs = on->mat16_ptrs;
    for (int32_t s = 0; s < on->n_stages; s++) {
        stage *sg = &on->stages[s];
        const dq_rotation *r = sg->rot;
        if (sg->had_scale)
            continue;
        /* One run; matrix k's copy starts at mat_offset[k] (dq__rotation_floats). */
        const size_t len = dq__rotation_floats(r);
        for (size_t e = 0; e < len; e++)
            next[e] = dq__f32_to_f16(r->data[e]);
        sg->mat16 = ptrs;
        for (int64_t b = 0; b < sg->n_blocks; b++)
            sg->mat16[b] = next + r->mat_offset[r->mat_of_block[b]];
        ptrs += sg->n_blocks;
        next += len;
    }
    return DQ_OK;
}

dq_status dq__online_create(const dq_context *ctx, const dq_plan *plan, dq__online **out)
{
    *out = NULL;
    ctx = dq__ctx(ctx);
    int64_t cols;
    int32_t has_smooth, n_rot;
    dq_status st = dq_plan_width(plan, &cols);
    if (st == DQ_OK)
        st = dq_plan_layout(plan, &has_smooth, &n_rot);
    if (st != DQ_OK)
        return st;
    /* Not a failure: the caller keeps the unfused route, so nothing is logged. */
    if (cols > INT32_MAX || (uint64_t)cols > SIZE_MAX / 64)
        return DQ_ERR_UNSUPPORTED;
    int32_t n_stages;
    int64_t n_ptrs;
    if ((st = count_stages(plan, n_rot, &n_stages, &n_ptrs)) != DQ_OK)
        return st;

    dq__online *on = dq__calloc(ctx, 1, sizeof *on);
    if (!on)
        return DQ_FAIL(ctx, DQ_ERR_NOMEM, "fused transform of %lld channels", (long long)cols);
    dq__context_keep(&on->ctx, ctx); /* first: dq__online_free frees through it */
    int64_t *perm = dq__alloc(ctx, (size_t)cols * sizeof(int64_t));
    int32_t *pend = dq__alloc(ctx, (size_t)cols * sizeof(int32_t));
    if (!perm || !pend)
        goto nomem;
    on->cols = cols;
    on->n_stages = n_stages;
    on->buf_ld = (cols + 15) / 16 * 16 + 16; /* whole cache lines, rows off the 4 KiB stride */
    on->tile_rows = tile_rows_for(on->buf_ld);
    on->split_min_bytes = SPLIT_MIN_BYTES;
    /* One gather per stage and one final at most. */
    size_t n_gather = ((size_t)n_stages + 1) * (size_t)cols;
    if (n_stages > 0) {
        on->stages = dq__calloc(ctx, (size_t)n_stages, sizeof *on->stages);
        on->mat_ptrs = dq__calloc(ctx, (size_t)n_ptrs, sizeof *on->mat_ptrs);
        if (!on->stages || !on->mat_ptrs)
            goto nomem;
    }
    on->gathers = dq__alloc(ctx, n_gather * sizeof(int32_t));
    if (!on->gathers)
        goto nomem;

    bool pending = false;
    int32_t s = 0;
    int64_t ptr = 0;
    size_t gslot = 0;
    const dq_rotation *first = NULL;
    for (int32_t i = 0; i < n_rot; i++) {
        const dq_rotation *r;
        if ((st = dq_plan_rotation(plan, i, &r)) != DQ_OK)
            goto out;
        if (r) {
            stage *sg = &on->stages[s++];
            sg->rot = r;
            sg->bs = r->block_size;
            sg->n_blocks = r->n_blocks;
            sg->mat = on->mat_ptrs + ptr;
            for (int64_t b = 0; b < r->n_blocks; b++)
                sg->mat[b] = r->data + r->mat_offset[r->mat_of_block[b]];
            sg->n_shared = 1;
            while (sg->n_shared < r->n_blocks &&
                   r->mat_of_block[sg->n_shared] == r->mat_of_block[0] &&
                   dq__block_len(cols, r->block_size, sg->n_shared) == r->block_size)
                sg->n_shared++;
            ptr += r->n_blocks;
            if (pending) {
                int32_t *g = on->gathers + gslot;
                memcpy(g, pend, (size_t)cols * sizeof(int32_t));
                sg->gather = g;
                gslot += (size_t)cols;
            }
            pending = false;
            if (!first)
                first = r;
        }
        if (i + 1 < n_rot) {
            if ((st = dq_plan_permutation(plan, i, perm, cols)) != DQ_OK)
                goto out;
            if (!is_identity(perm, cols)) {
                /* v'[j] = v[perm[j]] and v[j] = buf[pend[j]]: v'[j] = buf[pend[perm[j]]]. */
                int32_t *tmp = on->gathers + gslot; /* free slot as scratch */
                for (int64_t j = 0; j < cols; j++)
                    tmp[j] = pending ? pend[perm[j]] : (int32_t)perm[j];
                memcpy(pend, tmp, (size_t)cols * sizeof(int32_t));
                pending = true;
            }
        }
    }
    if (pending) {
        int32_t *g = on->gathers + gslot;
        memcpy(g, pend, (size_t)cols * sizeof(int32_t));
        on->final_gather = g;
    }
    on->fast_had = true;
    if ((st = find_hadamard(on)) != DQ_OK)
        goto out;
    const bool half = (ctx->flags & DQ_CONTEXT_F_HALF_MATRICES) != 0;
    if (half && (st = make_halves(on, n_ptrs)) != DQ_OK)
        goto out;
    if (has_smooth) {
        on->smooth = dq__alloc(ctx, (size_t)cols * sizeof(float));
        if (!on->smooth)
            goto nomem;
        if ((st = dq_plan_smooth_scales(plan, on->smooth, cols)) != DQ_OK)
            goto out;
        if (n_stages > 0 && on->stages[0].had_scale) {
            /* No matrix copy; the dense fallback divides the tile. */
            fold_smoothing_hadamard(on, on->smooth);
            on->had_div = on->smooth;
        } else if (first && first->n_mats == first->n_blocks && !half) {
            /* Not into half copies: divided rows could fall below half's normal range. */
            if ((st = fold_smoothing(on, first, on->smooth)) != DQ_OK)
                goto out;
            dq__free(ctx, on->smooth);
            on->smooth = NULL;
        } else {
            on->div = on->smooth;
        }
    }
    st = DQ_OK;
    goto out;
nomem:
    st = DQ_FAIL(ctx, DQ_ERR_NOMEM, "fused transform of %lld channels, %d stages",
                 (long long)cols, (int)n_stages);
out:
    dq__free(ctx, perm);
    dq__free(ctx, pend);
    if (st != DQ_OK) {
        dq__online_free(on);
        return st;
    }
    *out = on;
    return DQ_OK;
}

/* ---- workspace and thread split ---- */

static size_t buf_bytes(const dq__online *on, int64_t tile)
{
    size_t b = (size_t)tile * (size_t)on->buf_ld * sizeof(float);
    return (b + DQ_ALIGN - 1) / DQ_ALIGN * DQ_ALIGN;
}

/* Tokens per tile for a call: at most the cache-sized tile, and small enough that every
 * thread gets one (never larger for fewer rows, so neither is the workspace). */
static int64_t tile_of(const dq__online *on, int64_t rows, const dq_context *ctx)
{
    const int64_t most = dq__threads(ctx, INT64_MAX);
    const int64_t even = (rows + most - 1) / most;
    return even < on->tile_rows ? even : on->tile_rows;
}

/* The tile a call runs: no larger than tile_of, and the tile count a multiple of the thread
 * count where possible, so that the threads finish together. */
static int64_t tile_balanced(const dq__online *on, int64_t rows, const dq_context *ctx)
{
    const int64_t most = dq__threads(ctx, INT64_MAX);
    const int64_t cap = tile_of(on, rows, ctx);
    const int64_t tiles = ((rows + cap - 1) / cap + most - 1) / most * most;
    return (rows + tiles - 1) / tiles;
}

static int32_t workers_for(const dq__online *on, int64_t rows, const dq_context *ctx)
{
    const int64_t t = tile_of(on, rows, ctx);
    return dq__threads(ctx, (rows + t - 1) / t);
}

bool dq__online_workspace(const dq__online *on, int64_t rows, const dq_context *ctx,
                          size_t *bytes)
{
    *bytes = 0;
    if (rows <= 0)
        return true;
    const int64_t t = tile_of(on, rows, ctx);
    size_t per;
    if ((uint64_t)t > SIZE_MAX / 2 / (size_t)on->buf_ld / sizeof(float))
        return false;
    per = 2 * buf_bytes(on, t);
    return dq__mul_size(per, (size_t)workers_for(on, rows, ctx), bytes);
}

/* ---- running ---- */

/* The portable product over a float matrix or, when half, a half-precision one. */
static inline void block_portable(const float *in, int64_t ldi, const int32_t *idx,
                                  int64_t idx_ld, int64_t rows, const void *m, int half,
                                  int32_t n, float *out, int64_t ldo)
{
    const float *mf = m;
    const uint16_t *mh = m;
    for (int64_t r = 0; r < rows; r++) {
        const float *a = in + (size_t)r * (size_t)ldi;
        const int32_t *ri = idx ? idx + (size_t)r * (size_t)idx_ld : NULL;
        float *o = out + (size_t)r * (size_t)ldo;
        for (int32_t j = 0; j < n; j++)
            o[j] = 0.0f;
        for (int32_t k = 0; k < n; k++) {
            const float ak = a[ri ? ri[k] : k];
            const size_t row = (size_t)k * (size_t)n;
            for (int32_t j = 0; j < n; j++)
                o[j] = fmaf(ak, half ? dq__f16_to_f32(mh[row + (size_t)j]) : mf[row + (size_t)j],
                            o[j]);
        }
    }
}

void dq__online_block_portable(const float *in, int64_t ldi, const int32_t *idx,
                               int64_t idx_ld, int64_t rows, const float *m, int32_t n,
                               float *out, int64_t ldo)
{
    block_portable(in, ldi, idx, idx_ld, rows, m, 0, n, out, ldo);
}

void dq__online_block16_portable(const float *in, int64_t ldi, const int32_t *idx,
                                 int64_t idx_ld, int64_t rows, const uint16_t *m, int32_t n,
                                 float *out, int64_t ldo)
{
    block_portable(in, ldi, idx, idx_ld, rows, m, 1, n, out, ldo);
}

void dq__online_divide_portable(const float *in, int64_t ldi, const float *s, int64_t rows,
                                int64_t cols, float *out, int64_t ldo)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *a = in + (size_t)r * (size_t)ldi;
        float *o = out + (size_t)r * (size_t)ldo;
        for (int64_t c = 0; c < cols; c++)
            o[c] = a[c] / s[c];
    }
}

typedef struct kernels {
    dq__online_block_fn *block;
    dq__online_block16_fn *block16;
    dq__online_divide_fn *divide;
    dq__quantize_fn *quant;
} kernels;

static kernels kernels_for(int32_t isa)
{
    kernels k = {dq__online_block_portable, dq__online_block16_portable,
                 dq__online_divide_portable, dq__quantize_tokens_ref};
    if (isa >= DQ_GEMM_ISA_AVX512 && dq__gemm_isa_supported(isa)) {
        k.block = dq__online_block_avx512;
        k.block16 = dq__online_block16_avx512;
        k.divide = dq__online_divide_avx512;
        k.quant = dq__quantize_tokens_avx512;
    } else if (isa >= DQ_GEMM_ISA_AVX2 && dq__gemm_isa_supported(DQ_GEMM_ISA_AVX2)) {
        k.block = dq__online_block_avx2;
        if (dq__cpu_has(DQ_CPU_F16C))
            k.block16 = dq__online_block16_avx2;
        k.divide = dq__online_divide_avx2;
        k.quant = dq__quantize_tokens_avx2;
    }
    return k;
}

/* One block product of stage sg through the matrix copy it reads (b: the block, or the first
 * of blocks sharing a matrix). */
static void block_product(const kernels *k, const stage *sg, int64_t b, const float *in,
                          int64_t ldi, const int32_t *idx, int64_t idx_ld, int64_t rows,
                          int32_t n, float *out, int64_t ldo)
{
    if (sg->mat16)
        k->block16(in, ldi, idx, idx_ld, rows, sg->mat16[b], n, out, ldo);
    else
        k->block(in, ldi, idx, idx_ld, rows, sg->mat[b], n, out, ldo);
}

typedef struct job {
    const dq__online *on;
    kernels k;
    const float *x;
    int64_t rows, ldx;
    int32_t bits, scheme;
    float clip;
    uint8_t *codes;
    int64_t code_ld;
    float *scales;
    int32_t *zeros;
    float *y; /* transform only when set */
    int64_t ldy;
    uint8_t *work;
    size_t per_worker;
    int64_t tile;
    atomic_llong next;            /* next tile to take */
    const dq_context *split_ctx;  /* set: one tile, each stage's blocks split over threads */
} job;

/* The fast Walsh-Hadamard transform of a block: levels h = 1, 2, 4, ..., n / 2, each mapping
 * every pair (j, j + h) of every 2h-chunk (a, b) to (a + b, a - b). Levels are grouped below
 * (1, 2 and 4 per 8-chunk; then two at a time over four runs of h) so that the compiler
 * vectorises them, but every sum and difference takes the operands the level-by-level order
 * gives it: the bits do not depend on the grouping, the instruction set or the thread. */

/* Levels 1, 2, 4 of x[k] = v[k] * s[k], k < 8, into y. */
static void fwht8(const float *restrict v, const float *restrict s, float *restrict y)
{
    float x[8];
    for (int32_t k = 0; k < 8; k++)
        x[k] = v[k] * s[k];
    const float a0 = x[0] + x[1], a1 = x[0] - x[1], a2 = x[2] + x[3], a3 = x[2] - x[3];
    const float a4 = x[4] + x[5], a5 = x[4] - x[5], a6 = x[6] + x[7], a7 = x[6] - x[7];
    const float b0 = a0 + a2, b1 = a1 + a3, b2 = a0 - a2, b3 = a1 - a3;
    const float b4 = a4 + a6, b5 = a5 + a7, b6 = a4 - a6, b7 = a5 - a7;
    y[0] = b0 + b4;
    y[1] = b1 + b5;
    y[2] = b2 + b6;
    y[3] = b3 + b7;
    y[4] = b0 - b4;
    y[5] = b1 - b5;
    y[6] = b2 - b6;
    y[7] = b3 - b7;
}

/* Levels h and 2h over the four runs of h (a multiple of 8) starting at x0..x3. */
static void fwht_levels2(float *restrict x0, float *restrict x1, float *restrict x2,
                         float *restrict x3, int32_t h)
{
    for (int32_t j = 0; j < h; j += 8)
        for (int32_t k = j; k < j + 8; k++) {
            const float p = x0[k] + x1[k], q = x0[k] - x1[k];
            const float r = x2[k] + x3[k], s = x2[k] - x3[k];
            x0[k] = p + r;
            x1[k] = q + s;
            x2[k] = p - r;
            x3[k] = q - s;
        }
}

/* Level h over the two runs of h (a multiple of 8) at lo and hi. */
static void fwht_level(float *restrict lo, float *restrict hi, int32_t h)
{
    for (int32_t j = 0; j < h; j += 8)
        for (int32_t k = j; k < j + 8; k++) {
            const float a = lo[k], b = hi[k];
            lo[k] = a + b;
            hi[k] = a - b;
        }
}

/* out[j] = sum over i of v_i (-1)^popcount(i & j), v_i = in[idx ? idx[i] : i] * scale[i], n a
 * power of two >= 8 (out does not overlap in). */
static void fwht_block(const float *in, const int32_t *idx, const float *scale, int32_t n,
                       float *out)
{
    for (int32_t c = 0; c < n; c += 8) {
        if (idx) {
            float v[8];
            for (int32_t k = 0; k < 8; k++)
                v[k] = in[idx[c + k]];
            fwht8(v, scale + c, out + c);
        } else {
            fwht8(in + c, scale + c, out + c);
        }
    }
    int32_t h = 8;
    for (; 4 * h <= n; h *= 4)
        for (int32_t i = 0; i < n; i += 4 * h)
            fwht_levels2(out + i, out + i + h, out + i + 2 * h, out + i + 3 * h, h);
    for (; h < n; h *= 2)
        for (int32_t i = 0; i < n; i += 2 * h)
            fwht_level(out + i, out + i + h, h);
}

/* Blocks [b0, b1) of stage sg for tokens [0, tt) of src into dst. */
static void stage_blocks(const kernels *k, const dq__online *on, const stage *sg, int64_t b0,
                         int64_t b1, const float *src, int64_t lds, int64_t tt, float *dst,
                         int64_t ldd)
{
    if (sg->had_scale && on->fast_had) {
        for (int64_t r = 0; r < tt; r++)
            for (int64_t b = b0; b < b1; b++) {
                const size_t c0 = (size_t)b * (size_t)sg->bs;
                const float *a = src + (size_t)r * (size_t)lds;
                float *o = dst + (size_t)r * (size_t)ldd + c0;
                if (sg->gather)
                    fwht_block(a, sg->gather + c0, sg->had_scale + c0, sg->bs, o);
                else
                    fwht_block(a + c0, NULL, sg->had_scale + c0, sg->bs, o);
            }
        return;
    }
    const int64_t cols = on->cols;
    int64_t b = b0;
    const int64_t shared_end = sg->n_shared < b1 ? sg->n_shared : b1;
    if (b < shared_end && shared_end - b > 1 && tt < TILE_ROW_MULT) {
        /* Too few tokens to fill a register tile: the blocks of each token, which share the
         * matrix, are its rows instead. */
        const size_t c0 = (size_t)b * (size_t)sg->bs;
        for (int64_t r = 0; r < tt; r++) {
            const float *a = src + (size_t)r * (size_t)lds;
            float *o = dst + (size_t)r * (size_t)ldd + c0;
            if (sg->gather)
                block_product(k, sg, 0, a, 0, sg->gather + c0, sg->bs, shared_end - b, sg->bs,
                              o, sg->bs);
            else
                block_product(k, sg, 0, a + c0, sg->bs, NULL, 0, shared_end - b, sg->bs, o,
                              sg->bs);
        }
        b = shared_end;
    }
    for (; b < b1; b++) {
        const size_t c0 = (size_t)b * (size_t)sg->bs;
        const int32_t n = dq__block_len(cols, sg->bs, b);
        if (sg->gather)
            block_product(k, sg, b, src, lds, sg->gather + c0, 0, tt, n, dst + c0, ldd);
        else
            block_product(k, sg, b, src + c0, lds, NULL, 0, tt, n, dst + c0, ldd);
    }
}

typedef struct stage_job {
    const job *j;
    const stage *sg;
    const float *src;
    int64_t lds, tt;
    float *dst;
    int64_t ldd;
} stage_job;

static void stage_part(void *arg, int32_t p, int32_t n)
{
    const stage_job *s = arg;
    int64_t b0, b1;
    dq__split(s->sg->n_blocks, p, n, &b0, &b1);
    stage_blocks(&s->j->k, s->j->on, s->sg, b0, b1, s->src, s->lds, s->tt, s->dst, s->ldd);
}

/* One stage for tokens [0, tt): on this thread, or split over the threads of j->split_ctx
 * (each thread writes its own blocks; the call returns when all are written). */
static void run_stage(const job *j, const stage *sg, const float *src, int64_t lds, int64_t tt,
                      float *dst, int64_t ldd)
{
    /* A fast transform reads no matrix. */
    const size_t mat_bytes = sg->had_scale && j->on->fast_had
                                 ? 0
                                 : (size_t)sg->n_blocks * (size_t)sg->bs * (size_t)sg->bs *
                                       (sg->mat16 ? sizeof(uint16_t) : sizeof(float));
    const int32_t n = j->split_ctx && mat_bytes >= j->on->split_min_bytes
                          ? dq__threads(j->split_ctx, sg->n_blocks)
                          : 1;
    if (n <= 1) {
        stage_blocks(&j->k, j->on, sg, 0, sg->n_blocks, src, lds, tt, dst, ldd);
        return;
    }
    stage_job s = {j, sg, src, lds, tt, dst, ldd};
    dq__parallel(j->split_ctx, n, stage_part, &s);
}

/* Tokens [t0, t0 + tt) through every stage, then quantized (or stored to y). */
static void run_tile(const job *j, int64_t t0, int64_t tt, float *buf0, float *buf1)
{
    const dq__online *on = j->on;
    const int64_t cols = on->cols, ld = on->buf_ld;
    float *bufs[2] = {buf0, buf1};
    int next = 0;
    float *yt = j->y ? j->y + (size_t)t0 * (size_t)j->ldy : NULL;
    const float *src = j->x + (size_t)t0 * (size_t)j->ldx;
    int64_t lds = j->ldx;
    /* Smoothing folded into Hadamard scales is divided here when they run as dense products. */
    const float *div = on->div ? on->div : on->fast_had ? NULL : on->had_div;
    if (div) {
        j->k.divide(src, lds, div, tt, cols, buf0, ld);
        src = buf0;
        lds = ld;
        next = 1;
    }
    for (int32_t s = 0; s < on->n_stages; s++) {
        const stage *sg = &on->stages[s];
        float *dst;
        int64_t ldd;
        if (yt && s + 1 == on->n_stages && !on->final_gather) {
            dst = yt;
            ldd = j->ldy;
        } else {
            dst = bufs[next];
            ldd = ld;
            next ^= 1;
        }
        run_stage(j, sg, src, lds, tt, dst, ldd);
        src = dst;
        lds = ldd;
    }
    if (on->final_gather) {
        float *dst = yt ? yt : bufs[next];
        const int64_t ldd = yt ? j->ldy : ld;
        for (int64_t r = 0; r < tt; r++) {
            const float *a = src + (size_t)r * (size_t)lds;
            float *o = dst + (size_t)r * (size_t)ldd;
            for (int64_t c = 0; c < cols; c++)
                o[c] = a[on->final_gather[c]];
        }
        src = dst;
        lds = ldd;
    }
    if (yt) {
        if (src != yt)
            for (int64_t r = 0; r < tt; r++)
                memcpy(yt + (size_t)r * (size_t)j->ldy, src + (size_t)r * (size_t)lds,
                       (size_t)cols * sizeof(float));
        return;
    }
    j->k.quant(src, tt, cols, lds, j->bits, j->scheme, j->clip,
               j->codes + (size_t)t0 * (size_t)j->code_ld, j->code_ld, j->scales + t0,
               j->zeros + t0);
}

/* Workers take tiles one at a time, so that a core busy with other work slows only its own
 * share; the bits never depend on who computes a tile. */
static void run_part(void *arg, int32_t w, int32_t n)
{
    job *j = arg;
    (void)n;
    const int64_t tiles = (j->rows + j->tile - 1) / j->tile;
    uint8_t *mine = j->work + (size_t)w * j->per_worker;
    float *buf0 = (float *)(void *)mine;
    float *buf1 = (float *)(void *)(mine + j->per_worker / 2);
    for (;;) {
        const int64_t t = (int64_t)atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (t >= tiles)
            break;
        const int64_t t0 = t * j->tile;
        const int64_t tt = j->rows - t0 < j->tile ? j->rows - t0 : j->tile;
        run_tile(j, t0, tt, buf0, buf1);
    }
}

void dq__online_run_isa(int32_t isa, const dq__online *on, const float *x, int64_t rows,
                        int64_t ldx, int32_t bits, int32_t scheme, float clip, uint8_t *codes,
                        int64_t code_ld, float *scales, int32_t *zeros, float *y, int64_t ldy,
                        void *work, const dq_context *ctx)
{
    if (rows <= 0)
        return;
    const int64_t tile = tile_balanced(on, rows, ctx);
    job j = {.on = on,
             .k = kernels_for(isa),
             .x = x,
             .rows = rows,
             .ldx = ldx,
             .bits = bits,
             .scheme = scheme,
             .clip = clip,
             .codes = codes,
             .code_ld = code_ld,
             .scales = scales,
             .zeros = zeros,
             .y = y,
             .ldy = ldy,
             .work = work,
             .per_worker = 2 * buf_bytes(on, tile_of(on, rows, ctx)),
             .tile = tile};
    atomic_init(&j.next, 0);
    if (rows == 1 && dq__threads(ctx, INT64_MAX) > 1) {
        /* The lone tile runs here, its stages split over the threads. */
        j.split_ctx = ctx;
        uint8_t *mine = j.work;
        run_tile(&j, 0, 1, (float *)(void *)mine, (float *)(void *)(mine + j.per_worker / 2));
        return;
    }
    dq__parallel(ctx, workers_for(on, rows, ctx), run_part, &j);
}

void dq__online_quantize(const dq__online *on, const float *x, int64_t rows, int64_t ldx,
                         int32_t bits, int32_t scheme, float clip, uint8_t *codes,
                         int64_t code_ld, float *scales, int32_t *zeros, void *work,
                         const dq_context *ctx)
{
    dq__online_run_isa(dq__gemm_isa_best(), on, x, rows, ldx, bits, scheme, clip, codes,
                       code_ld, scales, zeros, NULL, 0, work, ctx);
}

void dq__online_transform(const dq__online *on, const float *x, int64_t rows, int64_t ldx,
                          float *y, int64_t ldy, void *work, const dq_context *ctx)
{
    dq__online_run_isa(dq__gemm_isa_best(), on, x, rows, ldx, 4, DQ_QUANT_ASYM, 1.0f, NULL, 0,
                       NULL, NULL, y, ldy, work, ctx);
}
