/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Backing-file reads: io_uring (one ring per thread, created on first use,
 * so the read path takes no lock) with a pread fallback chosen at run time
 * when the kernel refuses io_uring (ENOSYS under seccomp, EPERM with
 * kernel.io_uring_disabled, ENOMEM with a tiny RLIMIT_MEMLOCK).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "cas-internal.h"

#if HAVE_IO_URING
#include <liburing.h>
#endif

#define RING_ENTRIES 64
#define SEQ_CHUNK (256 * 1024) /* read-ahead unit while building a tree */
#define SEQ_DEPTH 4            /* read-ahead chunks in flight */
#define BS CFS_VERITY_BLOCK_SIZE /* reads are aligned to it (O_DIRECT-safe buffers) */

/*
 * A thread's ring serves one reader at a time: a cfs_io_read_segs() call or
 * one live sequential reader, each of which tags its requests with its own
 * indices and reaps every completion it finds.  @busy says the ring is taken;
 * a second reader on the same thread meanwhile (a read while a sequential
 * reader is alive) reads with pread instead of sharing the ring, so a
 * completion is never taken by a reader it does not belong to.
 */
struct cfs_io_ring {
#if HAVE_IO_URING
	struct io_uring ring;
#endif
	bool busy;
	struct cfs_io *io;
	struct cfs_io_ring *prev, *next;
};

#if HAVE_IO_URING
/* Finish a read that io_uring returned short (or interrupted). */
static int finish_read(int fd, void *buf, size_t len, uint64_t off, int res)
{
	ssize_t n;

	if (res < 0 && res != -EAGAIN && res != -EINTR)
		return res;
	if (res < 0)
		res = 0;
	if ((size_t)res >= len)
		return res;
	n = cfs_pread_full(fd, (uint8_t *)buf + res, len - (size_t)res, off + (uint64_t)res);
	if (n < 0)
		return (int)n;
	return res + (int)n;
}

static void ring_destroy(struct cfs_io_ring *r)
{
	io_uring_queue_exit(&r->ring);
	free(r);
}

static void ring_unlink(struct cfs_io *io, struct cfs_io_ring *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		io->rings = r->next;
	if (r->next)
		r->next->prev = r->prev;
}

/* Thread exit: this thread's ring goes away. */
static void ring_thread_exit(void *p)
{
	struct cfs_io_ring *r = p;
	struct cfs_io *io = r->io;

	pthread_mutex_lock(&io->lock);
	ring_unlink(io, r);
	pthread_mutex_unlock(&io->lock);
	ring_destroy(r);
}

static int ring_create(struct cfs_io *io, struct cfs_io_ring **ret_ring)
{
	struct cfs_io_ring *r = calloc(1, sizeof(*r));
	int err;

	if (!r)
		return -ENOMEM;
	err = io_uring_queue_init(RING_ENTRIES, &r->ring, 0);
	if (err < 0) {
		free(r);
		return err;
	}
	r->io = io;
	if (pthread_setspecific(io->key, r) != 0) {
		ring_destroy(r);
		return -ENOMEM;
	}
	pthread_mutex_lock(&io->lock);
	r->next = io->rings;
	if (r->next)
		r->next->prev = r;
	io->rings = r;
	pthread_mutex_unlock(&io->lock);
	*ret_ring = r;
	return 0;
}

/* This thread's ring, or NULL to use pread (not io_uring, or no ring could
 * be made for this thread: then it reads with pread, correctly, just
 * without queue depth). */
static struct cfs_io_ring *ring_get(struct cfs_io *io)
{
	struct cfs_io_ring *r;

	if (io->backend != CFS_IO_URING)
		return NULL;
	r = pthread_getspecific(io->key);
	if (_likely_(r))
		return r;
	if (ring_create(io, &r) < 0)
		return NULL;
	return r;
}

/* This thread's ring for one reader, or NULL (pread) if it has none or
 * another reader holds it; give it back with ring_release(). */
static struct cfs_io_ring *ring_acquire(struct cfs_io *io)
{
	struct cfs_io_ring *r = ring_get(io);

	if (!r || r->busy)
		return NULL;
	r->busy = true;
	return r;
}

static void ring_release(struct cfs_io_ring *r)
{
	if (r)
		r->busy = false;
}
#endif

int cfs_io_init(struct cfs_io *io, enum cfs_io_backend want)
{
	memset(io, 0, sizeof(*io));
	pthread_mutex_init(&io->lock, NULL);
	io->backend = CFS_IO_PREAD;
	if (want == CFS_IO_PREAD)
		return 0;
#if HAVE_IO_URING
	{
		struct cfs_io_ring *r;
		int err;

		if (pthread_key_create(&io->key, ring_thread_exit) != 0)
			return -ENOMEM;
		io->have_key = true;
		/* Probe with a ring that is not kept: every thread makes its
		 * own on first use, so a fork() (daemonizing) after this point
		 * does not leave a ring shared between two processes. */
		err = ring_create(io, &r);
		if (err == 0) {
			(void)pthread_setspecific(io->key, NULL);
			ring_thread_exit(r);
			io->backend = CFS_IO_URING;
			return 0;
		}
		pthread_key_delete(io->key);
		io->have_key = false;
		if (want == CFS_IO_URING)
			return err;
	}
#else
	if (want == CFS_IO_URING)
		return -EOPNOTSUPP;
#endif
	return 0;
}

