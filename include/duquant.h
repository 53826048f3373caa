/**
 * @file duquant.h
 * @brief libduquant: DuQuant W4A4 quantization of LLM linear layers.
 *
 * The one public header. It compiles alone as C99 (-pedantic-errors) and as C++.
 *
 * Conventions used throughout:
 * - Matrices are row-major float32 given as (pointer, rows, cols, ld) with ld >= cols.
 *   Activations: rows = tokens, cols = channels. Weights: rows = output channels,
 *   cols = input channels (y = x * W^T, like nn.Linear).
 * - Every function returns a dq_status (0 = DQ_OK, negative = error) unless stated otherwise.
 *   On error no output is written: out-handles are set to NULL, caller buffers are untouched.
 * - Handles are opaque, created by dq_<object>_create/_pack/... and released with
 *   dq_<object>_free(), which accepts NULL.
 * - Params structs start with struct_size; fill them with dq_<object>_params_init(p, sizeof *p).
 *   A struct larger than this library knows is accepted only if the unknown tail is all zero
 *   (DQ_ERR_UNSUPPORTED otherwise); a struct smaller than the first released layout, or larger
 *   than DQ_PARAMS_MAX_SIZE bytes, gives DQ_ERR_STRUCT_SIZE.
 *
 * ABI: same DQ_VERSION_MAJOR = binary compatible (soname libduquant.so.MAJOR).
 * See doc/abi-policy.md.
 */
#ifndef DUQUANT_H
#define DUQUANT_H

#include <stddef.h>
#include <stdint.h>

#include "duquant_version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Macros                                                                                      */
/* ------------------------------------------------------------------------------------------ */

#if defined(_WIN32) && defined(DQ_BUILDING_DLL)
#define DQ_API __declspec(dllexport)
#elif defined(_WIN32) && !defined(DQ_STATIC)
#define DQ_API __declspec(dllimport)
#elif defined(__GNUC__)
#define DQ_API __attribute__((visibility("default")))
#else
#define DQ_API
#endif

#if defined(__GNUC__)
#define DQ_NODISCARD __attribute__((warn_unused_result))
#define DQ_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#define DQ_NODISCARD
#define DQ_DEPRECATED(msg)
#endif

/** Largest struct_size any *_params_init accepts (a guard against garbage sizes). */
#define DQ_PARAMS_MAX_SIZE 4096

/* ------------------------------------------------------------------------------------------ */
/* Version                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/** @brief Runtime version as MAJOR*10000 + MINOR*100 + PATCH; compare with DQ_VERSION_NUMBER.
 *  @since 1.0 */
DQ_API int32_t dq_version_number(void);
/** @brief Runtime version string "MAJOR.MINOR.PATCH"; static storage. @since 1.0 */
DQ_API const char *dq_version_string(void);

/* ------------------------------------------------------------------------------------------ */
/* Status codes                                                                                */
/* THREAD SAFETY: all functions in this section are pure and thread-safe.                      */
/* ------------------------------------------------------------------------------------------ */

/** 0 = success, negative = error. Values are never renumbered or reused. */
typedef int32_t dq_status;

enum {
    DQ_OK = 0,
    DQ_ERR_INVALID_ARG = -1, /**< NULL pointer, value out of range, unknown flag */
    DQ_ERR_NOMEM = -2,       /**< the allocator returned NULL */
    DQ_ERR_SHAPE = -3,       /**< rows/cols/ld/group sizes inconsistent or not positive */
    DQ_ERR_BAD_STATE = -4,   /**< object not in a state that allows the call */
    DQ_ERR_STRUCT_SIZE = -5, /**< params struct_size too small or absurdly large */
    DQ_ERR_UNSUPPORTED = -6, /**< unknown non-zero params tail, or option not supported */
    DQ_ERR_BLAS = -7,        /**< dimensions do not fit the BLAS integer type */
    DQ_ERR_FORMAT = -8,      /**< malformed serialised data */
    DQ_ERR_NONFINITE = -9,   /**< NaN or infinity in input data */
    DQ_ERR_OVERFLOW = -10,   /**< an element or byte count does not fit size_t / int64_t */
    DQ_ERR_BUFFER = -11      /**< caller buffer too small (the needed size is reported) */
};

/** @brief Symbolic name of a status ("DQ_ERR_SHAPE"); static storage, never NULL.
 *  Unknown codes give "DQ_ERR_UNKNOWN". @since 1.0 */
DQ_API const char *dq_status_name(dq_status s);
/** @brief Human-readable description of a status; static storage, never NULL. @since 1.0 */
DQ_API const char *dq_status_string(dq_status s);

