/* Misuse detection: every handle type passed where another is expected, double free and use
 * after free. All objects come from a context whose allocator keeps freed blocks in a
 * quarantine instead of releasing them, so a freed handle is read back as the library left it
 * (no real use after free in the test, clean under ASan), and whose log callback records the
 * error lines. Every handle struct is allocated through the context's allocator. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dq_check_run.h"
#include "duquant.h"
#include "test_alloc.h"

/* ---- the quarantine allocator ---- */

typedef struct quarantine {
    void **held;     /* blocks given back, kept until quarantine_release */
    size_t n, cap;
    long allocs;     /* blocks handed out */
    long double_releases; /* the same block given back twice */
} quarantine;

static void *q_alloc(void *user, size_t size, size_t align)
{
    quarantine *q = user;
    void *p = aligned_alloc(align, (size + align - 1) / align * align);
    if (p)
        q->allocs++;
    return p;
}

static void q_free(void *user, void *p)
{
    quarantine *q = user;
    for (size_t i = 0; i < q->n; i++)
        if (q->held[i] == p) {
            q->double_releases++;
            return;
        }
    if (q->n == q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 64;
        void **held = realloc(q->held, cap * sizeof *held);
        if (!held)
            abort();
        q->held = held;
        q->cap = cap;
    }
    q->held[q->n++] = p;
}

static void quarantine_release(quarantine *q)
{
    for (size_t i = 0; i < q->n; i++)
        free(q->held[i]);
    free(q->held);
    memset(q, 0, sizeof *q);
}

/* ---- the log ---- */

typedef struct log_capture {
    int errors;
    char last[1024];
} log_capture;

static void capture_log(void *user, int32_t level, const char *msg)
{
    log_capture *c = user;
    if (level != DQ_LOG_ERROR)
        return;
    c->errors++;
    snprintf(c->last, sizeof c->last, "%s", msg);
}

static quarantine qa;
static log_capture cap;

static dq_context *quarantine_context(int32_t n_threads)
{
    dq_context_params p;
    dq_context_params_init(&p, sizeof p);
    p.alloc = q_alloc;
    p.free = q_free;
    p.alloc_user = &qa;
    p.log = capture_log;
    p.log_user = &cap;
    p.n_threads = n_threads;
    dq_context *ctx = NULL;
    ck_assert_int_eq(dq_context_create(&p, &ctx), DQ_OK);
    return ctx;
}

/* Exactly one error line since the last check, containing every fragment. */
#define EXPECT_LOG(...)                                                                        \
    do {                                                                                       \
        const char *frags_[] = {__VA_ARGS__};                                                  \
        ck_assert_msg(cap.errors == 1, "%d error lines (last: %s)", cap.errors, cap.last);     \
        for (size_t k_ = 0; k_ < sizeof frags_ / sizeof frags_[0]; k_++)                       \
            ck_assert_msg(strstr(cap.last, frags_[k_]) != NULL, "'%s' not in: %s", frags_[k_], \
                          cap.last);                                                           \
        cap.errors = 0;                                                                        \
        cap.last[0] = '\0';                                                                    \
    } while (0)

/* ---- one live object of every handle type ---- */

enum { T_CONTEXT, T_CALIB, T_ROTATION, T_PLAN, T_QMATRIX, T_LWC, T_LINEAR, T_WRITER, T_READER,
       T_HESSIAN, N_TYPES };
static const char *const type_name[N_TYPES] = {
    "dq_context", "dq_calib",  "dq_rotation",    "dq_plan",       "dq_qmatrix",
    "dq_lwc",     "dq_linear", "dq_file_writer", "dq_file_reader", "dq_hessian",
};

#define COLS 16
#define ROWS 4
#define TOKENS 8

static float weights[ROWS * COLS], acts[TOKENS * COLS], wmax[COLS];
static const float identity2[4] = {1, 0, 0, 1};

typedef struct objects {
    void *h[N_TYPES];
    uint8_t *file; /* the reader's bytes */
    size_t file_size;
} objects;

static void fill_inputs(void)
{
    for (int i = 0; i < ROWS * COLS; i++)
        weights[i] = (float)((i * 7) % 11) / 11.0f - 0.45f;
    for (int i = 0; i < TOKENS * COLS; i++)
        acts[i] = (float)((i * 5) % 13) / 13.0f - 0.5f;
    for (int i = 0; i < COLS; i++)
        wmax[i] = 1.0f;
}

