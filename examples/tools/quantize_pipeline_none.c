/* Built without MPI: every run is the single process. */
#include "quantize_pipeline.h"

int qt_pipeline_init(int *argc, char ***argv, int *rank, int *size)
{
    (void)argc, (void)argv;
    *rank = 0;
    *size = 1;
    return 0;
}

int qt_pipeline_run(qt_run *r, int rank, int size)
{
    (void)r, (void)rank, (void)size;
    fprintf(stderr, "built without MPI: no pipeline over ranks\n");
    return -1;
}

void qt_pipeline_finish(void)
{
}
