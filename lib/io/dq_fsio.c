/* File system access of the file codecs: atomic, durable replacement of a file and whole-file
 * reads, each failure reported as DQ_ERR_IO with the path and the system's reason. */
#define _XOPEN_SOURCE 700

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dq_internal.h"

const char *dq__errno_text(int err, char *buf, size_t cap)
{
    /* XSI strerror_r (no _GNU_SOURCE here): thread-safe, unlike strerror. */
    if (cap == 0)
        return "";
    if (strerror_r(err, buf, cap) != 0)
        snprintf(buf, cap, "error %d", err);
    return buf;
}

/* "<dir>/" part of path (with the slash), its length; 0 for a bare file name. */
static size_t dir_len(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? (size_t)(slash - path) + 1 : 0;
}

/* Writes all n bytes, across short writes and interrupted calls. */
static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? (size_t)1 << 30 : n;
        ssize_t k = write(fd, p, chunk);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (k == 0) {
            errno = EIO;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Creates a new file "<dir>/.<base>.<6 letters>.tmp" with O_EXCL, mode 0644 less the umask.
 * tmp has room for strlen(target) + 16 bytes. Returns the descriptor or -1 with errno set. */
static int create_temp(const char *target, char *tmp)
{
    static const char letters[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    size_t dl = dir_len(target);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40) ^
                 (uint64_t)(uintptr_t)tmp;
    for (int attempt = 0; attempt < 100; attempt++) {
        char suffix[7];
        for (int i = 0; i < 6; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            suffix[i] = letters[(x >> 33) % (sizeof letters - 1)];
        }
        suffix[6] = '\0';
        memcpy(tmp, target, dl);
        sprintf(tmp + dl, ".%s.%s.tmp", target + dl, suffix);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    errno = EEXIST;
    return -1;
}

/* Makes the rename durable: fsync of the folder holding target. */
static int sync_dir(const char *target)
{
    size_t dl = dir_len(target);
    char *dir = malloc(dl + 2);
    if (!dir) {
        errno = ENOMEM;
        return -1;
    }
    if (dl == 0) {
        strcpy(dir, ".");
    } else {
        memcpy(dir, target, dl);
        dir[dl] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    free(dir);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    /* Some file systems cannot sync a folder; the rename itself has happened. */
    if (rc != 0 && (err == EINVAL || err == ENOTSUP || err == EROFS))
        rc = 0;
    errno = err;
    return rc;
}

dq_status dq__save_atomic(const dq_context *ctx, const char *func, const char *path,
                          const void *data, size_t size)
{
    char why[128];
    /* A symbolic link keeps being a link: the file it points to is replaced. */
    char *resolved = NULL;
    struct stat lst, st;
    if (lstat(path, &lst) == 0) {
        if (S_ISLNK(lst.st_mode)) {
            resolved = realpath(path, NULL);
            if (!resolved)
                return dq__fail(ctx, DQ_ERR_IO, func, "path '%s': cannot resolve the link: %s",
                                path, dq__errno_text(errno, why, sizeof why));
        }
    } else if (errno != ENOENT) {
        return dq__fail(ctx, DQ_ERR_IO, func, "stat '%s': %s", path,
                        dq__errno_text(errno, why, sizeof why));
    }
    const char *target = resolved ? resolved : path;
    bool exists = false;
    if (stat(target, &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
            dq_status s = dq__fail(ctx, DQ_ERR_IO, func,
                                   "path '%s' exists and is not a regular file (mode %o)",
                                   target, (unsigned)st.st_mode);
            free(resolved);
            return s;
        }
        exists = true;
    } else if (errno != ENOENT) {
        dq_status s = dq__fail(ctx, DQ_ERR_IO, func, "stat '%s': %s", target,
                               dq__errno_text(errno, why, sizeof why));
        free(resolved);
        return s;
    }

    dq_status s = DQ_OK;
    char *tmp = malloc(strlen(target) + 16);
    if (!tmp) {
        free(resolved);
        return dq__fail(ctx, DQ_ERR_NOMEM, func, "%zu bytes for a file name",
                        strlen(target) + 16);
    }
    int fd = create_temp(target, tmp);
    if (fd < 0) {
        s = dq__fail(ctx, DQ_ERR_IO, func, "create a temporary file beside '%s': %s", target,
                     dq__errno_text(errno, why, sizeof why));
        goto out;
    }
    const char *step = "write";
    /* A replaced file keeps its permission bits. */
    if (exists && fchmod(fd, st.st_mode & 07777) != 0)
        step = "fchmod";
    else if (write_all(fd, data, size) != 0)
        step = "write";
    else if (fsync(fd) != 0)
        step = "fsync";
    else
        step = NULL;
    if (step) {
        s = dq__fail(ctx, DQ_ERR_IO, func, "%s '%s': %s", step, tmp,
                     dq__errno_text(errno, why, sizeof why));
        close(fd);
        unlink(tmp);
        goto out;
    }
    if (close(fd) != 0) {
        s = dq__fail(ctx, DQ_ERR_IO, func, "close '%s': %s", tmp,
                     dq__errno_text(errno, why, sizeof why));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, target) != 0) {
        s = dq__fail(ctx, DQ_ERR_IO, func, "rename '%s' to '%s': %s", tmp, target,
                     dq__errno_text(errno, why, sizeof why));
        unlink(tmp);
        goto out;
    }
    if (sync_dir(target) != 0)
        s = dq__fail(ctx, DQ_ERR_IO, func, "fsync of the folder of '%s': %s", target,
                     dq__errno_text(errno, why, sizeof why));
out:
    free(tmp);
    free(resolved);
    return s;
}
