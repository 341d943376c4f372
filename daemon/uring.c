/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * FUSE over io_uring (Linux 6.14+, CONFIG_FUSE_IO_URING, on when root sets
 * /sys/module/fuse/parameters/enable_uring): requests arrive in buffers
 * registered with the kernel through IORING_OP_URING_CMD on /dev/fuse, and
 * each reply is committed together with the fetch of the next request, so
 * a round trip costs one io_uring completion instead of a read() and a
 * write() on /dev/fuse.
 *
 * libfuse 3.14 knows nothing of it; this file adds it underneath, through
 * the custom-io shim of passthrough.c (which sees INIT and every reply):
 *  - INIT: when the kernel offers FUSE_OVER_IO_URING (flags2 bit 9) and a
 *    ring can be made here, the reply asks for it (cfsd_uring_init_reply);
 *  - after the INIT reply, one thread per possible CPU (the kernel's queues)
 *    makes a ring with 128-byte SQEs and registers QUEUE_DEPTH entries, each
 *    a header buffer (struct ring_header) and a payload buffer;
 *  - a completed entry holds a request: fuse_in_header, the opcode's own
 *    header (op_in) and the rest of the arguments (payload).  They are laid
 *    end to end as a /dev/fuse read would give them and handed to
 *    fuse_session_process_buf(); the reply libfuse writes on this thread is
 *    caught by the shim (cfsd_uring_reply), copied into the entry (out
 *    header, then the reply arguments as payload) and committed with
 *    FUSE_IO_URING_CMD_COMMIT_AND_FETCH.
 * FORGET, INTERRUPT and notifications still go through /dev/fuse, served by
 * libfuse's own loop.  Layouts are the kernel's include/uapi/linux/fuse.h
 * (7.42), spelled out in fuse-kernel.h since Debian 12's headers predate
 * them.
 */
#include "config.h"

#include <errno.h>
#include <sched.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "cfsd.h"
#include "fuse-kernel.h"

#if HAVE_IO_URING
#include <liburing.h>

#define QUEUE_DEPTH 16
#define READ_WORKERS 4
#define MAX_QUEUES 64

struct queue;

struct entry {
	struct ring_header *hdr;
	uint8_t *payload;
	struct iovec iov[2];
	uint64_t commit_id;
	struct queue *q;
	/* a READ handed to a worker: its request, and the job links */
	uint8_t small[256];
	size_t small_len;
	struct entry *next;
};

struct queue {
	struct cfsd *d;
	unsigned qid;
	struct io_uring ring;
	bool ring_ok;
	pthread_t thread;
	bool started;
	bool setup_done;  /* under U.lock */
	int setup_result;
	struct entry ents[QUEUE_DEPTH];
	uint8_t *reqbuf; /* a request laid out as /dev/fuse gives it */
	/* Replies made by READ workers, to be committed by this thread (the
	 * ring has a single issuer); the eventfd wakes it. */
	int efd;
	uint64_t efd_val;
	pthread_mutex_t mtx;
	struct entry *to_commit;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	atomic_bool offered, asked, running;
	int fd;
	size_t payload_sz;
	unsigned nqueues;
	struct queue *queues;
	atomic_uint_fast64_t requests, registered_queues;
	const char *state;
	/* READ workers: data reads wait on the store and hash, so they are
	 * served in parallel rather than one at a time per queue. */
	pthread_mutex_t wlock;
	pthread_cond_t wcond;
	struct entry *jobs, *jobs_tail;
	bool wstop;
	pthread_t workers[READ_WORKERS];
	unsigned nworkers;
} U = { .wlock = PTHREAD_MUTEX_INITIALIZER, .wcond = PTHREAD_COND_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .fd = -1, .state = "off" };

/* The entry this thread is answering (its reply is committed to it). */
static __thread struct queue *cur_queue;
static __thread struct entry *cur_ent;
static __thread bool on_worker;

static unsigned possible_cpus(void)
{
	FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
	unsigned a = 0, b = 0, n = 0;
	char sep;

	if (!f)
		return 0;
	/* "0-N" or "0", possibly with more ranges: count them all */
	while (fscanf(f, "%u", &a) == 1) {
		b = a;
		if (fscanf(f, "%c", &sep) == 1 && sep == '-') {
			if (fscanf(f, "%u", &b) != 1)
				break;
			if (fscanf(f, "%c", &sep) != 1)
				sep = '\n';
		}
		n = b + 1 > n ? b + 1 : n; /* queue ids are CPU numbers */
		if (sep != ',')
			break;
	}
	fclose(f);
	return n;
}

void cfsd_uring_note_init(uint32_t flags2)
{
	atomic_store(&U.offered, (flags2 & URING_FLAGS2_OVER_IO_URING) != 0);
}

uint32_t cfsd_uring_init_reply(struct cfsd *d, uint32_t max_write, uint16_t max_pages)
{
	struct io_uring probe;
	size_t sz;

	if (!d->uring || !atomic_load(&U.offered)) {
		U.state = d->uring ? "not offered by the kernel (fuse enable_uring is off, or no support)" : "off";
		goto fallback;
	}
	/* Only ask for it if rings can be made here: once asked, the kernel
	 * holds every request until the queues are registered. */
	if (io_uring_queue_init(QUEUE_DEPTH * 2, &probe, IORING_SETUP_SQE128) < 0) {
		U.state = "io_uring unavailable here";
		goto fallback;
	}
	io_uring_queue_exit(&probe);
	U.nqueues = possible_cpus();
	if (U.nqueues == 0 || U.nqueues > MAX_QUEUES) {
		U.state = "cannot count the possible CPUs";
		goto fallback;
	}
	sz = max_write;
	if ((size_t)max_pages * cfsd_page_size() > sz)
		sz = (size_t)max_pages * cfsd_page_size();
	if (sz < 8192)
		sz = 8192;
	U.payload_sz = sz;
	atomic_store(&U.asked, true);
	return URING_FLAGS2_OVER_IO_URING;

fallback:
	cfsd_log(FUSE_LOG_NOTICE, "transport: /dev/fuse (io_uring: %s)\n", U.state);
	return 0;
}

static struct io_uring_sqe *cmd_sqe(struct queue *q, struct entry *e, uint32_t op)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
	struct ring_cmd_req *req;

	if (!sqe)
		return NULL;
	memset(sqe, 0, 128);
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = U.fd;
	sqe->cmd_op = op;
	sqe->addr = (uint64_t)(uintptr_t)e->iov;
	sqe->len = 2;
	req = (struct ring_cmd_req *)sqe->cmd;
	req->qid = (uint16_t)q->qid;
	req->commit_id = op == URING_CMD_COMMIT_AND_FETCH ? e->commit_id : 0;
	io_uring_sqe_set_data(sqe, e);
	return sqe;
}