static dq_plan *make_plan(dq_context *ctx)
{
    dq_rotation *r = NULL;
    ck_assert_int_eq(dq_rotation_from_matrices(ctx, COLS, 2, 0, identity2, 4, &r), DQ_OK);
    const dq_rotation *rots[1] = {r};
    dq_plan *pl = NULL;
    ck_assert_int_eq(dq_plan_assemble(ctx, COLS, NULL, 1, rots, NULL, &pl), DQ_OK);
    dq_rotation_free(r);
    return pl;
}

static void *make_object(dq_context *ctx, int t, objects *o)
{
    switch (t) {
    case T_CONTEXT:
        return quarantine_context(1);
    case T_CALIB: {
        dq_calib *c = NULL;
        ck_assert_int_eq(dq_calib_create(ctx, NULL, COLS, &c), DQ_OK);
        ck_assert_int_eq(dq_calib_observe(c, acts, TOKENS, COLS, COLS), DQ_OK);
        return c;
    }
    case T_ROTATION: {
        dq_rotation *r = NULL;
        ck_assert_int_eq(dq_rotation_from_matrices(ctx, COLS, 2, 0, identity2, 4, &r), DQ_OK);
        return r;
    }
    case T_PLAN:
        return make_plan(ctx);
    case T_QMATRIX: {
        dq_qmatrix *q = NULL;
        ck_assert_int_eq(dq_qmatrix_pack(ctx, NULL, weights, ROWS, COLS, COLS, NULL, NULL, &q),
                         DQ_OK);
        return q;
    }
    case T_LWC: {
        dq_lwc_params p;
        dq_lwc_params_init(&p, sizeof p);
        p.epochs = 1;
        dq_lwc *l = NULL;
        ck_assert_int_eq(dq_lwc_create(ctx, &p, NULL, weights, ROWS, COLS, COLS, acts, TOKENS,
                                       COLS, &l),
                         DQ_OK);
        return l;
    }
    case T_LINEAR: {
        dq_qmatrix *q = make_object(ctx, T_QMATRIX, o);
        dq_linear *lin = NULL;
        ck_assert_int_eq(dq_linear_create(ctx, NULL, NULL, q, NULL, &lin), DQ_OK);
        dq_qmatrix_free(q);
        return lin;
    }
    case T_WRITER: {
        dq_file_writer *w = NULL;
        ck_assert_int_eq(dq_file_writer_create(ctx, &w), DQ_OK);
        return w;
    }
    case T_READER: {
        dq_file_writer *w = make_object(ctx, T_WRITER, o);
        const int64_t shape[2] = {ROWS, COLS};
        ck_assert_int_eq(dq_file_writer_add_tensor_f32(w, "w", weights, 2, shape), DQ_OK);
        ck_assert_int_eq(dq_file_writer_add_metadata(w, "k", "v"), DQ_OK);
        size_t size = 0;
        ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, &size), DQ_OK);
        o->file = malloc(size);
        ck_assert_ptr_nonnull(o->file);
        ck_assert_int_eq(dq_file_writer_to_buffer(w, o->file, size, &o->file_size), DQ_OK);
        dq_file_writer_free(w);
        dq_file_reader *r = NULL;
        ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, o->file, o->file_size, &r),
                         DQ_OK);
        return r;
    }
    case T_HESSIAN: {
        dq_hessian *hs = NULL;
        ck_assert_int_eq(dq_hessian_create(ctx, NULL, COLS, &hs), DQ_OK);
        ck_assert_int_eq(dq_hessian_observe(hs, acts, TOKENS, COLS, COLS), DQ_OK);
        return hs;
    }
    }
    return NULL;
}

static void free_object(int t, void *h)
{
    switch (t) {
    case T_CONTEXT: dq_context_free(h); break;
    case T_CALIB: dq_calib_free(h); break;
    case T_ROTATION: dq_rotation_free(h); break;
    case T_PLAN: dq_plan_free(h); break;
    case T_QMATRIX: dq_qmatrix_free(h); break;
    case T_LWC: dq_lwc_free(h); break;
    case T_LINEAR: dq_linear_free(h); break;
    case T_WRITER: dq_file_writer_free(h); break;
    case T_READER: dq_file_reader_free(h); break;
    case T_HESSIAN: dq_hessian_free(h); break;
    }
}

/* ---- every entry point, with the handle under test in one argument ---- */

