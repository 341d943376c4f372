/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Verified data into the kernel's page cache.  When a READ made the store
 * read and hash a whole object to build its tree, the rest of that verified
 * copy is stored into the page cache (fuse_lowlevel_notify_store()), so
 * that the object is not read and hashed again for the next READs.  Over
 * /dev/fuse the worker thread does it before replying; over io_uring a
 * pusher thread does it after the reply, with a bound on the bytes waiting.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "cfsd.h"

/* A verified whole object waiting to go into the page cache. */
struct push_job {
	struct push_job *next;
	fuse_ino_t ino;
	uint8_t *whole;
	uint64_t size, skip_off, skip_end;
};

#define PUSH_PENDING_MAX (32ULL << 20)

/* The pusher thread (io_uring transport) and its queue, under @lock. */
struct cfsd_push {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct push_job *head, *tail;
	uint64_t bytes;
	bool started, stop;
	pthread_t thread;
};

int cfsd_push_new(struct cfsd *d)
{
	struct cfsd_push *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	d->push = p;
	return 0;
}

void cfsd_push_stop(struct cfsd *d)
{
	struct cfsd_push *p = d->push;

	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	if (p->started)
		pthread_join(p->thread, NULL);
	p->started = false;
	while (p->head) {
		struct push_job *j = p->head;

		p->head = j->next;
		free(j->whole);
		free(j);
	}
	p->tail = NULL;
	p->bytes = 0;
}

void cfsd_push_free(struct cfsd *d)
{
	struct cfsd_push *p = d->push;

	if (!p)
		return;
	cfsd_push_stop(d);
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	free(p);
	d->push = NULL;
}

uint64_t cfsd_push_pending(struct cfsd *d)
{
	struct cfsd_push *p = d->push;
	uint64_t n;

	if (!p)
		return 0;
	pthread_mutex_lock(&p->lock);
	n = p->bytes;
	pthread_mutex_unlock(&p->lock);
	return n;
}

/*
 * Hand the verified copy @whole of a whole object to the kernel's page
 * cache, apart from [@skip_off, @skip_end), the pages of the READ being
 * answered (the kernel holds them locked until the reply fills them).
 * Never from the single-threaded loop: a store into a page that another
 * READ holds locked waits for that READ's reply, which only another thread
 * can send.  Best effort: a page the kernel does not take is read again
 * later, verified again.
 */
static void push_to_cache(struct cfsd *d, fuse_ino_t ino, const uint8_t *whole, uint64_t size,
			  uint64_t skip_off, uint64_t skip_end)
{
	const uint64_t chunk = 1 << 20, page = cfsd_page_size();
	uint64_t ranges[2][2] = { { 0, skip_off & ~(page - 1) }, { skip_end, size } };

	if (!d->se)
		return;
	if (skip_end < size && skip_end % page)
		ranges[1][0] = (skip_end + page - 1) & ~(page - 1);
	for (int i = 0; i < 2; i++) {
		for (uint64_t o = ranges[i][0]; o < ranges[i][1];) {
			uint64_t n = ranges[i][1] - o < chunk ? ranges[i][1] - o : chunk;
			struct fuse_bufvec bv = FUSE_BUFVEC_INIT((size_t)n);
			int r;

			bv.buf[0].mem = (void *)(whole + o);
			r = fuse_lowlevel_notify_store(d->se, ino, (off_t)o, &bv, 0);
			if (r < 0)
				return; /* e.g. -ENOENT: the kernel dropped the inode */
			atomic_fetch_add(&d->stats.pushed_bytes, n);
			o += n;
		}
	}
}

static void *pusher(void *arg)
{
	struct cfsd *d = arg;
	struct cfsd_push *p = d->push;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		struct push_job *j;

		while (!p->head && !p->stop)
			pthread_cond_wait(&p->cond, &p->lock);
		if (p->stop)
			break;
		j = p->head;
		p->head = j->next;
		if (!p->head)
			p->tail = NULL;
		pthread_mutex_unlock(&p->lock);
		push_to_cache(d, j->ino, j->whole, j->size, j->skip_off, j->skip_end);
		pthread_mutex_lock(&p->lock);
		p->bytes -= j->size;
		free(j->whole);
		free(j);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

/*
 * The rest of a whole verified object for the page cache.  On /dev/fuse,
 * before the reply (so the reader's next read finds the pages).  Never
 * from the single-threaded loop or from an io_uring queue thread, where a
 * store into a page that another READ holds locked would wait for that
 * READ's reply, which only this thread could send: with io_uring a pusher
 * thread does it after the reply.  Takes @whole.
 */
void cfsd_push_object(struct cfsd *d, fuse_ino_t ino, uint8_t *whole, uint64_t size,
		      uint64_t skip_off, uint64_t skip_end)
{
	struct cfsd_push *p = d->push;
	struct push_job *j;

	if (!atomic_load(&d->uring_on)) {
		if (!d->single_thread)
			push_to_cache(d, ino, whole, size, skip_off, skip_end);
		free(whole);
		return;
	}
	j = malloc(sizeof(*j));
	pthread_mutex_lock(&p->lock);
	if (j && !p->stop && p->bytes + size <= PUSH_PENDING_MAX &&
	    (p->started || pthread_create(&p->thread, NULL, pusher, d) == 0)) {
		p->started = true;
		*j = (struct push_job){ .ino = ino, .whole = whole, .size = size, .skip_off = skip_off,
					.skip_end = skip_end };
		if (p->tail)
			p->tail->next = j;
		else
			p->head = j;
		p->tail = j;
		p->bytes += size;
		pthread_cond_signal(&p->cond);
		j = NULL;
		whole = NULL;
	}
	pthread_mutex_unlock(&p->lock);
	free(j);
	free(whole); /* not queued: read again later, verified again */
}
