/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "config.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "cfsd.h"

/*
 * Per-thread reply buffers.  A read request asks for up to 1 MiB (libfuse
 * negotiates 256 pages; readahead asks for 128 KiB); a malloc of that size
 * per request may be served by mmap() (glibc's threshold starts at 128 KiB)
 * and then costs page faults and zeroing on every read, so each worker
 * thread keeps one buffer, grown as needed and freed when libfuse ends the
 * thread.
 */
static pthread_key_t tbuf_key;
static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;
static bool tbuf_key_ok;
static __thread void *tbuf;
static __thread size_t tbuf_cap;

static void tbuf_key_init(void)
{
	tbuf_key_ok = pthread_key_create(&tbuf_key, free) == 0;
}

void *cfsd_thread_buffer(size_t size)
{
	const size_t grain = 64 << 10;
	size_t cap;

	if (size <= tbuf_cap)
		return tbuf;
	pthread_once(&tbuf_once, tbuf_key_init);
	if (!tbuf_key_ok)
		return NULL;
	cap = size > SIZE_MAX - grain ? size : (size + grain - 1) / grain * grain;
	free(tbuf);
	tbuf = malloc(cap);
	tbuf_cap = tbuf ? cap : 0;
	/* The key's destructor frees it at thread exit. */
	(void)pthread_setspecific(tbuf_key, tbuf);
	return tbuf;
}

/* The calling thread's buffer (the main thread runs no key destructor). */
void cfsd_thread_buffer_free(void)
{
	free(tbuf);
	tbuf = NULL;
	tbuf_cap = 0;
	if (tbuf_key_ok)
		(void)pthread_setspecific(tbuf_key, NULL);
}
