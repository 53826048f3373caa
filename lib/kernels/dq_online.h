/* Private interface of the fused online path: a plan's activation transform, per-token
 * quantization and code writing in one pass over tiles of tokens.
 *
 * A plan applies x -> (x / s) R_0 P_0 R_1 P_1 ... R_last (any slot may be the identity). The
 * fused path compiles it once per layer into stages, each one block-diagonal product:
 *  - the smoothing division is folded into the rows of the first product's matrices when
 *    that rotation has one matrix per block (same bytes as the plan's own); when the first
 *    matrix is shared by the blocks (folding would make one copy per block) or no rotation
 *    exists, it divides the token tile instead, which is cheap next to the products;
 *  - permutations are never applied as a pass: a product reads its input element k of block
 *    b through an index, gather[b * bs + k], the composition of every permutation since the
 *    previous product; permutations after the last product become the index the quantizer
 *    reads through;
 *  - a product whose blocks are all whole, of a power of two >= 128, each matrix diag(a) H
 *    (H Sylvester's +-1 Hadamard matrix: randomised and plain Hadamard rotations) runs as
 *    v = input * a (per channel) and a fast Walsh-Hadamard transform of v: n log n additions
 *    and no matrix read instead of n^2 multiply-adds. A first such product takes the smoothing
 *    in a (a_k / s, the dense fold's row values) whether or not its blocks share a matrix.
 *  - on a context with DQ_CONTEXT_F_HALF_MATRICES the dense products read half-precision
 *    copies of their matrices (half the bytes a lone token's transform reads); the smoothing
 *    then divides the tile, since divided rows could fall below half's normal range.
 * Tokens run in tiles sized so that the tile's two float buffers stay in L2; each product
 * element is 0 + a_0 m_0 + a_1 m_1 + ... in index order with one fused multiply-add per term,
 * and the fast transform has one portable butterfly order, so every kernel variant, tile size
 * and thread split gives the same bits.
 *
 * Results differ from dq_plan_apply_act_to (BLAS, explicit division and gathers) only by float
 * rounding in the products; per-token quantization of the tile is the dispatched kernel's. */
#ifndef DQ_ONLINE_H
#define DQ_ONLINE_H

#include "dq_internal.h"

typedef struct dq__online dq__online;

/* Compiles plan (width cols) for the fused path. The plan is borrowed (its matrices are read
 * in place) and never modified. DQ_ERR_UNSUPPORTED for widths beyond int32 indexing. */
dq_status dq__online_create(const dq_context *ctx, const dq_plan *plan, dq__online **out);
void dq__online_free(dq__online *on);

/* Bytes of workspace for rows tokens on ctx's threads (the caller aligns it to
 * DQ_ALIGN); false on overflow. */
bool dq__online_workspace(const dq__online *on, int64_t rows, const dq_context *ctx,
                          size_t *bytes);

/* Fused transform + per-token quantization: codes (code_ld, padding 0), scales, zeros exactly
 * as dq__quantize_tokens writes them for the transformed rows. work: DQ_ALIGN-aligned, at
 * least dq__online_workspace bytes. */
void dq__online_quantize(const dq__online *on, const float *x, int64_t rows, int64_t ldx,
                         int32_t bits, int32_t scheme, float clip, uint8_t *codes,
                         int64_t code_ld, float *scales, int32_t *zeros, void *work,
                         const dq_context *ctx);
/* The transform alone: y (rows x cols, ldy) = x * G. */
void dq__online_transform(const dq__online *on, const float *x, int64_t rows, int64_t ldx,
                          float *y, int64_t ldy, void *work, const dq_context *ctx);

/* The same forced to one instruction set (DQ_GEMM_ISA_*; one the CPU lacks runs the portable
 * kernels), for tests and benchmarks. y NULL: quantize; else transform. */
void dq__online_run_isa(int32_t isa, const dq__online *on, const float *x, int64_t rows,
                        int64_t ldx, int32_t bits, int32_t scheme, float clip, uint8_t *codes,
                        int64_t code_ld, float *scales, int32_t *zeros, float *y, int64_t ldy,
                        void *work, const dq_context *ctx);

/* dq_linear_forward through the fused route (what the public call runs) or the unfused one
 * (dq_plan_apply_act_to into a float buffer, then dq__quantize_tokens: the oracle of tests and
 * benchmarks), and the workspace each needs. */
