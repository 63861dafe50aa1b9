#define _GNU_SOURCE
#include "CDiskIO.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <sched.h>
#include <unistd.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

int swraid_o_direct(void) { return O_DIRECT; }

int swraid_iov_max(void) { return IOV_MAX; }

ssize_t swraid_pwritev_dsync(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
#ifdef RWF_DSYNC
    return pwritev2(fd, iov, iovcnt, offset, RWF_DSYNC);
#else
    errno = EOPNOTSUPP;
    return -1;
#endif
}

ssize_t swraid_preadv_nowait(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
#ifdef RWF_NOWAIT
    return preadv2(fd, iov, iovcnt, offset, RWF_NOWAIT);
#else
    errno = EOPNOTSUPP;
    return -1;
#endif
}

int swraid_start_writeback(int fd, off_t offset, off_t length) {
    return sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE);
}

int swraid_block_device_size(int fd, uint64_t *size) {
    return ioctl(fd, BLKGETSIZE64, size);
}

void swraid_keep_heap(int mmap_threshold, int trim_threshold) {
    mallopt(M_MMAP_THRESHOLD, mmap_threshold);
    mallopt(M_TRIM_THRESHOLD, trim_threshold);
}

int swraid_processor_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}
