/* Built without MPI: every run is the single process; started by a launcher as several ranks,
 * each refuses (rather than all writing the same file). */
#include <stdlib.h>

#include "quantize_pipeline.h"

/* A launcher's variable as a count, or 0. */
static int env_int(const char *name)
{
    const char *v = getenv(name);
    return v ? atoi(v) : 0;
}

int qt_pipeline_init(int *argc, char ***argv, int *rank, int *size)
{
    (void)argc, (void)argv;
    int n = env_int("OMPI_COMM_WORLD_SIZE") > 0 ? env_int("OMPI_COMM_WORLD_SIZE")
                                                : env_int("PMI_SIZE");
    *rank = env_int("OMPI_COMM_WORLD_RANK") + env_int("PMI_RANK");
    *size = n > 1 ? n : 1;
    return 0;
}

int qt_pipeline_run(qt_run *r, int rank, int size)
{
    (void)r;
    fprintf(stderr, "rank %d of %d: duquant-quantize was built without MPI (-Dmpi; Debian "
                    "libopenmpi-dev): no pipeline over ranks\n",
            rank, size);
    return -1;
}

void qt_pipeline_finish(void)
{
}