enum { DQ__ROUTE_FUSED = 0, DQ__ROUTE_UNFUSED = 1 };
dq_status dq__linear_workspace_route(const dq_linear *lin, int32_t route, int64_t rows,
                                     size_t *bytes);
dq_status dq__linear_forward_route(const dq_linear *lin, int32_t route, const float *x,
                                   int64_t rows, int64_t cols, int64_t ldx, float *y, int64_t ldy,
                                   void *work, size_t work_size);

/* dq_linear_forward_group and its workspace through either route. */
dq_status dq__linear_group_workspace_route(const dq_linear *const *layers, int32_t n_layers,
                                           int32_t route, int64_t rows, size_t *bytes);
dq_status dq__linear_forward_group_route(const dq_linear *const *layers, int32_t n_layers,
                                         int32_t route, const float *x, int64_t rows,
                                         int64_t cols, int64_t ldx, float *const *y,
                                         const int64_t *ldy, int32_t n_outputs, void *work,
                                         size_t work_size);

/* Tokens per tile (for tests that want remainders). */
int64_t dq__online_tile_rows(const dq__online *on);
/* Bytes of matrices from which a lone token's stage is split over the threads (tests set 0 to
 * split every stage). Not thread-safe: set before the first run. */
void dq__online_set_split_bytes(dq__online *on, size_t bytes);
/* Stages run as fast Walsh-Hadamard transforms (0 while they are forced dense). */
int32_t dq__online_hadamard_stages(const dq__online *on);
/* Whether stage s (0-based, in plan order over the rotations that exist) reads
 * half-precision matrix copies (DQ_CONTEXT_F_HALF_MATRICES). */
bool dq__online_stage_half(const dq__online *on, int32_t s);
/* false: such stages run as the dense products of their matrices (the smoothing then divides
 * the tile), for tests and benchmarks; true (the default): as transforms. Not thread-safe: set
 * before the first run. */
void dq__online_set_fast_hadamard(dq__online *on, bool fast);
/* Whether m (n x n row-major, n a power of two >= 8) is exactly diag(a) H_n with
 * a_i = m[i][0]: m[i][j] bitwise equals a_i, negated where popcount(i & j) is odd. sign: n / 8
 * words of scratch. */
bool dq__online_is_hadamard(const float *m, int32_t n, uint32_t *sign);

/* One block product: out[r][0..n) (ldo) = sum over k < n, in increasing order, of
 * a(r, k) * m[k][0..n) for r < rows, where a(r, k) = in[r * ldi + (idx ? idx[r * idx_ld + k]
 * : k)] and m is n x n (row-major, ld n); one fused multiply-add per term starting from 0.
 * Rows are tokens of one block (idx_ld 0), or the blocks of one token sharing one matrix. */
typedef void dq__online_block_fn(const float *in, int64_t ldi, const int32_t *idx,
                                 int64_t idx_ld, int64_t rows, const float *m, int32_t n,
                                 float *out, int64_t ldo);
/* The same product with m in IEEE half precision (dq_half.h): each element widened exactly to
 * float before its multiply-add, so the bits are those of the float product of the widened
 * matrix. */
typedef void dq__online_block16_fn(const float *in, int64_t ldi, const int32_t *idx,
                                   int64_t idx_ld, int64_t rows, const uint16_t *m, int32_t n,
                                   float *out, int64_t ldo);
/* out[r][c] = in[r][c] / s[c] for r < rows, c < cols: the smoothing division, exactly. */
typedef void dq__online_divide_fn(const float *in, int64_t ldi, const float *s, int64_t rows,
                                  int64_t cols, float *out, int64_t ldo);
dq__online_divide_fn dq__online_divide_portable;
dq__online_divide_fn dq__online_divide_avx2;
dq__online_divide_fn dq__online_divide_avx512;
dq__online_block_fn dq__online_block_portable;
dq__online_block_fn dq__online_block_avx2;
dq__online_block_fn dq__online_block_avx512;
dq__online_block16_fn dq__online_block16_portable;
dq__online_block16_fn dq__online_block16_avx2; /* needs F16C besides AVX2 and FMA */
dq__online_block16_fn dq__online_block16_avx512;

#endif
