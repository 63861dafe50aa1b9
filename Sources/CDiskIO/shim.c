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
#include <sys/syscall.h>
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

/* cachestat(2), Linux 6.5. Its structures are declared here because older kernel headers lack
   them (the layout is the system call's ABI). */
struct swraid_cachestat_range { uint64_t off; uint64_t len; };
struct swraid_cachestat { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; };
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

int swraid_range_cached(int fd, uint64_t offset, uint64_t length) {
    if (length == 0) return 1;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    struct swraid_cachestat_range range = { offset, length };
    struct swraid_cachestat stat = { 0 };
    if (syscall(__NR_cachestat, fd, &range, &stat, 0) != 0) return -1;
    uint64_t pages = (offset + length - 1) / (uint64_t)page - offset / (uint64_t)page + 1;
    return stat.nr_cache >= pages ? 1 : 0;
}

int swraid_dup_cloexec(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 0); }