void cfs_io_fini(struct cfs_io *io)
{
#if HAVE_IO_URING
	if (io->have_key) {
		/* Threads still alive keep no reference: free every ring here. */
		pthread_key_delete(io->key);
		io->have_key = false;
	}
	pthread_mutex_lock(&io->lock);
	while (io->rings) {
		struct cfs_io_ring *r = io->rings;

		ring_unlink(io, r);
		ring_destroy(r);
	}
	pthread_mutex_unlock(&io->lock);
#endif
	pthread_mutex_destroy(&io->lock);
}

static int read_segs_pread(int fd, struct cfs_io_seg *segs, unsigned n, cfs_io_done_fn done,
			   void *userdata)
{
	int ret = 0;

	for (unsigned i = 0; i < n; i++) {
		ssize_t got = cfs_pread_full(fd, segs[i].buf, segs[i].len, segs[i].off);
		int r;

		segs[i].res = (int)got;
		r = done(userdata, &segs[i]);
		if (r < 0 && ret == 0)
			ret = r;
	}
	return ret;
}

int cfs_io_read_segs(struct cfs_io *io, int fd, struct cfs_io_seg *segs, unsigned n,
		     cfs_io_done_fn done, void *userdata)
{
#if HAVE_IO_URING
	struct cfs_io_ring *r;
	unsigned next = 0, inflight = 0, completed = 0, hard_errors = 0;
	int ret = 0;

	/* A single segment gains nothing from the ring round trip. */
	if (n == 1 || !(r = ring_acquire(io)))
		return read_segs_pread(fd, segs, n, done, userdata);

	while (completed < n) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		int err;

		while (next < n && inflight < RING_ENTRIES) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);

			if (!sqe)
				break;
			io_uring_prep_read(sqe, fd, segs[next].buf, segs[next].len, segs[next].off);
			io_uring_sqe_set_data64(sqe, next);
			next++;
			inflight++;
		}
		err = io_uring_submit_and_wait(&r->ring, 1);
		if (err < 0 && err != -EINTR && err != -EAGAIN && err != -EBUSY) {
			/* A healthy ring does not fail like this.  Never return
			 * while the kernel may still write into the caller's
			 * buffers: keep waiting for what is in flight, and
			 * give up (abort) only if the ring stays broken. */
			if (++hard_errors > 1000)
				abort();
			continue;
		}
		hard_errors = 0;
		io_uring_for_each_cqe(&r->ring, head, cqe)
		{
			struct cfs_io_seg *s = &segs[io_uring_cqe_get_data64(cqe)];
			int res = cqe->res;

			seen++;
			s->res = finish_read(fd, s->buf, s->len, s->off, res);
			res = done(userdata, s);
			if (res < 0 && ret == 0)
				ret = res;
		}
		io_uring_cq_advance(&r->ring, seen);
		inflight -= seen;
		completed += seen;
	}
	ring_release(r);
	return ret;
#else
	return read_segs_pread(fd, segs, n, done, userdata);
#endif
}

/* ---- sequential reader with read-ahead ---- */

struct cfs_seqreader {
	struct cfs_io_ring *ring; /* NULL: pread */
	int fd;
	uint64_t size;
	uint64_t next_off;        /* next chunk offset to request */
	size_t chunk_size;        /* SEQ_CHUNK, less for small files */
	unsigned cur, inflight;
	size_t cur_pos;
	struct {
		uint8_t *buf;
		uint64_t off;
		size_t len;       /* requested */
		int res;          /* bytes read or -errno */
		bool pending, valid;
	} chunk[SEQ_DEPTH];
};

#if HAVE_IO_URING
static void seq_submit(struct cfs_seqreader *r, unsigned i)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring->ring);

	r->chunk[i].off = r->next_off;
	r->chunk[i].len = (size_t)(r->size - r->next_off < r->chunk_size ? r->size - r->next_off : r->chunk_size);
	r->next_off += r->chunk[i].len;
	r->chunk[i].valid = true;
	if (!sqe) {
		/* Cannot happen with SEQ_DEPTH < RING_ENTRIES; read it now. */
		r->chunk[i].res = (int)cfs_pread_full(r->fd, r->chunk[i].buf, r->chunk[i].len, r->chunk[i].off);
		r->chunk[i].pending = false;
		return;
	}
	io_uring_prep_read(sqe, r->fd, r->chunk[i].buf, (unsigned)r->chunk[i].len, r->chunk[i].off);
	io_uring_sqe_set_data64(sqe, i);
	r->chunk[i].pending = true;
	r->inflight++;
}

