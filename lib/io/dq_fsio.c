/* File system access of the file codecs: atomic, durable replacement of a file, the writer's
 * spool file and whole-file reads, each failure reported as DQ_ERR_IO with the path and the
 * system's reason. */
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

/* Writes all n bytes (at offset off when off >= 0, else at the file position), across short
 * writes and interrupted calls. */
static int write_at(int fd, const uint8_t *p, size_t n, off_t off)
{
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? (size_t)1 << 30 : n;
        ssize_t k = off >= 0 ? pwrite(fd, p, chunk, off) : write(fd, p, chunk);
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
        if (off >= 0)
            off += k;
    }
    return 0;
}

int dq__write_all(int fd, const void *p, size_t n)
{
    return write_at(fd, p, n, -1);
}

int dq__pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
    if (off > (uint64_t)INT64_MAX - n) {
        errno = EFBIG;
        return -1;
    }
    return write_at(fd, p, n, (off_t)off);
}

int dq__pread_all(int fd, void *buf, size_t n, uint64_t off)
{
    uint8_t *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? (size_t)1 << 30 : n;
        ssize_t k = pread(fd, p, chunk, (off_t)off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (k == 0) { /* the file is shorter than what was written to it */
            errno = EIO;
            return -1;
        }
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

/* Creates a new file "<dir>/.<base>.<6 letters>.<ext>" (ext "tmp" or "spool") with O_EXCL,
 * opened with access (O_WRONLY or O_RDWR), mode 0644 less the umask. tmp has room for
 * strlen(target) + 16 bytes. Returns the descriptor or -1 with errno set. */
static int create_temp(const char *target, char *tmp, const char *ext, int access)
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
        sprintf(tmp + dl, ".%s.%s.%s", target + dl, suffix, ext);
        int fd = open(tmp, access | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
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

dq_status dq__save_atomic_fill(const dq_context *ctx, const char *func, const char *path,
                               dq__fill_fn fill, void *user)
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
    char *tmp = dq__alloc(ctx, strlen(target) + 16);
    if (!tmp) {
        free(resolved);
        return dq__fail(ctx, DQ_ERR_NOMEM, func, "%zu bytes for a file name",
                        strlen(target) + 16);
    }
    int fd = create_temp(target, tmp, "tmp", O_WRONLY);
    if (fd < 0) {
        s = dq__fail(ctx, DQ_ERR_IO, func, "create a temporary file beside '%s': %s", target,
                     dq__errno_text(errno, why, sizeof why));
        goto out;
    }
    const char *step = NULL;
    /* A replaced file keeps its permission bits. */
    if (exists && fchmod(fd, st.st_mode & 07777) != 0)
        step = "fchmod";
    else if ((s = fill(user, fd, tmp)) != DQ_OK) {
        close(fd); /* fill has logged why */
        unlink(tmp);
        goto out;
    } else if (fsync(fd) != 0)
        step = "fsync";
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
    dq__free(ctx, tmp);
    free(resolved);
    return s;
}

/* dq__save_atomic's data: one buffer. */
typedef struct buffer_job {
    const dq_context *ctx;
    const char *func;
    const void *data;
    size_t size;
} buffer_job;

static dq_status fill_buffer(void *user, int fd, const char *tmp)
{
    const buffer_job *j = user;
    char why[128];
    if (dq__write_all(fd, j->data, j->size) != 0)
        return dq__fail(j->ctx, DQ_ERR_IO, j->func, "write '%s': %s", tmp,
                        dq__errno_text(errno, why, sizeof why));
    return DQ_OK;
}

dq_status dq__save_atomic(const dq_context *ctx, const char *func, const char *path,
                          const void *data, size_t size)
{
    buffer_job j = {ctx, func, data, size};
    return dq__save_atomic_fill(ctx, func, path, fill_buffer, &j);
}

dq_status dq__spool_open(const dq_context *ctx, const char *func, const char *path, int *fd)
{
    char why[128];
    *fd = -1;
    char *name = dq__alloc(ctx, strlen(path) + 16);
    if (!name)
        return dq__fail(ctx, DQ_ERR_NOMEM, func, "%zu bytes for a file name", strlen(path) + 16);
    dq_status s = DQ_OK;
    int f = create_temp(path, name, "spool", O_RDWR);
    if (f < 0) {
        s = dq__fail(ctx, DQ_ERR_IO, func, "create a spool file beside '%s': %s", path,
                     dq__errno_text(errno, why, sizeof why));
    } else if (unlink(name) != 0) {
        /* Unlinked at once: the open descriptor keeps the data, and no exit of the process,
         * however abrupt, leaves the file behind. */
        s = dq__fail(ctx, DQ_ERR_IO, func, "unlink the spool file '%s': %s", name,
                     dq__errno_text(errno, why, sizeof why));
        close(f);
    } else {
        *fd = f;
    }
    dq__free(ctx, name);
    return s;
}
