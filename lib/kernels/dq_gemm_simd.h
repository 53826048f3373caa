/* Private interface of the SIMD integer products: the repacked weight layout they share, the
 * packed activation tiles, the per-ISA tile kernels and the dispatch entry points.
 *
 * Weights (built once by dq__wprep_create or dq__gemm_prepare, kept behind dq__wprep.kernel;
 * read by every kernel, the portable ones included): output rows in blocks
 * of 16; within a block, k runs in steps of 8 and every group is padded to whole steps with
 * zero codes, so no step straddles two groups. One step of one block is
 *   4-bit: 64 bytes; byte 4*o + r holds c+8 of (output o, k = 8s + r) in its low nibble and of
 *          (o, 8s + 4 + r) in its high nibble (r < 4); padding is the nibble 0.
 *   8-bit: 128 bytes; byte 4*o + r of the first 64 holds c of (o, 8s + r), of the next 64
 *          c of (o, 8s + 4 + r).
 * So a 64-byte vector holds, for 16 outputs, 4 consecutive codes each: the operand layout of
 * vpdpbusd (and of vpmaddubsw + vpmaddwd). Storing 4-bit codes as c+8 (0..15) unpacks with
 * one mask and one shift and needs no sign extension; the +8 is taken back through the zero
 * point. Per (block, group) the kernels read the weight scale, the zero point plus the code
 * bias, and corr = sum(c) - n * zw, so that with s the stored code and b the bias
 *   sum (u - zx)(c - zw) = sum u*s - (zw + b) * sum u - zx * corr     (exact mod 2^32).
 *
 * Activations are read in tiles of 8 tokens, 4 codes (one broadcast) at a time. When every
 * group is a whole number of steps (no padding), straight from the caller's rows; otherwise
 * from a packed copy where the 4 codes of token i at padded position k are bytes
 * 32 * (k / 4) + 4 * i + k % 4 of the tile, with the weights' group padding as zeros. The
 * per-group code sums of each token are computed once per call, as int32 [tile][group][8]. */
#ifndef DQ_GEMM_SIMD_H
#define DQ_GEMM_SIMD_H

#include "dq_gemm.h"

#define DQ_GEMM_BLOCK 16 /* outputs per weight block */
#define DQ_GEMM_STEP 8   /* k per step */
#define DQ_GEMM_TILE 8   /* tokens per activation tile */

#if defined(__GNUC__)
#define DQ_GEMM_INLINE inline __attribute__((always_inline))
#else
#define DQ_GEMM_INLINE inline
#endif
/* Register tiles live in arrays indexed by constant loop counters: fully unrolled loops let the
 * compiler keep them in registers. */
#if defined(__clang__)
#define DQ_GEMM_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define DQ_GEMM_UNROLL _Pragma("GCC unroll 16")
#else
#define DQ_GEMM_UNROLL
#endif

/* Per (block, group) epilogue constants, one lane per output. */
typedef struct dq__gemm_meta {
    float scale[DQ_GEMM_BLOCK];
    int32_t zero[DQ_GEMM_BLOCK]; /* zw + code bias */
    int32_t corr[DQ_GEMM_BLOCK]; /* sum c - n * zw */
} dq__gemm_meta;

/* The repacked weights: the one form every kernel reads, the portable ones included. codes and
 * meta are owned, or borrowed from caller memory (a mapped file) that must outlive them. */
enum { DQ__WPACK_BORROWED_CODES = 1, DQ__WPACK_BORROWED_META = 2 };
typedef struct dq__wpack {
    int64_t blocks;       /* ceil(rows / 16) */
    int64_t groups;
    int64_t group_steps;  /* steps of every group but the last */
    int64_t last_steps;   /* steps of the last group */
    int64_t steps;        /* all steps of a row: kpad / 8 */
    int64_t step_bytes;   /* 64 (4-bit) or 128 (8-bit) */
    int64_t block_bytes;  /* steps * step_bytes */
    int32_t bits;
    int64_t max_abs_zero; /* largest |zw|: with it, calls check that no group sum overflows */
    uint8_t *codes;       /* blocks * block_bytes */
    dq__gemm_meta *meta;  /* blocks * groups */
    size_t code_bytes;    /* blocks * block_bytes */
    size_t meta_count;    /* blocks * groups */
    uint32_t flags;       /* DQ__WPACK_BORROWED_* */
} dq__wpack;

/* The sizes of the repacked form of a rows x cols matrix (group_len <= cols elements per
 * group): fills every field of *wp but codes, meta, max_abs_zero and flags. */
