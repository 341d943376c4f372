/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Kernel FUSE passthrough (Linux 6.9+): the kernel reads an open file's
 * backing file directly, without a round trip to the daemon.
 *
 * libfuse >= 3.17 has an API for it (fuse_passthrough_open() and
 * fuse_file_info.backing_id); the build detects it (HAVE_FUSE_PASSTHROUGH).
 *
 * libfuse 3.14 (Debian 12) has none, so this file implements the protocol
 * itself underneath libfuse, through fuse_session_custom_io():
 *  - read():   notice the INIT request and whether the kernel offers
 *              FUSE_PASSTHROUGH (flags2 bit 5 = bit 37 of the 64-bit flags);
 *  - writev(): in the INIT reply, set FUSE_INIT_EXT, FUSE_PASSTHROUGH and
 *              max_stack_depth = 1 (and make sure FUSE_WRITEBACK_CACHE, which
 *              the kernel refuses to combine with passthrough, is off); in
 *              an open reply produced by cfsd_pt_reply_open() on this
 *              thread, set FOPEN_PASSTHROUGH and the backing id;
 *  - backing ids come from the FUSE_DEV_IOC_BACKING_OPEN/CLOSE ioctls on the
 *    session's /dev/fuse descriptor (they need CAP_SYS_ADMIN in the initial
 *    user namespace: an ordinary user gets EPERM and we fall back).
 * This relies on how libfuse lays out its replies: one writev() per reply,
 * header first, sent from the thread that called fuse_reply_open().  That
 * was checked against the libfuse 3.14 sources (lib/fuse_lowlevel.c:
 * fuse_session_custom_io(), fuse_send_msg(), send_reply(), fill_open(),
 * do_init()), so the shim is enabled only when the library at run time is a
 * 3.14 release; with any other version passthrough stays off.  (Debian 12's
 * 3.14.0 answers INIT with protocol 7.31 rather than upstream's 7.38; the
 * reply is the same 64-byte fuse_init_out, and the kernel reads flags2 and
 * max_stack_depth whenever FUSE_INIT_EXT is set, whatever the minor.)
 */
#include "config.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cfsd.h"
#include "fuse-kernel.h"

static atomic_bool pt_negotiated, pt_disabled;
static const char *pt_state = "off";

bool cfsd_pt_available(void)
{
	return atomic_load(&pt_negotiated) && !atomic_load(&pt_disabled);
}

const char *cfsd_pt_describe(void)
{
	return pt_state;
}

static int pt_failed(int err)
{
	bool expected = false;
	if (err == -EPERM && atomic_compare_exchange_strong(&pt_disabled, &expected, true))
		cfsd_log(FUSE_LOG_NOTICE,
			 "passthrough: not permitted (needs CAP_SYS_ADMIN in the initial user "
			 "namespace); using daemon-served reads\n");
	else if (err != -EPERM)
		cfsd_log(FUSE_LOG_WARNING, "passthrough: registering a backing file failed: %s\n",
			 strerror(-err));
	return err;
}

#if HAVE_FUSE_PASSTHROUGH
/* libfuse >= 3.17: use its API.  cfsd_global is set by main.c. */
int cfsd_pt_setup(struct cfsd *d, struct fuse_session *se)
{
	pt_state = "libfuse API";
	return 0;
}

void cfsd_pt_init_conn(struct fuse_conn_info *conn)
{
	if (fuse_set_feature_flag(conn, FUSE_CAP_PASSTHROUGH)) {
		conn->max_backing_stack_depth = 1;
		atomic_store(&pt_negotiated, true);
	}
}

int cfsd_pt_backing_open(fuse_req_t req, int fd)
{
	int id = fuse_passthrough_open(req, fd);
	if (id <= 0)
		return pt_failed(id < 0 ? id : -EPERM);
	return id;
}

void cfsd_pt_backing_close(fuse_req_t req, int backing_id)
{
	/* Without a request (at exit) the connection is going away anyway. */
	if (req)
		(void)fuse_passthrough_close(req, backing_id);
}

int cfsd_pt_reply_open(fuse_req_t req, struct fuse_file_info *fi, int backing_id)
{
	fi->backing_id = backing_id;
	fi->keep_cache = 0;
	return fuse_reply_open(req, fi);
}

#else /* libfuse without a passthrough API: the custom-io shim */

static int pt_fd = -1;
static atomic_bool pt_init_pending, pt_kernel_offers;
static atomic_uint_fast64_t pt_init_unique;

static __thread int pt_reply_backing_id = -1;

static ssize_t pt_read(int fd, void *buf, size_t len, void *userdata)
{
	ssize_t n = read(fd, buf, len);
	const struct kfuse_in_header *in = buf;

	if (n >= (ssize_t)(sizeof(*in) + sizeof(struct pt_init_in)) && in->opcode == PT_FUSE_INIT &&
	    !atomic_load(&pt_negotiated)) {
		const struct pt_init_in *arg = (const void *)(in + 1);
		bool offers = arg->major == 7 && (arg->flags & PT_INIT_EXT) &&
			      (arg->flags2 & PT_FLAGS2_PASSTHROUGH);
		atomic_store(&pt_kernel_offers, offers);
		atomic_store(&pt_init_unique, in->unique);
		atomic_store(&pt_init_pending, true);
		cfsd_uring_note_init(arg->major == 7 && (arg->flags & PT_INIT_EXT) ? arg->flags2 : 0);
	}
	return n;
}