/* ------------------------------------------------------------------------------------------ */
/* Context: allocator, log callback, thread policy                                             */
/* THREAD SAFETY: a context is immutable after creation and may be shared by any number of     */
/* threads. OWNERSHIP: objects copy what they need from the context at creation, so a context  */
/* may be freed while objects created with it are still alive. Every creator accepts NULL for  */
/* the context, meaning malloc/free, no logging, host-chosen threads.                          */
/* ------------------------------------------------------------------------------------------ */

typedef struct dq_context dq_context;

/** Allocate size bytes aligned to align (a power of two, at most 4096); NULL on failure. */
typedef void *(*dq_alloc_fn)(void *user, size_t size, size_t align);
/** Release memory from the matching dq_alloc_fn; never called with NULL. */
typedef void (*dq_free_fn)(void *user, void *ptr);
/** Receives one NUL-terminated message; runs on the thread that made the library call and must
 *  not unwind (longjmp, C++ exceptions) through the library. */
typedef void (*dq_log_fn)(void *user, int32_t level, const char *msg);

/** Log levels (dq_context_params.log_level): messages at or below the level are delivered. */
enum { DQ_LOG_ERROR = 0, DQ_LOG_WARN = 1, DQ_LOG_INFO = 2, DQ_LOG_DEBUG = 3 };

typedef struct dq_context_params {
    uint32_t struct_size; /**< set by dq_context_params_init */
    uint32_t flags;       /**< reserved, must be 0 */
    dq_alloc_fn alloc;    /**< NULL = aligned malloc; must be set together with free */
    dq_free_fn free;      /**< NULL = free() */
    void *alloc_user;     /**< passed to alloc/free */
    dq_log_fn log;        /**< NULL = no logging */
    void *log_user;       /**< passed to log */
    int32_t log_level;    /**< DQ_LOG_*, default DQ_LOG_WARN */
    int32_t n_threads;    /**< worker threads for library kernels; 0 = host decides (default) */
} dq_context_params;

/** @brief Fill p with defaults. @param struct_size sizeof *p as the caller compiled it.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (p NULL) or DQ_ERR_STRUCT_SIZE. @since 1.0 */
DQ_API dq_status dq_context_params_init(dq_context_params *p, size_t struct_size);
/** @brief Create a context. p may be NULL (defaults). On failure *out is NULL. @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_context_create(const dq_context_params *p, dq_context **out);
/** @brief Release a context; NULL is a no-op. @since 1.0 */
DQ_API void dq_context_free(dq_context *ctx);

/* ------------------------------------------------------------------------------------------ */
/* Calibrator: streaming activation statistics                                                 */
/* THREAD SAFETY: dq_calib_observe and dq_calib_merge mutate their first argument: one thread  */
/* per calibrator at a time (use one calibrator per thread and merge them). Functions taking a */
/* const dq_calib may run concurrently on one calibrator.                                      */
/* OWNERSHIP: observed data is copied into the calibrator's own statistics during the call.    */
/* ------------------------------------------------------------------------------------------ */

typedef struct dq_calib dq_calib;

/** Calibration sample kept for the rotation search (dq_calib_params.sample_mode).
 *  NONE: statistics only (enough for smoothing and sample-free plans).
 *  FIRST: the first sample_tokens tokens observed.
 *  SEQ_MEAN: the element-wise mean over consecutive sequences of sample_tokens tokens, as the
 *  reference searches on (token i of the stream is position i % sample_tokens of its
 *  sequence); a sample exists once a whole number of sequences has been observed. */
enum { DQ_CALIB_SAMPLE_NONE = 0, DQ_CALIB_SAMPLE_FIRST = 1, DQ_CALIB_SAMPLE_SEQ_MEAN = 2 };

typedef struct dq_calib_params {
    uint32_t struct_size;  /**< set by dq_calib_params_init */
    uint32_t flags;        /**< reserved, must be 0 */
    int64_t sample_tokens; /**< rows of the sample (memory: sample_tokens x cols floats, or
                                doubles for SEQ_MEAN); default 2048; >= 1 unless mode NONE */
    int32_t sample_mode;   /**< DQ_CALIB_SAMPLE_*, default DQ_CALIB_SAMPLE_FIRST */
} dq_calib_params;

/** @brief Fill p with defaults (first 2048 tokens kept as the sample). @since 1.0 */
DQ_API dq_status dq_calib_params_init(dq_calib_params *p, size_t struct_size);

