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

/// preadv2(2) and pwritev2(2) with RWF_DONTCACHE (Linux 6.14): buffered I/O whose pages leave
/// the page cache once done with (once written back, for a write), so that a long sequential
/// pass does not push everything else out of it. `dsync` adds RWF_DSYNC to the write. -1 with
/// errno EOPNOTSUPP where the kernel or the file system lacks it.
ssize_t swraid_preadv_dontcache(int fd, const struct iovec *iov, int iovcnt, off_t offset);
ssize_t swraid_pwritev_dontcache(int fd, const struct iovec *iov, int iovcnt, off_t offset, int dsync);

/// sync_file_range(2) with SYNC_FILE_RANGE_WRITE: starts writing the range's dirty pages to the
/// device without waiting for them (a hint; durability still takes fdatasync).
int swraid_start_writeback(int fd, off_t offset, off_t length);

/// Whether every page of the byte range `offset..<offset+length` of a file is in the page cache
/// and up to date (read in whole), asked with mincore(2) of `mapping`, a read-only shared
/// mapping of the file from its start: 1 when every page is, 0 when some page is not (or is
/// still being read), -1 with errno on failure. Never waits for the device, and touches no page
/// of the mapping. (cachestat(2) counts pages whose read is still in flight; mincore does not.)
int swraid_range_resident(const void *mapping, uint64_t offset, uint64_t length);

/// A read-only shared mapping of `length` bytes of the file open on fd, from its start, or NULL
/// with errno; and its undoing.
void *swraid_map_file(int fd, uint64_t length);
int swraid_unmap_file(void *mapping, uint64_t length);

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