/* An error reply in @e for the request @unique. */
static void set_error(struct entry *e, uint64_t unique, int err)
{
	struct kfuse_out_header *out = (void *)e->hdr->in_out;

	memset(out, 0, sizeof(*out));
	out->len = sizeof(*out);
	out->error = -err;
	out->unique = unique;
	e->hdr->ent.payload_sz = 0;
}

static void handle(struct queue *q, struct entry *e)
{
	const struct kfuse_in_header *in = (const void *)e->hdr->in_out;
	uint32_t payload = e->hdr->ent.payload_sz;
	size_t op_len;
	struct fuse_buf buf = { 0 };

	e->commit_id = e->hdr->ent.commit_id;
	if (in->len < sizeof(*in) || payload > U.payload_sz || in->len - sizeof(*in) < payload ||
	    in->len - sizeof(*in) - payload > sizeof(e->hdr->op_in)) {
		/* Not a request we can lay out: answer EIO. */
		set_error(e, in->unique, EIO);
		cmd_sqe(q, e, URING_CMD_COMMIT_AND_FETCH);
		return;
	}
	op_len = in->len - sizeof(*in) - payload;
	if (in->opcode == FUSE_OP_READ && U.nworkers && in->len <= sizeof(e->small)) {
		/* to a worker; the reply comes back through queue_commit() */
		memcpy(e->small, in, sizeof(*in));
		memcpy(e->small + sizeof(*in), e->hdr->op_in, op_len);
		memcpy(e->small + sizeof(*in) + op_len, e->payload, payload);
		e->small_len = in->len;
		e->next = NULL;
		atomic_fetch_add(&U.requests, 1);
		pthread_mutex_lock(&U.wlock);
		if (U.jobs_tail)
			U.jobs_tail->next = e;
		else
			U.jobs = e;
		U.jobs_tail = e;
		pthread_cond_signal(&U.wcond);
		pthread_mutex_unlock(&U.wlock);
		return;
	}
	memcpy(q->reqbuf, in, sizeof(*in));
	memcpy(q->reqbuf + sizeof(*in), e->hdr->op_in, op_len);
	memcpy(q->reqbuf + sizeof(*in) + op_len, e->payload, payload);
	buf.mem = q->reqbuf;
	buf.size = in->len;
	cur_queue = q;
	cur_ent = e;
	atomic_fetch_add(&U.requests, 1);
	fuse_session_process_buf(q->d->se, &buf);
	if (cur_ent) {
		/* libfuse sent no reply on this thread (cannot happen for the
		 * requests the kernel sends through the ring): answer ENOSYS
		 * rather than leave the entry, and the caller, waiting. */
		set_error(e, e->commit_id, ENOSYS);
		cmd_sqe(q, e, URING_CMD_COMMIT_AND_FETCH);
		cur_ent = NULL;
	}
	cur_queue = NULL;
}

