/* duquant-quantize's per-process work (quantize_tool.h). */
#define _POSIX_C_SOURCE 200809L
#include "quantize_tool.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f, const qt_options *o)
{
    fprintf(f,
            "usage: duquant-quantize --model PATH --calib TEXT|FILE.tok --method M --out FILE\n"
            "       mpirun -np N duquant-quantize ... --out DIR/\n"
            "  --model PATH         Hugging Face LLaMA-family folder or llama2.c file\n"
            "  --tokenizer FILE     llama2.c tokenizer (llama2.c model with a text --calib)\n"
            "  --calib TEXT         calibration stories (separated by lines <|endoftext|>), or\n"
            "                       token ids FILE.tok (int32 little-endian, BOS first)\n"
            "  --method M           one of:");
    for (int32_t i = 0; i < l2c_n_methods; i++)
        if (l2c_methods[i].w_bits)
            fprintf(f, " %s", l2c_methods[i].name);
    fprintf(f,
            "\n"
            "  --out FILE           the model file (written atomically); under mpirun with N > 1\n"
            "                       ranks a folder DIR/ that receives one shard per rank and\n"
            "                       model.dq.index.json (doc/formats.md, doc/scaling.md)\n"
            "  --tokens N           calibration tokens (default 0 = the whole text)\n"
            "  --threads N          library threads (default 0: host decides)\n"
            "  --window N           calibration window in tokens (default %lld)\n"
            "  --sample-tokens N    rows kept for the rotation search, LWC, GPTQ and the clip\n"
            "                       choice (default %lld); the next N are held out to judge\n"
            "                       block sizes\n"
            "  --block auto|N, --hadamard-block auto|N, --block-grid LIST, --act-clip auto|R,\n"
            "  --act-clip-grid LIST  chosen per linear input on calibration data (default\n"
            "                       auto, grids 16,32,64,128 and 1,0.95,0.9,0.85; see\n"
            "                       duquant-eval --help); the choices go to the metadata\n"
            "  --block-choice first|each  blocks chosen on block 0's calibration data and\n"
            "                       reused by every later block (default first), or chosen\n"
            "                       in every block; clips are chosen in every block either way\n"
            "  --gptq-damp-grid LIST  GPTQ dampenings (default 0.01; with more than one,\n"
            "                       chosen per linear input as duquant-eval does)\n"
            "  --rot-steps N, --perm-times N, --full-width 0|1, --dq-smooth 0|1|auto,\n"
            "  --alpha A, --w-clip R, --lwc-epochs N, --lwc-lr R, --lwc-batch N,\n"
            "  --lwc-act 0|1, --seed N   as duquant-eval (defaults %d %d %d auto %.2f\n"
            "                       %.2f %d %g %d %d %llu)\n",
            (long long)o->window, (long long)o->sample_tokens, o->q.rot_steps,
            o->q.perm_times, o->q.full_width, (double)o->q.alpha, (double)o->q.w_clip,
            o->q.lwc_epochs, (double)o->q.lwc_lr, o->q.lwc_batch, o->q.lwc_quant_act,
            (unsigned long long)o->q.seed);
}

int qt_parse_args(int argc, char **argv, qt_options *o)
{
    memset(o, 0, sizeof *o);
    o->window = 256;
    o->sample_tokens = 512;
    l2c_quant_options_default(&o->q);
    o->q.block_choice = L2C_BLOCK_FIRST;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (strcmp(k, "--help") == 0 || strcmp(k, "-h") == 0) {
            usage(stdout, o);
            return 1;
        }
        if (strcmp(k, "--sequential") == 0) {
            o->sequential = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: missing value (or unknown option)\n", k);
            return -1;
        }
        const char *v = argv[++i];
        int64_t n = 0;
        int bad = 0;
        if (l2c_quant_option(&o->q, k, v, &bad)) {
            /* a quantization setting */
        } else if (strcmp(k, "--model") == 0)
            o->model = v;
        else if (strcmp(k, "--tokenizer") == 0)
            o->tokenizer = v;
        else if (strcmp(k, "--calib") == 0)
            o->calib = v;
        else if (strcmp(k, "--method") == 0)
            o->method = v;
        else if (strcmp(k, "--out") == 0)
            o->out = v;
        else if (strcmp(k, "--tokens") == 0)
            bad = l2c_parse_int(v, 0, INT64_MAX, &o->tokens);
        else if (strcmp(k, "--window") == 0)
            bad = l2c_parse_int(v, 2, 1 << 20, &o->window);
        else if (strcmp(k, "--sample-tokens") == 0)
            bad = l2c_parse_int(v, 1, 1 << 24, &o->sample_tokens);
        else if (strcmp(k, "--threads") == 0)
            bad = l2c_parse_int(v, 0, 1024, &n), o->threads = (int32_t)n;
        else {
            fprintf(stderr, "unknown option %s (see --help)\n", k);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "%s: bad value '%s'\n", k, v);
            return -1;
        }
    }
    const char *missing = !o->model ? "--model" : !o->calib ? "--calib"
                          : !o->method ? "--method" : !o->out ? "--out" : NULL;
    if (missing) {
        fprintf(stderr, "%s is required (see --help)\n", missing);
        return -1;
    }
    return 0;
}

