/* duquant-quantize over MPI ranks (quantize_pipeline_mpi.c; without MPI, quantize_pipeline_none.c
 * makes every run a single process). Rank r owns a contiguous range of blocks balanced by cost;
 * the hidden states of every calibration token go from rank to rank (rank 0 embeds them), each
 * rank forwards them through its blocks (float, or quantized with --sequential), passes them on
 * and quantizes its blocks into its own shard; rank 0 writes the index once every rank reported
 * its shard written. Results are those of the single process, byte for byte. */
#ifndef QUANTIZE_PIPELINE_H
#define QUANTIZE_PIPELINE_H

#include "quantize_tool.h"

/* MPI_Init (when built with MPI): this process's rank and the number of ranks (1 without MPI
 * or outside mpirun). Returns 0 or -1. */
int qt_pipeline_init(int *argc, char ***argv, int *rank, int *size);
/* The pipeline's part of rank `rank` of `size` (> 1): r->o is parsed, nothing else is open.
 * Returns 0 when this rank's part succeeded; a failing rank ends the whole job (MPI_Abort)
 * after naming itself and the reason. */
int qt_pipeline_run(qt_run *r, int rank, int size);
void qt_pipeline_finish(void);

/* Environment variable for the tests: DUQUANT_QUANTIZE_FAIL=R:error|R:kill makes rank R fail
 * (or kill itself with SIGKILL) before its first block. */
#define QT_FAIL_ENV "DUQUANT_QUANTIZE_FAIL"

#endif