/** @brief Create a calibrator for activations of cols channels.
 *  @param ctx context or NULL. @param p params or NULL (defaults).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (cols <= 0), DQ_ERR_OVERFLOW, DQ_ERR_NOMEM,
 *  DQ_ERR_STRUCT_SIZE, DQ_ERR_UNSUPPORTED. @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_calib_create(dq_context *ctx, const dq_calib_params *p,
                                              int64_t cols, dq_calib **out);

/** @brief Release a calibrator; NULL is a no-op. @since 1.0 */
DQ_API void dq_calib_free(dq_calib *c);

/** @brief Add rows tokens of activations (rows x cols, leading dimension ldx) to the
 *  statistics: per-channel max |x|, min, max, the token count and the sample. All or nothing:
 *  on error nothing is recorded.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (cols differs from the calibrator's),
 *  DQ_ERR_NONFINITE, DQ_ERR_OVERFLOW. @since 1.0 */
DQ_API dq_status dq_calib_observe(dq_calib *c, const float *x, int64_t rows, int64_t cols,
                                  int64_t ldx);

/** @brief Fold the statistics of src into dst (e.g. two calibrators fed by two threads); src
 *  is unchanged. Both need the same width, sample mode and sample_tokens. FIRST samples keep
 *  dst's tokens first, then src's. SEQ_MEAN needs whole sequences in both (DQ_ERR_BAD_STATE).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL, dst == src, different params), DQ_ERR_SHAPE,
 *  DQ_ERR_BAD_STATE, DQ_ERR_OVERFLOW. @since 1.0 */
DQ_API dq_status dq_calib_merge(dq_calib *dst, const dq_calib *src);

/** @brief Number of tokens observed so far. @since 1.0 */
DQ_API dq_status dq_calib_tokens(const dq_calib *c, int64_t *tokens);

/** @brief Per-channel max |x| over all observed tokens into out[0..n), n = cols.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (n != cols), DQ_ERR_BAD_STATE (no tokens).
 *  @since 1.0 */
DQ_API dq_status dq_calib_absmax(const dq_calib *c, float *out, int64_t n);

/** @brief Per-channel minimum and maximum (either pointer may be NULL); like dq_calib_absmax.
 *  @since 1.0 */
DQ_API dq_status dq_calib_minmax(const dq_calib *c, float *min, float *max, int64_t n);

/** @brief The calibration sample: *rows receives its row count (0 when none is available
 *  yet); when out is not NULL the rows x cols sample is written with leading dimension ldo.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (ldo < cols), DQ_ERR_BAD_STATE (out given
 *  but no sample available). @since 1.0 */
DQ_API dq_status dq_calib_sample(const dq_calib *c, float *out, int64_t ldo, int64_t *rows);

/* ------------------------------------------------------------------------------------------ */
/* Smoothing (SmoothQuant-style per-channel scales)                                            */
/* THREAD SAFETY: pure functions. OWNERSHIP: inputs borrowed for the call.                     */
/* ------------------------------------------------------------------------------------------ */

/** @brief Smoothing factors s_j = max(max(a_j, 1e-5)^alpha / max(w_j, 1e-5)^(1 - alpha), 1e-5),
 *  then raised to at least 1e-2. Activations are divided by s, weights multiplied.
 *  @param act_absmax per-channel max |x| (n values, >= 0).
 *  @param w_absmax   per-input-channel max |W| over all layers that read this input (n values).
 *  @param alpha      migration strength in [0, 1].
 *  @param scale      receives n factors.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL, alpha outside [0, 1], negative absmax),
 *  DQ_ERR_SHAPE (n <= 0), DQ_ERR_NONFINITE. @since 1.0 */
DQ_API dq_status dq_smooth_factors(const float *act_absmax, const float *w_absmax, int64_t n,
                                   float alpha, float *scale);

/** @brief Per-input-channel max |W[:, j]| of a rows x cols weight (ldw). With accumulate != 0
 *  the result is the max with what absmax already holds, so layers that share an input
 *  (q/k/v, gate/up) are folded in by calling once per weight.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_OVERFLOW, DQ_ERR_NONFINITE (in w, or
 *  in absmax when accumulating). @since 1.0 */
DQ_API dq_status dq_smooth_weight_absmax(const float *w, int64_t rows, int64_t cols, int64_t ldw,
                                         int32_t accumulate, float *absmax);