/* Everything a call may write: filled with a pattern before each call, compared after. */
typedef struct out_area {
    float f[1024];
    int64_t i64[32];
    int32_t i32[TOKENS * COLS];
    uint64_t u64;
    size_t sz[2];
    char str[64];
    const void *ptr[4];
    double d[COLS * COLS];
    uint8_t work[4096];
} out_area;

static out_area area, pattern;
static void *out_handle; /* a creator's *out: set to NULL on failure (documented) */
static objects live;     /* the valid arguments next to the one under test */

#define L(t) (live.h[t])
#define CTX ((dq_context *)L(T_CONTEXT))
#define OUT ((void *)&out_handle)

typedef dq_status (*call_fn)(void *h);
typedef struct entry {
    const char *func, *arg; /* the function and the argument's name in its messages */
    int type;               /* the handle type the argument expects */
    int creator;            /* 1 + the type of the handle it creates, or 0 */
    call_fn call;
} entry;

#define ENTRY(fn, id, argname, t, made, ...)    \
    static dq_status call_##fn##_##id(void *h)  \
    {                                           \
        (void)h;                                \
        return __VA_ARGS__;                     \
    }
#include "test_handles_calls.h"
#undef ENTRY

#define ENTRY(fn, id, argname, t, made, ...) {#fn, argname, t, made, call_##fn##_##id},
static const entry entries[] = {
#include "test_handles_calls.h"
};
#undef ENTRY
#define N_ENTRIES ((int)(sizeof entries / sizeof entries[0]))

static void arm(void)
{
    memcpy(&area, &pattern, sizeof area);
    out_handle = (void *)&pattern; /* any non-NULL value */
    cap.errors = 0;
    cap.last[0] = '\0';
}

/* The call was refused with nothing written; its error line names the function and argument
 * and carries `what`. */
static void expect_refused(const entry *e, dq_status st, const char *what, int logged)
{
    ck_assert_msg(st == DQ_ERR_INVALID_ARG, "%s(%s): %s, expected DQ_ERR_INVALID_ARG (%s)",
                  e->func, e->arg, dq_status_name(st), what);
    ck_assert_msg(memcmp(&area, &pattern, sizeof area) == 0, "%s(%s): an output was written",
                  e->func, e->arg);
    if (e->creator)
        ck_assert_msg(out_handle == NULL, "%s(%s): *out not NULL on failure", e->func, e->arg);
    if (!logged)
        return;
    ck_assert_msg(cap.errors == 1, "%s(%s): %d error lines (last: %s)", e->func, e->arg,
                  cap.errors, cap.last);
    char head[128];
    snprintf(head, sizeof head, "%s: %s: ", e->func, e->arg);
    ck_assert_msg(strstr(cap.last, head) == cap.last, "'%s' does not start: %s", head, cap.last);
    ck_assert_msg(strstr(cap.last, what) != NULL, "'%s' not in: %s", what, cap.last);
}

static void make_all(objects *o, dq_context *ctx)
{
    memset(o, 0, sizeof *o);
    for (int t = 0; t < N_TYPES; t++)
        o->h[t] = t == T_CONTEXT ? ctx : make_object(ctx, t, o);
}

static void free_all(objects *o)
{
    for (int t = N_TYPES - 1; t >= 0; t--)
        free_object(t, o->h[t]);
    free(o->file);
}

static void setup(void)
{
    memset(&qa, 0, sizeof qa);
    memset(&cap, 0, sizeof cap);
    memset(&pattern, 0xA5, sizeof pattern);
    fill_inputs();
}

static void teardown_checks(void)
{
    ck_assert_int_eq(qa.double_releases, 0);
    ck_assert_int_eq((long)qa.n, qa.allocs); /* every block given back once: no leak */
    quarantine_release(&qa);
}