bool cfsd_uring_reply(const struct iovec *iov, int count, ssize_t *ret)
{
	struct queue *q = cur_queue;
	struct entry *e = cur_ent;
	const struct kfuse_out_header *out;
	size_t total = 0, off = 0;

	if (!e || count < 1 || iov[0].iov_len < sizeof(*out))
		return false;
	out = iov[0].iov_base;
	if (out->unique != e->commit_id)
		return false; /* a notification or another request's reply */
	for (int i = 0; i < count; i++)
		total += iov[i].iov_len;
	if (total - sizeof(*out) > U.payload_sz) {
		*ret = -EINVAL;
		return true;
	}
	memcpy(e->hdr->in_out, out, sizeof(*out));
	for (int i = 0; i < count; i++) {
		const uint8_t *p = iov[i].iov_base;
		size_t n = iov[i].iov_len, skip = i == 0 ? sizeof(*out) : 0;

		memcpy(e->payload + off, p + skip, n - skip);
		off += n - skip;
	}
	e->hdr->ent.payload_sz = (uint32_t)off;
	cur_ent = NULL;
	if (on_worker) {
		/* the worker hands it to the queue's thread afterwards */
		*ret = (ssize_t)total;
		return true;
	}
	*ret = cmd_sqe(q, e, URING_CMD_COMMIT_AND_FETCH) ? (ssize_t)total : -EBUSY;
	return true;
}

/* A worker's reply is in @e: the queue's thread commits it. */
static void queue_commit(struct queue *q, struct entry *e)
{
	uint64_t one = 1;

	pthread_mutex_lock(&q->mtx);
	e->next = q->to_commit;
	q->to_commit = e;
	pthread_mutex_unlock(&q->mtx);
	if (write(q->efd, &one, sizeof(one)) != sizeof(one))
		cfsd_log(FUSE_LOG_WARNING, "io_uring queue %u: eventfd: %m\n", q->qid);
}

static void *read_worker(void *p)
{
	on_worker = true;
	pthread_mutex_lock(&U.wlock);
	for (;;) {
		struct entry *e;
		struct fuse_buf buf = { 0 };

		while (!U.jobs && !U.wstop)
			pthread_cond_wait(&U.wcond, &U.wlock);
		if (U.wstop)
			break;
		e = U.jobs;
		U.jobs = e->next;
		if (!U.jobs)
			U.jobs_tail = NULL;
		pthread_mutex_unlock(&U.wlock);

		buf.mem = e->small;
		buf.size = e->small_len;
		cur_queue = e->q;
		cur_ent = e;
		fuse_session_process_buf(e->q->d->se, &buf);
		if (cur_ent) {
			set_error(e, e->commit_id, ENOSYS); /* as in handle() */
			cur_ent = NULL;
		}
		queue_commit(e->q, e);
		pthread_mutex_lock(&U.wlock);
	}
	pthread_mutex_unlock(&U.wlock);
	return NULL;
}

