/* W4A4 quality of channel transforms, side by side.
 *
 * For each reference case (a folder with manifest.json, X.f32, W.f32, Xt.f32, Wt.f32, as in
 * the project's golden vectors) or, without one, for a synthetic outlier-heavy layer, this
 * builds plans for RTN, Hadamard, random orthogonal and DuQuant (reference mode; column rule
 * with one shared R, the library default; one R per block; one R per block searched with the
 * Hadamard base), each without and with smoothing, and prints the relative output error
 * ||X W^T - Q(X') Q(W')^T||_F / ||X W^T||_F with per-token asymmetric 4-bit activations and
 * per-output-channel asymmetric 4-bit weights (clip 1.0). Two DuQuant plans also get their
 * weights clipped: at the reference's fixed ratio 0.8, and by factors learned with LWC (60
 * epochs, batches of 8 tokens, W4A4 loss, on the same tokens). Where the case folder holds
 * the reference implementation's own Xt and Wt, their error is printed too. Each table ends
 * with the claims it supports (see verdict); --check makes a failed claim fail the program.
 *
 * usage: transform_quality [--check] [golden-dir]   (default: $DUQUANT_GOLDEN_DIR) */
#define _POSIX_C_SOURCE 200809L /* opendir, strdup */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "case_files.h"
#include "duquant.h"

typedef struct layer {
    int64_t t, c, out;
    int32_t block, steps;
    float alpha;
    float *x, *w;
} layer;

/* Loads X and W and the transform settings of a case; -1 when it is not a usable case. */
static int load_case(const char *dir, layer *l, int *smooth_applied, int *qprime_given)
{
    char path[4096];
    long size = 0;
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    char *m = case_read_file(path, &size);
    double t, c, bs, steps, alpha, smooth;
    if (!m || case_manifest_number(m, "T", &t) || case_manifest_number(m, "C", &c) ||
        case_manifest_number(m, "block_size", &bs) ||
        case_manifest_number(m, "max_rotation_step", &steps) ||
        case_manifest_number(m, "smooth_alpha", &alpha) ||
        case_manifest_number(m, "smooth_applied", &smooth)) {
        free(m);
        return -1;
    }
    *qprime_given = strstr(m, "\"q_prime\": \"given\"") != NULL;
    *smooth_applied = smooth != 0;
    free(m);
    l->t = (int64_t)t;
    l->c = (int64_t)c;
    l->block = (int32_t)bs;
    l->steps = (int32_t)steps;
    l->alpha = (float)alpha;
    snprintf(path, sizeof path, "%s/W.f32", dir);
    char *w = case_read_file(path, &size);
    free(w);
    l->out = size / (long)sizeof(float) / l->c;
    l->x = case_read_f32(dir, "X", l->t * l->c);
    l->w = case_read_f32(dir, "W", l->out * l->c);
    return l->x && l->w ? 0 : -1;
}

/* Laplace activations with a few 40x channels and massive values; Gaussian weights. */
static void synthetic_layer(layer *l)
{
    *l = (layer){128, 512, 256, 128, 256, 0.6f, NULL, NULL};
    l->x = malloc((size_t)(l->t * l->c) * sizeof(float));
    l->w = malloc((size_t)(l->out * l->c) * sizeof(float));
    case_synthetic_layer(l->x, l->t, l->c, l->w, l->out);
}

/* How the transformed weights are clipped before quantization. */
enum { CLIP_NONE, CLIP_FIXED, CLIP_LWC };
#define FIXED_WEIGHT_CLIP 0.8f
#define LWC_EPOCHS 60
#define LWC_BATCH 8

/* Per-row clip factors learned by LWC on (xt, wt) with the W4A4 loss; NULL on failure. */
static float *lwc_factors(const layer *l, const float *xt, const float *wt, float **lo)
{
    dq_lwc_params p;
    dq_lwc_params_init(&p, sizeof p);
    p.flags = DQ_LWC_F_QUANT_ACT;
    p.epochs = LWC_EPOCHS;
    p.batch_tokens = LWC_BATCH;
    dq_lwc *o = NULL;
    float *hi = malloc((size_t)l->out * sizeof *hi);
    *lo = malloc((size_t)l->out * sizeof **lo);
    if (!hi || !*lo || dq_lwc_create(NULL, &p, NULL, wt, l->out, l->c, l->c, xt, l->t, l->c, &o) ||
        dq_lwc_train(o, NULL) || dq_lwc_factors(o, hi, *lo, l->out)) {
        free(hi);
        free(*lo);
        *lo = NULL;
        hi = NULL;
    }
    dq_lwc_free(o);
    return hi;
}