/* ------------------------------------------------------------------------------------------ */
/* Block rotations                                                                             */
/* Channels split into blocks of block_size plus one shorter last block when block_size does   */
/* not divide the width; each block is multiplied from the right by an orthogonal matrix.      */
/* THREAD SAFETY: a dq_rotation is immutable once created; any number of threads may use it.   */
/* The base-matrix functions are pure. Creation runs on the context's n_threads threads (0 or  */
/* 1: the calling thread only) with the library's own fixed-order products, so the result is   */
/* the same bit for bit for any thread count, BLAS library or BLAS thread setting.             */
/* OWNERSHIP: inputs are borrowed for the call; a rotation owns its matrices.                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct dq_rotation dq_rotation;

/** How the block matrices are found (dq_rotation_params.method, dq_plan_params.method).
 *  GREEDY: DuQuant's greedy search on a calibration sample. HADAMARD: normalised Sylvester
 *  Hadamard blocks (every block length must be a power of two). RANDOM: seeded random
 *  orthogonal blocks (Haar). */
enum { DQ_ROT_METHOD_GREEDY = 0, DQ_ROT_METHOD_HADAMARD = 1, DQ_ROT_METHOD_RANDOM = 2 };

/** dq_rotation_params.flags. ROW_RULE: pick the channel as the extreme entry's row index
 *  modulo the block length, as the reference does (default: its column). PER_BLOCK: one matrix
 *  per block, each searched on its own columns (default: one matrix shared by all full blocks,
 *  searched on all of them, and one for a shorter last block). RANDOM_QPRIME: greedy base
 *  matrix Rot * blockdiag(1, Q') with a seeded random orthogonal Q', drawn afresh per search. */
enum { DQ_ROT_F_ROW_RULE = 1u, DQ_ROT_F_PER_BLOCK = 2u, DQ_ROT_F_RANDOM_QPRIME = 4u };

typedef struct dq_rotation_params {
    uint32_t struct_size;  /**< set by dq_rotation_params_init */
    uint32_t flags;        /**< DQ_ROT_F_* */
    uint64_t seed;         /**< seeds every random matrix; default 0 */
    const float *qprime;   /**< optional caller-given Q' ((block_size-1)^2 floats, row-major,
                                orthogonal) for the full-size blocks of a GREEDY search;
                                NULL = identity or RANDOM_QPRIME. Borrowed for the call. */
    int32_t method;        /**< DQ_ROT_METHOD_*, default GREEDY */
    int32_t block_size;    /**< 2..4096, default 128 */
    int32_t max_steps;     /**< greedy steps, 0..65536, default 256 */
} dq_rotation_params;

/** @brief Fill p with defaults (greedy, column rule, shared matrix, block 128, 256 steps).
 *  @since 1.0 */
DQ_API dq_status dq_rotation_params_init(dq_rotation_params *p, size_t struct_size);

/** @brief Create block rotations for cols channels. GREEDY searches on the sample x (rows x
 *  cols, ldx, finite); HADAMARD and RANDOM ignore x, rows and ldx (x may be NULL).
 *  Greedy search (per matrix, on the view of its blocks as (rows * blocks) x n): each step
 *  takes the flat first argmax and argmin, records peak = max - min, picks the channel c of
 *  the larger magnitude (ties: the minimum's) and multiplies the view by the base matrix with
 *  rows and columns 0 and c swapped; after max_steps steps one more peak is recorded and the
 *  product of the prefix with the first smallest peak is kept (0 steps = identity).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_OVERFLOW, DQ_ERR_NONFINITE,
 *  DQ_ERR_UNSUPPORTED (HADAMARD with a block length that is not a power of two),
 *  DQ_ERR_NOMEM, DQ_ERR_STRUCT_SIZE. @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_rotation_create(dq_context *ctx, const dq_rotation_params *p,
                                                 const float *x, int64_t rows, int64_t cols,
                                                 int64_t ldx, dq_rotation **out);

/** @brief Release a rotation; NULL is a no-op. @since 1.0 */
DQ_API void dq_rotation_free(dq_rotation *r);

/** @brief Shape: width, block size, number of blocks and of distinct matrices. Any output
 *  pointer may be NULL. @since 1.0 */
DQ_API dq_status dq_rotation_layout(const dq_rotation *r, int64_t *cols, int32_t *block_size,
                                    int64_t *n_blocks, int64_t *n_matrices);

/** @brief Block b (0-based): its length and the index of the matrix it uses (either pointer
 *  may be NULL). @return DQ_OK, DQ_ERR_INVALID_ARG (b out of range). @since 1.0 */
DQ_API dq_status dq_rotation_block(const dq_rotation *r, int64_t b, int32_t *size,
                                   int64_t *matrix);

