/* Frozen copies of the params structs as released in 1.0. Today's structs must begin with
 * exactly these members (same offsets, same sizes), and every *_params_init must accept the
 * released size, so a program compiled against 1.0 keeps working. Never edit a frozen copy:
 * a new release adds its own copies beside these (1.2: context and quant params grew). */
#include <duquant.h>
#include <stddef.h>
#include <stdio.h>

static int failures;

#define CHECK(cond)                                                    \
    do {                                                               \
        if (!(cond)) {                                                 \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                \
        }                                                              \
    } while (0)

/* The member sits at the same offset with the same size in both structs. */
#define SAME_MEMBER(cur, frozen, m)                                      \
    CHECK(offsetof(cur, m) == offsetof(frozen, m) &&                     \
          sizeof(((cur *)0)->m) == sizeof(((frozen *)0)->m))

typedef struct dq_context_params_1_0 {
    uint32_t struct_size;
    uint32_t flags;
    dq_alloc_fn alloc;
    dq_free_fn free;
    void *alloc_user;
    dq_log_fn log;
    void *log_user;
    int32_t log_level;
    int32_t n_threads;
} dq_context_params_1_0;

typedef struct dq_calib_params_1_0 {
    uint32_t struct_size;
    uint32_t flags;
    int64_t sample_tokens;
    int32_t sample_mode;
} dq_calib_params_1_0;

typedef struct dq_rotation_params_1_0 {
    uint32_t struct_size;
    uint32_t flags;
    uint64_t seed;
    const float *qprime;
    int32_t method;
    int32_t block_size;
    int32_t max_steps;
} dq_rotation_params_1_0;

typedef struct dq_plan_params_1_0 {
    uint32_t struct_size;
    uint32_t flags;
    uint64_t seed;
    int32_t method;
    int32_t block_size;
    int32_t max_rotation_step;
    int32_t permutation_times;
    float smooth_alpha;
    const struct dq_refine_params *refine;
} dq_plan_params_1_0;

typedef struct dq_quant_params_1_0 {
    uint32_t struct_size;
    uint32_t flags;
    int32_t bits;
    int32_t scheme;
    int32_t group_size;
    float clip_ratio;
} dq_quant_params_1_0;

typedef struct dq_lwc_params_1_0 {
    uint32_t struct_size;
    uint32_t flags;
    uint64_t seed;
    int32_t epochs;
    int32_t batch_tokens;
    float learning_rate;
    float init_value;
    int32_t act_bits;
    int32_t act_scheme;
    float act_clip_ratio;
    dq_lwc_epoch_fn on_epoch;
    void *on_epoch_user;
} dq_lwc_params_1_0;

typedef struct dq_linear_params_1_0 {
    uint32_t struct_size;
    uint32_t flags;
    int32_t act_bits;
    int32_t act_scheme;
    float act_clip_ratio;
} dq_linear_params_1_0;

typedef struct dq_file_params_1_0 {
    uint32_t struct_size;
    uint32_t flags;
    uint64_t max_header_bytes;
} dq_file_params_1_0;

typedef struct dq_refine_params_1_0 {
    uint32_t struct_size;
    uint32_t flags;
    uint64_t seed;
    int32_t method;
    int32_t iterations;
    float learning_rate;
    float weight_exponent;
    int64_t batch_rows;
    int32_t act_bits;
    int32_t act_scheme;
    float act_clip_ratio;
} dq_refine_params_1_0;

static void check_dq_context_params(void)
{
    SAME_MEMBER(dq_context_params, dq_context_params_1_0, struct_size);
    SAME_MEMBER(dq_context_params, dq_context_params_1_0, flags);
    SAME_MEMBER(dq_context_params, dq_context_params_1_0, alloc);
    SAME_MEMBER(dq_context_params, dq_context_params_1_0, free);
    SAME_MEMBER(dq_context_params, dq_context_params_1_0, alloc_user);
    SAME_MEMBER(dq_context_params, dq_context_params_1_0, log);
    SAME_MEMBER(dq_context_params, dq_context_params_1_0, log_user);
    SAME_MEMBER(dq_context_params, dq_context_params_1_0, log_level);
    SAME_MEMBER(dq_context_params, dq_context_params_1_0, n_threads);
    CHECK(sizeof(dq_context_params) >= sizeof(dq_context_params_1_0));
    dq_context_params_1_0 old;
    CHECK(dq_context_params_init((dq_context_params *)(void *)&old, sizeof old) == DQ_OK);
    CHECK(old.struct_size == sizeof old);
}