static bool arm_eventfd(struct queue *q)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);

	if (!sqe)
		return false;
	io_uring_prep_read(sqe, q->efd, &q->efd_val, sizeof(q->efd_val), 0);
	io_uring_sqe_set_data(sqe, &q->efd_val);
	return true;
}

static int queue_setup(struct queue *q)
{
	struct io_uring_params params = {
		/* Task work (copying a request into our buffers) runs only when
		 * this thread waits for completions: no signal, no IPI. */
		.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
	};
	cpu_set_t cpus;
	int r;

	/* Queue N serves the tasks running on CPU N: run beside them. */
	CPU_ZERO(&cpus);
	CPU_SET(q->qid, &cpus);
	(void)pthread_setaffinity_np(pthread_self(), sizeof(cpus), &cpus);
	r = io_uring_queue_init_params(QUEUE_DEPTH * 4, &q->ring, &params);
	if (r == -EINVAL)
		r = io_uring_queue_init(QUEUE_DEPTH * 4, &q->ring, IORING_SETUP_SQE128);
	if (r < 0)
		return r;
	q->ring_ok = true;
	q->efd = eventfd(0, EFD_CLOEXEC);
	if (q->efd < 0 || !arm_eventfd(q))
		return q->efd < 0 ? -errno : -EBUSY;
	q->reqbuf = malloc(sizeof(struct kfuse_in_header) + 128 + U.payload_sz);
	if (!q->reqbuf)
		return -ENOMEM;
	for (unsigned i = 0; i < QUEUE_DEPTH; i++) {
		struct entry *e = &q->ents[i];

		if (posix_memalign((void **)&e->hdr, 64, sizeof(*e->hdr)) != 0 ||
		    posix_memalign((void **)&e->payload, cfsd_page_size(), U.payload_sz) != 0)
			return -ENOMEM;
		memset(e->hdr, 0, sizeof(*e->hdr));
		e->q = q;
		e->iov[0] = (struct iovec){ e->hdr, sizeof(*e->hdr) };
		e->iov[1] = (struct iovec){ e->payload, U.payload_sz };
		if (!cmd_sqe(q, e, URING_CMD_REGISTER))
			return -EBUSY;
	}
	r = io_uring_submit(&q->ring);
	return r < 0 ? r : 0;
}

/* One thread per queue: it makes the ring (single issuer), registers the
 * entries, then serves them until the connection ends. */
