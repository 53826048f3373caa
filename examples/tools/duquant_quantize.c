/* duquant-quantize: calibrates a Hugging Face LLaMA-family folder or a llama2.c file on a story
 * text, quantizes every linear layer with one of the example engine's methods
 * (examples/llama2c/quantize.c) and writes one self-contained model file (doc/formats.md,
 * "Quantized model files") for duquant-run or another engine. Built with MPI and started by
 * mpirun on more than one rank, it runs the blocks as a pipeline over the ranks and writes a
 * sharded model (quantize_pipeline.h). See --help. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quantize_pipeline.h"
#include "quantize_tool.h"

/* Every block in turn on one process, into one file. */
static int quantize_single(qt_run *r)
{
    double t_start = tool_now_s();
    const qt_options *o = &r->o;
    size_t n_out = strlen(o->out);
    if (n_out > 0 && o->out[n_out - 1] == '/') {
        fprintf(stderr, "--out %s: a folder receives the shards of a run over MPI ranks "
                        "(mpirun -np N, N > 1); one process writes one file\n",
                o->out);
        return -1;
    }
    if (qt_check_out(o->out) || qt_open(r, 1) || qt_writer_open(r, o->out, 1))
        return -1;
    int32_t n_layers = r->tm.m.c.n_layers;
    int64_t n = r->total * r->tm.m.c.dim;
    fprintf(stderr, "calibrating and quantizing block by block with %s on %lld tokens of %s%s\n",
            r->method->name, (long long)r->total, o->calib,
            o->sequential ? " (each block's input from the quantized blocks)" : "");
    for (int32_t l = 0; l < n_layers; l++) {
        double tb = tool_now_s();
        /* Without --sequential the float block's output, computed in qt_block, is the next
         * input; with it, the quantized block's. */
        if (o->sequential)
            memcpy(r->h2, r->h, (size_t)n * sizeof *r->h);
        if (qt_block(r, l, o->sequential ? r->h2 : r->h, o->sequential ? r->h : NULL))
            return -1;
        double done = tool_now_s() - t_start - r->t.load, per = done / (l + 1);
        double eta = per * (n_layers - l - 1);
        if (r->tty) {
            int bar = 30 * (l + 1) / n_layers;
            fprintf(stderr, "\r[%.*s%*s] block %d/%d  %.1f s  ETA %.0f s ", bar,
                    "##############################", 30 - bar, "", l + 1, n_layers,
                    tool_now_s() - tb, eta);
            if (l + 1 == n_layers)
                fputc('\n', stderr);
        } else
            fprintf(stderr, "block %d/%d done in %.2f s, ETA %.0f s\n", l + 1, n_layers,
                    tool_now_s() - tb, eta);
    }
    if (qt_save(r, o->out))
        return -1;
    fprintf(stderr, "wrote %s\n", o->out);
    const qt_times *t = &r->t;
    fprintf(stderr,
            "stages: load %.2f s, read blocks %.2f s, calibrate %.2f s, quantize %.2f s, "
            "next inputs %.2f s, write %.2f s; total %.2f s; peak RSS %.1f MiB\n",
            t->load, t->read, t->calib, t->quant, t->next, t->write, tool_now_s() - t_start,
            tool_peak_rss_mib());
    return 0;
}

int main(int argc, char **argv)
{
    int rank = 0, size = 1;
    if (qt_pipeline_init(&argc, &argv, &rank, &size))
        return 1;
    qt_run r;
    memset(&r, 0, sizeof r);
    int pa = qt_parse_args(argc, argv, &r.o);
    if (pa) {
        qt_pipeline_finish();
        return pa > 0 ? 0 : 2;
    }
    const l2c_method *method = l2c_method_find(r.o.method);
    if (!method || method->w_bits == 0) {
        fprintf(stderr, "--method: unknown or not a quantization method '%s' (see --help)\n",
                r.o.method);
        qt_pipeline_finish();
        return 2;
    }
    int rc = size > 1 ? qt_pipeline_run(&r, rank, size) : quantize_single(&r);
    qt_free(&r);
    qt_pipeline_finish();
    return rc ? 1 : 0;
}