int qt_check_out(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    if (path[0] == '\0' || path[strlen(path) - 1] == '/' || access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, "--out %s: cannot write in folder %s\n", path, dir);
        return -1;
    }
    return 0;
}

static void put(qt_run *wr, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void put(qt_run *wr, const char *key, const char *fmt, ...)
{
    char v[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v, sizeof v, fmt, ap);
    va_end(ap);
    if (wr->failed)
        return;
    dq_status st = dq_file_writer_add_metadata(wr->fw, key, v);
    if (st != DQ_OK) {
        fprintf(stderr, "%s: metadata %s: %s\n", wr->out, key, dq_status_name(st));
        wr->failed = 1;
    }
}

void qt_put_str(qt_run *wr, const char *key, const char *v)
{
    if (wr->failed)
        return;
    dq_status st = dq_file_writer_add_metadata(wr->fw, key, v);
    if (st != DQ_OK) {
        fprintf(stderr, "%s: metadata %s: %s\n", wr->out, key, dq_status_name(st));
        wr->failed = 1;
    }
}

static void put_tensor(qt_run *wr, const char *name, const float *x, int32_t ndim, int64_t d0,
                       int64_t d1)
{
    int64_t shape[2] = {d0, d1};
    if (ndim == 1)
        shape[0] = d1;
    if (wr->failed)
        return;
    dq_status st = dq_file_writer_add_tensor_f32(wr->fw, name, x, ndim, shape);
    if (st != DQ_OK) {
        fprintf(stderr, "%s: tensor %s: %s\n", wr->out, name, dq_status_name(st));
        wr->failed = 1;
    }
}

/* A block setting: "auto" (0) or the number. */
static void put_setting(qt_run *wr, const char *key, int32_t v)
{
    if (v > 0)
        put(wr, key, "%d", v);
    else
        qt_put_str(wr, key, "auto");
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* Everything of the model file but the layers (with tables: the float tensors too). */
static void write_header(qt_run *wr, const qt_options *o, const tool_model *tm, int tables,
                         const l2c_method *method, uint64_t calib_hash, int64_t calib_tokens)
{
    const l2c_model *m = &tm->m;
    const l2c_config *c = &m->c;
    const l2c_quant_options *q = &o->q;
    qt_put_str(wr, "duquant.model", TOOL_MODEL_KIND);
    qt_put_str(wr, "duquant.version", dq_version_string());
    qt_put_str(wr, "model.architecture", "llama");
    qt_put_str(wr, "model.source", tm->hf ? "huggingface" : "llama2c");
    put(wr, "model.dim", "%d", c->dim);
    put(wr, "model.hidden_dim", "%d", c->hidden_dim);
    put(wr, "model.n_layers", "%d", c->n_layers);
    put(wr, "model.n_heads", "%d", c->n_heads);
    put(wr, "model.n_kv_heads", "%d", c->n_kv_heads);
    put(wr, "model.head_size", "%d", m->head_size);
    put(wr, "model.vocab_size", "%d", c->vocab_size);
    put(wr, "model.seq_len", "%d", c->seq_len);
    qt_put_str(wr, "model.rope_style",
            m->rope_style == L2C_ROPE_HALF ? "rotate_half" : "interleaved");
    put(wr, "model.rope_theta", "%.17g", m->rope_theta);
    put(wr, "model.norm_eps", "%.9g", (double)m->norm_eps);
    put(wr, "model.tie_word_embeddings", "%d", tm->tied);
    put(wr, "model.bos_token_id", "%d", tm->bos);
    put(wr, "model.eos_token_id", "%d", tm->eos);
    if (tm->config_json)
        qt_put_str(wr, "model.config_json", tm->config_json);
    if (tm->tokenizer_json)
        qt_put_str(wr, "tokenizer.json", tm->tokenizer_json);
    qt_put_str(wr, "quant.method", method->name);
    put(wr, "quant.w_bits", "%d", method->w_bits);
    put(wr, "quant.a_bits", "%d", method->a_bits);
    put(wr, "quant.plan_flags", "%u", method->plan_flags);
    put(wr, "quant.rot_method", "%d", method->rot_method);
    put(wr, "quant.lwc", "%d", method->lwc);
    put(wr, "quant.refine", "%d", method->refine);
    put(wr, "quant.gptq", "%d", method->gptq);
    if (method->gptq) {
        dq_gptq_params gp;
        l2c_gptq_params(&gp);
        put(wr, "quant.gptq_flags", "%u", gp.flags);
        put(wr, "quant.gptq_damp", "%.9g", (double)q->damp_grid[0]);
        put(wr, "quant.gptq_clip_grid", "%d", gp.clip_grid);
        put(wr, "quant.gptq_clip_max_shrink", "%.9g", (double)gp.clip_max_shrink);
        put(wr, "quant.gptq_clip_norm", "%.9g", (double)gp.clip_norm);
        qt_put_str(wr, "quant.gptq_hessian", "calibration tokens");
    }
    char grid[L2C_MAX_GRID * 16];
    size_t at = 0;
    for (int32_t i = 0; i < q->n_block_grid; i++)
        at += (size_t)snprintf(grid + at, sizeof grid - at, "%s%d", i ? "," : "",
                               q->block_grid[i]);
    put_setting(wr, "quant.block_size", q->block_size);
    put_setting(wr, "quant.hadamard_block", q->hadamard_block);
    qt_put_str(wr, "quant.block_grid", grid);
    qt_put_str(wr, "quant.block_choice", q->block_choice == L2C_BLOCK_FIRST ? "first" : "each");
    at = 0;
    for (int32_t i = 0; i < q->n_act_clip_grid; i++)
        at += (size_t)snprintf(grid + at, sizeof grid - at, "%s%.9g", i ? "," : "",
                               (double)q->act_clip_grid[i]);
    qt_put_str(wr, "quant.act_clip_grid", grid);
    if (method->gptq) {
        at = 0;
        for (int32_t i = 0; i < q->n_damp_grid; i++)
            at += (size_t)snprintf(grid + at, sizeof grid - at, "%s%.9g", i ? "," : "",
                                   (double)q->damp_grid[i]);
        qt_put_str(wr, "quant.gptq_damp_grid", grid);
    }
    put(wr, "quant.rot_steps", "%d", q->rot_steps);
    put(wr, "quant.perm_times", "%d", q->perm_times);
    if (q->dq_smooth == L2C_SMOOTH_AUTO)
        qt_put_str(wr, "quant.dq_smooth", "auto");
    else
        put(wr, "quant.dq_smooth", "%d", q->dq_smooth);
    put(wr, "quant.full_width", "%d", q->full_width);
    put(wr, "quant.alpha", "%.9g", (double)q->alpha);
    if (q->act_clip > 0)
        put(wr, "quant.act_clip", "%.9g", (double)q->act_clip);
    else
        qt_put_str(wr, "quant.act_clip", "auto");
    put(wr, "quant.w_clip", "%.9g", (double)q->w_clip);
    put(wr, "quant.lwc_epochs", "%d", q->lwc_epochs);
    put(wr, "quant.lwc_lr", "%.9g", (double)q->lwc_lr);
    put(wr, "quant.lwc_batch", "%d", q->lwc_batch);
    put(wr, "quant.lwc_act", "%d", q->lwc_quant_act);
    put(wr, "quant.seed", "%llu", (unsigned long long)q->seed);
    put(wr, "quant.sequential", "%d", o->sequential);
    put(wr, "calib.file", "%s", base_name(o->calib));
    put(wr, "calib.fnv1a64", "%016llx", (unsigned long long)calib_hash);
    put(wr, "calib.tokens", "%lld", (long long)calib_tokens);
    put(wr, "calib.window", "%lld", (long long)o->window);
    put(wr, "calib.sample_tokens", "%lld", (long long)o->sample_tokens);
    put(wr, "calib.heldout_tokens", "%lld", (long long)o->sample_tokens);

    if (!tables)
        return;
    int64_t d = c->dim, v = c->vocab_size;
    put_tensor(wr, "tok_embeddings.weight", m->tok_emb, 2, v, d);
    put_tensor(wr, "norm.weight", m->rms_final, 1, 0, d);
    if (!tm->tied)
        put_tensor(wr, "output.weight", m->wcls, 2, v, d);
}

/* The norms, plans and layers of block l (qm and blk: that block alone), and the settings
 * chosen for its inputs (quant.layers.L.INPUT.block, .act_clip). */
static void write_block(qt_run *wr, const l2c_qmodel *qm, const l2c_model *blk, int32_t l)
{
    char plan_names[L2C_N_INPUTS][64], name[128];
    for (int32_t in = 0; in < L2C_N_INPUTS; in++) {
        const l2c_choice *ch = &qm->choice[0][in];
        snprintf(name, sizeof name, "quant.layers.%d.%s.block", l, l2c_input_name(in));
        put(wr, name, "%d", ch->block);
        snprintf(name, sizeof name, "quant.layers.%d.%s.act_clip", l, l2c_input_name(in));
        put(wr, name, "%.9g", (double)ch->act_clip);
        if (ch->n_damps > 0) {
            snprintf(name, sizeof name, "quant.layers.%d.%s.gptq_damp", l, l2c_input_name(in));
            put(wr, name, "%.9g", (double)ch->damp);
        }
    }
    snprintf(name, sizeof name, "layers.%d.attention_norm.weight", l);
    put_tensor(wr, name, blk->rms_att, 1, 0, blk->c.dim);
    snprintf(name, sizeof name, "layers.%d.ffn_norm.weight", l);
    put_tensor(wr, name, blk->rms_ffn, 1, 0, blk->c.dim);
    for (int32_t in = 0; in < L2C_N_INPUTS; in++) {
        snprintf(plan_names[in], sizeof plan_names[in], "layers.%d.plan_%s", l,
                 l2c_input_name(in));
        if (!wr->failed && qm->plans[0][in]) {
            dq_status st = dq_file_writer_add_plan(wr->fw, plan_names[in], qm->plans[0][in]);
            if (st != DQ_OK) {
                fprintf(stderr, "%s: plan %s: %s\n", wr->out, plan_names[in], dq_status_name(st));
                wr->failed = 1;
            }
        }
    }
    for (int32_t k = 0; k < L2C_N_LINEARS && !wr->failed; k++) {
        char prefix[64];
        int32_t in = l2c_input_of(k);
        snprintf(prefix, sizeof prefix, "layers.%d.%s", l, tool_linear_name(k));
        dq_status st = dq_file_writer_add_linear_layer(wr->fw, prefix, qm->layers[0][k],
                                                       qm->plans[0][in] ? plan_names[in] : NULL);
        if (st != DQ_OK) {
            fprintf(stderr, "%s: linear layer %s: %s\n", wr->out, prefix, dq_status_name(st));
            wr->failed = 1;
        }
    }
}

/* Runs block 0 of the one-block model blk (float weights, or quantized when lin is given) on
 * every calibration window of h in place; with cal, its linear inputs are observed. */
static int run_block(const l2c_model *blk, l2c_linear (*lin)[L2C_N_LINEARS],
                     l2c_calibration *cal, float *h, const int64_t *len, int64_t n_w,
                     int32_t threads)
{
    l2c_linear fp32[1][L2C_N_LINEARS];
    l2c_net net;
    l2c_net_init_fp32(&net, blk, fp32);
    net.n_threads = threads;
    if (lin)
        net.lin = lin;
    if (cal) {
        net.observe = l2c_calibration_observe;
        net.observe_user = cal;
    }
    for (int64_t i = 0; i < n_w; i++) {
        if (l2c_forward_block(&net, 0, h, len[i]))
            return -1;
        h += len[i] * blk->c.dim;
    }
    return 0;
}


int qt_open(qt_run *r, int text)
{
    qt_options *o = &r->o;
    r->tty = isatty(2);
    r->method = l2c_method_find(o->method);
    if (!r->method || r->method->w_bits == 0) {
        fprintf(stderr, "--method: unknown or not a quantization method '%s' (see --help)\n",
                o->method);
        return -1;
    }
    /* The model file keeps no activation groups: refused before any work, not at the write. */
    if (o->q.groups > 0 && r->method->a_bits > 0) {
        fprintf(stderr, "--groups %d: model files hold no per-group activations; only weight-only "
                "methods (w4a16_*) take --groups here\n", o->q.groups);
        return -1;
    }
    dq_context_params cp;
    dq_context_params_init(&cp, sizeof cp);
    cp.n_threads = o->threads;
    o->q.threads = tool_threads(o->threads);
    dq_status st = dq_context_create(&cp, &r->ctx);
    if (st) {
        fprintf(stderr, "dq_context_create: %s\n", dq_status_name(st));
        return -1;
    }
    double t0 = tool_now_s();
    if (text)
        fprintf(stderr, "loading %s\n", o->model);
    if ((text ? tool_model_open_blocks : tool_model_open_layers)(o->model, o->tokenizer, r->ctx,
                                                                 &r->tm))
        return -1;
    if (r->tm.quantized) {
        fprintf(stderr, "%s: already a quantized model file; give a float model\n", o->model);
        return -1;
    }
    const l2c_config *c = &r->tm.m.c;
    if (text)
        fprintf(stderr, "model %s: dim %d, hidden %d, %d layers, %d heads, %d kv heads, "
                        "vocab %d\n",
                o->model, c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                c->vocab_size);
    if (o->window > c->seq_len)
        o->window = c->seq_len;
    r->t.load += tool_now_s() - t0;
    if (!text)
        return 0;
    size_t calib_len = 0;
    char *calib_bytes = tool_read_file(o->calib, &calib_len);
    if (!calib_bytes)
        return -1;
    r->calib_hash = tool_fnv1a64(calib_bytes, calib_len);
    free(calib_bytes);
    if (tool_text_load(&r->tm, o->calib, &r->text))
        return -1;
    /* The calibration windows (as l2c_calibrate cuts them) and their hidden states. */
    r->n_w = l2c_windows(&r->text, o->window, 0, &r->w);
    r->len = r->n_w > 0 ? malloc((size_t)r->n_w * sizeof *r->len) : NULL;
    if (!r->len) {
        fprintf(stderr, "%s: no calibration window\n", o->calib);
        return -1;
    }
    int64_t used = 0;
    r->total = 0;
    for (int64_t i = 0; i < r->n_w; i++) {
        r->len[i] = r->w[i].len;
        if (o->tokens > 0 && r->len[i] > o->tokens - r->total)
            r->len[i] = o->tokens - r->total;
        if (r->len[i] <= 0)
            break;
        r->total += r->len[i];
        used = i + 1;
    }
    r->n_w = used;
    if (qt_states(r))
        return -1;
    int64_t d = c->dim;
    for (int64_t i = 0, off = 0; i < r->n_w; off += r->len[i], i++)
        l2c_embed(&r->tm.m, r->text.tokens + r->w[i].start, r->len[i], r->h + off * d);
    r->t.load += tool_now_s() - t0;
    return 0;
}

int qt_states(qt_run *r)
{
    size_t n = (size_t)(r->total * r->tm.m.c.dim);
    r->h = malloc(n * sizeof *r->h);
    r->h2 = r->o.sequential ? malloc(n * sizeof *r->h2) : NULL;
    if (!r->h || (r->o.sequential && !r->h2)) {
        fprintf(stderr, "out of memory for the hidden states of %lld tokens\n",
                (long long)r->total);
        return -1;
    }
    return 0;
}

int qt_writer_open(qt_run *r, const char *path, int tables)
{
    double t0 = tool_now_s();
    r->out = path;
    dq_status st = dq_file_writer_create(r->ctx, &r->fw);
    if (st) {
        fprintf(stderr, "dq_file_writer_create: %s\n", dq_status_name(st));
        return -1;
    }
    /* Each block's layers go to disk as they are added: memory holds one block, not the
     * whole quantized model. */
    st = dq_file_writer_spool(r->fw, path);
    if (st) {
        fprintf(stderr, "%s: cannot create a spool file in its folder: %s\n", path,
                dq_status_name(st));
        return -1;
    }
    write_header(r, &r->o, &r->tm, tables, r->method, r->calib_hash, r->total);
    if (r->failed)
        return -1;
    /* The float tables are in the spool file now, and a Hugging Face folder's blocks are read
     * one at a time: nothing needs the embeddings and head any more (1 GiB of floats for
     * LLaMA-2-7B's 32000-token tables). */
    if (r->tm.hm) {
        free(r->tm.m.data);
        r->tm.m.data = NULL;
        r->tm.m.tok_emb = r->tm.m.rms_final = r->tm.m.wcls = NULL;
    }
    r->t.write += tool_now_s() - t0;
    return 0;
}

int qt_block(qt_run *r, int32_t l, float *x, float *seq)
{
    tool_block blk;
    l2c_calibration cal;
    l2c_qmodel qm;
    memset(&cal, 0, sizeof cal);
    memset(&qm, 0, sizeof qm);
    int rc = -1;
    int32_t threads = tool_threads(r->o.threads);
    double t0 = tool_now_s();
    if (tool_model_block(&r->tm, l, &blk))
        return -1;
    r->t.read += tool_now_s() - t0;
    t0 = tool_now_s();
    if (l2c_calibration_init(&blk.view, r->o.sample_tokens, &cal))
        goto out;
    cal.hess_tokens = r->method->gptq ? -1 : 0; /* every token but the held-out ones */
    if (run_block(&blk.view, NULL, &cal, x, r->len, r->n_w, threads))
        goto out;
    cal.tokens = r->total;
    r->t.calib += tool_now_s() - t0;
    t0 = tool_now_s();
    if (l2c_quantize(r->ctx, &blk.view, &cal, r->method, &r->o.q, &qm))
        goto out;
    /* The one-block view is layer 0 of qm: its blocks stay for the later blocks. */
    if (l == 0 && r->o.q.block_choice == L2C_BLOCK_FIRST)
        l2c_keep_blocks(&r->o.q, &qm, 0);
    r->t.quant += tool_now_s() - t0;
    if (!r->tty)
        l2c_qmodel_report(stderr, &qm, r->method, l);
    t0 = tool_now_s();
    if (seq && run_block(&blk.view, qm.lin, NULL, seq, r->len, r->n_w, threads))
        goto out;
    r->t.next += tool_now_s() - t0;
    t0 = tool_now_s();
    write_block(r, &qm, &blk.view, l);
    r->t.write += tool_now_s() - t0;
    rc = r->failed ? -1 : 0;
out:
    l2c_qmodel_free(&qm);
    l2c_calibration_free(&cal);
    tool_block_free(&blk);
    return rc;
}

int qt_forward(qt_run *r, int32_t l, float *x)
{
    tool_block blk;
    double t0 = tool_now_s();
    if (tool_model_block(&r->tm, l, &blk))
        return -1;
    r->t.read += tool_now_s() - t0;
    t0 = tool_now_s();
    int rc = run_block(&blk.view, NULL, NULL, x, r->len, r->n_w, tool_threads(r->o.threads));
    r->t.next += tool_now_s() - t0;
    tool_block_free(&blk);
    return rc;
}

int qt_save(qt_run *r, const char *path)
{
    double t0 = tool_now_s();
    dq_status st = dq_file_writer_save(r->fw, path);
    if (st) {
        fprintf(stderr, "%s: cannot save the model file: %s\n", path, dq_status_name(st));
        return -1;
    }
    r->t.write += tool_now_s() - t0;
    return 0;
}

void qt_free(qt_run *r)
{
    dq_file_writer_free(r->fw);
    free(r->h);
    free(r->h2);
    free(r->len);
    free(r->w);
    l2c_text_free(&r->text);
    tool_model_free(&r->tm);
    dq_context_free(r->ctx);
    memset(r, 0, sizeof *r);
}