static void check_dq_calib_params(void)
{
    SAME_MEMBER(dq_calib_params, dq_calib_params_1_0, struct_size);
    SAME_MEMBER(dq_calib_params, dq_calib_params_1_0, flags);
    SAME_MEMBER(dq_calib_params, dq_calib_params_1_0, sample_tokens);
    SAME_MEMBER(dq_calib_params, dq_calib_params_1_0, sample_mode);
    CHECK(sizeof(dq_calib_params) >= sizeof(dq_calib_params_1_0));
    dq_calib_params_1_0 old;
    CHECK(dq_calib_params_init((dq_calib_params *)(void *)&old, sizeof old) == DQ_OK);
    CHECK(old.struct_size == sizeof old);
}

static void check_dq_rotation_params(void)
{
    SAME_MEMBER(dq_rotation_params, dq_rotation_params_1_0, struct_size);
    SAME_MEMBER(dq_rotation_params, dq_rotation_params_1_0, flags);
    SAME_MEMBER(dq_rotation_params, dq_rotation_params_1_0, seed);
    SAME_MEMBER(dq_rotation_params, dq_rotation_params_1_0, qprime);
    SAME_MEMBER(dq_rotation_params, dq_rotation_params_1_0, method);
    SAME_MEMBER(dq_rotation_params, dq_rotation_params_1_0, block_size);
    SAME_MEMBER(dq_rotation_params, dq_rotation_params_1_0, max_steps);
    CHECK(sizeof(dq_rotation_params) >= sizeof(dq_rotation_params_1_0));
    dq_rotation_params_1_0 old;
    CHECK(dq_rotation_params_init((dq_rotation_params *)(void *)&old, sizeof old) == DQ_OK);
    CHECK(old.struct_size == sizeof old);
}

static void check_dq_plan_params(void)
{
    SAME_MEMBER(dq_plan_params, dq_plan_params_1_0, struct_size);
    SAME_MEMBER(dq_plan_params, dq_plan_params_1_0, flags);
    SAME_MEMBER(dq_plan_params, dq_plan_params_1_0, seed);
    SAME_MEMBER(dq_plan_params, dq_plan_params_1_0, method);
    SAME_MEMBER(dq_plan_params, dq_plan_params_1_0, block_size);
    SAME_MEMBER(dq_plan_params, dq_plan_params_1_0, max_rotation_step);
    SAME_MEMBER(dq_plan_params, dq_plan_params_1_0, permutation_times);
    SAME_MEMBER(dq_plan_params, dq_plan_params_1_0, smooth_alpha);
    SAME_MEMBER(dq_plan_params, dq_plan_params_1_0, refine);
    CHECK(sizeof(dq_plan_params) >= sizeof(dq_plan_params_1_0));
    dq_plan_params_1_0 old;
    CHECK(dq_plan_params_init((dq_plan_params *)(void *)&old, sizeof old) == DQ_OK);
    CHECK(old.struct_size == sizeof old);
}

static void check_dq_quant_params(void)
{
    SAME_MEMBER(dq_quant_params, dq_quant_params_1_0, struct_size);
    SAME_MEMBER(dq_quant_params, dq_quant_params_1_0, flags);
    SAME_MEMBER(dq_quant_params, dq_quant_params_1_0, bits);
    SAME_MEMBER(dq_quant_params, dq_quant_params_1_0, scheme);
    SAME_MEMBER(dq_quant_params, dq_quant_params_1_0, group_size);
    SAME_MEMBER(dq_quant_params, dq_quant_params_1_0, clip_ratio);
    CHECK(sizeof(dq_quant_params) >= sizeof(dq_quant_params_1_0));
    dq_quant_params_1_0 old;
    CHECK(dq_quant_params_init((dq_quant_params *)(void *)&old, sizeof old) == DQ_OK);
    CHECK(old.struct_size == sizeof old);
}

static void check_dq_lwc_params(void)
{
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, struct_size);
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, flags);
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, seed);
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, epochs);
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, batch_tokens);
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, learning_rate);
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, init_value);
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, act_bits);
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, act_scheme);
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, act_clip_ratio);
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, on_epoch);
    SAME_MEMBER(dq_lwc_params, dq_lwc_params_1_0, on_epoch_user);
    CHECK(sizeof(dq_lwc_params) >= sizeof(dq_lwc_params_1_0));
    dq_lwc_params_1_0 old;
    CHECK(dq_lwc_params_init((dq_lwc_params *)(void *)&old, sizeof old) == DQ_OK);
    CHECK(old.struct_size == sizeof old);
}

static void check_dq_linear_params(void)
{
    SAME_MEMBER(dq_linear_params, dq_linear_params_1_0, struct_size);
    SAME_MEMBER(dq_linear_params, dq_linear_params_1_0, flags);
    SAME_MEMBER(dq_linear_params, dq_linear_params_1_0, act_bits);
    SAME_MEMBER(dq_linear_params, dq_linear_params_1_0, act_scheme);
    SAME_MEMBER(dq_linear_params, dq_linear_params_1_0, act_clip_ratio);
    CHECK(sizeof(dq_linear_params) >= sizeof(dq_linear_params_1_0));
    dq_linear_params_1_0 old;
    CHECK(dq_linear_params_init((dq_linear_params *)(void *)&old, sizeof old) == DQ_OK);
    CHECK(old.struct_size == sizeof old);
}

