/* AMX-INT8 tile kernel of the integer product (layouts in dq_gemm_simd.h).
 *
 * One tdpbusd multiplies a tile of 16 tokens x 64 activation codes (unsigned bytes) by a tile
 * of 16 rows x 64 bytes of weights, row r holding 4 consecutive codes (k = 4 r .. 4 r + 3) of
 * each of 16 outputs: exactly the repacked weight layout, one step (8 k) being two such rows.
 * 8-bit weights are read in place; 4-bit ones are split into their low and high nibbles (the
 * two rows of a step) in a 1 KiB buffer per block and chunk of 64 k. The int32 sums are exact,
 * as vpdpbusd's, and every group goes through the AVX-512 kernel's epilogue in the same order:
 * the result is the same bits as every other kernel (dq_gemm.h).
 *
 * Taken by 16 tokens at a time (two activation tiles of the other kernels) and 1-2 blocks of
 * 16 outputs, with two such token sets when there are 32: 2 activation tiles, 2 weight tiles
 * and 4 accumulators are the 8 tile registers. Needs the caller's rows read in place (groups
 * of whole steps) and groups of whole chunks of 64 k; tokens left over (fewer than 16) and
 * any other shape go to the AVX-512 kernel. */
#include <string.h>

#include "dq_gemm_simd.h"

#if defined(__GNUC__) && defined(__x86_64__) && (__GNUC__ >= 11 || __clang_major__ >= 12)

#if defined(__clang__)
#pragma clang attribute push(                                                                   \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,amx-tile,amx-int8"))),         \
    apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,amx-tile,amx-int8")
#endif
#include <immintrin.h>

#define CHUNK 64                          /* k per tile product */
#define CHUNK_STEPS (CHUNK / DQ_GEMM_STEP) /* repacked steps per chunk */
#define UNIT 16                           /* tokens per activation tile */
/* Activation bytes a pass over the weights reads again for every block pair: kept within L2. */
#define PASS_BYTES ((int64_t)1 << 20)

/* The tile configuration of palette 1 (the layout ldtilecfg reads). */
typedef struct tile_config {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Tiles 0-1 activations, 2-3 weights, 4-7 accumulators (4 + 2 * token set + block): every
 * tile 16 rows of 64 bytes. */
static void configure(void)
{
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.rows[t] = 16;
        c.colsb[t] = 64;
    }
    _tile_loadconfig(&c);
}

/* The weight tile of block wb's chunk starting at step s: in place (8 bits) or unpacked into
 * buf (4 bits: rows 2i and 2i + 1 are the low and high nibbles of step s + i). */
static const uint8_t *weight_tile(const dq__wpack *wp, const uint8_t *wb, int64_t s,
                                  uint8_t *buf)
{
    if (wp->bits == 8)
        return wb + (size_t)s * 128;
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    const uint8_t *src = wb + (size_t)s * 64;
    for (int i = 0; i < CHUNK_STEPS; i++) {
        const __m512i v = _mm512_loadu_si512(src + 64 * i);
        _mm512_store_si512(buf + 128 * i, _mm512_and_si512(v, nibble));
        _mm512_store_si512(buf + 128 * i + 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble));
    }
    return buf;
}

/* The AVX-512 kernel's epilogue for group g of n_sets * 16 tokens from t0 and nb blocks from
 * block: acc[set][j] holds the exact sums (16 tokens x 16 outputs, row-major). */
static void epilogue(const dq__wpack *wp, const dq__apack *ap, const dq__aq *a, int64_t g,
                     int64_t t0, int n_sets, int64_t block, int nb, __mmask16 last_mask,
                     const float *bias, float *y, int64_t ldy, int32_t (*acc)[2][UNIT][16])
{
    for (int j = 0; j < nb; j++) {
        const dq__gemm_meta *m = wp->meta + (size_t)(block + j) * (size_t)wp->groups + g;
        const __m512 sw = _mm512_loadu_ps(m->scale);
        const __m512i zw = _mm512_loadu_si512(m->zero), corr = _mm512_loadu_si512(m->corr);
        const __mmask16 mask = j == nb - 1 ? last_mask : (__mmask16)0xFFFF;
        const int64_t o0 = (block + j) * DQ_GEMM_BLOCK;
        const __m512 init = bias ? _mm512_maskz_loadu_ps(mask, bias + o0) : _mm512_setzero_ps();
        for (int set = 0; set < n_sets; set++)
            for (int i = 0; i < UNIT; i++) {
                const int64_t t = t0 + set * UNIT + i;
                const int32_t su = ap->sums[(t / DQ_GEMM_TILE * wp->groups + g) * DQ_GEMM_TILE +
                                            t % DQ_GEMM_TILE];
                const int64_t ai = t * ap->act_token + g * ap->act_group; /* token's or group's */
                __m512i s = _mm512_loadu_si512(acc[set][j][i]);
                s = _mm512_sub_epi32(s, _mm512_mullo_epi32(zw, _mm512_set1_epi32(su)));
                s = _mm512_sub_epi32(s, _mm512_mullo_epi32(_mm512_set1_epi32(a->zeros[ai]), corr));
                const __m512 term = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(a->scales[ai]), sw),
                                                  _mm512_cvtepi32_ps(s));
                float *yp = y + (size_t)t * (size_t)ldy + o0;
                const __m512 prev = g == 0 ? init : _mm512_maskz_loadu_ps(mask, yp);
                _mm512_mask_storeu_ps(yp, mask, _mm512_add_ps(prev, term));
            }
    }
}