/** @brief Matrix m as size x size floats into out (leading dimension ldo >= size); out NULL
 *  only reports size. @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE. @since 1.0 */
DQ_API dq_status dq_rotation_matrix(const dq_rotation *r, int64_t m, float *out, int64_t ldo,
                                    int32_t *size);

/** @brief Greedy search record of matrix m. *steps receives the steps run and *selected the
 *  prefix length kept; ids (the reference's exchange ids: view row under ROW_RULE, else the
 *  column), swapped (the channel swapped with 0 at each step) and peaks receive steps + 1
 *  entries each (any may be NULL; cap = their capacity).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_BAD_STATE (matrix not found by a search),
 *  DQ_ERR_BUFFER (cap < steps + 1; *steps is still set). @since 1.0 */
DQ_API dq_status dq_rotation_trace(const dq_rotation *r, int64_t m, int32_t *steps,
                                   int32_t *selected, int64_t *ids, int32_t *swapped,
                                   float *peaks, int64_t cap);

/** @brief In place x <- x * blockdiag(R_1, ..., R_K) for a rows x cols matrix (ldx).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_OVERFLOW, DQ_ERR_NONFINITE,
 *  DQ_ERR_NOMEM, DQ_ERR_BLAS. @since 1.0 */
DQ_API dq_status dq_rotation_apply(const dq_rotation *r, float *x, int64_t rows, int64_t cols,
                                   int64_t ldx);

/** @brief DuQuant's base rotation for n >= 2: Givens rotations (i, i+1) with cos 1/sqrt(i+2),
 *  sin sqrt((i+1)/(i+2)), i = 0..n-2, left-multiplied, then rows and columns 0 and n-1 swapped
 *  (row 0 is uniform); computed in double. With qprime ((n-1)^2 floats) the result is
 *  multiplied by blockdiag(1, Q'). Writes n x n floats (ldo >= n).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (n < 2 or n > 4096, ldo < n),
 *  DQ_ERR_NONFINITE (qprime), DQ_ERR_NOMEM. @since 1.0 */
DQ_API dq_status dq_rotation_base(int32_t n, const float *qprime, float *out, int64_t ldo);

/** @brief Normalised Sylvester Hadamard matrix H_n / sqrt(n) (n a power of two, 1..4096).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_UNSUPPORTED (n not a power of two).
 *  @since 1.0 */
DQ_API dq_status dq_rotation_hadamard(int32_t n, float *out, int64_t ldo);

/** @brief Seeded random orthogonal n x n matrix (Haar: Gram-Schmidt of a Gaussian matrix in
 *  double), n 1..4096. Same seed, same matrix (given the same C math library).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_NOMEM. @since 1.0 */
DQ_API dq_status dq_rotation_random_orthogonal(int32_t n, uint64_t seed, float *out,
                                               int64_t ldo);

/* ------------------------------------------------------------------------------------------ */
/* Permutation                                                                                 */
/* THREAD SAFETY: pure. OWNERSHIP: inputs borrowed for the call.                               */
/* ------------------------------------------------------------------------------------------ */

/** @brief Zigzag permutation: channels sorted by key, descending and stable, are dealt to
 *  blocks 0, 1, ..., K-1, K-1, ..., 0, 0, 1, ... (a full block is skipped, so a shorter last
 *  block is filled to its own length), each block keeping the dealt order. perm[j] is the
 *  source channel of position j: x_new[:, j] = x[:, perm[j]].
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL, block_size < 1), DQ_ERR_SHAPE (n <= 0),
 *  DQ_ERR_OVERFLOW, DQ_ERR_NONFINITE, DQ_ERR_NOMEM. @since 1.0 */
DQ_API dq_status dq_permutation_zigzag(const float *key, int64_t n, int32_t block_size,
                                       int64_t *perm);

/* ------------------------------------------------------------------------------------------ */
/* Plan: G = diag(s)^-1 * R_0 * P_0 * R_1 * ... * P_{k-1} * R_k along the channel axis         */
/* Activations x' = x * G, weights W' = W * G^-T = W * diag(s) * R_0 * P_0 * ... * R_k, so     */
/* x' * W'^T = x * W^T. Layers that read the same input share one plan.                        */
/* THREAD SAFETY: a dq_plan is immutable once created: any number of threads may apply one     */
/* const plan concurrently (give each its own workspace). Building runs on the context's       */
/* n_threads threads with fixed-order products: the same params, data and seed give the same   */
/* plan bit for bit whatever the thread counts. Applying uses BLAS (fast; the last bits may    */
/* follow the BLAS library's own choices).                                                     */
/* OWNERSHIP: inputs are borrowed for the call; a plan owns copies of all its parts; pointers  */
/* from dq_plan_rotation stay valid until dq_plan_free.                                        */
/* ------------------------------------------------------------------------------------------ */