/* Gather a small reply into @buf; -EMSGSIZE if it does not fit. */
static ssize_t flatten(const struct iovec *iov, int count, char *buf, size_t bufsz)
{
	size_t total = 0;
	for (int i = 0; i < count; i++) {
		if (iov[i].iov_len > bufsz - total)
			return -EMSGSIZE;
		memcpy(buf + total, iov[i].iov_base, iov[i].iov_len);
		total += iov[i].iov_len;
	}
	return (ssize_t)total;
}

static ssize_t pt_write_patched(int fd, const struct iovec *iov, int count, bool is_open, int backing_id)
{
	char buf[256] __attribute__((aligned(8)));
	struct kfuse_out_header *out = (struct kfuse_out_header *)buf;
	ssize_t total = flatten(iov, count, buf, sizeof(buf));

	if (total < 0)
		return writev(fd, iov, count);
	if (is_open) {
		if (out->error == 0 &&
		    (size_t)total == sizeof(*out) + sizeof(struct pt_open_out)) {
			struct pt_open_out *o = (struct pt_open_out *)(out + 1);
			o->open_flags |= PT_FOPEN_PASSTHROUGH;
			o->open_flags &= ~PT_FOPEN_KEEP_CACHE;
			o->backing_id = backing_id;
		}
	} else if (out->error == 0 &&
		   (size_t)total >= sizeof(*out) + offsetof(struct pt_init_out, max_stack_depth) + 4) {
		struct pt_init_out *o = (struct pt_init_out *)(out + 1);
		uint32_t uring = o->major == 7 ? cfsd_uring_init_reply(cfsd_global, o->max_write, o->max_pages) : 0;

		if (o->major == 7 && atomic_load(&pt_kernel_offers) && cfsd_global->passthrough != CFSD_PT_OFF) {
			o->flags |= PT_INIT_EXT;
			o->flags &= ~PT_WRITEBACK_CACHE;
			o->flags2 |= PT_FLAGS2_PASSTHROUGH;
			o->max_stack_depth = 1;
			atomic_store(&pt_negotiated, true);
		}
		if (uring) {
			ssize_t n;

			o->flags |= PT_INIT_EXT;
			o->flags2 |= uring;
			n = write(fd, buf, (size_t)total);
			/* The kernel has taken INIT: the queues may register. */
			if (n == total)
				cfsd_uring_start(cfsd_global, fd);
			return n;
		}
	}
	if (is_open) {
		struct iovec v = { buf, (size_t)total };
		ssize_t ret;

		if (cfsd_uring_reply(&v, 1, &ret))
			return ret;
	}
	return write(fd, buf, (size_t)total);
}

static ssize_t pt_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	const struct kfuse_out_header *out = iov[0].iov_base;
	int id = pt_reply_backing_id;

	if (count < 1 || iov[0].iov_len < sizeof(*out))
		return writev(fd, iov, count);
	if (id >= 0) {
		pt_reply_backing_id = -1;
		return pt_write_patched(fd, iov, count, true, id);
	}
	if (atomic_load(&pt_init_pending) && out->unique == atomic_load(&pt_init_unique)) {
		atomic_store(&pt_init_pending, false);
		return pt_write_patched(fd, iov, count, false, -1);
	}
	{
		ssize_t ret;

		if (cfsd_uring_reply(iov, count, &ret))
			return ret;
	}
	return writev(fd, iov, count);
}

void cfsd_pt_init_conn(struct fuse_conn_info *conn)
{
}

int cfsd_pt_setup(struct cfsd *d, struct fuse_session *se)
{
	static const struct fuse_custom_io io = {
		.read = pt_read,
		.writev = pt_writev,
	};
	int r;

	/* Verified reply layout: libfuse 3.14 only. */
	if (FUSE_MAJOR_VERSION != 3 || FUSE_MINOR_VERSION != 14 || fuse_version() != 314) {
		pt_state = "unsupported libfuse version";
		return -EOPNOTSUPP;
	}
	/* fuse_session_mount() opened /dev/fuse; keep using that descriptor,
	 * now read and written through the shim. */
	r = fuse_session_custom_io(se, &io, fuse_session_fd(se));
	if (r < 0) {
		pt_state = "custom io failed";
		return r;
	}
	pt_fd = fuse_session_fd(se);
	pt_state = "custom-io shim (libfuse 3.14)";
	return 0;
}

void cfsd_pt_backing_close(fuse_req_t req, int backing_id)
{
	uint32_t id = (uint32_t)backing_id;
	if (pt_fd >= 0 && ioctl(pt_fd, PT_IOC_BACKING_CLOSE, &id) < 0)
		cfsd_log(FUSE_LOG_WARNING, "passthrough: closing backing id %d: %m\n", backing_id);
}

int cfsd_pt_backing_open(fuse_req_t req, int fd)
{
	struct pt_backing_map map = { .fd = fd };
	int id;

	if (pt_fd < 0)
		return -EOPNOTSUPP;
	id = ioctl(pt_fd, PT_IOC_BACKING_OPEN, &map);
	if (id < 0)
		return pt_failed(-errno);
	if (id == 0) {
		/* The kernel hands out ids from 1; 0 would mean "no backing". */
		cfsd_pt_backing_close(req, 0);
		return pt_failed(-EIO);
	}
	return id;
}

int cfsd_pt_reply_open(fuse_req_t req, struct fuse_file_info *fi, int backing_id)
{
	int r;
	fi->keep_cache = 0;
	pt_reply_backing_id = backing_id;
	r = fuse_reply_open(req, fi);
	pt_reply_backing_id = -1;
	return r;
}
#endif
