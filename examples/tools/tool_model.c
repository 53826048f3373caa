/* Model loading shared by duquant-quantize and duquant-run. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "tool_model.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>


const char *tool_linear_name(int32_t which)
{
    static const char *const names[L2C_N_LINEARS] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
    return which >= 0 && which < L2C_N_LINEARS ? names[which] : "?";
}

double tool_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double tool_peak_rss_mib(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

uint64_t tool_fnv1a64(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

char *tool_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "%s: cannot read (missing, or not a regular file)\n", path);
        goto fail;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf || fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        fprintf(stderr, "%s: cannot read %lld bytes\n", path, (long long)st.st_size);
        goto fail;
    }
    buf[st.st_size] = '\0';
    *len = (size_t)st.st_size;
    fclose(f);
    return buf;
fail:
    free(buf);
    if (f)
        fclose(f);
    return NULL;
}

char *tool_json_compact(const char *text, size_t len, const char *name)
{
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    if (!j) {
        fprintf(stderr, "%s: invalid JSON at line %d: %s\n", name, je.line, je.text);
        return NULL;
    }
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s)
        fprintf(stderr, "%s: cannot serialise the JSON\n", name);
    return s;
}

/* dir/name compacted, or NULL (absent: *absent = 1). */
static char *dir_json(const char *dir, const char *name, int *absent)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    *absent = stat(path, &st) != 0;
    if (*absent)
        return NULL;
    size_t len = 0;
    char *raw = tool_read_file(path, &len);
    char *s = raw ? tool_json_compact(raw, len, path) : NULL;
    free(raw);
    return s;
}

