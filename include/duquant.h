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
    DQ_ERR_BUFFER = -11,     /**< caller buffer too small (the needed size is reported) */
    DQ_ERR_MISMATCH = -12,   /**< objects that must belong together do not (a plan and the
                                  weights packed through another plan) @since 1.2 */
    DQ_ERR_IO = -13          /**< the file system refused (the log message names the path and
                                  the system's reason) @since 1.2 */
};

/** @brief Symbolic name of a status ("DQ_ERR_SHAPE"); static storage, never NULL.
 *  Unknown codes give "DQ_ERR_UNKNOWN". @since 1.0 */
DQ_API const char *dq_status_name(dq_status s);
/** @brief Human-readable description of a status; static storage, never NULL. @since 1.0 */
DQ_API const char *dq_status_string(dq_status s);

/* ------------------------------------------------------------------------------------------ */
/* Context: allocator, log callback, thread policy                                             */
/* THREAD SAFETY: a context is immutable after creation and may be shared by any number of     */
/* threads. OWNERSHIP: objects keep a reference to the context they were created with, so a    */
/* context may be freed while objects created with it are still alive. Every creator accepts  */
/* NULL for the context, meaning malloc/free, no logging, single-threaded (no thread is ever   */
/* created for a NULL context).                                                                */
/* THREADS: a context runs the library's parallel work either on its own pool or, when         */
/* parallel_for is set, on the engine's threads. The own pool has up to n_threads - 1 workers  */
/* (the calling thread is the last one), started by the first parallel calls, joined when the  */
/* context and every object created with it have been freed; idle workers sleep. n_threads 0   */
/* means the number of online CPUs when the context is created, at most 64. A call that finds  */
/* the pool busy with another call (another thread using the same context) runs its work on    */
/* its own thread: the library never starts threads per call. Results are the same bit for    */
/* bit for every thread count and for the engine's pool.                                       */
/* ------------------------------------------------------------------------------------------ */

typedef struct dq_context dq_context;

/** Allocate size bytes aligned to align (a power of two, at most 4096); NULL on failure. */
typedef void *(*dq_alloc_fn)(void *user, size_t size, size_t align);
/** Release memory from the matching dq_alloc_fn; never called with NULL. Both run on the thread
 *  that made the library call (or a thread running one of its tasks), possibly on several
 *  threads at once: they must be thread-safe when the context is shared between threads. */
typedef void (*dq_free_fn)(void *user, void *ptr);
/** Receives one NUL-terminated message; runs on the thread that made the library call and must
 *  not unwind (longjmp, C++ exceptions) through the library. */
typedef void (*dq_log_fn)(void *user, int32_t level, const char *msg);

/** One task of a parallel loop: the library's work for task number task of n_tasks. Runs on
 *  whichever thread the engine's dq_parallel_fn chooses; returns normally (never unwinds). */
typedef void (*dq_task_fn)(void *task_arg, int32_t task, int32_t n_tasks);
/** The engine's parallel loop (dq_context_params.parallel_for): call fn(task_arg, t, n_tasks)
 *  exactly once for every t in 0..n_tasks-1, on any threads, in any order, at the same time or
 *  not, and return when all calls have returned. Called on the thread that made the library
 *  call, possibly by several library calls at once (from several threads, or from inside a
 *  task); must not unwind (longjmp, C++ exceptions) through the library. @since 1.2 */
typedef void (*dq_parallel_fn)(void *user, dq_task_fn fn, void *task_arg, int32_t n_tasks);

/** Log levels (dq_context_params.log_level): messages at or below the level are delivered. */
enum { DQ_LOG_ERROR = 0, DQ_LOG_WARN = 1, DQ_LOG_INFO = 2, DQ_LOG_DEBUG = 3 };

/** dq_context_params.flags, @since 1.2. HALF_MATRICES: the layers' forward pass applies the
 *  rotation matrices of plans created or loaded on this context from IEEE half-precision
 *  copies, made once when the first layer on the plan is created (half the plan's dense
 *  rotation bytes, on the context's allocator; the plan itself is unchanged and still read in
 *  float by dq_plan_apply_act and the file writer). Each product term then uses the matrix
 *  element rounded to 11 significant bits (relative error at most 2^-11), so layer outputs
 *  differ slightly from the float path's; they remain deterministic and the same for every
 *  instruction set, thread count and token count. It halves the rotation bytes read per token,
 *  which is what bounds the one-token (decode) transform; rotations applied as fast
 *  Walsh-Hadamard transforms read no matrix and are unaffected. Default: float matrices. */
enum { DQ_CONTEXT_F_HALF_MATRICES = 1u << 0 };

typedef struct dq_context_params {
    uint32_t struct_size; /**< set by dq_context_params_init */
    uint32_t flags;       /**< DQ_CONTEXT_F_* (before 1.2: reserved, must be 0) */
    dq_alloc_fn alloc;    /**< NULL = aligned malloc; must be set together with free */
    dq_free_fn free;      /**< NULL = free() */
    void *alloc_user;     /**< passed to alloc/free */
    dq_log_fn log;        /**< NULL = no logging */
    void *log_user;       /**< passed to log */
    int32_t log_level;    /**< DQ_LOG_*, default DQ_LOG_WARN */
    int32_t n_threads;    /**< threads for library kernels, the caller's included; 0 (default)
                               = online CPUs at context creation, at most 64; 1 = the calling
                               thread only. With parallel_for: the most tasks of one loop. */
    /* @since 1.2 */
    dq_parallel_fn parallel_for; /**< NULL = the context's own pool; else every parallel loop
                                      runs through it and the library creates no thread */
    void *parallel_user;         /**< passed to parallel_for */
} dq_context_params;

/** @brief Fill p with defaults. @param struct_size sizeof *p as the caller compiled it.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (p NULL) or DQ_ERR_STRUCT_SIZE. @since 1.0 */
DQ_API dq_status dq_context_params_init(dq_context_params *p, size_t struct_size);
/** @brief Create a context. p may be NULL (defaults). On failure *out is NULL. @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_context_create(const dq_context_params *p, dq_context **out);
/** @brief Release the caller's reference to a context; NULL is a no-op. Objects created with it
 *  keep it alive; its thread pool is joined (on the thread dropping the last reference, which
 *  may be an object's _free) once the context and all of them are freed. @since 1.0 */
DQ_API void dq_context_free(dq_context *ctx);

/** @brief Run the engine's own loop on the context's threads: fn(task_arg, t, n_tasks) exactly
 *  once for every t in 0..n_tasks-1, the tasks dealt in contiguous runs to at most n_threads
 *  parts (the calling thread runs one), returning when all have returned. An engine that lets
 *  the library own its threads runs its attention, norms and other loops on the same ones,
 *  with no thread started per call. The parts go where the library's own loops go: the
 *  context's pool; parallel_for when set; the calling thread for a NULL context, a one-thread
 *  context, or while the pool serves another call (another thread's, or one made from inside
 *  a task). fn must not unwind through the library. ctx is only read: any number of threads
 *  may call this at once.
 *  @return DQ_OK (n_tasks 0 runs nothing), DQ_ERR_INVALID_ARG (fn NULL, n_tasks < 0, ctx not a
 *  live context). @since 1.2 */
DQ_API dq_status dq_context_parallel(const dq_context *ctx, dq_task_fn fn, void *task_arg,
                                     int32_t n_tasks);

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
/* The base-matrix functions are pure. Creation runs on the context's threads (NULL context or */
/* n_threads 1: the calling thread only) with the library's own fixed-order products, so the   */
/* result is the same bit for bit for any thread count, BLAS library or BLAS thread setting.   */
/* OWNERSHIP: inputs are borrowed for the call; a rotation owns its matrices.                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct dq_rotation dq_rotation;

/** How the block matrices are found (dq_rotation_params.method, dq_plan_params.method).
 *  GREEDY: DuQuant's greedy search on a calibration sample. HADAMARD: normalised Sylvester
 *  Hadamard blocks (every block length must be a power of two). RANDOM: seeded random
 *  orthogonal blocks (Haar). RANDOM_HADAMARD (@since 1.2): seeded randomised Hadamard blocks
 *  of any length (dq_rotation_random_hadamard), e.g. one block of the full width (QuaRot). */
enum {
    DQ_ROT_METHOD_GREEDY = 0,
    DQ_ROT_METHOD_HADAMARD = 1,
    DQ_ROT_METHOD_RANDOM = 2,
    DQ_ROT_METHOD_RANDOM_HADAMARD = 3
};

/** Constructions of dq_rotation_random_hadamard (dq_rotation_hadamard_kind). SYLVESTER: n a
 *  power of two. PALEY1: H_{n/m} (Sylvester) (x) Paley I of order m (m - 1 a prime = 3 mod 4).
 *  PALEY2: likewise with Paley II of order m (m/2 - 1 a prime = 1 mod 4). RANDOM_ORTHOGONAL:
 *  no Hadamard matrix from these for n; a seeded Haar-random orthogonal matrix instead.
 *  @since 1.2 */
enum {
    DQ_HADAMARD_SYLVESTER = 0,
    DQ_HADAMARD_PALEY1 = 1,
    DQ_HADAMARD_PALEY2 = 2,
    DQ_HADAMARD_RANDOM_ORTHOGONAL = 3
};

/** dq_rotation_params.flags. ROW_RULE: pick the channel as the extreme entry's row index
 *  modulo the block length, as the reference does (default: its column). PER_BLOCK: one matrix
 *  per block, each searched on its own columns (default: one matrix shared by all full blocks,
 *  searched on all of them, and one for a shorter last block). RANDOM_QPRIME: greedy base
 *  matrix Rot * blockdiag(1, Q') with a seeded random orthogonal Q', drawn afresh per search.
 *  HADAMARD_BASE: the greedy base matrix is the normalised Sylvester Hadamard matrix H (its row
 *  0 is uniform, as the method asks of the base) instead of Rot, so each step also mixes every
 *  other channel of the block (H * blockdiag(1, Q') with RANDOM_QPRIME or qprime); every block
 *  length must be a power of two. H is symmetric, so a step on the channel the previous step
 *  took undoes it, and searches often keep a prefix of one step. @since 1.1 */
