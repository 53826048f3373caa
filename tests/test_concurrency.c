/* Many threads share one plan and one quantized layer: every thread's results must equal the
 * serial ones bit for bit. A plain program (no Check fork machinery) so that ThreadSanitizer
 * sees every access. Exit 0 on success, 1 on any mismatch or error. */
#include "dq_test.h"

#include <duquant.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TOKENS = 24, COLS = 172, OUT = 40, THREADS = 8, ROUNDS = 6 };

typedef struct shared_state {
    const dq_plan *plan;
    const dq_linear *layer;
    const float *x;           /* TOKENS x COLS */
    const float *want_plan;   /* serial plan output */
    const float *want_layer;  /* serial layer output */
} shared_state;

typedef struct job {
    const shared_state *s;
    int id;
    int failures;
} job;

static void *worker(void *arg)
{
    job *j = arg;
    const shared_state *s = j->s;
    float *xt = malloc(sizeof(float) * TOKENS * COLS);
    float *y = malloc(sizeof(float) * TOKENS * OUT);
    size_t ws = 0;
    void *work = NULL;
    if (!xt || !y || dq_linear_workspace_size(s->layer, TOKENS, &ws) != DQ_OK) {
        j->failures++;
        goto out;
    }
    /* Odd threads bring their own workspace, even ones let the library allocate. */
    if (j->id & 1)
        work = malloc(ws ? ws : 1);
    for (int r = 0; r < ROUNDS; r++) {
        if (dq_plan_apply_act_to(s->plan, s->x, TOKENS, COLS, COLS, xt, COLS, NULL, 0) != DQ_OK ||
            memcmp(xt, s->want_plan, sizeof(float) * TOKENS * COLS) != 0)
            j->failures++;
        if (dq_linear_forward(s->layer, s->x, TOKENS, COLS, COLS, y, OUT, work, ws) != DQ_OK ||
            memcmp(y, s->want_layer, sizeof(float) * TOKENS * OUT) != 0)
            j->failures++;
    }
out:
    free(work);
    free(xt);
    free(y);
    return NULL;
}

int main(void)
{
    int failures = 0;
    test_rng rng = {2024};
    float *x = malloc(sizeof(float) * TOKENS * COLS);
    float *w = malloc(sizeof(float) * OUT * COLS);
    float *w_absmax = malloc(sizeof(float) * COLS);
    float *want_plan = malloc(sizeof(float) * TOKENS * COLS);
    float *want_layer = malloc(sizeof(float) * TOKENS * OUT);
    dq_context *ctx = NULL;
    dq_plan *plan = NULL;
    dq_qmatrix *q = NULL;
    dq_linear *layer = NULL;
    if (!x || !w || !w_absmax || !want_plan || !want_layer)
        return 1;
    test_fill_activations(&rng, x, TOKENS, COLS, COLS, 1);
    for (int64_t i = 0; i < OUT * COLS; i++)
        w[i] = (float)(0.05 * test_rng_normal(&rng));

    dq_context_params cp;
    dq_plan_params pp;
    if (dq_context_params_init(&cp, sizeof cp) != DQ_OK || dq_plan_params_init(&pp, sizeof pp))
        return 1;
    cp.n_threads = 2;
    pp.block_size = 64; /* 172 = two full blocks and a remainder block of 44 */
    pp.flags |= DQ_PLAN_F_PER_BLOCK_R;
    if (dq_context_create(&cp, &ctx) != DQ_OK ||
        dq_smooth_weight_absmax(w, OUT, COLS, COLS, 0, w_absmax) != DQ_OK ||
        dq_plan_build_from_sample(ctx, &pp, NULL, x, TOKENS, COLS, COLS, w_absmax, &plan) !=
            DQ_OK ||
        dq_plan_transform_weight(plan, w, OUT, COLS, COLS) != DQ_OK ||
        dq_qmatrix_pack(ctx, NULL, w, OUT, COLS, COLS, NULL, NULL, &q) != DQ_OK ||
        dq_linear_create(ctx, NULL, plan, q, NULL, &layer) != DQ_OK) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }
    /* The layer copied the weights: freeing them here checks that it does not borrow them. */
    dq_qmatrix_free(q);

    if (dq_plan_apply_act_to(plan, x, TOKENS, COLS, COLS, want_plan, COLS, NULL, 0) != DQ_OK ||
        dq_linear_forward(layer, x, TOKENS, COLS, COLS, want_layer, OUT, NULL, 0) != DQ_OK) {
        fprintf(stderr, "serial run failed\n");
        return 1;
    }

    shared_state s = {plan, layer, x, want_plan, want_layer};
    pthread_t th[THREADS];
    job jobs[THREADS];
    for (int k = 0; k < THREADS; k++) {
        jobs[k] = (job){&s, k, 0};
        if (pthread_create(&th[k], NULL, worker, &jobs[k]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    for (int k = 0; k < THREADS; k++) {
        pthread_join(th[k], NULL);
        failures += jobs[k].failures;
    }
    printf("%d threads x %d rounds of plan apply + layer forward: %d mismatches\n", THREADS,
           ROUNDS, failures);

    dq_linear_free(layer);
    dq_plan_free(plan);
    dq_context_free(ctx);
    free(x);
    free(w);
    free(w_absmax);
    free(want_plan);
    free(want_layer);
    return failures ? 1 : 0;
}
