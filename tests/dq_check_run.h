/* The one runner of the Check suites, so that every test program reports and exits alike. */
#ifndef DQ_CHECK_RUN_H
#define DQ_CHECK_RUN_H

#include <check.h>

/* Runs s (CK_RUN_SUITE / CK_RUN_CASE and CK_VERBOSITY from the environment) and returns the
 * program's exit status: 0 when every test passed. no_fork runs the tests in this process
 * (for suites whose tests share process state on purpose). */
static inline int dq_check_run(Suite *s, int no_fork)
{
    SRunner *sr = srunner_create(s);
    if (no_fork)
        srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

#endif /* DQ_CHECK_RUN_H */