typedef struct dq_plan dq_plan;

/** dq_plan_params.flags. SMOOTH: smoothing scales. ROTATE: block rotations (method).
 *  PERMUTE: zigzag permutations between rotations (permutation_times of them; with ROTATE off
 *  one permutation alone). ROW_RULE, PER_BLOCK_R, RANDOM_QPRIME: as DQ_ROT_F_* for the greedy
 *  search (PER_BLOCK_R also gives RANDOM one matrix per block). */
enum {
    DQ_PLAN_F_SMOOTH = 1u,
    DQ_PLAN_F_ROTATE = 2u,
    DQ_PLAN_F_PERMUTE = 4u,
    DQ_PLAN_F_ROW_RULE = 8u,
    DQ_PLAN_F_PER_BLOCK_R = 16u,
    DQ_PLAN_F_RANDOM_QPRIME = 32u
};
/** Default flags: DuQuant with smoothing (smooth, rotate, permute, rotate). */
#define DQ_PLAN_F_DEFAULT (DQ_PLAN_F_SMOOTH | DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE)

typedef struct dq_plan_params {
    uint32_t struct_size;      /**< set by dq_plan_params_init */
    uint32_t flags;            /**< DQ_PLAN_F_*, default DQ_PLAN_F_DEFAULT */
    uint64_t seed;             /**< all randomness is seeded; default 0 */
    int32_t method;            /**< DQ_ROT_METHOD_*, default GREEDY */
    int32_t block_size;        /**< 2..4096, default 128 */
    int32_t max_rotation_step; /**< greedy steps per search, 0..65536, default 256 */
    int32_t permutation_times; /**< zigzag passes, 1..64, default 1 */
    float smooth_alpha;        /**< [0, 1], default 0.6 */
} dq_plan_params;

/** @brief Fill p with defaults. @since 1.0 */
DQ_API dq_status dq_plan_params_init(dq_plan_params *p, size_t struct_size);

/** @brief Build a plan for cols input channels from a calibrator.
 *  @param calib    statistics and sample (its width must be cols); may be NULL only for plans
 *                  that need no activation statistics (no SMOOTH, no PERMUTE, method not
 *                  GREEDY).
 *  @param w_absmax per-input-channel max |W| over all layers sharing the input (see
 *                  dq_smooth_weight_absmax), cols values; required with SMOOTH, else ignored.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_BAD_STATE (calibrator saw no tokens,
 *  or has no sample when one is needed), DQ_ERR_NONFINITE, DQ_ERR_UNSUPPORTED, DQ_ERR_NOMEM,
 *  DQ_ERR_OVERFLOW, DQ_ERR_STRUCT_SIZE. @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_plan_build(dq_context *ctx, const dq_plan_params *p,
                                            const dq_calib *calib, const float *w_absmax,
                                            int64_t cols, dq_plan **out);

/** @brief Build a plan from an explicit calibration sample (rows x cols, lds) instead of a
 *  calibrator. act_absmax (cols values) may be NULL: then the sample's own per-channel max |x|
 *  is used for smoothing. Same errors as dq_plan_build. @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_plan_build_from_sample(dq_context *ctx,
                                                        const dq_plan_params *p,
                                                        const float *act_absmax,
                                                        const float *sample, int64_t rows,
                                                        int64_t cols, int64_t lds,
                                                        const float *w_absmax, dq_plan **out);

/** @brief Assemble a plan from parts: G = diag(smooth_scale)^-1 * R_0 * P_0 * ... * R_{k-1}
 *  with k = n_rotations. smooth_scale (cols positive finite values) may be NULL; rotations
 *  has k entries, each NULL (identity) or a rotation of width cols; permutations has k - 1
 *  entries, each NULL (identity) or a permutation of 0..cols-1. Everything is copied.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_NONFINITE, DQ_ERR_NOMEM.
 *  @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_plan_assemble(dq_context *ctx, int64_t cols,
                                               const float *smooth_scale, int32_t n_rotations,
                                               const dq_rotation *const *rotations,
                                               const int64_t *const *permutations,
                                               dq_plan **out);

/** @brief Release a plan; NULL is a no-op. @since 1.0 */
DQ_API void dq_plan_free(dq_plan *pl);