/* Wait for at least one completion and record all that are there. */
static int seq_reap(struct cfs_seqreader *r, bool wait)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;
	int err;

	err = io_uring_submit_and_wait(&r->ring->ring, wait ? 1 : 0);
	if (err < 0 && err != -EINTR && err != -EAGAIN && err != -EBUSY)
		return err;
	io_uring_for_each_cqe(&r->ring->ring, head, cqe)
	{
		uint64_t i = io_uring_cqe_get_data64(cqe);

		seen++;
		if (i >= SEQ_DEPTH)
			continue; /* not ours: cannot happen, the ring is held (ring_acquire) */
		r->chunk[i].res = finish_read(r->fd, r->chunk[i].buf, r->chunk[i].len, r->chunk[i].off, cqe->res);
		r->chunk[i].pending = false;
	}
	io_uring_cq_advance(&r->ring->ring, seen);
	r->inflight -= seen;
	return 0;
}
#endif

int cfs_seqreader_new(struct cfs_io *io, int fd, uint64_t size, struct cfs_seqreader **ret_reader)
{
	struct cfs_seqreader *r = calloc(1, sizeof(*r));
	unsigned depth;

	if (!r)
		return -ENOMEM;
	r->fd = fd;
	r->size = size;
#if HAVE_IO_URING
	r->ring = ring_acquire(io);
#endif
	depth = r->ring ? SEQ_DEPTH : 1;
	r->chunk_size = size < SEQ_CHUNK ? (size_t)((size + BS - 1) / BS * BS) : SEQ_CHUNK;
	if (r->chunk_size == 0)
		r->chunk_size = BS;
	for (unsigned i = 0; i < depth; i++) {
		if (posix_memalign((void **)&r->chunk[i].buf, BS, r->chunk_size) != 0) {
			cfs_seqreader_free(r);
			return -ENOMEM;
		}
	}
	(void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#if HAVE_IO_URING
	if (r->ring) {
		for (unsigned i = 0; i < SEQ_DEPTH && r->next_off < size; i++)
			seq_submit(r, i);
		if (r->inflight)
			(void)io_uring_submit(&r->ring->ring);
	}
#endif
	*ret_reader = r;
	return 0;
}

struct cfs_seqreader *cfs_seqreader_free(struct cfs_seqreader *r)
{
	if (!r)
		return NULL;
#if HAVE_IO_URING
	/* Buffers may not go while the kernel still writes into them. */
	for (unsigned errors = 0; r->ring && r->inflight > 0;) {
		if (seq_reap(r, true) < 0 && ++errors > 1000)
			abort(); /* a ring that stays broken: cannot free safely */
	}
	ring_release(r->ring);
#endif
	for (unsigned i = 0; i < SEQ_DEPTH; i++)
		free(r->chunk[i].buf);
	free(r);
	return NULL;
}

int cfs_seqreader_read(struct cfs_seqreader *r, void *buf, size_t count)
{
	uint8_t *out = buf;

	while (count > 0) {
		unsigned i = r->cur;
		size_t avail, n;

		if (!r->ring) {
			/* pread: one chunk, refilled in place */
			if (!r->chunk[0].valid || r->cur_pos == r->chunk[0].len) {
				if (r->next_off >= r->size)
					return -EBADMSG;
				r->chunk[0].off = r->next_off;
				r->chunk[0].len = (size_t)(r->size - r->next_off < r->chunk_size
								   ? r->size - r->next_off
								   : r->chunk_size);
				r->chunk[0].res = (int)cfs_pread_full(r->fd, r->chunk[0].buf, r->chunk[0].len,
								  r->chunk[0].off);
				r->chunk[0].valid = true;
				r->next_off += r->chunk[0].len;
				r->cur_pos = 0;
			}
		}
#if HAVE_IO_URING
		else {
			if (!r->chunk[i].valid)
				return -EBADMSG; /* asked for more than size */
			while (r->chunk[i].pending) {
				int err = seq_reap(r, true);

				if (err < 0)
					return err;
			}
		}
#endif
		if (r->chunk[i].res < 0)
			return r->chunk[i].res;
		if ((size_t)r->chunk[i].res != r->chunk[i].len)
			return -EBADMSG; /* the file is shorter than its recorded size */
		avail = r->chunk[i].len - r->cur_pos;
		n = count < avail ? count : avail;
		memcpy(out, r->chunk[i].buf + r->cur_pos, n);
		out += n;
		count -= n;
		r->cur_pos += n;
#if HAVE_IO_URING
		if (r->ring && r->cur_pos == r->chunk[i].len) {
			r->chunk[i].valid = false;
			if (r->next_off < r->size) {
				seq_submit(r, i);
				(void)io_uring_submit(&r->ring->ring);
			}
			r->cur = (i + 1) % SEQ_DEPTH;
			r->cur_pos = 0;
		}
#endif
	}
	return 0;
}

int cfs_seqreader_check_eof(struct cfs_seqreader *r)
{
	uint8_t b;
	ssize_t n = cfs_pread_full(r->fd, &b, 1, r->size);

	if (n < 0)
		return (int)n;
	return n == 0 ? 0 : -EBADMSG;
}