dq_status dq__wpack_layout(int32_t bits, int64_t rows, int64_t cols, int64_t group_len,
                           dq__wpack *wp);
/* A repacked form for w's shape: codes and meta borrowed when given (codes any alignment, meta
 * aligned for its members), else allocated and zeroed. */
dq_status dq__wpack_create(const dq__wprep *w, const uint8_t *codes, const dq__gemm_meta *meta,
                           dq__wpack **out);
/* Stores output row r: src holds its cols signed codes (the shifted space of dq_gemm.h), then
 * per group the scale, the zero point zw and the code sum. wp->codes must start zeroed. */
void dq__wpack_store_row(const dq__wprep *w, dq__wpack *wp, int64_t r, const int8_t *src,
                         const float *scales, const int32_t *zeros, const int32_t *code_sums);
/* Stored code of lane o of a block (blk: its first byte), padded position kp: 0..15 (4 bits,
 * code + 8) or the signed code (8 bits). Minus the meta's zero point (zw plus the same bias)
 * it is c - zw. */
static inline int32_t dq__wpack_stored(const dq__wpack *wp, const uint8_t *blk, int64_t o,
                                       int64_t kp)
{
    const int64_t s = kp / DQ_GEMM_STEP, half = (kp % DQ_GEMM_STEP) / 4, lane = kp % 4;
    if (wp->bits == 4)
        return (blk[s * 64 + 4 * o + lane] >> (4 * half)) & 0xF;
    return (int8_t)blk[s * 128 + half * 64 + 4 * o + lane];
}

/* Hands wp to w (w->kernel, freed by dq__wprep_free). */
void dq__wpack_attach(dq__wprep *w, dq__wpack *wp);

/* Activation tiles as the kernels read them: codes of token t0 + i (tile t0 / 8), padded
 * position k = 8 s + 4 h + r are at codes + t0 / 8 * tile_stride + i * token_stride
 * + s * step_stride + h * half_stride + r. */
typedef struct dq__apack {
    int64_t rows;        /* tokens */
    int64_t tiles;       /* ceil(rows / 8) */
    const uint8_t *codes;
    int64_t tile_stride, token_stride, step_stride, half_stride;
    const int32_t *sums; /* tiles * groups * 8 */
    /* Strides of the activation scales and zero points (dq__aq): the entry of token t0 + i,
     * group g is at t0 * act_token + i * act_token + g * act_group (per token: 1, 0). */
    int64_t act_token, act_group;
} dq__apack;

/* The instruction sets a kernel may be asked for; dq__gemm_isa_best() is the fastest this CPU
 * runs. AMX is AVX-512 whose integer product runs on AMX-INT8 tiles where the shape allows
 * (every other kernel, and the rest of that product, is AVX-512's): kernels compare isa >=
 * DQ_GEMM_ISA_AVX512 for AVX-512. */
enum { DQ_GEMM_ISA_PORTABLE = 0, DQ_GEMM_ISA_AVX2 = 1, DQ_GEMM_ISA_AVX512 = 2, DQ_GEMM_ISA_AMX = 3 };
int32_t dq__gemm_isa_best(void);
/* True when the CPU can run kernels of that instruction set. */
bool dq__gemm_isa_supported(int32_t isa);

/* Build w->kernel from the unpacked source fields of hand-built weights (codes, scales, zeros,
 * code sums); leaves it NULL when they are missing or memory runs out. */
void dq__gemm_prepare(dq__wprep *w);

/* The dispatched product forced to one instruction set. An ISA the CPU lacks, or one that
 * cannot take these operands exactly, runs the portable kernel. The _work form allocates
 * nothing: work (DQ_ALIGN-aligned) holds dq__gemm_w_a_workspace(w, a->rows) bytes (may be NULL
 * when that is 0). The plain form (tests, benchmarks) allocates that workspace through w's
 * context once per call: DQ_ERR_NOMEM (y untouched) when it cannot. */
void dq__gemm_w_a_isa_work(int32_t isa, const dq__wprep *w, const dq__aq *a, const float *bias,
                           float *y, int64_t ldy, const dq_context *ctx, void *work);
dq_status dq__gemm_w_a_isa(int32_t isa, const dq__wprep *w, const dq__aq *a, const float *bias,
                           float *y, int64_t ldy, const dq_context *ctx);
/* The weight-only product on one instruction set, split over ctx's threads. An ISA
 * the CPU lacks, or weights without the repacked form, run the portable kernel. */
