/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Adding a file to the object store under its fs-verity digest:
 * STORE/xx/yyyy... (first two hex digits, then the other 62).  The object is
 * written to a temporary file in its final directory (reflinked when the
 * filesystem can, else copied), hashed again, flushed, given fs-verity
 * where the filesystem supports it, and only then linked in under its name
 * without replacing an existing object, so a crash never leaves a partial
 * object.  The digest is taken from the copy itself, not trusted from the
 * caller: a source that changed after the caller hashed it would otherwise
 * leave an object whose content does not match its name, and since objects
 * are never replaced, it would stay wrong for good.
 * That pass also gives the object's Merkle tree, stored beside the objects
 * (STORE/.cfs-trees/xx/yyyy...) for objects larger than 128 KiB, so that a
 * reader verifying in userspace needs no pass of its own over the data.
 */
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cas-internal.h"

static int copy_data(int src, int dst, uint64_t size)
{
	static const size_t bufsz = 128 * 1024;
	_cleanup_free_ uint8_t *buf = NULL;
	loff_t in = 0, out = 0;

	/* copy_file_range() first: it shares extents on filesystems that can. */
	while ((uint64_t)in < size) {
		ssize_t n = copy_file_range(src, &in, dst, &out, (size_t)(size - (uint64_t)in), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break; /* unsupported here, or a short source: fall back */
	}
	if ((uint64_t)in >= size)
		return 0;

	buf = malloc(bufsz);
	if (!buf)
		return -ENOMEM;
	/* copy_file_range() moved no file offset: continue where it stopped. */
	if (lseek(dst, out, SEEK_SET) < 0)
		return -errno;
	for (;;) {
		ssize_t n = cfs_pread_full(src, buf, bufsz, (uint64_t)in);
		int r;

		if (n <= 0) {
			if (n < 0)
				return (int)n;
			break;
		}
		r = cfs_write_all(dst, buf, (size_t)n);
		if (r < 0)
			return r;
		in += n;
	}
	return (uint64_t)in == size ? 0 : -ESTALE; /* the source changed size under us */
}

static void try_enable_verity(int dirfd, const char *name)
{
	_cleanup_close_ int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

	/* EOPNOTSUPP/ENOTTY: the filesystem has no fs-verity; anything
	 * else (e.g. not enabled in the superblock) is not fatal either: the
	 * reader verifies in userspace. */
	if (fd >= 0)
		(void)cfs_verity_kernel_ops.enable(NULL, fd);
}

static int link_noreplace(int dirfd, const char *tmp, const char *name)
{
	if (renameat2(dirfd, tmp, dirfd, name, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno == EEXIST)
		return -EEXIST;
	if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
		return -errno;
	/* No RENAME_NOREPLACE here: link() never replaces either. */
	if (linkat(dirfd, tmp, dirfd, name, 0) < 0)
		return -errno;
	(void)unlinkat(dirfd, tmp, 0);
	return 0;
}

/*
 * Give the O_TMPFILE file *@tfd its name.  fs-verity can only be enabled
 * once no descriptor can write the file, so a read-only one is opened
 * through /proc first, the writable one closed, verity enabled, and that
 * descriptor linked in; linkat() never replaces an existing name.  Without
 * /proc, AT_EMPTY_PATH (CAP_DAC_READ_SEARCH) links it as it is.
 */
static int link_tmpfile(int *tfd, int dirfd, const char *name)
{
	char path[64];
	int rfd;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", *tfd);
	rfd = open(path, O_RDONLY | O_CLOEXEC);
	if (rfd < 0)
		return linkat(*tfd, "", dirfd, name, AT_EMPTY_PATH) < 0 ? -errno : 0;
	closep(tfd);
	*tfd = rfd;
	(void)cfs_verity_kernel_ops.enable(NULL, rfd);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", rfd);
	return linkat(AT_FDCWD, path, dirfd, name, AT_SYMLINK_FOLLOW) < 0 ? -errno : 0;
}

int cfs_store_import(const char *store_dir, int src_fd, const uint8_t digest[CFS_DIGEST_SIZE])
{
	_cleanup_close_ int store = -EBADF, sub = -EBADF, tfd = -EBADF;
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *tree = NULL;
	char hex[2 * CFS_DIGEST_SIZE + 1], dir[3], tmp[64];
	const char *name = hex + 2;
	struct stat st, sst;
	int r;

	cfs_digest_to_hex(digest, hex);
	memcpy(dir, hex, 2);
	dir[2] = '\0';

	store = open(store_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (store < 0)
		return -errno;
	if (mkdirat(store, dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	sub = openat(store, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (sub < 0)
		return -errno;
	if (fstatat(sub, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
		return 0; /* objects are immutable: an existing one is kept */
	if (errno != ENOENT)
		return -errno;
	if (fstat(src_fd, &sst) < 0)
		return -errno;

	/* An unnamed file where the filesystem has O_TMPFILE: a signal or a
	 * crash during the copy leaves nothing behind.  Else a named one. */
	tfd = openat(sub, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
	if (tfd >= 0)
		tmp[0] = '\0';
	for (int tries = 0; tfd < 0; tries++) {
		uint64_t rnd;
		if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
			rnd = (uint64_t)getpid() * 1000003u + (uint64_t)tries;
		snprintf(tmp, sizeof(tmp), ".tmp-%.8s-%016llx", name, (unsigned long long)rnd);
		tfd = openat(sub, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
		if (tfd >= 0)
			break;
		if (errno != EEXIST || tries > 16)
			return -errno;
	}

	if (ioctl(tfd, FICLONE, src_fd) != 0)
		r = copy_data(src_fd, tfd, (uint64_t)sst.st_size);
	else
		r = 0;
	if (r >= 0 && fstat(tfd, &st) < 0)
		r = -errno;
	if (r >= 0 && st.st_size != sst.st_size)
		r = -ESTALE;
	if (r >= 0) {
		struct cfs_io io;

		/* The pass that checks the copy builds its Merkle tree too. */
		(void)cfs_io_init(&io, CFS_IO_PREAD);
		r = cfs_merkle_build_fd(&io, tfd, (uint64_t)st.st_size, NULL, NULL, &tree);
		cfs_io_fini(&io);
		if (r >= 0 && memcmp(tree->digest, digest, CFS_DIGEST_SIZE) != 0)
			r = -ESTALE; /* not the content the caller hashed */
		else if (r == -EBADMSG)
			r = -ESTALE; /* its size changed while it was read */
	}
	if (r >= 0 && fchmod(tfd, 0644) < 0)
		r = -errno;
	if (r >= 0 && fsync(tfd) < 0)
		r = -errno;
	if (!tmp[0]) {
		if (r >= 0)
			r = link_tmpfile(&tfd, sub, name);
	} else {
		closep(&tfd);
		tfd = -EBADF;
		if (r >= 0) {
			try_enable_verity(sub, tmp);
			r = link_noreplace(sub, tmp, name);
		}
		(void)unlinkat(sub, tmp, 0); /* gone already after a rename */
	}
	closep(&tfd);
	tfd = -EBADF;
	if (r == -EEXIST) /* another writer got there first: same content */
		r = 0;
	if (r >= 0)
		(void)fsync(sub);
	/* The tree beside it, for readers without kernel fs-verity; losing
	 * it costs them one extra pass over the data, nothing else. */
	if (r >= 0)
		(void)cfs_store_tree_write(store, tree, CFS_STORE_TREE_MIN_SIZE);
	return r;
}