START_TEST(every_entry_point_refuses_every_other_handle_type)
{
    setup();
    make_all(&live, quarantine_context(1));
    ck_assert_int_eq(cap.errors, 0);
    int checked = 0;
    for (int i = 0; i < N_ENTRIES; i++) {
        const entry *e = &entries[i];
        for (int t = 0; t < N_TYPES; t++) {
            if (t == e->type)
                continue;
            char what[128];
            snprintf(what, sizeof what, "a %s handle was passed where a %s is expected",
                     type_name[t], type_name[e->type]);
            arm();
            expect_refused(e, e->call(L(t)), what, 1);
            checked++;
        }
        /* The right type passes the check (the call may still fail on its other arguments,
         * never for the handle). */
        arm();
        (void)e->call(L(e->type));
        ck_assert_msg(strstr(cap.last, "handle was passed") == NULL, "%s(%s): %s", e->func,
                      e->arg, cap.last);
        if (e->creator && out_handle != NULL && out_handle != (void *)&pattern) {
            free_object(e->creator - 1, out_handle); /* a creator that succeeded */
        }
    }
    ck_assert_int_ge(checked, 8 * 80);
    /* Every *_free given another type's handle: reported, nothing released, the object stays
     * usable (free_all below frees each once). */
    for (int t = 0; t < N_TYPES; t++)
        for (int u = 0; u < N_TYPES; u++) {
            if (u == t)
                continue;
            char what[128];
            snprintf(what, sizeof what, "a %s handle was passed where a %s is expected",
                     type_name[u], type_name[t]);
            size_t held = qa.n;
            cap.errors = 0;
            free_object(t, L(u));
            EXPECT_LOG(what, "_free: ");
            ck_assert_uint_eq(qa.n, held);
        }
    free_all(&live);
    ck_assert_int_eq(cap.errors, 0);
    teardown_checks();
}
END_TEST

/* A pointer that is no handle at all (zeroed memory) is refused too; nothing is logged where
 * the call has no context to log through. */
START_TEST(a_stray_pointer_is_refused)
{
    setup();
    make_all(&live, quarantine_context(1));
    uint64_t *stray = calloc(64, sizeof *stray);
    ck_assert_ptr_nonnull(stray);
    for (int i = 0; i < N_ENTRIES; i++) {
        arm();
        expect_refused(&entries[i], entries[i].call(stray), "not a live", 0);
    }
    free(stray);
    free_all(&live);
    teardown_checks();
}
END_TEST

/* Each type: free, free again (reported, nothing released twice), then use it (refused,
 * nothing written). */
START_TEST(double_free_and_use_after_free_are_reported)
{
    setup();
    dq_context *ctx = quarantine_context(1);
    make_all(&live, ctx);
    for (int i = 0; i < N_ENTRIES; i++) {
        const entry *e = &entries[i];
        objects extra = {0};
        void *h = make_object(CTX, e->type, &extra);
        cap.errors = 0;
        size_t held = qa.n;
        free_object(e->type, h);
        ck_assert_int_eq(cap.errors, 0);
        ck_assert_uint_gt(qa.n, held);
        held = qa.n;
        char what[128];
        snprintf(what, sizeof what, "a freed %s handle was passed", type_name[e->type]);
        free_object(e->type, h);
        EXPECT_LOG(what, "DQ_ERR_INVALID_ARG");
        ck_assert_uint_eq(qa.n, held);
        arm();
        expect_refused(e, e->call(h), what, 1);
        ck_assert_uint_eq(qa.n, held);
        free(extra.file);
    }
    free_all(&live);
    ck_assert_int_eq(qa.double_releases, 0);
    teardown_checks();
}
END_TEST

/* A context with its own thread pool lives in the pool's block: freeing it twice is caught
 * while objects keep the pool, and after the last of them is gone. */
START_TEST(pooled_context_double_free)
{
    setup();
    dq_context *ctx = quarantine_context(2);
    dq_plan *pl = make_plan(ctx);
    dq_context_free(ctx);
    ck_assert_int_eq(cap.errors, 0);
    dq_context_free(ctx);
    EXPECT_LOG("dq_context_free: ctx: a freed dq_context handle was passed");
    dq_calib *cal = (dq_calib *)&pattern;
    ck_assert_int_eq(dq_calib_create(ctx, NULL, COLS, &cal), DQ_ERR_INVALID_ARG);
    ck_assert_ptr_null(cal);
    EXPECT_LOG("dq_calib_create: ctx: a freed dq_context handle was passed");
    int64_t cols = 0;
    ck_assert_int_eq(dq_plan_width(pl, &cols), DQ_OK); /* the plan keeps its own copy */
    ck_assert_int_eq(cols, COLS);
    dq_plan_free(pl);
    ck_assert_int_eq(cap.errors, 0);
    dq_context_free(ctx);
    EXPECT_LOG("a freed dq_context handle was passed");
    teardown_checks();
}
END_TEST

/* A plan freed by its creator while a layer holds it stays usable by the layer; a second
 * dq_plan_free is reported and takes nothing from the layer. */
