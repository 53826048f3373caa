/* Private declarations shared by the library's source files. Never installed. */
#ifndef DQ_INTERNAL_H
#define DQ_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "duquant.h"

#if defined(DQ_DEBUG_CHECKS)
#include <assert.h>
#define DQ_ASSERT(x) assert(x)
#else
#define DQ_ASSERT(x) ((void)0)
#endif

#if defined(__GNUC__)
#define DQ_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define DQ_PRINTF(f, a)
#endif

/* Alignment of every library allocation (one cache line, enough for AVX-512). */
#define DQ_ALIGN 64

/* The thread pool a context and the copies objects keep share (dq_pool.h). */
typedef struct dq__pool dq__pool;

/* Objects keep a copy of the context they were created with (dq__context_keep), so the caller
 * may free it; the copies share the context's pool through a reference. */
struct dq_context {
    uint64_t tag;               /* DQ__TAG_CONTEXT, in copies too (dq_handle.h) */
    dq_alloc_fn alloc;
    dq_free_fn free;
    void *alloc_user;
    dq_log_fn log;
    void *log_user;
    int32_t log_level;
    int32_t n_threads;          /* resolved: the most parts one parallel call runs, >= 1 */
    dq_parallel_fn parallel_for; /* the engine's loop, or NULL */
    void *parallel_user;
    dq__pool *pool;             /* NULL: parts run on the calling thread (or parallel_for) */
    uint32_t flags;             /* DQ_CONTEXT_F_* */
};

/* dst = a copy of src (NULL: the defaults) holding its own reference to the shared pool; give
 * it back with dq__context_drop (once, where the object is freed). */
void dq__context_keep(dq_context *dst, const dq_context *src);
void dq__context_drop(dq_context *ctx);

/* The defaults a NULL context stands for. */
extern const dq_context dq__default_context;
static inline const dq_context *dq__ctx(const dq_context *ctx)
{
    return ctx ? ctx : &dq__default_context;
}

/* Memory: DQ_ALIGN-aligned, NULL on failure or size 0; dq__free accepts NULL. */
void *dq__alloc(const dq_context *ctx, size_t size);
void *dq__calloc(const dq_context *ctx, size_t n, size_t elem);
void dq__free(const dq_context *ctx, void *p);

void dq__log(const dq_context *ctx, int32_t level, const char *fmt, ...) DQ_PRINTF(3, 4);

/* Every error return says why: logs "func: message" at DQ_LOG_ERROR through ctx's callback and
 * returns st. Use as `return DQ_FAIL(ctx, DQ_ERR_SHAPE, "cols %lld != plan width %lld", ...)`;
 * name the argument or field, the expected and the actual value, the tensor or key of a file. */
dq_status dq__fail(const dq_context *ctx, dq_status st, const char *func, const char *fmt, ...)
    DQ_PRINTF(4, 5);
#define DQ_FAIL(ctx, st, ...) dq__fail((ctx), (st), __func__, __VA_ARGS__)

