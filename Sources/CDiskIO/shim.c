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
#include <sys/mman.h>
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

#ifndef RWF_DONTCACHE
#define RWF_DONTCACHE 0x00000080
#endif

ssize_t swraid_preadv_dontcache(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    return preadv2(fd, iov, iovcnt, offset, RWF_DONTCACHE);
}

ssize_t swraid_pwritev_dontcache(int fd, const struct iovec *iov, int iovcnt, off_t offset, int dsync) {
    int flags = RWF_DONTCACHE;
#ifdef RWF_DSYNC
    if (dsync) flags |= RWF_DSYNC;
#else
    if (dsync) { errno = EOPNOTSUPP; return -1; }
#endif
    return pwritev2(fd, iov, iovcnt, offset, flags);
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

int swraid_range_resident(const void *mapping, uint64_t offset, uint64_t length) {
    if (length == 0) return 1;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) page = 4096;
    uint64_t first = offset / (uint64_t)page, last = (offset + length - 1) / (uint64_t)page;
    /* One mincore call per 256 pages (1 MiB of 4 KiB pages): the answer vector on the stack. */
    unsigned char vec[256];
    for (uint64_t at = first; at <= last; at += 256) {
        uint64_t n = last - at + 1 < 256 ? last - at + 1 : 256;
        if (mincore((char *)mapping + at * (uint64_t)page, n * (uint64_t)page, vec) != 0) return -1;
        for (uint64_t i = 0; i < n; i++)
            if (!(vec[i] & 1)) return 0;
    }
    return 1;
}

void *swraid_map_file(int fd, uint64_t length) {
    void *p = mmap(NULL, length, PROT_READ, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

int swraid_unmap_file(void *mapping, uint64_t length) { return munmap(mapping, length); }

int swraid_dup_cloexec(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 0); }