/* n_sets (1 or 2) x 16 tokens from t0 (all valid) times nb (1 or 2) blocks from block. */
static void product(const dq__wpack *wp, const dq__apack *ap, const dq__aq *a, int64_t t0,
                    int n_sets, int64_t block, int nb, __mmask16 last_mask, const float *bias,
                    float *y, int64_t ldy)
{
    _Alignas(64) uint8_t wbuf[2][CHUNK * 16];
    _Alignas(64) int32_t acc[2][2][UNIT][16];
    const uint8_t *wb[2];
    for (int j = 0; j < nb; j++)
        wb[j] = wp->codes + (size_t)(block + j) * (size_t)wp->block_bytes;
    const size_t lda = (size_t)ap->token_stride;
    const uint8_t *a0 = ap->codes + (size_t)t0 * lda;
    const uint8_t *a1 = a0 + UNIT * lda;
    int64_t s = 0; /* first step of the chunk */
    for (int64_t g = 0; g < wp->groups; g++) {
        const int64_t steps = g + 1 < wp->groups ? wp->group_steps : wp->last_steps;
        _tile_zero(4);
        _tile_zero(5);
        _tile_zero(6);
        _tile_zero(7);
        for (const int64_t end = s + steps; s < end; s += CHUNK_STEPS) {
            const size_t k = (size_t)s * DQ_GEMM_STEP;
            _tile_loadd(0, a0 + k, lda);
            if (n_sets == 2)
                _tile_loadd(1, a1 + k, lda);
            _tile_loadd(2, weight_tile(wp, wb[0], s, wbuf[0]), 64);
            _tile_dpbusd(4, 0, 2);
            if (n_sets == 2)
                _tile_dpbusd(6, 1, 2);
            if (nb == 2) {
                _tile_loadd(3, weight_tile(wp, wb[1], s, wbuf[1]), 64);
                _tile_dpbusd(5, 0, 3);
                if (n_sets == 2)
                    _tile_dpbusd(7, 1, 3);
            }
        }
        _tile_stored(4, acc[0][0], 64);
        _tile_stored(5, acc[0][1], 64);
        _tile_stored(6, acc[1][0], 64);
        _tile_stored(7, acc[1][1], 64);
        epilogue(wp, ap, a, g, t0, n_sets, block, nb, last_mask, bias, y, ldy, acc);
    }
}

void dq__gemm_tiles_amx(const dq__wprep *w, const dq__apack *ap, const dq__aq *a,
                        const float *bias, float *y, int64_t ldy, int64_t tile_begin,
                        int64_t tile_end, int64_t block_begin, int64_t block_end)
{
    const dq__wpack *wp = w->kernel;
    const bool in_place = ap->step_stride == DQ_GEMM_STEP && ap->half_stride == 4;
    /* 16-token units starting on an even tile, every token valid. */
    const int64_t unit_begin = (tile_begin + 1) / 2 * 2;
    int64_t unit_end = unit_begin;
    while (unit_end + 2 <= tile_end && (unit_end + 2) * DQ_GEMM_TILE <= ap->rows)
        unit_end += 2;
    if (!in_place || wp->group_steps % CHUNK_STEPS || wp->last_steps % CHUNK_STEPS ||
        unit_end == unit_begin) {
        dq__gemm_tiles_avx512(w, ap, a, bias, y, ldy, tile_begin, tile_end, block_begin,
                              block_end);
        return;
    }
    if (tile_begin < unit_begin)
        dq__gemm_tiles_avx512(w, ap, a, bias, y, ldy, tile_begin, unit_begin, block_begin,
                              block_end);
    const int64_t tail = w->rows - (wp->blocks - 1) * DQ_GEMM_BLOCK;
    /* Tiles per pass: a multiple of 4 (32 tokens), at least 4. */
    int64_t pass = PASS_BYTES / (ap->token_stride * DQ_GEMM_TILE) / 4 * 4;
    pass = pass < 4 ? 4 : pass;
    configure();
    for (int64_t p0 = unit_begin; p0 < unit_end; p0 += pass) {
        const int64_t p1 = unit_end - p0 < pass ? unit_end : p0 + pass;
        for (int64_t b = block_begin; b < block_end; b += 2) {
            const int nb = block_end - b < 2 ? 1 : 2;
            const __mmask16 last_mask =
                b + nb == wp->blocks ? (__mmask16)((1u << tail) - 1u) : (__mmask16)0xFFFF;
            for (int64_t t = p0; t < p1; t += 4) {
                const int n_sets = p1 - t >= 4 ? 2 : 1;
                product(wp, ap, a, t * DQ_GEMM_TILE, n_sets, b, nb, last_mask, bias, y, ldy);
            }
        }
    }
    _tile_release();
    if (unit_end < tile_end)
        dq__gemm_tiles_avx512(w, ap, a, bias, y, ldy, unit_end, tile_end, block_begin,
                              block_end);
}

#if defined(__clang__)
#pragma clang attribute pop
#endif

#else

/* No AMX in this compiler or not x86-64: dispatch never selects this kernel. */
void dq__gemm_tiles_amx(const dq__wprep *w, const dq__apack *ap, const dq__aq *a,
                        const float *bias, float *y, int64_t ldy, int64_t tile_begin,
                        int64_t tile_end, int64_t block_begin, int64_t block_end)
{
    (void)w, (void)ap, (void)a, (void)bias, (void)y, (void)ldy, (void)tile_begin;
    (void)tile_end, (void)block_begin, (void)block_end;
}

#endif