static int load_float(const char *path, const char *tokenizer, tool_model *tm)
{
    char err[512];
    if (hf_is_model_dir(path)) {
        hf_config cfg;
        int absent = 0;
        tm->hf = 1;
        if (tokenizer) {
            fprintf(stderr, "--tokenizer: a llama2.c tokenizer; %s is a Hugging Face folder\n",
                    path);
            return -1;
        }
        if (hf_model_load(path, &tm->m, &cfg, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return -1;
        }
        tm->bos = cfg.bos_token_id;
        tm->eos = cfg.eos_token_id;
        tm->tied = cfg.tie_word_embeddings;
        if (!(tm->config_json = dir_json(path, "config.json", &absent)))
            return -1;
        tm->tokenizer_json = dir_json(path, "tokenizer.json", &absent);
        if (!tm->tokenizer_json && !absent)
            return -1;
        return 0;
    }
    if (l2c_model_load(path, &tm->m, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    tm->bos = L2C_BOS;
    tm->eos = 2;
    tm->tied = tm->m.wcls == tm->m.tok_emb;
    if (tokenizer) {
        if (l2c_tokenizer_load(tokenizer, tm->m.c.vocab_size, &tm->ltk, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return -1;
        }
        tm->has_ltk = 1;
    }
    return 0;
}

/* Metadata value of key (malloc'ed) or NULL; missing keys print a message when needed. */
static char *meta(const dq_file_reader *r, const char *path, const char *key, int needed)
{
    char small[8];
    size_t len = 0;
    dq_status st = dq_file_reader_metadata(r, key, small, sizeof small, &len);
    if (st == DQ_OK)
        return strdup(small);
    char *v = st == DQ_ERR_BUFFER ? malloc(len + 1) : NULL;
    if (v && dq_file_reader_metadata(r, key, v, len + 1, &len) == DQ_OK)
        return v;
    free(v);
    if (needed)
        fprintf(stderr, "%s: metadata key %s: %s\n", path, key,
                st == DQ_ERR_BUFFER ? "out of memory" : "missing");
    return NULL;
}

static int meta_int(const dq_file_reader *r, const char *path, const char *key, int64_t lo,
                    int64_t hi, int32_t *out)
{
    char *v = meta(r, path, key, 1), *end = NULL;
    if (!v)
        return -1;
    long long x = strtoll(v, &end, 10);
    int bad = *v == '\0' || *end != '\0' || x < lo || x > hi;
    if (bad)
        fprintf(stderr, "%s: metadata key %s: '%s' is not an integer in [%lld, %lld]\n", path,
                key, v, (long long)lo, (long long)hi);
    free(v);
    if (!bad)
        *out = (int32_t)x;
    return bad ? -1 : 0;
}

static int meta_double(const dq_file_reader *r, const char *path, const char *key, double *out)
{
    char *v = meta(r, path, key, 1), *end = NULL;
    if (!v)
        return -1;
    *out = strtod(v, &end);
    int bad = *v == '\0' || *end != '\0' || !(*out > 0);
    if (bad)
        fprintf(stderr, "%s: metadata key %s: '%s' is not a positive number\n", path, key, v);
    free(v);
    return bad ? -1 : 0;
}

static int get_f32(const dq_file_reader *r, const char *path, const char *name, float *dst,
                   int64_t n)
{
    dq_status st = dq_file_reader_get_tensor_f32(r, name, dst, n);
    if (st != DQ_OK)
        fprintf(stderr, "%s: tensor %s (%lld floats expected): %s\n", path, name, (long long)n,
                dq_status_name(st));
    return st == DQ_OK ? 0 : -1;
}

static int open_reader(const char *path, dq_context *ctx, dq_file_reader **out)
{
    dq_file_params fp;
    dq_file_params_init(&fp, sizeof fp);
    fp.flags = DQ_FILE_F_BORROW;
    dq_status st = dq_file_reader_open(ctx, &fp, path, out);
    if (st != DQ_OK)
        fprintf(stderr, "%s: cannot open the model file: %s\n", path, dq_status_name(st));
    return st == DQ_OK ? 0 : -1;
}

/* The reader holding block l's tensors: the file's, or its shard's (layer_shard, set by
 * load_sharded once the layer count is known). */
static const dq_file_reader *layer_reader(const tool_model *tm, int32_t l)
{
    return tm->shards ? tm->shards[tm->layer_shard[l]] : tm->reader;
}

/* layer_shard[l]: the shard (index into shard_files) that the index names for block l. */
static int find_layer_shards(tool_model *tm, const char *path, json_t *map, int32_t L)
{
    if (L < 1 || L > 4096 || !(tm->layer_shard = calloc((size_t)L, sizeof *tm->layer_shard))) {
        fprintf(stderr, "%s: out of memory\n", path);
        return -1;
    }
    for (int32_t l = 0; l < L; l++) {
        char name[64];
        snprintf(name, sizeof name, "layers.%d.attention_norm.weight", l);
        const char *file = json_string_value(json_object_get(map, name));
        int32_t k = 0;
        while (file && k < tm->n_shards && strcmp(tm->shard_files[k], file) != 0)
            k++;
        if (!file || k == tm->n_shards) {
            fprintf(stderr, "%s/" TOOL_INDEX_NAME ": no shard for block %d (%s)\n", path, l,
                    name);
            return -1;
        }
        tm->layer_shard[l] = k;
    }
    return 0;
}

/* The model from tm->reader (the file, or the shard holding the float tables); with map (a
 * sharded model's weight_map), each block from its shard. */
static int load_layers(const char *path, dq_context *ctx, tool_model *tm, json_t *map);

static int load_quantized(const char *path, dq_context *ctx, tool_model *tm)
{
    if (open_reader(path, ctx, &tm->reader))
        return -1;
    return load_layers(path, ctx, tm, NULL);
}

static int load_layers(const char *path, dq_context *ctx, tool_model *tm, json_t *map)
{
    dq_status st;
    const dq_file_reader *r = tm->reader;
    tm->quantized = 1;
    char *kind = meta(r, path, "duquant.model", 1);
    int ok = kind && strcmp(kind, TOOL_MODEL_KIND) == 0;
    if (kind && !ok)
        fprintf(stderr, "%s: duquant.model is '%s', expected '%s'\n", path, kind,
                TOOL_MODEL_KIND);
    free(kind);
    if (!ok)
        return -1;
    l2c_model *m = &tm->m;
    l2c_config *c = &m->c;
    double theta = 0, eps = 0;
    char *rope = NULL, *method = NULL;
    if (meta_int(r, path, "model.dim", 1, 1 << 20, &c->dim) ||
        meta_int(r, path, "model.hidden_dim", 1, 1 << 22, &c->hidden_dim) ||
        meta_int(r, path, "model.n_layers", 1, 4096, &c->n_layers) ||
        meta_int(r, path, "model.n_heads", 1, 4096, &c->n_heads) ||
        meta_int(r, path, "model.n_kv_heads", 1, 4096, &c->n_kv_heads) ||
        meta_int(r, path, "model.head_size", 2, 1 << 16, &m->head_size) ||
        meta_int(r, path, "model.vocab_size", 1, 1 << 24, &c->vocab_size) ||
        meta_int(r, path, "model.seq_len", 1, 1 << 24, &c->seq_len) ||
        meta_int(r, path, "model.tie_word_embeddings", 0, 1, &tm->tied) ||
        meta_int(r, path, "model.bos_token_id", -1, 1 << 24, &tm->bos) ||
        meta_int(r, path, "model.eos_token_id", -1, 1 << 24, &tm->eos) ||
        meta_double(r, path, "model.rope_theta", &theta) ||
        meta_double(r, path, "model.norm_eps", &eps) ||
        !(rope = meta(r, path, "model.rope_style", 1)) ||
        !(method = meta(r, path, "quant.method", 1))) {
        free(rope);
        free(method);
        return -1;
    }
    snprintf(tm->method, sizeof tm->method, "%s", method);
    free(method);
    if (strcmp(rope, "rotate_half") == 0)
        m->rope_style = L2C_ROPE_HALF;
    else if (strcmp(rope, "interleaved") == 0)
        m->rope_style = L2C_ROPE_INTERLEAVED;
    else {
        fprintf(stderr, "%s: model.rope_style '%s': expected rotate_half or interleaved\n", path,
                rope);
        free(rope);
        return -1;
    }
    free(rope);
    if (c->n_heads % c->n_kv_heads != 0 || m->head_size % 2 != 0) {
        fprintf(stderr, "%s: model.n_heads %d, n_kv_heads %d, head_size %d are inconsistent\n",
                path, c->n_heads, c->n_kv_heads, m->head_size);
        return -1;
    }
    m->rope_theta = theta;
    m->norm_eps = (float)eps;
    m->q_dim = c->n_heads * m->head_size;
    m->kv_dim = c->n_kv_heads * m->head_size;
    tm->config_json = meta(r, path, "model.config_json", 0);
    tm->tokenizer_json = meta(r, path, "tokenizer.json", 0);

    int64_t d = c->dim, v = c->vocab_size, L = c->n_layers;
    float *p = malloc((size_t)(v * d * (tm->tied ? 1 : 2) + 2 * L * d + d) * sizeof *p);
    if (!p) {
        fprintf(stderr, "%s: out of memory\n", path);
        return -1;
    }
    m->data = p;
    float *emb = p, *rms_att = p + v * d, *rms_ffn = rms_att + L * d, *rms_final = rms_ffn + L * d;
    float *cls = tm->tied ? emb : rms_final + d;
    char name[256];
    if (get_f32(r, path, "tok_embeddings.weight", emb, v * d) ||
        get_f32(r, path, "norm.weight", rms_final, d) ||
        (!tm->tied && get_f32(r, path, "output.weight", cls, v * d)))
        return -1;
    if (map && find_layer_shards(tm, path, map, L))
        return -1;
    for (int32_t l = 0; l < L; l++) {
        const dq_file_reader *lr = layer_reader(tm, l);
        snprintf(name, sizeof name, "layers.%d.attention_norm.weight", l);
        if (get_f32(lr, path, name, rms_att + l * d, d))
            return -1;
        snprintf(name, sizeof name, "layers.%d.ffn_norm.weight", l);
        if (get_f32(lr, path, name, rms_ffn + l * d, d))
            return -1;
    }
    m->tok_emb = emb, m->rms_att = rms_att, m->rms_ffn = rms_ffn, m->rms_final = rms_final;
    m->wcls = cls;

    if (L < 1 || L > 4096)
        return -1;
    tm->lin = calloc((size_t)L, sizeof *tm->lin);
    tm->layers = calloc((size_t)L, sizeof *tm->layers);
    tm->plans = calloc((size_t)L, sizeof *tm->plans);
    if (!tm->lin || !tm->layers || !tm->plans) {
        fprintf(stderr, "%s: out of memory\n", path);
        return -1;
    }
    for (int32_t l = 0; l < L; l++)
        for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
            const dq_file_reader *lr = layer_reader(tm, l);
            int32_t in = l2c_input_of(k);
            char prefix[128], key[160];
            snprintf(prefix, sizeof prefix, "layers.%d.%s", l, tool_linear_name(k));
            snprintf(key, sizeof key, "%s.plan", prefix);
            char *plan_prefix = meta(lr, path, key, 0);
            if (plan_prefix && !tm->plans[l][in]) {
                st = dq_file_reader_get_plan(lr, ctx, plan_prefix, &tm->plans[l][in]);
                if (st != DQ_OK) {
                    fprintf(stderr, "%s: plan %s: %s\n", path, plan_prefix, dq_status_name(st));
                    free(plan_prefix);
                    return -1;
                }
            }
            free(plan_prefix);
            st = dq_file_reader_get_linear(lr, ctx, prefix, tm->plans[l][in], &tm->layers[l][k]);
            if (st != DQ_OK) {
                fprintf(stderr, "%s: linear layer %s: %s\n", path, prefix, dq_status_name(st));
                return -1;
            }
            int64_t want_out = k == L2C_WQ ? m->q_dim
                               : k == L2C_WK || k == L2C_WV ? m->kv_dim
                               : k == L2C_W1 || k == L2C_W3 ? c->hidden_dim
                                                            : d;
            int64_t want_in = k == L2C_WO ? m->q_dim : k == L2C_W2 ? c->hidden_dim : d;
            int64_t in_f = 0, out_f = 0;
            dq_linear_layout(tm->layers[l][k], &in_f, &out_f);
            if (in_f != want_in || out_f != want_out) {
                fprintf(stderr, "%s: linear layer %s is [%lld, %lld], the config implies "
                        "[%lld, %lld]\n", path, prefix, (long long)out_f, (long long)in_f,
                        (long long)want_out, (long long)want_in);
                return -1;
            }
            tm->lin[l][k].q = tm->layers[l][k];
            tm->lin[l][k].in_dim = in_f;
            tm->lin[l][k].out_dim = out_f;
        }
    return 0;
}

/* A sharded model: the folder's index names each tensor's shard file (in the folder). */
static int load_sharded(const char *dir, dq_context *ctx, tool_model *tm)
{
    char path[4200];
    size_t len = 0;
    snprintf(path, sizeof path, "%s/" TOOL_INDEX_NAME, dir);
    char *text = tool_read_file(path, &len);
    if (!text)
        return -1;
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je), *map = json_object_get(root, "weight_map");
    free(text);
    int rc = -1;
    if (!json_is_object(map) || json_object_size(map) == 0) {
        fprintf(stderr, "%s: not an index (%s)\n", path,
                root ? "no weight_map object" : je.text);
        goto out;
    }
    size_t n = json_object_size(map);
    tm->shard_files = calloc(n, sizeof *tm->shard_files);
    tm->shards = calloc(n, sizeof *tm->shards);
    if (!tm->shard_files || !tm->shards) {
        fprintf(stderr, "%s: out of memory\n", path);
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(map, key, v)
    {
        const char *file = json_string_value(v);
        if (!file || !*file || strchr(file, '/') || file[0] == '.') {
            fprintf(stderr, "%s: tensor %s: not a file name of the folder\n", path, key);
            goto out;
        }
        int32_t k = 0;
        while (k < tm->n_shards && strcmp(tm->shard_files[k], file) != 0)
            k++;
        if (k < tm->n_shards)
            continue;
        char shard[8400];
        snprintf(shard, sizeof shard, "%s/%s", dir, file);
        if (!(tm->shard_files[k] = strdup(file)) ||
            open_reader(shard, ctx, &tm->shards[k]))
            goto out;
        tm->n_shards++;
    }
    const char *tables = json_string_value(json_object_get(map, "tok_embeddings.weight"));
    for (int32_t k = 0; tables && k < tm->n_shards; k++)
        if (strcmp(tm->shard_files[k], tables) == 0)
            tm->reader = tm->shards[k];
    if (!tm->reader) {
        fprintf(stderr, "%s: no shard holds tok_embeddings.weight\n", path);
        goto out;
    }
    rc = load_layers(dir, ctx, tm, map);
out:
    json_decref(root);
    return rc;
}

static int is_sharded_dir(const char *path)
{
    char index[4200];
    struct stat st;
    snprintf(index, sizeof index, "%s/" TOOL_INDEX_NAME, path);
    return stat(index, &st) == 0 && S_ISREG(st.st_mode);
}

static int is_model_file(const char *path)
{
    unsigned char head[9];
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    int yes = fread(head, 1, sizeof head, f) == sizeof head && head[8] == '{';
    fclose(f);
    return yes;
}

int tool_model_load(const char *path, const char *tokenizer, dq_context *ctx, tool_model *tm)
{
    memset(tm, 0, sizeof *tm);
    int rc = -1;
    int sharded = !hf_is_model_dir(path) && is_sharded_dir(path);
    if (sharded || (!hf_is_model_dir(path) && is_model_file(path))) {
        rc = sharded ? load_sharded(path, ctx, tm) : load_quantized(path, ctx, tm);
        if (!rc && tokenizer) {
            char err[512];
            if (l2c_tokenizer_load(tokenizer, tm->m.c.vocab_size, &tm->ltk, err, sizeof err)) {
                fprintf(stderr, "%s\n", err);
                rc = -1;
            } else
                tm->has_ltk = 1;
        }
    } else {
        rc = load_float(path, tokenizer, tm);
        if (!rc) {
            int32_t L = tm->m.c.n_layers;
            tm->lin = calloc((size_t)L, sizeof *tm->lin);
            if (!tm->lin) {
                fprintf(stderr, "out of memory\n");
                rc = -1;
            } else {
                l2c_net net;
                l2c_net_init_fp32(&net, &tm->m, tm->lin);
            }
        }
    }
    if (!rc && tm->tokenizer_json) {
        char err[512];
        if (hf_tokenizer_load_buffer(tm->tokenizer_json, strlen(tm->tokenizer_json),
                                     "tokenizer.json", &tm->htk, err, sizeof err)) {
            fprintf(stderr, "%s: %s\n", path, err);
            rc = -1;
        }
    }
    if (rc)
        tool_model_free(tm);
    return rc;
}

void tool_model_free(tool_model *tm)
{
    for (int32_t l = 0; l < tm->m.c.n_layers; l++) {
        for (int32_t k = 0; tm->layers && k < L2C_N_LINEARS; k++)
            dq_linear_free(tm->layers[l][k]);
        for (int32_t in = 0; tm->plans && in < L2C_N_INPUTS; in++)
            dq_plan_free(tm->plans[l][in]);
    }
    free(tm->layers);
    free(tm->plans);
    if (tm->hm) {
        hf_model_close(tm->hm);
        free(tm->hm);
    }
    free(tm->lin);
    if (tm->shards) {
        for (int32_t k = 0; k < tm->n_shards; k++) {
            dq_file_reader_free(tm->shards[k]);
            free(tm->shard_files[k]);
        }
        tm->reader = NULL; /* one of the shards */
    }
    free(tm->shards);
    free(tm->shard_files);
    free(tm->layer_shard);
    dq_file_reader_free(tm->reader);
    hf_tokenizer_free(tm->htk);
    if (tm->has_ltk)
        l2c_tokenizer_free(&tm->ltk);
    free(tm->tokenizer_json);
    free(tm->config_json);
    l2c_model_free(&tm->m);
    memset(tm, 0, sizeof *tm);
}

void tool_model_net(tool_model *tm, l2c_net *net)
{
    memset(net, 0, sizeof *net);
    net->m = &tm->m;
    net->lin = tm->lin;
    net->n_threads = tm->threads;
    net->attn = tm->attn;
    net->pool = tm->pool;
}

int32_t tool_threads(int32_t requested)
{
    if (requested > 0)
        return requested;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online < 1 ? 1 : online > 64 ? 64 : (int32_t)online;
}

int tool_check_ids(const tool_model *tm, const int32_t *ids, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= tm->m.c.vocab_size) {
            fprintf(stderr, "%s: token id %d (position %zu) is beyond the model's vocabulary of "
                            "%d\n",
                    what, (int)ids[i], i, (int)tm->m.c.vocab_size);
            return -1;
        }
    return 0;
}

int tool_text_load(const tool_model *tm, const char *path, l2c_text *out)
{
    size_t n = strlen(path);
    char err[512];
    memset(out, 0, sizeof *out);
    if (n > 4 && strcmp(path + n - 4, ".tok") == 0) {
        if (hf_tokens_load(path, tm->bos, tm->m.c.vocab_size, out, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return -1;
        }
    } else if (tm->htk) {
        size_t len = 0, n_ids = 0, n_stories = 0;
        int32_t *ids = NULL;
        char *text = tool_read_file(path, &len);
        if (!text)
            return -1;
        int e = hf_tokenizer_encode_stories(tm->htk, text, len, &ids, &n_ids, &n_stories, err,
                                            sizeof err);
        free(text);
        if (e) {
            fprintf(stderr, "%s: %s\n", path, err);
            return -1;
        }
        if (tool_check_ids(tm, ids, n_ids, path)) {
            free(ids);
            return -1;
        }
        int32_t bos = hf_tokenizer_bos(tm->htk);
        out->tokens = ids;
        out->n_tokens = (int64_t)n_ids;
        out->story_start = malloc((n_stories + 1) * sizeof *out->story_start);
        if (!out->story_start) {
            l2c_text_free(out);
            fprintf(stderr, "%s: out of memory\n", path);
            return -1;
        }
        for (size_t i = 0; i < n_ids; i++)
            if (ids[i] == bos && (size_t)out->n_stories < n_stories)
                out->story_start[out->n_stories++] = (int64_t)i;
        out->story_start[out->n_stories] = out->n_tokens;
        if ((size_t)out->n_stories != n_stories || (n_ids > 0 && out->story_start[0] != 0)) {
            fprintf(stderr, "%s: the stories do not each start with BOS %d\n", path, bos);
            l2c_text_free(out);
            return -1;
        }
    } else if (tm->has_ltk) {
        if (l2c_text_load(path, &tm->ltk, out))
            return -1;
    } else {
        fprintf(stderr, "%s: the model has no tokenizer: give token ids (FILE.tok)%s\n", path,
                tm->hf || tm->quantized ? "" : " or --tokenizer");
        return -1;
    }
    if (out->n_tokens < 2) {
        fprintf(stderr, "%s: no story to read (empty text)\n", path);
        l2c_text_free(out);
        return -1;
    }
    return 0;
}

/* The folder's config, tokenizer and, with tables, embeddings, final norm and head; the blocks
 * stay mapped. */
static int open_hf_blocks(const char *path, tool_model *tm, int tables)
{
    char err[512];
    int absent = 0;
    tm->hf = 1;
    if (!(tm->hm = calloc(1, sizeof *tm->hm))) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    if (hf_model_open(path, tm->hm, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        free(tm->hm);
        tm->hm = NULL;
        return -1;
    }
    const hf_config *c = &tm->hm->cfg;
    hf_model_set_shape(c, &tm->m);
    l2c_model *m = &tm->m;
    const l2c_config *lc = &m->c;
    tm->bos = c->bos_token_id;
    tm->eos = c->eos_token_id;
    tm->tied = c->tie_word_embeddings;
    if (!tables) {
        if (!(tm->config_json = dir_json(path, "config.json", &absent)))
            return -1;
        tm->tokenizer_json = dir_json(path, "tokenizer.json", &absent);
        return !tm->tokenizer_json && !absent ? -1 : 0;
    }
    int64_t d = lc->dim, v = lc->vocab_size, shape[2] = {v, d};
    float *p = malloc((size_t)(v * d * (tm->tied ? 1 : 2) + d) * sizeof *p);
    if (!p) {
        fprintf(stderr, "%s: out of memory\n", path);
        return -1;
    }
    m->data = p;
    m->tok_emb = p;
    m->rms_final = p + v * d;
    m->wcls = tm->tied ? p : p + v * d + d;
    const hf_checkpoint *ck = &tm->hm->ck;
    const char *emb = tm->tied && !hf_checkpoint_find(ck, "model.embed_tokens.weight") &&
                              hf_checkpoint_find(ck, "lm_head.weight")
                          ? "lm_head.weight"
                          : "model.embed_tokens.weight";
    if (hf_checkpoint_read(ck, emb, 2, shape, p, err, sizeof err) ||
        hf_checkpoint_read(ck, "model.norm.weight", 1, shape + 1, p + v * d, err, sizeof err) ||
        (!tm->tied && hf_checkpoint_read(ck, "lm_head.weight", 2, shape, p + v * d + d, err,
                                         sizeof err))) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    if (!(tm->config_json = dir_json(path, "config.json", &absent)))
        return -1;
    tm->tokenizer_json = dir_json(path, "tokenizer.json", &absent);
    return !tm->tokenizer_json && !absent ? -1 : 0;
}

static int open_blocks(const char *path, const char *tokenizer, dq_context *ctx, tool_model *tm,
                       int tables)
{
    if (!hf_is_model_dir(path))
        return tool_model_load(path, tokenizer, ctx, tm);
    memset(tm, 0, sizeof *tm);
    int rc = -1;
    if (tokenizer)
        fprintf(stderr, "--tokenizer: a llama2.c tokenizer; %s is a Hugging Face folder\n",
                path);
    else
        rc = open_hf_blocks(path, tm, tables);
    if (!rc && tm->tokenizer_json) {
        char err[512];
        if (hf_tokenizer_load_buffer(tm->tokenizer_json, strlen(tm->tokenizer_json),
                                     "tokenizer.json", &tm->htk, err, sizeof err)) {
            fprintf(stderr, "%s: %s\n", path, err);
            rc = -1;
        }
    }
    if (rc)
        tool_model_free(tm);
    return rc;
}

int tool_model_block(const tool_model *tm, int32_t l, tool_block *b)
{
    memset(b, 0, sizeof *b);
    b->view = tm->m;
    b->view.data = NULL;
    b->view.c.n_layers = 1;
    int64_t d = tm->m.c.dim, out_dim, in_dim;
    if (!tm->hm) {
        b->view.rms_att = tm->m.rms_att + l * d;
        b->view.rms_ffn = tm->m.rms_ffn + l * d;
        for (int32_t k = 0; k < L2C_N_LINEARS; k++)
            b->view.w[k] = l2c_model_weight(&tm->m, l, k, &out_dim, &in_dim);
        return 0;
    }
    int64_t n = 2 * d;
    for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
        hf_model_shape(&tm->hm->cfg, k, &out_dim, &in_dim);
        n += out_dim * in_dim;
    }
    float *p = b->owned = malloc((size_t)n * sizeof *p);
    if (!p) {
        fprintf(stderr, "block %d: out of memory for %lld floats\n", l, (long long)n);
        return -1;
    }
    hf_layer dst;
    dst.rms_att = p, p += d;
    dst.rms_ffn = p, p += d;
    for (int32_t k = 0; k < L2C_N_LINEARS; k++) {
        hf_model_shape(&tm->hm->cfg, k, &out_dim, &in_dim);
        dst.w[k] = p, p += out_dim * in_dim;
    }
    char err[512];
    if (hf_model_read_layer(tm->hm, l, &dst, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        tool_block_free(b);
        return -1;
    }
    b->view.rms_att = dst.rms_att;
    b->view.rms_ffn = dst.rms_ffn;
    for (int32_t k = 0; k < L2C_N_LINEARS; k++)
        b->view.w[k] = dst.w[k];
    return 0;
}

void tool_block_free(tool_block *b)
{
    free(b->owned);
    memset(b, 0, sizeof *b);
}

int tool_model_open_blocks(const char *path, const char *tokenizer, dq_context *ctx,
                           tool_model *tm)
{
    return open_blocks(path, tokenizer, ctx, tm, 1);
}

int tool_model_open_layers(const char *path, const char *tokenizer, dq_context *ctx,
                           tool_model *tm)
{
    return open_blocks(path, tokenizer, ctx, tm, 0);
}