/** @brief Number of channels the plan acts on. @since 1.0 */
DQ_API dq_status dq_plan_width(const dq_plan *pl, int64_t *cols);

/** @brief Bytes of workspace dq_plan_apply_act needs for rows rows (0 when none).
 *  @since 1.0 */
DQ_API dq_status dq_plan_workspace_size(const dq_plan *pl, int64_t rows, size_t *bytes);

/** @brief In place x <- x * G for rows x cols activations (ldx). work may be NULL (then it
 *  allocates internally) or hold work_size >= dq_plan_workspace_size bytes. Reentrant: many
 *  threads may apply one const plan concurrently.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (cols differs from the plan's),
 *  DQ_ERR_OVERFLOW, DQ_ERR_NONFINITE, DQ_ERR_BUFFER, DQ_ERR_NOMEM, DQ_ERR_BLAS. @since 1.0 */
DQ_API dq_status dq_plan_apply_act(const dq_plan *pl, float *x, int64_t rows, int64_t cols,
                                   int64_t ldx, void *work, size_t work_size);

/** @brief Out of place y <- x * G (y rows x cols, ldy; x is not modified; x and y must not
 *  overlap unless they are the same matrix). Otherwise as dq_plan_apply_act. @since 1.0 */
DQ_API dq_status dq_plan_apply_act_to(const dq_plan *pl, const float *x, int64_t rows,
                                      int64_t cols, int64_t ldx, float *y, int64_t ldy,
                                      void *work, size_t work_size);

/** @brief In place W <- W * diag(s) * R_0 * P_0 * ... * R_k for a rows x cols weight (ldw,
 *  rows = output channels). @return as dq_plan_apply_act. @since 1.0 */
DQ_API dq_status dq_plan_transform_weight(const dq_plan *pl, float *w, int64_t rows,
                                          int64_t cols, int64_t ldw);

/** @brief Structure: whether smoothing scales are present and the number of rotation slots
 *  (permutation slots = n_rotations - 1). Either pointer may be NULL. @since 1.0 */
DQ_API dq_status dq_plan_layout(const dq_plan *pl, int32_t *has_smoothing, int32_t *n_rotations);

/** @brief The smoothing scales s (n = cols values; all 1 when the plan has none). @since 1.0 */
DQ_API dq_status dq_plan_smooth_scales(const dq_plan *pl, float *s, int64_t n);

/** @brief Borrow rotation slot i (*r = NULL when that slot is the identity); valid until
 *  dq_plan_free. @return DQ_OK, DQ_ERR_INVALID_ARG (i out of range). @since 1.0 */
DQ_API dq_status dq_plan_rotation(const dq_plan *pl, int32_t i, const dq_rotation **r);

/** @brief Permutation slot i into perm (n = cols values; the identity when the slot is empty).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE. @since 1.0 */
DQ_API dq_status dq_plan_permutation(const dq_plan *pl, int32_t i, int64_t *perm, int64_t n);

/* @section transform: calibrator, smoothing, rotation, permutation, plan (keep this line) */

/* @section linear: LWC, quantized linear layer (keep this line) */

/* ------------------------------------------------------------------------------------------ */
/* Integer quantization and packing                                                            */
/* THREAD SAFETY: the raw pack/unpack functions are pure. A dq_qmatrix is immutable after it   */
/* is created: any number of threads may read it concurrently.                                 */
/* OWNERSHIP: inputs are borrowed for the call; a dq_qmatrix owns its storage, and pointers    */
/* from dq_qmatrix_view stay valid until dq_qmatrix_free.                                      */
/* ------------------------------------------------------------------------------------------ */

/** Quantization schemes (dq_quant_params.scheme).
 *  ASYM: unsigned codes 0..2^bits-1, per-group scale and zero point, x ~ (q - zp) * scale,
 *        scale = clamp((max - min) / (2^bits - 1), 1e-5, 1e4), zp = round(clamp(-min/scale, +-1e4)).
 *  SYM:  two's-complement codes -2^(bits-1)..2^(bits-1)-1, per-group scale, x ~ q * scale,
 *        scale = clamp(max|x| / (2^(bits-1) - 1), 1e-5, 1e4). */
enum { DQ_QUANT_ASYM = 0, DQ_QUANT_SYM = 1 };