START_TEST(plan_freed_twice_while_a_layer_holds_it)
{
    setup();
    dq_context *ctx = quarantine_context(1);
    dq_plan *pl = make_plan(ctx);
    dq_qmatrix *q = NULL;
    ck_assert_int_eq(dq_qmatrix_pack_transformed(ctx, NULL, pl, weights, ROWS, COLS, COLS, NULL,
                                                 NULL, &q),
                     DQ_OK);
    dq_linear *lin = NULL;
    ck_assert_int_eq(dq_linear_create(ctx, NULL, pl, q, NULL, &lin), DQ_OK);
    dq_qmatrix_free(q);
    size_t held = qa.n;
    dq_plan_free(pl);
    dq_plan_free(pl);
    EXPECT_LOG("dq_plan_free: pl: the plan was already freed", "DQ_ERR_INVALID_ARG");
    ck_assert_uint_eq(qa.n, held); /* still alive: the layer's reference */
    float y[TOKENS * ROWS];
    ck_assert_int_eq(dq_linear_forward(lin, acts, TOKENS, COLS, COLS, y, ROWS, NULL, 0), DQ_OK);
    dq_linear_free(lin);
    ck_assert_uint_gt(qa.n, held); /* the plan went with the layer */
    ck_assert_int_eq(cap.errors, 0);
    dq_plan_free(pl);
    EXPECT_LOG("dq_plan_free: pl: a freed dq_plan handle was passed");
    dq_context_free(ctx);
    teardown_checks();
}
END_TEST

/* A matrix loaded from a layer's blocked form, with each of its allocations failing in turn:
 * every failure gives back, through the context's allocator, all it took (the matrix object
 * included, which must hold its context before anything can fail). */
START_TEST(blocked_matrix_load_failures_free_through_the_context)
{
    setup();
    dq_context *ctx = quarantine_context(1);
    dq_linear *lin = make_object(ctx, T_LINEAR, NULL);
    dq_file_writer *w = make_object(ctx, T_WRITER, NULL);
    ck_assert_int_eq(dq_file_writer_add_linear_layer(w, "ll", lin, NULL), DQ_OK);
    size_t size = 0;
    ck_assert_int_eq(dq_file_writer_to_buffer(w, NULL, 0, &size), DQ_OK);
    uint8_t *buf = malloc(size);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(dq_file_writer_to_buffer(w, buf, size, &size), DQ_OK);
    dq_file_reader *r = NULL;
    ck_assert_int_eq(dq_file_reader_from_buffer(ctx, NULL, buf, size, &r), DQ_OK);
    test_alloc a = {0};
    dq_context *actx = test_alloc_context(&a);
    ck_assert_ptr_nonnull(actx);
    const long base = a.live;
    int failures = 0;
    for (long k = 1;; k++) {
        a.fail_at = a.total + k; /* the k-th allocation of this call fails */
        dq_qmatrix *q = (dq_qmatrix *)&pattern;
        dq_status st = dq_file_reader_get_qmatrix(r, actx, "ll.weight", &q);
        if (st == DQ_OK) {
            a.fail_at = 0;
            int64_t rows = 0, cols = 0;
            ck_assert_int_eq(dq_qmatrix_layout(q, &rows, &cols, NULL, NULL, NULL, NULL, NULL),
                             DQ_OK);
            ck_assert_int_eq(rows, ROWS);
            ck_assert_int_eq(cols, COLS);
            dq_qmatrix_free(q);
            ck_assert_int_eq(a.live, base);
            break;
        }
        ck_assert_int_eq(st, DQ_ERR_NOMEM);
        ck_assert_ptr_null(q);
        ck_assert_msg(a.live == base, "allocation %ld failing: %ld blocks not given back", k,
                      a.live - base);
        failures++;
        ck_assert_int_lt(k, 1000);
    }
    ck_assert_int_ge(failures, 3);
    dq_context_free(actx);
    ck_assert_int_eq(a.live, 0);
    dq_file_reader_free(r);
    free(buf);
    dq_file_writer_free(w);
    dq_linear_free(lin);
    dq_context_free(ctx);
    teardown_checks();
}
END_TEST

static Suite *handles_suite(void)
{
    Suite *s = suite_create("handles");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, every_entry_point_refuses_every_other_handle_type);
    tcase_add_test(tc, a_stray_pointer_is_refused);
    tcase_add_test(tc, double_free_and_use_after_free_are_reported);
    tcase_add_test(tc, pooled_context_double_free);
    tcase_add_test(tc, plan_freed_twice_while_a_layer_holds_it);
    tcase_add_test(tc, blocked_matrix_load_failures_free_through_the_context);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return dq_check_run(handles_suite(), 0);
}