void dq__gemm_w_f32_isa(int32_t isa, const dq__wprep *w, const float *x, int64_t rows,
                        int64_t ldx, const float *bias, float *y, int64_t ldy,
                        const dq_context *ctx);
void dq__quantize_tokens_isa(int32_t isa, const float *x, int64_t rows, int64_t cols,
                             int64_t ldx, int32_t bits, int32_t scheme, float clip,
                             uint8_t *codes, int64_t code_ld, float *scales, int32_t *zeros,
                             const dq_context *ctx);

/* Tile kernels: y for tokens of tiles [tile_begin, tile_end) and outputs of blocks
 * [block_begin, block_end). bias may be NULL. */
typedef void dq__gemm_tiles_fn(const dq__wprep *w, const dq__apack *ap, const dq__aq *a,
                               const float *bias, float *y, int64_t ldy, int64_t tile_begin,
                               int64_t tile_end, int64_t block_begin, int64_t block_end);
dq__gemm_tiles_fn dq__gemm_tiles_avx2;
dq__gemm_tiles_fn dq__gemm_tiles_avx512;
/* Blocks of 16 outputs the AVX-512 GEMV reads at once: weight streams in flight per thread.
 * Six: eight streamed about 10 % slower on a Zen 5, 4 to 7 within 2 % of each other
 * (bench_gemm --gemv-streams, doc/performance.md). */
#define DQ_GEMM_GEMV_BLOCKS_AVX512 6
/* Sets that count, 1-8 (anything else: the default), so that benchmarks can compare stream
 * counts. Not thread-safe: process-wide, set while no product runs. */
void dq__gemm_set_gemv_blocks_avx512(int64_t blocks);
dq__gemm_tiles_fn dq__gemm_tiles_amx;

/* Weight-only kernels (float activations, the repacked weights above; 4 and 8 bits).
 * Result, defined for every SIMD variant: each code is decoded to the float c - zw (exact, the
 * codes and zero points being small integers); per token, output o and group g,
 *     acc_g = fma(x[k_last], w[k_last], ... fma(x[k_0], w[k_0], 0))
 * over the group's positions k in increasing order (one float FMA chain, padding skipped), and
 *     y = fma(sw_G, acc_G, ... fma(sw_0, acc_0, bias or 0))
 * over the groups in increasing order. Every output is one chain whatever the tile, the panel
 * or the thread split, so AVX2 and AVX-512 give the same bits on any number of threads. Against
 * the portable kernel (double sums, one float rounding per group) the difference is float
 * rounding along the chains: at most about (n + groups) * 2^-24 * sum |sw * x * w| for groups
 * of n (far less in practice: 1.3e-6 of that sum measured at n = 4096), tested below 1e-5 of
 * that sum.
 * y for all `tokens` rows of x (ldx) and the outputs of blocks [block_begin, block_end). */
typedef void dq__gemm_f32_fn(const dq__wprep *w, const float *x, int64_t tokens, int64_t ldx,
                             const float *bias, float *y, int64_t ldy, int64_t block_begin,
                             int64_t block_end);
dq__gemm_f32_fn dq__gemm_w16_avx2;
dq__gemm_f32_fn dq__gemm_w16_avx512;

/* Tokens the weight-only kernels take per pass over a panel: their activations (about 256 KiB)
 * stay in L2 while the panel's weights are read again for each tile. A multiple of 8, at
 * least 8. */
static inline int64_t dq__gemm_w16_chunk(int64_t cols)
{
    const int64_t t = ((int64_t)1 << 16) / (cols > 0 ? cols : 1) / 8 * 8;
    return t > 8 ? t : 8;
}

/* Per-token quantization of rows [0, rows): the same codes, scales and zeros as
 * dq__quantize_tokens_ref. */
typedef void dq__quantize_fn(const float *x, int64_t rows, int64_t cols, int64_t ldx,
                             int32_t bits, int32_t scheme, float clip, uint8_t *codes,
                             int64_t code_ld, float *scales, int32_t *zeros);
dq__quantize_fn dq__quantize_tokens_avx2;
/* Per-group quantization on one instruction set (dq__quantize_groups_ref's results), split
 * over ctx's threads by tokens. */
void dq__quantize_groups_isa(int32_t isa, const float *x, int64_t rows, int64_t cols,
                             int64_t ldx, int64_t group_len, int32_t bits, int32_t scheme,
                             float clip, uint8_t *codes, int64_t code_ld, float *scales,
                             int32_t *zeros, const dq_context *ctx);
dq__quantize_fn dq__quantize_tokens_avx512;

#endif