enum {
    DQ_ROT_F_ROW_RULE = 1u,
    DQ_ROT_F_PER_BLOCK = 2u,
    DQ_ROT_F_RANDOM_QPRIME = 4u,
    DQ_ROT_F_HADAMARD_BASE = 8u
};

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
 *  DQ_ERR_NOMEM, DQ_ERR_BLAS. @since 1.0
 *  Since 1.2 DQ_ERR_NONFINITE also when finite x overflows in the block sums; rows before the
 *  first overflowing chunk of rows then hold their result, the others are untouched. */
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

/** @brief Which construction dq_rotation_random_hadamard uses for width n: *kind a
 *  DQ_HADAMARD_* value, *order the order m of the Paley factor (1 for SYLVESTER, n for
 *  RANDOM_ORTHOGONAL); either pointer may be NULL, not both. The smallest Paley order is taken.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (n outside 1..65536). @since 1.2 */
DQ_API dq_status dq_rotation_hadamard_kind(int64_t n, int32_t *kind, int64_t *order);

/** @brief Seeded randomised Hadamard matrix D * H_n / sqrt(n) (n 1..65536), D a diagonal of
 *  random signs, H_n as dq_rotation_hadamard_kind says: an orthonormal matrix with entries
 *  +-1/sqrt(n), or for widths without a construction (and n <= 4096) a seeded random
 *  orthogonal matrix. Same seed, same matrix. *kind (may be NULL) receives the construction.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (n outside 1..65536, ldo < n),
 *  DQ_ERR_UNSUPPORTED (no construction and n > 4096), DQ_ERR_NOMEM. @since 1.2 */
DQ_API dq_status dq_rotation_random_hadamard(int32_t n, uint64_t seed, float *out, int64_t ldo,
                                             int32_t *kind);

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
/* from dq_plan_rotation stay valid until the plan is freed (dq_plan_free drops the caller's   */
/* reference; layers keep their own).                                                          */
/* ------------------------------------------------------------------------------------------ */

typedef struct dq_plan dq_plan;

/** dq_plan_params.flags. SMOOTH: smoothing scales. ROTATE: block rotations (method).
 *  PERMUTE: zigzag permutations between rotations (permutation_times of them; with ROTATE off
 *  one permutation alone). ROW_RULE, PER_BLOCK_R, RANDOM_QPRIME, HADAMARD_BASE: as DQ_ROT_F_*
 *  for the greedy search (PER_BLOCK_R also gives RANDOM one matrix per block). */
enum {
    DQ_PLAN_F_SMOOTH = 1u,
    DQ_PLAN_F_ROTATE = 2u,
    DQ_PLAN_F_PERMUTE = 4u,
    DQ_PLAN_F_ROW_RULE = 8u,
    DQ_PLAN_F_PER_BLOCK_R = 16u,
    DQ_PLAN_F_RANDOM_QPRIME = 32u,
    DQ_PLAN_F_HADAMARD_BASE = 64u /**< @since 1.1 */
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
    /** Optional refinement of every rotation slot on the sample as it reaches that slot
     *  (after smoothing and the earlier slots, before the next zigzag is dealt), the seed mixed
     *  with the slot number. NULL (default) or method DQ_REFINE_NONE: off. Borrowed. */
    const struct dq_refine_params *refine;
} dq_plan_params;

/** @brief Fill p with defaults. @since 1.0 */
DQ_API dq_status dq_plan_params_init(dq_plan_params *p, size_t struct_size);