static void *queue_thread(void *p)
{
	struct queue *q = p;
	int r = queue_setup(q);

	pthread_mutex_lock(&U.lock);
	q->setup_result = r;
	q->setup_done = true;
	pthread_cond_broadcast(&U.cond);
	pthread_mutex_unlock(&U.lock);
	if (r < 0)
		return NULL;
	for (;;) {
		struct io_uring_cqe *cqe;
		struct entry *e;

		r = io_uring_submit_and_wait(&q->ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
			break;
		if (io_uring_peek_cqe(&q->ring, &cqe) != 0)
			continue;
		e = io_uring_cqe_get_data(cqe);
		r = cqe->res;
		io_uring_cqe_seen(&q->ring, cqe);
		if ((void *)e == (void *)&q->efd_val) {
			/* workers' replies: commit them, listen again */
			struct entry *list;

			pthread_mutex_lock(&q->mtx);
			list = q->to_commit;
			q->to_commit = NULL;
			pthread_mutex_unlock(&q->mtx);
			while (list) {
				struct entry *next = list->next;

				cmd_sqe(q, list, URING_CMD_COMMIT_AND_FETCH);
				list = next;
			}
			if (r < 0 && r != -EINTR && r != -EAGAIN)
				break;
			arm_eventfd(q);
			continue;
		}
		if (r < 0) {
			/* -ENOTCONN/-ECANCELED at unmount; anything else: this
			 * entry is lost, the others go on. */
			if (r == -ENOTCONN || r == -ECANCELED || r == -ENODEV)
				break;
			cfsd_log(FUSE_LOG_WARNING, "io_uring queue %u: entry failed: %s\n", q->qid,
				 strerror(-r));
			continue;
		}
		handle(q, e);
	}
	return NULL;
}

static int queue_start(struct cfsd *d, struct queue *q, unsigned qid)
{
	int r;

	q->d = d;
	q->qid = qid;
	q->efd = -1;
	pthread_mutex_init(&q->mtx, NULL);
	r = pthread_create(&q->thread, NULL, queue_thread, q);
	if (r != 0)
		return -r;
	q->started = true;
	pthread_mutex_lock(&U.lock);
	while (!q->setup_done)
		pthread_cond_wait(&U.cond, &U.lock);
	r = q->setup_result;
	pthread_mutex_unlock(&U.lock);
	return r;
}

void cfsd_uring_start(struct cfsd *d, int fd)
{
	if (!atomic_load(&U.asked) || atomic_exchange(&U.running, true))
		return;
	U.fd = fd;
	U.queues = calloc(U.nqueues, sizeof(*U.queues));
	if (!U.queues) {
		U.state = "out of memory";
		return;
	}
	for (unsigned i = 0; i < READ_WORKERS; i++) {
		if (pthread_create(&U.workers[i], NULL, read_worker, NULL) != 0)
			break;
		U.nworkers++;
	}
	for (unsigned i = 0; i < U.nqueues; i++) {
		int r = queue_start(d, &U.queues[i], i);

		if (r < 0) {
			/* The kernel falls back to /dev/fuse only when a
			 * registration fails; a queue never registered would
			 * hold every request.  Nothing more can be done here
			 * but say so loudly. */
			cfsd_log(FUSE_LOG_ERR, "io_uring queue %u: %s: requests may stall\n", i, strerror(-r));
			U.state = "setup failed";
			return;
		}
	}
	U.state = "io_uring";
	atomic_store(&d->uring_on, true);
	cfsd_log(FUSE_LOG_NOTICE, "transport: FUSE over io_uring, %u queues of %d entries, %u read workers\n",
		 U.nqueues, QUEUE_DEPTH, U.nworkers);
}

void cfsd_uring_stop(void)
{
	pthread_mutex_lock(&U.wlock);
	U.wstop = true;
	pthread_cond_broadcast(&U.wcond);
	pthread_mutex_unlock(&U.wlock);
	for (unsigned i = 0; i < U.nworkers; i++)
		pthread_join(U.workers[i], NULL);
	U.nworkers = 0;
	for (unsigned i = 0; U.queues && i < U.nqueues; i++) {
		struct queue *q = &U.queues[i];
		struct timespec until;

		/* The connection is gone: the kernel ends every entry
		 * (-ENOTCONN) and the threads leave.  One that does not within
		 * seconds keeps its memory (the process is exiting). */
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 5;
		if (q->started && pthread_timedjoin_np(q->thread, NULL, &until) != 0)
			return;
		if (q->ring_ok)
			io_uring_queue_exit(&q->ring);
		if (q->efd >= 0)
			close(q->efd);
		for (unsigned j = 0; j < QUEUE_DEPTH; j++) {
			free(q->ents[j].hdr);
			free(q->ents[j].payload);
		}
		free(q->reqbuf);
	}
	free(U.queues);
	U.queues = NULL;
}

const char *cfsd_uring_describe(void)
{
	return U.state;
}

uint64_t cfsd_uring_requests(void)
{
	return atomic_load(&U.requests);
}

#else /* no liburing */

void cfsd_uring_note_init(uint32_t flags2)
{
}

uint32_t cfsd_uring_init_reply(struct cfsd *d, uint32_t max_write, uint16_t max_pages)
{
	return 0;
}

bool cfsd_uring_reply(const struct iovec *iov, int count, ssize_t *ret)
{
	return false;
}

void cfsd_uring_start(struct cfsd *d, int fd)
{
}

void cfsd_uring_stop(void)
{
}

const char *cfsd_uring_describe(void)
{
	return "not built (no liburing)";
}

uint64_t cfsd_uring_requests(void)
{
	return 0;
}
#endif