typedef struct dq_quant_params {
    uint32_t struct_size; /**< set by dq_quant_params_init */
    uint32_t flags;       /**< reserved, must be 0 */
    int32_t bits;         /**< 4 (two codes per byte) or 8 (one per byte); default 4 */
    int32_t scheme;       /**< DQ_QUANT_ASYM (default) or DQ_QUANT_SYM */
    int32_t group_size;   /**< elements per group along a row; 0 = whole row (default) */
    float clip_ratio;     /**< fixed clip factor in (0, 1] applied to min and max; default 1 */
} dq_quant_params;

/** @brief Fill p with defaults (4-bit asymmetric, whole rows, no clipping). @since 1.0 */
DQ_API dq_status dq_quant_params_init(dq_quant_params *p, size_t struct_size);

/** @brief Bytes needed to pack n 4-bit codes: (n + 1) / 2; 0 when n < 0 or on overflow.
 *  @since 1.0 */
DQ_API size_t dq_int4_packed_size(int64_t n);

/** @brief Pack n 4-bit codes, element 2k in the low nibble of byte k. A trailing odd element
 *  leaves the high nibble 0. Codes must lie in -8..15 (negative codes are stored as their
 *  two's-complement nibble). @param out_bytes capacity of out, >= dq_int4_packed_size(n).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL, code out of range), DQ_ERR_SHAPE (n <= 0),
 *  DQ_ERR_BUFFER. @since 1.0 */
DQ_API dq_status dq_int4_pack(const int32_t *codes, int64_t n, uint8_t *out, size_t out_bytes);

/** @brief Unpack n 4-bit codes packed by dq_int4_pack. is_signed != 0 sign-extends each nibble
 *  (-8..7), else codes are 0..15. @since 1.0 */
DQ_API dq_status dq_int4_unpack(const uint8_t *in, size_t in_bytes, int64_t n, int32_t is_signed,
                                int32_t *codes);

/** A quantized matrix: codes packed row by row (each row starts on a byte boundary), plus one
 *  float32 scale (and, for ASYM, one float32 zero point) per group, groups in row-major order. */
typedef struct dq_qmatrix dq_qmatrix;

/** @brief Quantize and pack a float matrix.
 *  @param ctx      context or NULL.
 *  @param p        quantization params or NULL (defaults).
 *  @param w        rows x cols matrix, leading dimension ldw >= cols; must be finite.
 *  @param clip_hi  optional per-group factors in (0, 1] multiplying each group's max
 *                  (rows * groups_per_row floats); NULL = p->clip_ratio.
 *  @param clip_lo  likewise for each group's min (ASYM); ignored for SYM. NULL = p->clip_ratio.
 *  @param out      receives the new matrix, NULL on failure.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_OVERFLOW, DQ_ERR_NONFINITE,
 *          DQ_ERR_NOMEM, DQ_ERR_STRUCT_SIZE, DQ_ERR_UNSUPPORTED. @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_qmatrix_pack(dq_context *ctx, const dq_quant_params *p,
                                              const float *w, int64_t rows, int64_t cols,
                                              int64_t ldw, const float *clip_hi,
                                              const float *clip_lo, dq_qmatrix **out);

/** @brief Release a packed matrix; NULL is a no-op. @since 1.0 */
DQ_API void dq_qmatrix_free(dq_qmatrix *q);

/** @brief Shape and format. Any output pointer may be NULL. @since 1.0 */
DQ_API dq_status dq_qmatrix_layout(const dq_qmatrix *q, int64_t *rows, int64_t *cols,
                                   int32_t *bits, int32_t *scheme, int32_t *group_size,
                                   int64_t *groups_per_row, size_t *row_bytes);

/** @brief Borrow the packed codes (rows * row_bytes bytes), the scales and the zero points
 *  (rows * groups_per_row floats each; zeros is NULL for SYM). Any output pointer may be NULL.
 *  Valid until dq_qmatrix_free. @since 1.0 */
DQ_API dq_status dq_qmatrix_view(const dq_qmatrix *q, const uint8_t **packed, size_t *nbytes,
                                 const float **scales, const float **zeros);

/** @brief Write the integer codes (ASYM: 0..2^bits-1, SYM: signed) to a rows x cols int32
 *  matrix with leading dimension ldc >= cols. @since 1.0 */
DQ_API dq_status dq_qmatrix_unpack_codes(const dq_qmatrix *q, int32_t *codes, int64_t ldc);

/** @brief Write the dequantized values to a rows x cols float matrix (ldo >= cols). @since 1.0 */
DQ_API dq_status dq_qmatrix_dequantize(const dq_qmatrix *q, float *out, int64_t ldo);

#ifdef __cplusplus
}
#endif

#endif /* DUQUANT_H */