/** @brief Build a plan for cols input channels from a calibrator.
 *  @param calib    statistics and sample (its width must be cols); may be NULL only for plans
 *                  that need no activation statistics (no SMOOTH, no PERMUTE, method not
 *                  GREEDY, no refinement).
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

/** @brief Release the caller's reference to a plan; NULL is a no-op. Layers created with the
 *  plan hold references of their own (since 1.2): the plan is freed with the last one. Thread
 *  safe against layers of the plan being freed at the same time. @since 1.0 */
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
 *  DQ_ERR_OVERFLOW, DQ_ERR_NONFINITE, DQ_ERR_BUFFER, DQ_ERR_NOMEM, DQ_ERR_BLAS. @since 1.0
 *  Since 1.2 DQ_ERR_NONFINITE also when finite x overflows in the transform (a small
 *  smoothing factor, a rotation's sums); x then holds the partial result. */
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

/* ------------------------------------------------------------------------------------------ */
/* Integer quantization and packing                                                            */
/* THREAD SAFETY: the raw pack/unpack functions are pure. A dq_qmatrix is immutable after it   */
/* is created: any number of threads may read it concurrently.                                 */
/* OWNERSHIP: inputs are borrowed for the call; a dq_qmatrix owns its storage, and pointers    */
/* from dq_qmatrix_view stay valid until dq_qmatrix_free.                                      */
/* ------------------------------------------------------------------------------------------ */

/** Quantization schemes (dq_quant_params.scheme). min and max are the group's (or token's)
 *  after the clip factors; L = 2^bits - 1 (ASYM), H = 2^(bits-1) - 1 (SYM).
 *  ASYM: unsigned codes 0..L, per-group scale and zero point, x ~ (q - zp) * scale,
 *        q = clamp(round(x / scale) + zp, 0, L). Where (max - min) / L lies in [1e-5, 1e4] and
 *        |min| / ((max - min) / L) <= 1e4 (all ordinary data): scale = (max - min) / L,
 *        zp = round(-min / scale) (the reference's rule, whose clamps do not bite there).
 *        Since 1.2, elsewhere: all zero: scale 1e-5, zp 0; constant v, |v| >= FLT_MIN: scale |v|,
 *        zp 0 (v > 0) or 1 (v < 0), so v comes back exactly; otherwise
 *        scale = max((max - min) / L, |min| / 1e4, FLT_MIN), zp = round(-min / scale).
 *  SYM:  two's-complement codes -H-1..H, per-group scale, x ~ q * scale,
 *        q = clamp(round(x / scale), -H-1, H), scale = max(max|x| / H, FLT_MIN) (1e-5 when
 *        all zero; the reference's clamp to [1e-5, 1e4] is gone since 1.2: it clipped values).
 *  Bound (both schemes): every x within the clipped range comes back with
 *  |x - dequant(quant(x))| <= scale / 2 (plus float rounding, a few ulps of x), and scale is at
 *  most the larger of the step ((max - min) / L or max|x| / H), |min| / 1e4 (ASYM) and FLT_MIN.
 *  Scales are finite and >= FLT_MIN, zero points integers within +-1e4: files holding others
 *  are DQ_ERR_FORMAT. A group or token whose max - min (or values, after a plan's transform)
 *  overflows float is DQ_ERR_NONFINITE, and so (since 1.2) is one whose extreme codes would
 *  dequantize beyond FLT_MAX (ranges within a few percent of FLT_MAX; SYM's lowest code on a
 *  clipped group of such values). */
enum { DQ_QUANT_ASYM = 0, DQ_QUANT_SYM = 1 };

typedef struct dq_quant_params {
    uint32_t struct_size; /**< set by dq_quant_params_init */
    uint32_t flags;       /**< reserved, must be 0 */
    int32_t bits;         /**< 4 (two codes per byte) or 8 (one per byte); default 4 */
    int32_t scheme;       /**< DQ_QUANT_ASYM (default) or DQ_QUANT_SYM */
    int32_t group_size;   /**< elements per group along a row; 0 = whole row (default) */
    float clip_ratio;     /**< fixed clip factor in (0, 1] applied to min and max; default 1 */
    /** Fingerprint (dq_plan_fingerprint) of the plan the weights were transformed by, recorded
     *  in the packed matrix so that dq_linear_create can check the layer's plan; 0 (default) =
     *  packed without a plan. dq_qmatrix_pack_transformed fills it itself. @since 1.2 */
    uint64_t plan_fingerprint;
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
 *  @param clip_hi  optional per-group factors in (0, 1] multiplying each group's max; NULL =
 *                  p->clip_ratio. Exactly rows * groups_per_row floats are read (per-row factors
 *                  for a grouped matrix would be read past their end: use
 *                  dq_qmatrix_pack_clipped, which takes the length).
 *  @param clip_lo  likewise for each group's min (ASYM); ignored for SYM. NULL = p->clip_ratio.
 *  @param out      receives the new matrix, NULL on failure.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_OVERFLOW, DQ_ERR_NONFINITE,
 *          DQ_ERR_NOMEM, DQ_ERR_STRUCT_SIZE, DQ_ERR_UNSUPPORTED. @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_qmatrix_pack(dq_context *ctx, const dq_quant_params *p,
                                              const float *w, int64_t rows, int64_t cols,
                                              int64_t ldw, const float *clip_hi,
                                              const float *clip_lo, dq_qmatrix **out);

/** @brief dq_qmatrix_pack with the length of the clip arrays.
 *  @param n_clip  number of floats in clip_hi and in clip_lo (each that is not NULL):
 *                 rows * groups_per_row (one factor per group, groups in row-major order) or
 *                 rows (one factor per row, used for each of its groups); 0 when both are NULL.
 *                 Any other value gives DQ_ERR_SHAPE and nothing is read.
 *  Other parameters, ownership and results as dq_qmatrix_pack. Thread safety: reentrant.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_OVERFLOW, DQ_ERR_NONFINITE,
 *          DQ_ERR_NOMEM, DQ_ERR_STRUCT_SIZE, DQ_ERR_UNSUPPORTED. @since 1.2 */
DQ_API DQ_NODISCARD dq_status dq_qmatrix_pack_clipped(dq_context *ctx, const dq_quant_params *p,
                                                      const float *w, int64_t rows, int64_t cols,
                                                      int64_t ldw, const float *clip_hi,
                                                      const float *clip_lo, int64_t n_clip,
                                                      dq_qmatrix **out);

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

/* ------------------------------------------------------------------------------------------ */
/* Plan binding (@since 1.2)                                                                   */
/* Weights transformed by a plan only work with that plan. A plan's fingerprint is a 64-bit    */
/* hash of its contents (width, layout, smoothing scales, every rotation matrix, every         */
/* permutation), the same on every platform, for plans built, assembled or loaded from a file  */
/* with the same contents. Packed matrices record the fingerprint of the plan their weights    */
/* were transformed by; dq_linear_create and the file functions refuse a plan whose            */
/* fingerprint differs (DQ_ERR_MISMATCH).                                                      */
/* THREAD SAFETY: all functions here read const objects and may run concurrently.             */
/* ------------------------------------------------------------------------------------------ */

/** @brief The plan's fingerprint: never 0. Computed from the contents on each call (a pass
 *  over the rotation matrices).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL argument). @since 1.2 */
DQ_API dq_status dq_plan_fingerprint(const dq_plan *pl, uint64_t *out);

/** @brief The fingerprint recorded in a packed matrix: the plan its weights were transformed
 *  by, 0 when packed without one.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL argument). @since 1.2 */
DQ_API dq_status dq_qmatrix_plan_fingerprint(const dq_qmatrix *q, uint64_t *out);

/** @brief Transform a copy of w (rows x cols, ldw; untouched) by plan (W * G^-T, as
 *  dq_plan_transform_weight does) and pack it as dq_qmatrix_pack does, recording the plan's
 *  fingerprint. clip_hi, clip_lo as for dq_qmatrix_pack (e.g. learned by LWC on the
 *  transformed weights). p->plan_fingerprint must be 0 or the plan's.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (cols differs from the plan's width),
 *  DQ_ERR_MISMATCH (p names another plan), DQ_ERR_NONFINITE, DQ_ERR_NOMEM, DQ_ERR_OVERFLOW,
 *  DQ_ERR_STRUCT_SIZE, DQ_ERR_BLAS. @since 1.2 */
DQ_API DQ_NODISCARD dq_status dq_qmatrix_pack_transformed(dq_context *ctx,
                                                          const dq_quant_params *p,
                                                          const dq_plan *plan, const float *w,
                                                          int64_t rows, int64_t cols,
                                                          int64_t ldw, const float *clip_hi,
                                                          const float *clip_lo,
                                                          dq_qmatrix **out);

/* ------------------------------------------------------------------------------------------ */
/* LWC: learnable weight clipping                                                              */
/* Per output row (or per group when the weight params use groups) two parameters gamma and   */
/* beta; clip factors sigmoid(gamma) multiply the group's max and sigmoid(beta) its min. Adam  */
/* minimises the mean squared error between x * W^T and x * Q(W)^T over calibration tokens,    */
/* rounding passed straight through (STE). W and x are the transformed weight and activations  */
/* (dq_plan_transform_weight, dq_plan_apply_act_to).                                           */
/* THREAD SAFETY: one dq_lwc must not be used by two threads at once; distinct objects are     */
/* independent. Functions taking a const dq_lwc * may run concurrently with each other.        */
/* OWNERSHIP: the weight and the activations are copied at creation (read in place, and      */
/* borrowed until dq_lwc_free, with DQ_LWC_F_BORROW).                                          */
/* ------------------------------------------------------------------------------------------ */

typedef struct dq_lwc dq_lwc;

/** Called after every epoch with its 1-based number and the mean training loss of that epoch;
 *  return non-zero to stop after this epoch (dq_lwc_train may be called again to resume). */
typedef int32_t (*dq_lwc_epoch_fn)(void *user, int32_t epoch, float loss);

/** dq_lwc_params.flags. QUANT_ACT: the loss uses activations quantized per token with
 *  act_bits / act_scheme / act_clip_ratio (W4A4 reconstruction instead of W4A16). */
enum { DQ_LWC_F_QUANT_ACT = 1u };

/** dq_lwc_params.flags, @since 1.2. BORROW: dq_lwc_create reads w and x in place instead of
 *  copying them (no weight-sized allocation: what LWC allocates stays a fraction of the
 *  weight's bytes); both must then stay valid and unchanged until dq_lwc_free. Results are
 *  the same bits as with the copies. */
enum { DQ_LWC_F_BORROW = 2u };

typedef struct dq_lwc_params {
    uint32_t struct_size;   /**< set by dq_lwc_params_init */
    uint32_t flags;         /**< DQ_LWC_F_*, default 0 */
    uint64_t seed;          /**< mini-batch order; default 0 */
    int32_t epochs;         /**< epochs per dq_lwc_train call, 1..100000, default 20 */
    int32_t batch_tokens;   /**< tokens per Adam step, 1..2^24, default 128 (capped at the
                                 number of calibration tokens) */
    float learning_rate;    /**< Adam step size, > 0, default 1e-2 */
    float init_value;       /**< initial gamma and beta, default 4.0 (sigmoid = 0.982) */
    int32_t act_bits;       /**< with QUANT_ACT: 4 or 8, default 4 */
    int32_t act_scheme;     /**< with QUANT_ACT: DQ_QUANT_ASYM (default) or DQ_QUANT_SYM */
    float act_clip_ratio;   /**< with QUANT_ACT: (0, 1], default 1 */
    dq_lwc_epoch_fn on_epoch; /**< optional progress/stop callback */
    void *on_epoch_user;    /**< passed to on_epoch */
} dq_lwc_params;

/** @brief Fill p with defaults. @since 1.0 */
DQ_API dq_status dq_lwc_params_init(dq_lwc_params *p, size_t struct_size);

/** @brief Create an optimiser for one layer.
 *  @param wq  weight quantization (bits, scheme, group_size; clip_ratio is ignored) or NULL.
 *  @param w   rows x cols weight (ldw), output channels in rows; copied (borrowed with
 *             DQ_LWC_F_BORROW).
 *  @param x   tokens x cols calibration activations (ldx); copied (borrowed with
 *             DQ_LWC_F_BORROW).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_NONFINITE, DQ_ERR_OVERFLOW,
 *  DQ_ERR_NOMEM, DQ_ERR_STRUCT_SIZE, DQ_ERR_UNSUPPORTED, DQ_ERR_BLAS (QUANT_ACT: the float
 *  outputs are computed once here). @since 1.0. Since 1.2 also DQ_ERR_NONFINITE with
 *  QUANT_ACT when finite activations give a non-finite scale or zero point, or the float
 *  outputs overflow. */
DQ_API DQ_NODISCARD dq_status dq_lwc_create(dq_context *ctx, const dq_lwc_params *p,
                                           const dq_quant_params *wq, const float *w,
                                           int64_t rows, int64_t cols, int64_t ldw,
                                           const float *x, int64_t tokens, int64_t ldx,
                                           dq_lwc **out);

/** @brief Release; NULL is a no-op. @since 1.0 */
DQ_API void dq_lwc_free(dq_lwc *l);

/** @brief Train for params.epochs epochs (or until on_epoch asks to stop), continuing from the
 *  current parameters and Adam state. Each epoch visits every token once, in batches of
 *  batch_tokens drawn in an order fixed by the seed and the epoch's number, so two calls of 2
 *  and 3 epochs give the same parameters as one of 5. After each epoch the full-batch loss is
 *  evaluated and the best parameters so far are kept (dq_lwc_best; the parameters at the
 *  first training call count). Each epoch's mean training loss and full-batch loss are also
 *  logged at DQ_LOG_INFO.
 *  @param last_loss optional: the last epoch's mean training loss.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_NOMEM, DQ_ERR_BLAS, DQ_ERR_NONFINITE (the loss
 *  diverged; parameters are left at the last finite epoch). @since 1.0 */
DQ_API dq_status dq_lwc_train(dq_lwc *l, float *last_loss);

/** @brief Full-batch loss (mean over tokens x rows) and, when g_gamma / g_beta are not NULL,
 *  its STE gradient with respect to gamma and beta (n = number of clip groups each) at the
 *  current parameters. The surrogate is OmniQuant's: round(w / scale) has derivative 1, the
 *  rounded zero point is a constant (plain rounding), each clamp passes the gradient inside
 *  its bounds and blocks it outside; lib/offline/dq_lwc.c spells out the formulas. SYM weights have
 *  no beta: its gradient is 0.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (l or loss NULL), DQ_ERR_SHAPE (n differs from the
 *  number of groups when a gradient is asked for), DQ_ERR_NOMEM, DQ_ERR_BLAS. @since 1.0.
 *  Since 1.2 also DQ_ERR_NONFINITE when a group's scale or zero point, the loss or a gradient
 *  is not finite (finite but huge weights or activations whose range or products overflow
 *  float); dq_lwc_train and dq_lwc_best report the same cases. */
DQ_API dq_status dq_lwc_loss(const dq_lwc *l, float *loss, float *g_gamma, float *g_beta,
                             int64_t n);

/** @brief Number of clip groups (rows * groups_per_row) and epochs trained so far. Either
 *  pointer may be NULL. @since 1.0 */
DQ_API dq_status dq_lwc_layout(const dq_lwc *l, int64_t *n_groups, int32_t *epochs_done);

/** @brief Read the raw parameters gamma, beta (n values each; either pointer may be NULL).
 *  @since 1.0 */
DQ_API dq_status dq_lwc_get_params(const dq_lwc *l, float *gamma, float *beta, int64_t n);

/** @brief Replace gamma and beta (n finite values each) and reset the Adam state and the
 *  best-parameter record (dq_lwc_best), e.g. to resume from saved parameters. The epoch count,
 *  which picks each epoch's batch order, keeps running.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_NONFINITE. @since 1.0 */
DQ_API dq_status dq_lwc_set_params(dq_lwc *l, const float *gamma, const float *beta, int64_t n);

/** @brief The LWC parameters with the lowest full-batch loss seen while training (the
 *  starting point counts) and that loss; these are what dq_lwc_factors exports. Before any
 *  training (or after dq_lwc_set_params) they are the current parameters and *loss is computed.
 *  Any output pointer may be NULL; n must be the number of groups when gamma or beta is given.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_NOMEM, DQ_ERR_BLAS, DQ_ERR_NONFINITE
 *  (since 1.2, as dq_lwc_loss). @since 1.0 */
DQ_API dq_status dq_lwc_best(const dq_lwc *l, float *gamma, float *beta, int64_t n, float *loss);

/** @brief The learned clip factors sigmoid(gamma), sigmoid(beta) (n values each, either
 *  pointer may be NULL), ready for dq_qmatrix_pack's clip_hi / clip_lo: with the same weight
 *  params, dq_qmatrix_pack reproduces exactly the quantized weights LWC evaluated. They come
 *  from the best parameters (see dq_lwc_best), i.e. the current ones before any training.
 *  Factors are at least FLT_MIN, so always valid clip factors. @since 1.0 */
DQ_API dq_status dq_lwc_factors(const dq_lwc *l, float *clip_hi, float *clip_lo, int64_t n);

/* ------------------------------------------------------------------------------------------ */
/* GPTQ (@since 1.2): weights quantized one input column at a time, the error of each column  */
/* fed into the columns not yet quantized through the inverse Hessian of the layer's          */
/* reconstruction loss ||x * W^T - x * Q(W)^T||^2 over calibration tokens (Frantar et al.,    */
/* arXiv 2210.17323). The Hessian H = sum over tokens of x^T x is accumulated in double by a  */
/* dq_hessian, from the activations as the layer sees them: after the plan's transform when   */
/* the accumulator is created with a plan (x * G, dq_plan_apply_act_to), so that GPTQ         */
/* quantizes the transformed weights the layer holds. The result is a dq_qmatrix in the form  */
/* dq_qmatrix_pack produces (dq_linear_create and the file functions take it as is).          */
/* THREAD SAFETY: dq_hessian_observe and dq_hessian_merge mutate their first argument: one    */
/* thread per accumulator at a time (one accumulator per thread, then merge). Functions       */
/* taking a const dq_hessian may run concurrently on one accumulator. dq_hessian_observe and  */
/* dq_gptq_pack run on the context's threads, split so that every element is computed by one  */
/* thread with the same operations in the same order: the same bits for every thread count    */
/* (the library's own loops, no BLAS or LAPACK call of its own).                              */
/* OWNERSHIP: observed activations are folded in during the call; an accumulator created     */
/* with a plan keeps a reference to it (the caller may free the plan at any time).            */
/* ------------------------------------------------------------------------------------------ */

typedef struct dq_hessian dq_hessian;

/** @brief Create an empty Hessian accumulator for activations of cols channels (cols x cols
 *  doubles of memory).
 *  @param ctx  context or NULL.
 *  @param plan NULL (activations are used as given) or the plan of the layer's input: every
 *              observed batch is transformed by it first, and dq_gptq_pack transforms the
 *              weights by it (W * G^-T) and records its fingerprint. Referenced, not copied.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (cols <= 0, or not the plan's width),
 *  DQ_ERR_OVERFLOW, DQ_ERR_NOMEM. @since 1.2 */
DQ_API DQ_NODISCARD dq_status dq_hessian_create(dq_context *ctx, const dq_plan *plan,
                                                int64_t cols, dq_hessian **out);

/** @brief Release an accumulator (and its reference to the plan); NULL is a no-op. @since 1.2 */
DQ_API void dq_hessian_free(dq_hessian *h);

/** @brief Add rows tokens (rows x cols, ldx) to H: H_ij += x_ti * x_tj in double, token after
 *  token in stream order (each product is exact in double). Observing the same tokens in the
 *  same order gives the same bits however they are split into calls. All or nothing: on error
 *  H is unchanged. With a plan, the batch is transformed into a temporary of rows x cols
 *  floats first (each token's transform is the same bits in any batch: the split guarantee
 *  holds with a plan too).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (cols differs), DQ_ERR_NONFINITE (in x, or
 *  after the plan's transform), DQ_ERR_OVERFLOW, DQ_ERR_NOMEM, DQ_ERR_BLAS. @since 1.2 */
DQ_API dq_status dq_hessian_observe(dq_hessian *h, const float *x, int64_t rows, int64_t cols,
                                    int64_t ldx);

/** @brief dst += src, element by element (one double rounding each: the merged H equals the
 *  one a single stream of dst's tokens then src's gives, up to that rounding; the same merges
 *  in the same order give the same bits). src is unchanged.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL, dst == src), DQ_ERR_SHAPE (widths differ),
 *  DQ_ERR_MISMATCH (created with different plans: fingerprints differ, or one has none),
 *  DQ_ERR_OVERFLOW (token count). @since 1.2 */
DQ_API dq_status dq_hessian_merge(dq_hessian *dst, const dq_hessian *src);

/** @brief Number of tokens observed (merged ones included). @since 1.2 */
DQ_API dq_status dq_hessian_tokens(const dq_hessian *h, int64_t *tokens);

/** @brief The accumulated H = sum x^T x (symmetric, cols x cols doubles, ldo >= cols).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (ldo < cols). @since 1.2 */
DQ_API dq_status dq_hessian_matrix(const dq_hessian *h, double *out, int64_t ldo);

/** dq_gptq_params.flags.
 *  ACT_ORDER: columns are quantized by descending H_jj (ties: lower index first). With groups,
 *  act-order always uses static groups (the packed format keeps groups contiguous).
 *  STATIC_GROUPS: every group's scale and zero point come from the weights before any update
 *  (the paper code's static_groups); without it (and without ACT_ORDER) a group's come from
 *  the updated weights when its first column is reached. Per-row params (group_size 0) are
 *  always computed once, before any update.
 *  CLIP_SEARCH: each row's (or group's) clip factor is chosen from p = 1 - k / clip_grid,
 *  k = 0 .. max(1, floor(clip_max_shrink * clip_grid)) - 1, minimising
 *  sum |Q(w) - w|^clip_norm over its weights (first minimum), p multiplying the given factors
 *  (clip_hi / clip_lo, or the quant params' clip_ratio) on the max and the min. */
enum { DQ_GPTQ_F_ACT_ORDER = 1u, DQ_GPTQ_F_STATIC_GROUPS = 2u, DQ_GPTQ_F_CLIP_SEARCH = 4u };

typedef struct dq_gptq_params {
    uint32_t struct_size;  /**< set by dq_gptq_params_init */
    uint32_t flags;        /**< DQ_GPTQ_F_*, default 0 */
    float damp;            /**< added to H's diagonal: damp * mean(diag H), [0, 1], default
                                0.01 */
    int32_t block_size;    /**< columns per lazy update block, 1..65536, default 128 (the
                                result does not depend on it: see dq_gptq_pack) */
    int32_t clip_grid;     /**< CLIP_SEARCH grid, 1..10000, default 100 */
    float clip_max_shrink; /**< CLIP_SEARCH: smallest factor tried is about 1 - this,
                                [0, 1), default 0.8 */
    float clip_norm;       /**< CLIP_SEARCH error exponent, [1, 16], default 2.4 */
} dq_gptq_params;

/** @brief Fill p with defaults (damp 0.01, blocks of 128, natural order, no clip search).
 *  @since 1.2 */
DQ_API dq_status dq_gptq_params_init(dq_gptq_params *p, size_t struct_size);

/** @brief Quantize and pack a weight with GPTQ.
 *  Steps: W is copied (and transformed by h's plan when it has one: W * G^-T); a dead column
 *  (H_jj = 0: its activations are all zero) gets H_jj = 1 and W[:, j] = 0; scales and zero
 *  points of per-row and static groups are computed (dq_quant_params rule, clip factors as
 *  dq_qmatrix_pack, CLIP_SEARCH); columns are permuted (ACT_ORDER); H += damp * mean(diag H) I;
 *  U = the upper Cholesky factor of H^-1 (in double, without forming H^-1: with J reversing
 *  the columns, J H J = R^T R and U = J R^-T J); then for each column j in order:
 *  q_j = Q(w_j), err_j = (w_j - q_j) / U_jj, w_k -= err_j * U_jk for every later column k.
 *  Updates are applied lazily, block_size columns at a time, each element receiving the same
 *  subtractions in the same order as the column-by-column form: the result is the same bits
 *  for every block_size and thread count.
 *  Cost: cols^3 / 3 multiply-adds for the factor plus rows * cols^2 for the updates, both
 *  split over the context's threads; memory 2 x cols^2 doubles plus rows x cols floats.
 *  @param gp     GPTQ params or NULL (defaults).
 *  @param qp     quantization params (bits, scheme, group_size, clip_ratio, plan_fingerprint)
 *                or NULL (defaults). group_size at most cols (0 = whole rows); where it does
 *                not divide cols the last group is shorter, as dq_qmatrix_pack. With a plan
 *                in h, plan_fingerprint must be 0 or the plan's.
 *  @param h      the Hessian of the layer's input (cols wide, at least one token). With fewer
 *                tokens than live columns H is singular: damp > 0 makes it positive definite.
 *  @param w      rows x cols float weight (ldw), finite; untransformed when h has a plan.
 *  @param clip_hi, clip_lo, n_clip  optional clip factors in (0, 1] (e.g. LWC's, learned on the
 *                transformed weights) as dq_qmatrix_pack_clipped takes them: n_clip = rows *
 *                groups_per_row, rows, or 0 when both are NULL.
 *  @param out    receives the packed matrix, NULL on failure.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL, bad params, clip factors outside (0, 1]),
 *  DQ_ERR_SHAPE (cols differs from h's, group_size exceeds cols, n_clip),
 *  DQ_ERR_BAD_STATE (h has no token; H not positive definite after dampening: raise damp),
 *  DQ_ERR_MISMATCH (qp names another plan than h's), DQ_ERR_NONFINITE (in w, or after the
 *  plan's transform or the updates), DQ_ERR_OVERFLOW, DQ_ERR_NOMEM, DQ_ERR_STRUCT_SIZE,
 *  DQ_ERR_UNSUPPORTED, DQ_ERR_BLAS. @since 1.2 */
DQ_API DQ_NODISCARD dq_status dq_gptq_pack(dq_context *ctx, const dq_gptq_params *gp,
                                           const dq_quant_params *qp, const dq_hessian *h,
                                           const float *w, int64_t rows, int64_t cols,
                                           int64_t ldw, const float *clip_hi,
                                           const float *clip_lo, int64_t n_clip,
                                           dq_qmatrix **out);

/* ------------------------------------------------------------------------------------------ */
/* Quantized linear layer: y = Q(x * G) * Q(W * G^-T)^T + bias                                */
/* forward applies the plan, quantizes each token (row) of the activations, multiplies the     */
/* integer codes with exact int32 accumulation and zero-point corrections, and rescales.       */
/* THREAD SAFETY: a dq_linear is immutable after creation; any number of threads may call      */
/* dq_linear_forward on one layer at once, each with its own workspace (or NULL).              */
/* OWNERSHIP: the layer keeps a reference to its plan (since 1.2): the caller may free the     */
/* plan at any time; it is released with the last layer using it (layers that read the same    */
/* input share one plan). The packed weights and the bias are COPIED: the caller may free them */
/* after dq_linear_create returns.                                                             */
/* ------------------------------------------------------------------------------------------ */

typedef struct dq_linear dq_linear;

typedef struct dq_linear_params {
    uint32_t struct_size; /**< set by dq_linear_params_init */
    uint32_t flags;       /**< reserved, must be 0 */
    int32_t act_bits;     /**< 4 (default) or 8; 0 = weight-only (float activations, W4A16) */
    int32_t act_scheme;   /**< DQ_QUANT_ASYM (default) or DQ_QUANT_SYM, per token */
    float act_clip_ratio; /**< (0, 1], default 1: clip factor on each token's min and max */
    /** Activation groups: 0 (default) quantizes each token as a whole; > 0 gives each token
     *  a scale (and zero point) per group of that many input features, the last group
     *  shorter when it does not divide in_features (as for weights), with the clip applied
     *  to each group's min and max. The weights must be packed with the same
     *  dq_quant_params.group_size (the product then sums, per group, the integer dot product
     *  times both group scales), else dq_linear_create returns DQ_ERR_SHAPE, as it does for a
     *  size above in_features; a negative size, or a size with act_bits 0, is
     *  DQ_ERR_INVALID_ARG. Layers with activation groups are not stored in files yet
     *  (dq_file_writer_add_linear: DQ_ERR_UNSUPPORTED). @since 1.2 */
    int32_t act_group_size;
} dq_linear_params;

/** @brief Fill p with defaults (W4A4, asymmetric per-token activations, no clip, no activation
 *  groups). @since 1.0 */
DQ_API dq_status dq_linear_params_init(dq_linear_params *p, size_t struct_size);

/** @brief Create a layer.
 *  @param plan    transform for the input (NULL = identity), referenced by the layer; its
 *                 width must equal the weight's cols. Since 1.2 it must be the plan the
 *                 weights were transformed by: weights that record a plan fingerprint
 *                 (dq_qmatrix_pack_transformed, dq_quant_params.plan_fingerprint) are refused
 *                 with DQ_ERR_MISMATCH when plan is NULL or has another fingerprint; weights
 *                 packed without one are accepted with a DQ_LOG_WARN line when plan is given.
 *  @param weights packed, already transformed weights (out_features x in_features); copied.
 *  @param bias    out_features floats or NULL; copied.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_MISMATCH, DQ_ERR_NONFINITE,
 *  DQ_ERR_OVERFLOW, DQ_ERR_NOMEM, DQ_ERR_STRUCT_SIZE, DQ_ERR_UNSUPPORTED. @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_linear_create(dq_context *ctx, const dq_linear_params *p,
                                              const dq_plan *plan, const dq_qmatrix *weights,
                                              const float *bias, dq_linear **out);

/** @brief A layer over src's weights, plan and bias with other activation settings (another
 *  act_clip_ratio, act_bits or act_scheme): the prepared weights are shared, not copied or
 *  prepared again, so trying several activation settings on one weight costs no repacking.
 *  The result computes what dq_linear_create with params, src's plan and src's packed weights
 *  and bias gives, bit for bit. Either layer may be freed first (the weights are freed with
 *  the last layer holding them, through the allocator of the context src was made with, whose
 *  threads stay alive until then); a layer read from a file that borrows the file's mapping
 *  (dq_file_reader_get_linear) passes the borrow on: both need the reader alive.
 *  @param ctx    context or NULL (as dq_linear_create).
 *  @param params the new layer's activation settings; act_group_size must be 0 or src's weight
 *                group size.
 *  @param src    the layer whose weights are shared; unchanged.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL src or out, bad params), DQ_ERR_SHAPE
 *  (act_group_size), DQ_ERR_NOMEM, DQ_ERR_STRUCT_SIZE, DQ_ERR_UNSUPPORTED (a larger params
 *  struct with a non-zero tail). @since 1.2 */
DQ_API DQ_NODISCARD dq_status dq_linear_create_like(dq_context *ctx,
                                                   const dq_linear_params *params,
                                                   const dq_linear *src, dq_linear **out);

/** @brief Release; NULL is a no-op. Drops the layer's reference to its plan (the plan is
 *  freed with its last reference). @since 1.0 */
DQ_API void dq_linear_free(dq_linear *lin);

/** @brief in_features, out_features. Either pointer may be NULL. @since 1.0 */
DQ_API dq_status dq_linear_layout(const dq_linear *lin, int64_t *in_features,
                                  int64_t *out_features);

/** @brief Bytes of workspace dq_linear_forward needs for rows tokens (0 when it needs none:
 *  weight-only without a plan, or rows = 0 (since 1.2)). Any alignment of the buffer is fine;
 *  a workspace sized for rows serves every call with fewer rows.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (rows < 0), DQ_ERR_OVERFLOW. @since 1.0 */
DQ_API dq_status dq_linear_workspace_size(const dq_linear *lin, int64_t rows, size_t *bytes);

/** @brief y (rows x out_features, ldy) = layer(x) for x rows x in_features (ldx); x is not
 *  modified. work may be NULL (the workspace is then allocated through the layer's context,
 *  once per call) or hold work_size >= dq_linear_workspace_size bytes: then the call makes no
 *  allocator call at all (since 1.2). rows = 0 is a no-op returning DQ_OK (x and y may be NULL;
 *  since 1.2). On failure y is left untouched; an allocation that fails is DQ_ERR_NOMEM, never
 *  a slower path. DQ_ERR_NONFINITE also (since 1.2) when finite x overflows in the plan's
 *  transform or a token's range max - min overflows float, and, for weight-only layers
 *  (act_bits 0), when max |x| (after the plan) times a weight group's length and largest
 *  |code - zero point| reaches FLT_MAX / 2, where the float group sums could overflow (|x|
 *  of about 1e30 and beyond).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_NONFINITE, DQ_ERR_OVERFLOW,
 *  DQ_ERR_BUFFER, DQ_ERR_NOMEM, DQ_ERR_BLAS. @since 1.0 */
DQ_API dq_status dq_linear_forward(const dq_linear *lin, const float *x, int64_t rows,
                                   int64_t cols, int64_t ldx, float *y, int64_t ldy, void *work,
                                   size_t work_size);

/* Shared-input groups (1.2): layers that read the same input (q, k, v; gate, up) transform and
 * quantize it once and run their products on the shared activations. A group is an array of
 * layers created with the same plan object (or all with none), the same in_features and the
 * same act_bits, act_scheme, act_clip_ratio and act_group_size; the layers' weights, groups,
 * bias and out_features may differ (weight groups only as far as act_group_size allows: with
 * activation groups every layer's weights have those groups). THREAD SAFETY as
 * dq_linear_forward: the layers are only read. */

/** @brief Bytes of workspace dq_linear_forward_group needs for rows tokens (0 for rows = 0).
 *  Any alignment of the buffer is fine; a workspace sized for rows serves fewer rows.
 *  @param layers   n_layers layers forming a group (see above); borrowed for the call.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_MISMATCH (layers that cannot share their input;
 *  the log names the layer index and the field), DQ_ERR_SHAPE (rows < 0), DQ_ERR_OVERFLOW.
 *  @since 1.2 */
DQ_API dq_status dq_linear_group_workspace_size(const dq_linear *const *layers, int32_t n_layers,
                                                int64_t rows, size_t *bytes);

/** @brief y[i] (rows x out_features of layers[i], ldy[i]) = layers[i](x) for every layer of a
 *  group, bit for bit what n separate dq_linear_forward calls give, with the input transformed
 *  and quantized once. x (rows x in_features, ldx) is not modified.
 *  @param y, ldy   n_outputs output pointers and leading dimensions; n_outputs must equal
 *                  n_layers.
 *  @param work     NULL (allocated through layers[0]'s context, once per call) or work_size >=
 *                  dq_linear_group_workspace_size bytes: then no allocator call is made.
 *  rows = 0 is a no-op returning DQ_OK (x, y and ldy may be NULL). On failure no y[i] is
 *  written.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_MISMATCH, DQ_ERR_SHAPE, DQ_ERR_NONFINITE,
 *  DQ_ERR_OVERFLOW, DQ_ERR_BUFFER, DQ_ERR_NOMEM, DQ_ERR_BLAS. @since 1.2 */
DQ_API dq_status dq_linear_forward_group(const dq_linear *const *layers, int32_t n_layers,
                                         const float *x, int64_t rows, int64_t cols, int64_t ldx,
                                         float *const *y, const int64_t *ldy, int32_t n_outputs,
                                         void *work, size_t work_size);

/* ------------------------------------------------------------------------------------------ */
/* Key/value cache in 4 or 8 bits (@since 1.2)                                                 */
/* An engine keeps the keys and values of attention per token and per head. Each head of each  */
/* token is quantized on its own: asymmetric, the dq_quant_params rule with clip factors       */
/* clip_ratio on its max and min, optionally after the head's orthonormal Walsh-Hadamard       */
/* transform x <- x * H / sqrt(head_size) (H the Sylvester matrix, as dq_rotation_hadamard;    */
/* symmetric, so the transform is its own inverse). Rotating keys and queries alike keeps      */
/* every product q . k. Layout of a cache buffer, in memory only (native byte order, no        */
/* alignment, never serialised): token t at byte t * token bytes; a token holds n_heads head   */
/* records in head order; a record is the float scale, the float zero point, then head_size    */
/* codes (8 bits: one byte each; 4 bits: two a byte, element 2i in the low nibble).            */
/* A value comes back as (code - zero) * scale, in the rotated domain when it was rotated.     */
/* THREAD SAFETY: pure functions on caller buffers; calls writing disjoint tokens of one cache */
/* may run concurrently. OWNERSHIP: the caller allocates every buffer (dq_kv_size).           */
/* ------------------------------------------------------------------------------------------ */

/** dq_kv_params.flags. ROTATE: dq_kv_quantize applies the per-head Walsh-Hadamard transform
 *  before quantizing (head_size must be a power of two). @since 1.2 */
enum { DQ_KV_F_ROTATE = 1u };

typedef struct dq_kv_params {
    uint32_t struct_size; /**< set by dq_kv_params_init */
    uint32_t flags;       /**< DQ_KV_F_*, default 0 */
    int32_t bits;         /**< 4 or 8, default 4 */
    int32_t head_size;    /**< channels per head, 1..1024, default 128 */
    int32_t n_heads;      /**< heads per token, 1..65536, default 1 */
    float clip_ratio;     /**< (0, 1], default 1: multiplies each head's max and min */
} dq_kv_params;

/** @brief Fill p with defaults (4 bits, one head of 128, no rotation, clip 1). @since 1.2 */
DQ_API dq_status dq_kv_params_init(dq_kv_params *p, size_t struct_size);

/** @brief Bytes of a cache of tokens tokens (tokens 0: 0; tokens 1: one token's stride).
 *  @param p  params or NULL (defaults).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL bytes, bits not 4 or 8, clip_ratio, flags),
 *  DQ_ERR_SHAPE (tokens < 0, head_size or n_heads out of range), DQ_ERR_OVERFLOW,
 *  DQ_ERR_STRUCT_SIZE, DQ_ERR_UNSUPPORTED. @since 1.2 */
DQ_API dq_status dq_kv_size(const dq_kv_params *p, int64_t tokens, size_t *bytes);

/** @brief In place, every head of tokens rows of x (n_heads * head_size floats each, ldx):
 *  x_head <- x_head * H / sqrt(head_size) (computed in double, rounded once), whatever p's
 *  bits and flags; for the queries that meet rotated keys. tokens 0: no-op (x may be NULL).
 *  All or nothing: on error x is unchanged.
 *  @return DQ_OK, the errors of dq_kv_size, DQ_ERR_INVALID_ARG (NULL x), DQ_ERR_SHAPE (ldx <
 *  n_heads * head_size), DQ_ERR_UNSUPPORTED (head_size not a power of two), DQ_ERR_NONFINITE
 *  (a value before or after the transform). @since 1.2 */
DQ_API dq_status dq_kv_rotate(const dq_kv_params *p, float *x, int64_t tokens, int64_t ldx);

/** @brief Quantize tokens rows of x (n_heads * head_size floats each, ldx) into tokens first ..
 *  first + tokens - 1 of cache (cache_size bytes), rotating each head first under ROTATE. x is
 *  not modified; other tokens of the cache are untouched. tokens 0: no-op (x and cache may be
 *  NULL). All or nothing: on error the cache is unchanged.
 *  @return DQ_OK, the errors of dq_kv_size, DQ_ERR_INVALID_ARG (NULL x or cache), DQ_ERR_SHAPE
 *  (ldx, first < 0), DQ_ERR_UNSUPPORTED (ROTATE with head_size not a power of two),
 *  DQ_ERR_BUFFER (cache_size < dq_kv_size(first + tokens)), DQ_ERR_NONFINITE (a value, before
 *  or after the transform, or a range the rule refuses), DQ_ERR_OVERFLOW. @since 1.2 */
DQ_API dq_status dq_kv_quantize(const dq_kv_params *p, const float *x, int64_t tokens,
                                int64_t ldx, void *cache, size_t cache_size, int64_t first);

/** @brief Dequantize head head of tokens first .. first + tokens - 1 of cache into out (tokens
 *  rows of head_size floats, ldo), as they were stored (rotated under ROTATE: dq_kv_rotate
 *  takes them back). The tokens must have been written by dq_kv_quantize with the same params.
 *  tokens 0: no-op (cache and out may be NULL).
 *  @return DQ_OK, the errors of dq_kv_size, DQ_ERR_INVALID_ARG (NULL, head outside
 *  [0, n_heads)), DQ_ERR_SHAPE (tokens or first < 0, ldo < head_size), DQ_ERR_BUFFER,
 *  DQ_ERR_OVERFLOW. @since 1.2 */
DQ_API dq_status dq_kv_dequantize(const dq_kv_params *p, const void *cache, size_t cache_size,
                                  int32_t head, int64_t first, int64_t tokens, float *out,
                                  int64_t ldo);

/* ------------------------------------------------------------------------------------------ */
/* Files: plans, packed matrices and float tensors in one safetensors-compatible file         */
/* (doc/formats.md): an 8-byte little-endian header length, a JSON header, little-endian      */
/* tensor data. Engines collect many layers in one writer under distinct name prefixes and    */
/* save once; readers validate the whole container when they open it and every object when it */
/* is loaded, and return an error code (no partial output) for any malformed input.           */
/* THREAD SAFETY: a dq_file_writer must not be used by two threads at once. A dq_file_reader   */
/* is immutable after opening: any number of threads may call its getters concurrently.       */
/* OWNERSHIP: writers copy every tensor when it is added (the plan, matrix or array may be    */
/* freed right after), in memory or, spooling (since 1.2), into a temporary file. Readers     */
/* copy the file or buffer, unless DQ_FILE_F_BORROW is given to                               */
/* dq_file_reader_from_buffer: then the buffer must stay unchanged until dq_file_reader_free. */
/* Objects returned by getters are new and independent of the reader, except linear layers   */
/* stored in the blocked layout and loaded through a borrowing reader (DQ_FILE_F_BORROW,      */
/* since 1.2): they read their weights in place, so the buffer or mapped file, and the reader */
/* that maps it, must outlive them.                                                           */
/* ------------------------------------------------------------------------------------------ */

/** Newest version of the file format this library reads and writes (metadata
 *  "format_version"). Since 1.2 writers write 3: every tensor and the header carry checksums
 *  (doc/formats.md), verified by readers. 1.0 and 1.1 wrote 1; versions 1 and 2 (no
 *  checksums) are still read. @since 1.0 */
#define DQ_FILE_FORMAT_VERSION 3
/** Most dimensions of a tensor in a file. */
#define DQ_FILE_MAX_DIMS 8

typedef struct dq_file_writer dq_file_writer;
typedef struct dq_file_reader dq_file_reader;

/** dq_file_params.flags. BORROW: dq_file_reader_from_buffer reads the caller's buffer in place
 *  instead of copying it; dq_file_reader_open maps the file (since 1.2). Layers created from
 *  such a reader may read their weights in place: the buffer or mapping must outlive them.
 *  A mapping reader gives back, after each getter call, the pages of the tensors it copied
 *  out (dq_file_reader_get_tensor_f32, plans, packed matrices stored unblocked, biases; on
 *  Linux, madvise MADV_DONTNEED on the whole pages inside them), so that they are not held
 *  twice, in the copy and in the mapping. The mapping is private and read-only: a later read
 *  faults the pages in again from the file, same bytes. Blocked weights, which layers read in
 *  place, are never given back, nor is a caller's buffer touched. (Since 1.2.) */
enum { DQ_FILE_F_BORROW = 1u };

/** dq_file_params.flags, since 1.2. TRUSTED: the getters skip the checksums of tensor data
 *  (for files the caller trusts, typically mapped with DQ_FILE_F_BORROW, where hashing every
 *  byte at load would cost more than the load). The header checksum, the manifest of each
 *  object and every range check still apply. */
enum { DQ_FILE_F_TRUSTED = 2u };

/** Element types reported by dq_file_reader_tensor_info. */
enum {
    DQ_DTYPE_BOOL = 0, DQ_DTYPE_U8 = 1, DQ_DTYPE_I8 = 2, DQ_DTYPE_U16 = 3, DQ_DTYPE_I16 = 4,
    DQ_DTYPE_F16 = 5, DQ_DTYPE_BF16 = 6, DQ_DTYPE_U32 = 7, DQ_DTYPE_I32 = 8, DQ_DTYPE_F32 = 9,
    DQ_DTYPE_U64 = 10, DQ_DTYPE_I64 = 11, DQ_DTYPE_F64 = 12
};

typedef struct dq_file_params {
    uint32_t struct_size;      /**< set by dq_file_params_init */
    uint32_t flags;            /**< DQ_FILE_F_*, default 0 */
    uint64_t max_header_bytes; /**< largest JSON header accepted, 2..100 MiB, default 100 MiB */
    /** Most bytes the reader may allocate for what a file declares (@since 1.2): opening
     *  (the header's table and, unless borrowed, the data section) and each getter call
     *  (dq_file_reader_get_plan, _get_qmatrix, _get_linear: the parts it loads and the object
     *  it creates) are checked against it, from the declared sizes, before allocating.
     *  Beyond it: DQ_ERR_NOMEM, the log line giving both figures. 0 (the default) = 4 times
     *  the file's size plus 16 MiB: enough for the objects this library writes, except layers
     *  much larger in memory than on disk (a few rows and many tiny groups: the kernel form
     *  pads rows to 16 and groups to whole steps), which need a larger limit. */
    uint64_t max_alloc_bytes;
} dq_file_params;

/** @brief Fill p with defaults. @since 1.0 */
DQ_API dq_status dq_file_params_init(dq_file_params *p, size_t struct_size);

/** @brief Create an empty writer; its metadata starts with format = "duquant" and
 *  format_version = DQ_FILE_FORMAT_VERSION. @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_NOMEM.
 *  @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_file_writer_create(dq_context *ctx, dq_file_writer **out);

/** @brief Release a writer; NULL is a no-op. @since 1.0 */
DQ_API void dq_file_writer_free(dq_file_writer *w);

/** @brief Add a metadata pair (UTF-8 strings without control characters; the key must be new,
 *  "format" and "format_version" are reserved). @return DQ_OK, DQ_ERR_INVALID_ARG (NULL,
 *  invalid text, duplicate or reserved key), DQ_ERR_NOMEM. @since 1.0 */
DQ_API dq_status dq_file_writer_add_metadata(dq_file_writer *w, const char *key,
                                             const char *value);

/** @brief Add a float32 tensor of ndim (0..DQ_FILE_MAX_DIMS) dimensions shape[] (each >= 0),
 *  contiguous row-major data (may be NULL when the element count is 0). Any values, NaN
 *  included, are stored as given. @return DQ_OK, DQ_ERR_INVALID_ARG (NULL, bad or duplicate
 *  name), DQ_ERR_SHAPE, DQ_ERR_OVERFLOW, DQ_ERR_NOMEM. @since 1.0 */
DQ_API dq_status dq_file_writer_add_tensor_f32(dq_file_writer *w, const char *name,
                                               const float *data, int32_t ndim,
                                               const int64_t *shape);

/** @brief Add a plan under prefix: tensors and metadata named "<prefix>.<part>"
 *  (doc/formats.md). All or nothing: on failure the writer is unchanged.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL, bad prefix, a name already used), DQ_ERR_NOMEM,
 *  DQ_ERR_OVERFLOW. @since 1.0 */
DQ_API dq_status dq_file_writer_add_plan(dq_file_writer *w, const char *prefix,
                                         const dq_plan *pl);

/** @brief Add a packed matrix under prefix (packed codes U8, scales and zero points F32, layout
 *  in metadata). All or nothing. Errors as dq_file_writer_add_plan; since 1.2 also
 *  DQ_ERR_OVERFLOW for a group whose codes dequantize beyond the float range (scale near
 *  FLT_MAX, e.g. a constant group of 3e38), which no reader accepts; the same check applies
 *  to dq_file_writer_add_linear and dq_file_writer_add_linear_layer. @since 1.0 */
DQ_API dq_status dq_file_writer_add_qmatrix(dq_file_writer *w, const char *prefix,
                                            const dq_qmatrix *q);

/** @brief Serialise into buf (cap bytes); *size receives the bytes needed. buf NULL only
 *  reports the size. The output is the same, byte for byte, for the same additions.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_BUFFER (cap too small; *size is set),
 *  DQ_ERR_OVERFLOW. @since 1.0 */
DQ_API dq_status dq_file_writer_to_buffer(const dq_file_writer *w, void *buf, size_t cap,
                                          size_t *size);

/** @brief Serialise to the file path, atomically and durably: the bytes go to a new
 *  temporary file in the same folder (".<name>.<random>.tmp", mode 0644 less the umask, or the
 *  permission bits of the file it replaces), which is flushed, fsync'ed and renamed over path;
 *  then the folder is fsync'ed. Readers see the old file or the new one, whole, never a part;
 *  a failure (or a killed process) leaves the old file as it was, and a failure removes the
 *  temporary file (a killed process cannot). A symbolic link at path stays a link: the file it
 *  points to (resolved with realpath) is replaced; a link to nothing is refused. A path that
 *  exists and is not a regular file (folder, device, FIFO, socket) is refused before anything
 *  is written, and left alone.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (w or path NULL, path empty), DQ_ERR_IO (the file system
 *  refused: the folder does not exist or is not writable, the disk or file size limit is
 *  reached, path is not a regular file...; the log message names the path and the system's
 *  reason; before 1.2 these were DQ_ERR_INVALID_ARG), DQ_ERR_NOMEM, DQ_ERR_OVERFLOW.
 *  Thread safety: concurrent saves to one path from several threads or processes each
 *  replace the file whole; the last rename wins.
 *  @since 1.0 */
DQ_API dq_status dq_file_writer_save(const dq_file_writer *w, const char *path);

/** @brief Make the writer spool: from now on each tensor's bytes are written to a temporary
 *  file at once, as the tensor is added, and the writer keeps only the header's table (names,
 *  dtypes, shapes, offsets, checksums, metadata), so its memory no longer grows with the data
 *  (a whole model's packed layers need not fit in memory). Call it right after
 *  dq_file_writer_create, before any tensor is added; path is the file the writer will be
 *  saved to, and the temporary file is created in its folder (".<name>.<random>.spool",
 *  mode 0644 less the umask; the same file system, so no other disk or memory holds the data)
 *  and removed from the folder at once: it lives as long as the writer and disappears with
 *  it, even when the process is killed. dq_file_writer_save then writes the header and
 *  copies the tensors from the spool file through a buffer of 1 MiB, to path or to any other
 *  path, atomically as always; dq_file_writer_to_buffer reads them back into buf. The bytes
 *  are exactly those a writer without spooling writes for the same calls. Needs as much free
 *  disk as the tensors' data, twice while saving (spool file and new file).
 *  Errors: the adding calls also return DQ_ERR_IO when the spool file refuses a write (disk
 *  full, file size limit; the writer is left as it was, so the call may be retried), and
 *  dq_file_writer_to_buffer and dq_file_writer_save return DQ_ERR_IO when it cannot be read
 *  back; each log message gives the system's reason.
 *  Ownership: the writer owns the spool file (dq_file_writer_free closes it).
 *  Thread safety: as the other writer calls (one thread per writer).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (w or path NULL, path empty), DQ_ERR_BAD_STATE (the writer
 *  already spools or holds a tensor; metadata may come before), DQ_ERR_IO (the folder of path
 *  does not exist or is not writable; the log message names it and the system's reason),
 *  DQ_ERR_NOMEM. On failure the writer is unchanged and keeps the data in memory.
 *  @since 1.2 */
DQ_API DQ_NODISCARD dq_status dq_file_writer_spool(dq_file_writer *w, const char *path);

/** @brief Add a quantized linear layer under prefix: its packed weights (stored as the
 *  packed matrix "<prefix>.weight"), optional bias (out_features floats, "<prefix>.bias"), the
 *  activation parameters p (NULL = defaults) and, optionally, the prefix of the plan it reads
 *  (plan_prefix, stored as metadata; the plan itself is added once with
 *  dq_file_writer_add_plan, since layers reading one input share it). The arguments are
 *  checked as dq_linear_create checks them. All or nothing. Since 1.2 the plan is checked
 *  too: plan_prefix must name a plan added to this writer before, the one the weights were
 *  transformed by (same fingerprint), and weights that record a plan need a plan_prefix;
 *  otherwise DQ_ERR_MISMATCH. Weights packed without a fingerprint are added with a
 *  DQ_LOG_WARN line. p->act_group_size other than 0 is DQ_ERR_UNSUPPORTED: the format has
 *  no field for activation groups yet.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_MISMATCH, DQ_ERR_NONFINITE,
 *  DQ_ERR_NOMEM, DQ_ERR_STRUCT_SIZE, DQ_ERR_UNSUPPORTED. @since 1.0 */
DQ_API dq_status dq_file_writer_add_linear(dq_file_writer *w, const char *prefix,
                                           const dq_linear_params *p, const char *plan_prefix,
                                           const dq_qmatrix *weights, const float *bias);

/** @brief Create the linear layer stored under prefix with the given plan (referenced as by
 *  dq_linear_create; NULL = identity; load it with dq_file_reader_get_plan from the prefix in
 *  the layer's "<prefix>.plan" metadata). Since 1.2, when the layer names a plan, plan must
 *  have the fingerprint of the plan stored under that name (files written before 1.2
 *  included), and the weights' recorded fingerprint is checked as by dq_linear_create.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (plan width differs from the weights'),
 *  DQ_ERR_MISMATCH (another plan, or none, than the layer's), DQ_ERR_FORMAT (also: the plan
 *  the layer names does not load), DQ_ERR_NONFINITE, DQ_ERR_UNSUPPORTED, DQ_ERR_NOMEM.
 *  @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_file_reader_get_linear(const dq_file_reader *r,
                                                        dq_context *ctx, const char *prefix,
                                                        const dq_plan *plan, dq_linear **out);

/** @brief Add a linear layer as it runs: its weights in the blocked layout the integer kernels
 *  read (format version 2, doc/formats.md), so that dq_file_reader_get_linear on a borrowing
 *  reader (a mapped file, DQ_FILE_F_BORROW) creates it without copying a weight. The layout
 *  is format version 2 (readers before 1.2 refuse it). The layer's activation settings
 *  and bias are stored as by dq_file_writer_add_linear; dq_file_reader_get_qmatrix on
 *  "<prefix>.weight" gives the packed matrix back exactly. plan_prefix as there.
 *  Ownership: lin is only read (any layer: created, or loaded from a file of any version).
 *  Thread safety: as the other writer calls (one thread per writer).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (NULL, invalid or taken name), DQ_ERR_NOMEM,
 *  DQ_ERR_OVERFLOW, DQ_ERR_UNSUPPORTED (a layer with activation groups, see
 *  dq_file_writer_add_linear). @since 1.2 */
DQ_API DQ_NODISCARD dq_status dq_file_writer_add_linear_layer(dq_file_writer *w,
                                                              const char *prefix,
                                                              const dq_linear *lin,
                                                              const char *plan_prefix);

/** @brief Open and validate a file. p may be NULL (defaults). Since 1.2 the header is read
 *  and validated first (tensor offsets against the file's size, the format metadata) and only
 *  then is the data section read into memory (within p->max_alloc_bytes);
 *  with DQ_FILE_F_BORROW (since 1.2) it is mapped read-only instead and left in place: layers
 *  that dq_file_reader_get_linear creates from it in the blocked layout then read their
 *  weights from the mapping, so the reader must outlive them (and the file must not be
 *  changed or truncated while mapped).
 *  @return DQ_OK, DQ_ERR_INVALID_ARG (path NULL, bad params), DQ_ERR_IO (the file cannot be
 *  opened, read or mapped: missing, no permission, a folder...; the log message names the path
 *  and the system's reason; before 1.2 these were DQ_ERR_INVALID_ARG), DQ_ERR_FORMAT
 *  (malformed container, format metadata not "duquant", since 1.2 a header checksum that
 *  does not match or a version-3 file without checksums), DQ_ERR_UNSUPPORTED (a newer
 *  format_version), DQ_ERR_NOMEM (also: beyond max_alloc_bytes), DQ_ERR_STRUCT_SIZE.
 *  @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_file_reader_open(dq_context *ctx, const dq_file_params *p,
                                                  const char *path, dq_file_reader **out);

/** @brief As dq_file_reader_open for size bytes at buf: copied, or borrowed with
 *  DQ_FILE_F_BORROW (then buf must stay valid and unchanged until dq_file_reader_free, and
 *  until every layer created from the reader is freed: blocked layers read their weights in
 *  place, any alignment of buf accepted; scale records not 4-byte aligned are copied).
 *  @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_file_reader_from_buffer(dq_context *ctx,
                                                         const dq_file_params *p,
                                                         const void *buf, size_t size,
                                                         dq_file_reader **out);

/** @brief Release a reader; NULL is a no-op. @since 1.0 */
DQ_API void dq_file_reader_free(dq_file_reader *r);

/** @brief Number of tensors and of metadata pairs (either pointer may be NULL). @since 1.0 */
DQ_API dq_status dq_file_reader_count(const dq_file_reader *r, int64_t *n_tensors,
                                      int64_t *n_metadata);

/** @brief Name of tensor i (0-based, in byte order of the names) copied snprintf-style into
 *  name (cap bytes, NUL-terminated); *len receives its length. @return DQ_OK,
 *  DQ_ERR_INVALID_ARG, DQ_ERR_BUFFER (cap <= length; nothing written). @since 1.0 */
DQ_API dq_status dq_file_reader_tensor_name(const dq_file_reader *r, int64_t i, char *name,
                                            size_t cap, size_t *len);

/** @brief Metadata key i (0-based, in byte order) copied like dq_file_reader_tensor_name.
 *  @since 1.0 */
DQ_API dq_status dq_file_reader_metadata_key(const dq_file_reader *r, int64_t i, char *key,
                                             size_t cap, size_t *len);

/** @brief Metadata value of key copied like dq_file_reader_tensor_name.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_FORMAT (no such key), DQ_ERR_BUFFER.
 *  @since 1.0 */
DQ_API dq_status dq_file_reader_metadata(const dq_file_reader *r, const char *key, char *value,
                                         size_t cap, size_t *len);

/** @brief Element type (DQ_DTYPE_*) and shape of a tensor; shape needs DQ_FILE_MAX_DIMS
 *  entries. Any output pointer may be NULL. @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_FORMAT
 *  (no such tensor). @since 1.0 */
DQ_API dq_status dq_file_reader_tensor_info(const dq_file_reader *r, const char *name,
                                            int32_t *dtype, int32_t *ndim, int64_t *shape);

/** @brief Copy an F32 tensor of n elements (its exact element count) into out.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_FORMAT (no such tensor, not F32), DQ_ERR_SHAPE
 *  (n differs). @since 1.0 */
DQ_API dq_status dq_file_reader_get_tensor_f32(const dq_file_reader *r, const char *name,
                                               float *out, int64_t n);

/** @brief Load the plan stored under prefix as a new plan (allocated with ctx, may be NULL).
 *  Declared sizes are checked against the bytes present and the reader's max_alloc_bytes
 *  before anything is allocated (since 1.2). Since 1.2 the getters verify the checksum of
 *  every tensor they read (unless the reader was opened with DQ_FILE_F_TRUSTED) and refuse
 *  names under prefix that are not parts of the object's kind (doc/formats.md): both
 *  DQ_ERR_FORMAT.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_FORMAT (missing, inconsistent, unknown or
 *  changed parts), DQ_ERR_NONFINITE (non-finite scales or matrices), DQ_ERR_UNSUPPORTED,
 *  DQ_ERR_NOMEM (also: beyond max_alloc_bytes). @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_file_reader_get_plan(const dq_file_reader *r, dq_context *ctx,
                                                      const char *prefix, dq_plan **out);

/** @brief Load the packed matrix stored under prefix. Errors as dq_file_reader_get_plan.
 *  @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_file_reader_get_qmatrix(const dq_file_reader *r,
                                                         dq_context *ctx, const char *prefix,
                                                         dq_qmatrix **out);

/** @brief Create a rotation from given block matrices, laid out as dq_rotation_create lays
 *  them out: per_block != 0 gives one matrix per block, else one matrix shared by the full
 *  blocks plus one for a shorter last block. data holds the matrices in order, each
 *  size x size row-major (n_floats in all). Each row must have unit norm (1e-3 tolerance);
 *  orthogonality is otherwise the caller's promise. The result has no search record.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE (cols, block_size or n_floats do not fit),
 *  DQ_ERR_NONFINITE, DQ_ERR_OVERFLOW, DQ_ERR_NOMEM. @since 1.0 */
DQ_API DQ_NODISCARD dq_status dq_rotation_from_matrices(dq_context *ctx, int64_t cols,
                                                        int32_t block_size, int32_t per_block,
                                                        const float *data, int64_t n_floats,
                                                        dq_rotation **out);

/* ------------------------------------------------------------------------------------------ */
/* Rotation refinement: DFRot and DartQuant                                                   */
/* Both start from an existing rotation (greedy, Hadamard, random) and return a new one with  */
/* the same block layout: one refined matrix per distinct matrix of the start, i.e. per block */
/* with one matrix per block, or one shared matrix trained on all the full blocks it serves   */
/* (plus the shorter last block's own matrix). The result is never worse than the start on    */
/* the method's objective: every iterate is scored and the best one is kept (the start        */
/* counts).                                                                                   */
/*                                                                                            */
/* DFRot (arXiv 2412.00648): alternate (a) Y = X R, target T = Q(Y), Q the per-token          */
/*   activation quantizer (act_bits / act_scheme / act_clip_ratio, parameters from the        */
/*   current Y), and (b) the weighted orthogonal Procrustes step R = U V^T from the SVD X^T   */
/*   D^2 T = U S V^T, which minimises ||D (X R - T)||_F for fixed T. Token weights D_tt^2 =   */
/*   (||x_t||_2 / mean_u ||x_u||_2)^weight_exponent (rotation-invariant norms of the whole    */
/*   token row), so tokens with massive activations count more (the long-tail loss).          */
/*   Objective scored per iterate: sum_t D_tt^2 ||y_t - Q(y_t)||^2 over the full width.       */
/* DartQuant: minimise the whip loss (1/N) sum_i sum_j exp(-|(v_i R)_j| / rms(v_i)) over the  */
/*   N block rows v_i of the sample (rms(v) = ||v||_2 / sqrt(n), rotation-invariant, so the   */
/*   loss does not depend on the activations' scale). R = qf(Z), the Q factor of an           */
/*   unconstrained Z = Q T with diag(T) > 0; Adam (beta 0.9 / 0.999, eps 1e-8) steps on Z     */
/*   with the exact gradient through the QR factorization; Z starts at the start matrix. The  */
/*   loss of every iteration is logged at DQ_LOG_INFO.                                        */
/* Dense factorizations come from LAPACK; products from the library's fixed-order kernels:    */
/* the same inputs give the same bits for any context n_threads, but the SVD / QR may round   */
/* differently with another LAPACK/BLAS build (or BLAS thread setting).                       */
/* THREAD SAFETY: dq_rotation_refine only reads its inputs; calls on distinct outputs may run */
/* concurrently. OWNERSHIP: inputs borrowed for the call; the result is a new rotation.       */
/* ------------------------------------------------------------------------------------------ */

/** Refinement methods (dq_refine_params.method). NONE copies the start unchanged. */
enum { DQ_REFINE_NONE = 0, DQ_REFINE_DFROT = 1, DQ_REFINE_DARTQUANT = 2 };

typedef struct dq_refine_params {
    uint32_t struct_size;  /**< set by dq_refine_params_init */
    uint32_t flags;        /**< reserved, must be 0 */
    uint64_t seed;         /**< DartQuant mini-batch draws; default 0 */
    int32_t method;        /**< DQ_REFINE_*, default DQ_REFINE_DFROT */
    int32_t iterations;    /**< 0..100000, default 20 (0 = keep the start) */
    float learning_rate;   /**< DartQuant Adam step size, finite > 0, default 1e-3 */
    float weight_exponent; /**< DFRot token weighting exponent in [0, 16], default 1 (0 = plain
                                Procrustes, every token alike) */
    int64_t batch_rows;    /**< DartQuant block rows per step (drawn without replacement,
                                seeded); 0 = all of them (default). The loss used to keep the
                                best iterate is always the full one. */
    int32_t act_bits;      /**< DFRot target quantizer: 4 (default) or 8 */
    int32_t act_scheme;    /**< DQ_QUANT_ASYM (default) or DQ_QUANT_SYM, per token */
    float act_clip_ratio;  /**< (0, 1], default 1 */
} dq_refine_params;

/** @brief Fill p with defaults (DFRot, 20 iterations, weight exponent 1). @since 1.0 */
DQ_API dq_status dq_refine_params_init(dq_refine_params *p, size_t struct_size);

/** @brief Refine every matrix of start on the sample x (rows x cols, ldx, finite; cols must be
 *  start's width), the activations the rotation multiplies. Also available inside plan
 *  building: dq_plan_params.refine.
 *  @param ctx context or NULL; its log callback receives each iteration's objective.
 *  @param p   params or NULL (defaults).
 *  @param out receives the new rotation, NULL on failure. Matrices left as they were keep their
 *             search record (dq_rotation_trace); changed ones report DQ_ERR_BAD_STATE there.
 *  @return DQ_OK, DQ_ERR_INVALID_ARG, DQ_ERR_SHAPE, DQ_ERR_NONFINITE, DQ_ERR_OVERFLOW (more than
 *  2^31-1 block rows for one matrix), DQ_ERR_NOMEM, DQ_ERR_STRUCT_SIZE, DQ_ERR_UNSUPPORTED.
 *  A factorization that fails to converge ends the iterations early (logged at DQ_LOG_WARN);
 *  the best iterate so far is returned. @since 1.0. Since 1.2 DQ_ERR_NONFINITE also when
 *  finite x gives a non-finite quantization scale, zero point or objective (a range that
 *  overflows float after the rotation), instead of a silent return of the start. */
DQ_API DQ_NODISCARD dq_status dq_rotation_refine(dq_context *ctx, const dq_refine_params *p,
                                                 const dq_rotation *start, const float *x,
                                                 int64_t rows, int64_t cols, int64_t ldx,
                                                 dq_rotation **out);

#ifdef __cplusplus
}
#endif

#endif /* DUQUANT_H */
