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