/* Overflow-checked size arithmetic: false when the result does not fit. */
static inline bool dq__mul_size(size_t a, size_t b, size_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool dq__add_size(size_t a, size_t b, size_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}
/* The same for signed 64-bit counts (channels, blocks, matrices): false on overflow. */
static inline bool dq__mul_i64(int64_t a, int64_t b, int64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool dq__add_i64(int64_t a, int64_t b, int64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}
/* n elements of elem bytes each as a byte count: false when n < 0 or the product does not fit
 * size_t. */
static inline bool dq__array_bytes(int64_t n, size_t elem, size_t *out)
{
    return n >= 0 && (uint64_t)n <= SIZE_MAX && !__builtin_mul_overflow((size_t)n, elem, out);
}

/* As dq__params_read, logging a failure through ctx for func (the public function) and what
 * (the argument's name, e.g. "params"). */
dq_status dq__params_read_at(const dq_context *ctx, const char *func, const char *what,
                             void *dst, size_t known_size, size_t min_size, const void *user);
#define DQ_PARAMS_READ(ctx, what, dst, known_size, min_size, user) \
    dq__params_read_at((ctx), __func__, (what), (dst), (known_size), (min_size), (user))

/* File system (dq_fsio.c). dq__errno_text: the system's text for err in buf (thread-safe).
 * dq__save_atomic: replaces the regular file at path (or the file a symbolic link at path
 * points to) with size bytes of data through a temporary file in the same folder, fsync and
 * rename, then fsyncs the folder; refuses anything but a regular file; never removes the
 * target; failures are DQ_ERR_IO logged for func with the path and errno text. */
const char *dq__errno_text(int err, char *buf, size_t cap);
dq_status dq__save_atomic(const dq_context *ctx, const char *func, const char *path,
                          const void *data, size_t size);
/* As dq__save_atomic, the bytes written by fill into the temporary file tmp (descriptor fd);
 * fill logs its own failure and returns its status, which is returned. */
typedef dq_status (*dq__fill_fn)(void *user, int fd, const char *tmp);
dq_status dq__save_atomic_fill(const dq_context *ctx, const char *func, const char *path,
                               dq__fill_fn fill, void *user);
/* A new file in the folder of path, open for reading and writing and already unlinked, so it
 * vanishes with its descriptor; DQ_ERR_IO (logged) when it cannot be created. */
dq_status dq__spool_open(const dq_context *ctx, const char *func, const char *path, int *fd);
/* All n bytes written (at the file position, or at off) or read (at off), across short
 * transfers and EINTR: 0, or -1 with errno set (EIO for a read past the end of the file). */
int dq__write_all(int fd, const void *p, size_t n);
int dq__pwrite_all(int fd, const void *p, size_t n, uint64_t off);
int dq__pread_all(int fd, void *buf, size_t n, uint64_t off);

/* Extensible params structs (see duquant.h). Copies min(struct_size, known) bytes of user into
 * dst (which already holds the defaults) after validating size and tail. user NULL keeps the
 * defaults. */
dq_status dq__params_read(void *dst, size_t known_size, size_t min_size, const void *user);
/* Body of every *_params_init: validates p and struct_size, then writes the defaults (a full
 * struct of known_size bytes) truncated to struct_size, zeroes any tail, sets struct_size. */
dq_status dq__params_init(void *p, size_t struct_size, size_t min_size, const void *defaults,
                          size_t known_size);
/* True when member [offset, offset + size) lies within a struct of struct_size bytes. */
#define DQ_HAS_MEMBER(struct_size, type, member) \
    ((struct_size) >= offsetof(type, member) + sizeof(((type *)0)->member))

/* Matrix argument checks: non-NULL, rows/cols > 0, ld >= cols, element span fits size_t.
 * A failure is logged through ctx as "func: name: ld 3 < cols 4", naming the matrix argument
 * (name, e.g. "w") and which of ptr/rows/cols/ld is wrong with the values. */
dq_status dq__check_matrix_at(const dq_context *ctx, const char *func, const char *name,
                              const void *x, int64_t rows, int64_t cols, int64_t ld);
#define dq__check_matrix(ctx, name, x, rows, cols, ld) \
    dq__check_matrix_at((ctx), __func__, (name), (x), (rows), (cols), (ld))
/* Number of elements a (rows, cols, ld) matrix spans; call after dq__check_matrix. */
static inline size_t dq__matrix_span(int64_t rows, int64_t cols, int64_t ld)
{
    return (size_t)(rows - 1) * (size_t)ld + (size_t)cols;
}
/* True when every element of the matrix is finite. */
bool dq__all_finite(const float *x, int64_t rows, int64_t cols, int64_t ld);

/* Quantization of one group of n floats (dq_int4.c). */
typedef struct dq__qspec {
    int32_t bits;
    int32_t scheme; /* DQ_QUANT_ASYM / DQ_QUANT_SYM */
} dq__qspec;
/* Computes the scale (and zero point for ASYM) of x[0..n) with clip factors hi/lo applied to
 * the max/min. */
void dq__quant_params(dq__qspec s, const float *x, int64_t n, float hi, float lo, float *scale,
                      float *zero);
/* Code of one value given scale and zero point. */
int32_t dq__quant_code(dq__qspec s, float x, float scale, float zero);
static inline float dq__dequant(dq__qspec s, int32_t q, float scale, float zero)
{
    return s.scheme == DQ_QUANT_ASYM ? ((float)q - zero) * scale : (float)q * scale;
}

/* Row-major C = alpha * op(A) * op(B) + beta * C through CBLAS (dq_blas.c). op(A) is m x k,
 * op(B) is k x n. DQ_ERR_BLAS when a dimension does not fit CBLAS's int. */
dq_status dq__sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                    int64_t ldc);

#endif /* DQ_INTERNAL_H */