/* ||x w^T - q(xt) q(wt)^T|| / ||x w^T||; -1 on failure. */
static double w4a4_error(const layer *l, const float *xt, const float *wt, int clip)
{
    dq_qmatrix *qx = NULL, *qw = NULL;
    dq_quant_params wp;
    dq_quant_params_init(&wp, sizeof wp);
    if (clip == CLIP_FIXED)
        wp.clip_ratio = FIXED_WEIGHT_CLIP;
    float *hi = NULL, *lo = NULL;
    if (clip == CLIP_LWC && (hi = lwc_factors(l, xt, wt, &lo)) == NULL)
        return -1;
    float *xq = malloc((size_t)(l->t * l->c) * sizeof *xq);
    float *wq = malloc((size_t)(l->out * l->c) * sizeof *wq);
    double num = 0, den = 0, err = -1;
    if (!xq || !wq || dq_qmatrix_pack(NULL, NULL, xt, l->t, l->c, l->c, NULL, NULL, &qx) ||
        dq_qmatrix_pack(NULL, &wp, wt, l->out, l->c, l->c, hi, lo, &qw) ||
        dq_qmatrix_dequantize(qx, xq, l->c) || dq_qmatrix_dequantize(qw, wq, l->c))
        goto out;
    for (int64_t i = 0; i < l->t; i++)
        for (int64_t j = 0; j < l->out; j++) {
            double y = 0, yq = 0;
            for (int64_t k = 0; k < l->c; k++) {
                y += (double)l->x[i * l->c + k] * l->w[j * l->c + k];
                yq += (double)xq[i * l->c + k] * wq[j * l->c + k];
            }
            num += (y - yq) * (y - yq);
            den += y * y;
        }
    err = sqrt(num / den);
out:
    dq_qmatrix_free(qx);
    dq_qmatrix_free(qw);
    free(xq);
    free(wq);
    free(hi);
    free(lo);
    return err;
}

/* Builds the plan, transforms copies of X and W and writes their W4A4 error for each of the
 * n weight clip modes into err (-1 on failure, -2 when the transform does not apply to this
 * width). */
static void plan_errors(const layer *l, const dq_plan_params *p, const int *clips, int n,
                        double *err)
{
    for (int k = 0; k < n; k++)
        err[k] = -1;
    dq_calib_params cp;
    dq_calib_params_init(&cp, sizeof cp);
    cp.sample_tokens = l->t; /* the whole matrix is the calibration sample */
    dq_calib *cal = NULL;
    dq_plan *pl = NULL;
    float *w_absmax = malloc((size_t)l->c * sizeof *w_absmax);
    float *xt = malloc((size_t)(l->t * l->c) * sizeof *xt);
    float *wt = malloc((size_t)(l->out * l->c) * sizeof *wt);
    if (!w_absmax || !xt || !wt || dq_calib_create(NULL, &cp, l->c, &cal) ||
        dq_calib_observe(cal, l->x, l->t, l->c, l->c) ||
        dq_smooth_weight_absmax(l->w, l->out, l->c, l->c, 0, w_absmax))
        goto out;
    dq_status st = dq_plan_build(NULL, p, cal, w_absmax, l->c, &pl);
    if (st == DQ_ERR_UNSUPPORTED) {
        for (int k = 0; k < n; k++)
            err[k] = -2;
        goto out;
    }
    memcpy(xt, l->x, (size_t)(l->t * l->c) * sizeof *xt);
    memcpy(wt, l->w, (size_t)(l->out * l->c) * sizeof *wt);
    if (st || dq_plan_apply_act(pl, xt, l->t, l->c, l->c, NULL, 0) ||
        dq_plan_transform_weight(pl, wt, l->out, l->c, l->c))
        goto out;
    for (int k = 0; k < n; k++)
        err[k] = w4a4_error(l, xt, wt, clips[k]);
out:
    dq_plan_free(pl);
    dq_calib_free(cal);
    free(w_absmax);
    free(xt);
    free(wt);
}

/* Error of the reference implementation's own Xt and Wt in dir, or -1 when absent. */
static double reference_error(const layer *l, const char *dir)
{
    float *xt = case_read_f32(dir, "Xt", l->t * l->c), *wt = case_read_f32(dir, "Wt", l->out * l->c);
    double err = xt && wt ? w4a4_error(l, xt, wt, CLIP_NONE) : -1;
    free(xt);
    free(wt);
    return err;
}

static void print_cell(double e)
{
    if (e == -2)
        printf("  %12s", "n/a");
    else if (e < 0)
        printf("  %12s", e == -1 ? "-" : "failed");
    else
        printf("  %12.4f", e);
}

/* Rows of the table. A DuQuant plan row is followed by its fixed-clip and LWC rows. */
enum { ROW_BASELINE, ROW_DUQUANT, ROW_DUQUANT_FIXED, ROW_DUQUANT_LWC };
#define MAX_ROWS 16

