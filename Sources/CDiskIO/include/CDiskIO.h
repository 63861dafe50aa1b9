// Linux system calls and constants Swift's Glibc module does not expose (they sit behind
// _GNU_SOURCE or in kernel headers). Thin wrappers only; the logic is in DiskIO.
#ifndef SWRAID_CDISKIO_H
#define SWRAID_CDISKIO_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/// O_DIRECT for open(2).
int swraid_o_direct(void);

/// The most iovecs one preadv/pwritev takes.
int swraid_iov_max(void);

/// pwritev2(2) with RWF_DSYNC: the write is durable when it returns (a FUA write). Returns -1
/// with errno EOPNOTSUPP/ENOSYS/EINVAL where the kernel or file system lacks it.
ssize_t swraid_pwritev_dsync(int fd, const struct iovec *iov, int iovcnt, off_t offset);

/// preadv2(2) with RWF_NOWAIT: reads only what the page cache holds, without waiting for the
/// device; -1 with errno EAGAIN when it would have to wait (or EOPNOTSUPP where unsupported).
ssize_t swraid_preadv_nowait(int fd, const struct iovec *iov, int iovcnt, off_t offset);

/// sync_file_range(2) with SYNC_FILE_RANGE_WRITE: starts writing the range's dirty pages to the
/// device without waiting for them (a hint; durability still takes fdatasync).
int swraid_start_writeback(int fd, off_t offset, off_t length);

/// Whether the page cache holds every page of the byte range: 1 when it does, 0 when some
/// page is not cached, -1 with errno on failure (ENOSYS before Linux 6.5, which added
/// cachestat(2)). Never waits for the device.
int swraid_range_cached(int fd, uint64_t offset, uint64_t length);

/// dup(2) with close-on-exec (F_DUPFD_CLOEXEC); -1 with errno on failure.
int swraid_dup_cloexec(int fd);

/// The processors this process may run on (sched_getaffinity), or the online ones when that
/// fails; at least 1.
int swraid_processor_count(void);

/// The size of the block device open on fd (BLKGETSIZE64); -1 with errno on failure.
int swraid_block_device_size(int fd, uint64_t *size);

/// mallopt(3): allocations up to `mmap_threshold` bytes come from malloc's heap (not a fresh
/// mmap each), and up to `trim_threshold` bytes of free heap are kept rather than given back.
void swraid_keep_heap(int mmap_threshold, int trim_threshold);

#endif