static void check_dq_file_params(void)
{
    SAME_MEMBER(dq_file_params, dq_file_params_1_0, struct_size);
    SAME_MEMBER(dq_file_params, dq_file_params_1_0, flags);
    SAME_MEMBER(dq_file_params, dq_file_params_1_0, max_header_bytes);
    CHECK(sizeof(dq_file_params) >= sizeof(dq_file_params_1_0));
    dq_file_params_1_0 old;
    CHECK(dq_file_params_init((dq_file_params *)(void *)&old, sizeof old) == DQ_OK);
    CHECK(old.struct_size == sizeof old);
}

static void check_dq_refine_params(void)
{
    SAME_MEMBER(dq_refine_params, dq_refine_params_1_0, struct_size);
    SAME_MEMBER(dq_refine_params, dq_refine_params_1_0, flags);
    SAME_MEMBER(dq_refine_params, dq_refine_params_1_0, seed);
    SAME_MEMBER(dq_refine_params, dq_refine_params_1_0, method);
    SAME_MEMBER(dq_refine_params, dq_refine_params_1_0, iterations);
    SAME_MEMBER(dq_refine_params, dq_refine_params_1_0, learning_rate);
    SAME_MEMBER(dq_refine_params, dq_refine_params_1_0, weight_exponent);
    SAME_MEMBER(dq_refine_params, dq_refine_params_1_0, batch_rows);
    SAME_MEMBER(dq_refine_params, dq_refine_params_1_0, act_bits);
    SAME_MEMBER(dq_refine_params, dq_refine_params_1_0, act_scheme);
    SAME_MEMBER(dq_refine_params, dq_refine_params_1_0, act_clip_ratio);
    CHECK(sizeof(dq_refine_params) >= sizeof(dq_refine_params_1_0));
    dq_refine_params_1_0 old;
    CHECK(dq_refine_params_init((dq_refine_params *)(void *)&old, sizeof old) == DQ_OK);
    CHECK(old.struct_size == sizeof old);
}

/* Frozen copies of the structs that grew in 1.2. */
typedef struct dq_context_params_1_2 {
    uint32_t struct_size;
    uint32_t flags;
    dq_alloc_fn alloc;
    dq_free_fn free;
    void *alloc_user;
    dq_log_fn log;
    void *log_user;
    int32_t log_level;
    int32_t n_threads;
    dq_parallel_fn parallel_for;
    void *parallel_user;
} dq_context_params_1_2;

typedef struct dq_quant_params_1_2 {
    uint32_t struct_size;
    uint32_t flags;
    int32_t bits;
    int32_t scheme;
    int32_t group_size;
    float clip_ratio;
    uint64_t plan_fingerprint;
} dq_quant_params_1_2;

static void check_1_2_layouts(void)
{
    SAME_MEMBER(dq_context_params, dq_context_params_1_2, n_threads);
    SAME_MEMBER(dq_context_params, dq_context_params_1_2, parallel_for);
    SAME_MEMBER(dq_context_params, dq_context_params_1_2, parallel_user);
    CHECK(sizeof(dq_context_params) >= sizeof(dq_context_params_1_2));
    SAME_MEMBER(dq_quant_params, dq_quant_params_1_2, clip_ratio);
    SAME_MEMBER(dq_quant_params, dq_quant_params_1_2, plan_fingerprint);
    CHECK(sizeof(dq_quant_params) >= sizeof(dq_quant_params_1_2));
    dq_context_params_1_2 c;
    CHECK(dq_context_params_init((dq_context_params *)(void *)&c, sizeof c) == DQ_OK);
    CHECK(c.struct_size == sizeof c && c.parallel_for == NULL && c.parallel_user == NULL);
    dq_quant_params_1_2 q;
    CHECK(dq_quant_params_init((dq_quant_params *)(void *)&q, sizeof q) == DQ_OK);
    CHECK(q.struct_size == sizeof q && q.plan_fingerprint == 0);
}

int main(void)
{
    check_dq_context_params();
    check_dq_calib_params();
    check_dq_rotation_params();
    check_dq_plan_params();
    check_dq_quant_params();
    check_dq_lwc_params();
    check_dq_linear_params();
    check_dq_file_params();
    check_dq_refine_params();
    check_1_2_layouts();
    printf("%d params structs checked against their 1.0 layout, 2 against 1.2: %d failures\n",
           9, failures);
    return failures ? 1 : 0;
}