typedef struct table {
    int n;
    const char *name[MAX_ROWS];
    int kind[MAX_ROWS];
    int headline[MAX_ROWS]; /* rows of the plan whose LWC row carries claim 2 (see verdict) */
    double err[MAX_ROWS][2]; /* [row][no smoothing, smoothing] */
} table;

/* Fills t with every row's error in both columns. */
static void measure(const layer *l, table *t)
{
    static const struct {
        const char *name;
        int32_t method;
        uint32_t flags;
        int clipped; /* 1: also the fixed-clip and LWC rows; 2: and they carry claim 2 */
    } plans[] = {
        {"RTN | SmoothQuant", DQ_ROT_METHOD_GREEDY, 0, 0},
        {"Hadamard", DQ_ROT_METHOD_HADAMARD, DQ_PLAN_F_ROTATE, 0},
        {"random orthogonal", DQ_ROT_METHOD_RANDOM, DQ_PLAN_F_ROTATE, 0},
        {"DuQuant, reference mode", DQ_ROT_METHOD_GREEDY,
         DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE | DQ_PLAN_F_ROW_RULE, 0},
        {"DuQuant, column rule (library default)", DQ_ROT_METHOD_GREEDY,
         DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE, 1},
        {"DuQuant, column rule, per-block R", DQ_ROT_METHOD_GREEDY,
         DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE | DQ_PLAN_F_PER_BLOCK_R, 0},
        {"DuQuant, per-block R, Hadamard base", DQ_ROT_METHOD_GREEDY,
         DQ_PLAN_F_ROTATE | DQ_PLAN_F_PERMUTE | DQ_PLAN_F_PER_BLOCK_R | DQ_PLAN_F_HADAMARD_BASE,
         2},
    };
    static const int clips[] = {CLIP_NONE, CLIP_FIXED, CLIP_LWC};
    static const int kinds[] = {ROW_DUQUANT, ROW_DUQUANT_FIXED, ROW_DUQUANT_LWC};
    static const char *const clip_names[] = {NULL, "  + fixed weight clip 0.8",
                                             "  + LWC (learned weight clip)"};
    t->n = 0;
    for (size_t r = 0; r < sizeof plans / sizeof plans[0]; r++) {
        const int n = plans[r].clipped ? 3 : 1;
        double e[2][3];
        for (int smooth = 0; smooth < 2; smooth++) {
            dq_plan_params p;
            dq_plan_params_init(&p, sizeof p);
            p.method = plans[r].method;
            p.flags = plans[r].flags | (smooth ? DQ_PLAN_F_SMOOTH : 0);
            p.block_size = l->block;
            p.max_rotation_step = l->steps;
            p.smooth_alpha = l->alpha;
            plan_errors(l, &p, clips, n, e[smooth]);
        }
        for (int k = 0; k < n; k++, t->n++) {
            t->name[t->n] = k == 0 ? plans[r].name : clip_names[k];
            /* DuQuant plans are the ones with rotations and the zigzag permutation. */
            t->kind[t->n] = (plans[r].flags & DQ_PLAN_F_PERMUTE) ? kinds[k] : ROW_BASELINE;
            t->headline[t->n] = plans[r].clipped == 2;
            t->err[t->n][0] = e[0][k];
            t->err[t->n][1] = e[1][k];
        }
    }
}

/* The row with the lowest error in a column, -1 when a cell failed. */
static int lowest(const table *t, int col)
{
    int best = -1;
    for (int r = 0; r < t->n; r++) {
        if (t->err[r][col] < 0)
            return -1;
        if (best < 0 || t->err[r][col] < t->err[best][col])
            best = r;
    }
    return best;
}

static const char *row_label(const table *t, int r)
{
    static char label[128];
    int plan = r;
    while (plan > 0 && t->kind[plan] != ROW_DUQUANT && t->kind[plan] != ROW_BASELINE)
        plan--;
    snprintf(label, sizeof label, "%s%s", t->name[plan], plan == r ? "" : t->name[r] + 1);
    return label;
}

/* Prints the claims the table supports and returns how many fail:
 *  1. in each column the lowest entry is a DuQuant+LWC row;
 *  2. DuQuant+LWC with the Hadamard base is below every baseline row of its column;
 *  3. LWC is below clip 1.0 and the fixed ratio for every clipped DuQuant plan. */
static int verdict(const table *t)
{
    static const char *const column[2] = {"no smoothing", "smoothing"};
    int failed = 0, headline = -1;
    for (int r = 0; r < t->n; r++)
        if (t->kind[r] == ROW_DUQUANT_LWC && t->headline[r])
            headline = r;
    const int low[2] = {lowest(t, 0), lowest(t, 1)};
    if (headline < 0 || low[0] < 0 || low[1] < 0) {
        printf("  verdict: a cell failed FAIL\n");
        return 1;
    }
    for (int col = 0; col < 2; col++) {
        const int ok = t->kind[low[col]] == ROW_DUQUANT_LWC;
        printf("  lowest, %s: %s (%.4f)%s\n", column[col], row_label(t, low[col]),
               t->err[low[col]][col], ok ? "" : "  NOT DuQuant+LWC");
        failed += !ok;
    }
    for (int col = 0; col < 2; col++) {
        int best = -1;
        for (int r = 0; r < t->n; r++)
            if (t->kind[r] == ROW_BASELINE && (best < 0 || t->err[r][col] < t->err[best][col]))
                best = r;
        const int ok = t->err[headline][col] < t->err[best][col];
        printf("  %s: Hadamard-base DuQuant+LWC %.4f vs best baseline (%s) %.4f%s\n",
               column[col], t->err[headline][col], t->name[best], t->err[best][col],
               ok ? "" : "  NOT below");
        failed += !ok;
    }
    int lwc_helps = 1;
    for (int r = 0; r < t->n; r++)
        for (int col = 0; col < 2; col++)
            if (t->kind[r] == ROW_DUQUANT_LWC)
                lwc_helps &= t->err[r][col] < t->err[r - 1][col] &&
                             t->err[r][col] < t->err[r - 2][col];
    printf("  LWC below clip 1.0 and fixed 0.8 for every clipped DuQuant plan: %s\n",
           lwc_helps ? "yes" : "NO");
    return failed + !lwc_helps;
}

/* Prints one case's table; returns the number of failed cells, plus failed claims when
 * check is set. */
static int print_table(const char *title, const layer *l, const char *dir, const char *smooth_dir,
                       int check)
{
    table t;
    measure(l, &t);
    int failed = 0;
    printf("%s: X %lldx%lld, W %lldx%lld, block %d, %d greedy steps\n", title, (long long)l->t,
           (long long)l->c, (long long)l->out, (long long)l->c, l->block, l->steps);
    printf("  %-42s  %12s  %7s %.2f\n", "W4A4 relative output error", "no smoothing",
           "smoothing", (double)l->alpha);
    for (int r = 0; r < t.n; r++) {
        printf("  %-42s", t.name[r]);
        for (int smooth = 0; smooth < 2; smooth++) {
            failed += t.err[r][smooth] == -1;
            print_cell(t.err[r][smooth]);
        }
        printf("\n");
    }
    if (dir) {
        printf("  %-42s", "reference implementation (its Xt, Wt)");
        print_cell(reference_error(l, dir));
        print_cell(smooth_dir ? reference_error(l, smooth_dir) : -1);
        printf("\n");
    }
    const int claims = verdict(&t);
    printf("\n");
    return failed + (check ? claims : 0);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    const int check = argc > 1 && strcmp(argv[1], "--check") == 0;
    const char *root = argc > 1 + check ? argv[1 + check] : getenv("DUQUANT_GOLDEN_DIR");
    DIR *d = root ? opendir(root) : NULL;
    int failed = 0, shown = 0;
    if (d) {
        char *names[256];
        int n = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL && n < 256)
            if (e->d_name[0] != '.')
                names[n++] = strdup(e->d_name);
        closedir(d);
        qsort(names, (size_t)n, sizeof *names, cmp_names);
        for (int i = 0; i < n; i++) {
            char dir[2048], smooth_dir[2048], title[300];
            snprintf(dir, sizeof dir, "%s/%s", root, names[i]);
            snprintf(smooth_dir, sizeof smooth_dir, "%s/%s_smooth", root, names[i]);
            layer l;
            int smooth_applied = 0, qprime_given = 0;
            memset(&l, 0, sizeof l);
            /* One table per distinct input: the _smooth partner joins its plain case. */
            if (load_case(dir, &l, &smooth_applied, &qprime_given) == 0 && !smooth_applied &&
                !qprime_given) {
                DIR *probe = opendir(smooth_dir);
                if (probe)
                    closedir(probe);
                snprintf(title, sizeof title, "case %s", names[i]);
                failed += print_table(title, &l, dir, probe ? smooth_dir : NULL, check);
                shown++;
            }
            free(l.x);
            free(l.w);
            free(names[i]);
        }
    }
    if (shown == 0) {
        layer l;
        synthetic_layer(&l);
        failed += print_table("synthetic layer (no reference cases found)", &l, NULL, NULL, check);
        free(l.x);
        free(l.w);
    }
    return failed ? 1 : 0;
}
