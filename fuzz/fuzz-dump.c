/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target: parse the input as a composefs dump file and, when it
 * parses, write the image to a sink that only counts bytes.  Rejecting is
 * fine; crashing, leaking or reading out of bounds is not.  When the image
 * reader is linked in, the image is also loaded back into a tree, which
 * must succeed for anything the writer produced, printed, and written again.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfs-image.h"
#include "cfs-writer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct sink {
	uint8_t *buf;
	size_t len, cap;
};

static int sink_write(void *userdata, const void *buf, size_t len)
{
	struct sink *s = userdata;

	/* Keep images up to 64 MiB for the read-back check, count the rest. */
	if (s->buf && s->len + len <= (64u << 20)) {
		if (s->len + len > s->cap) {
			size_t cap = s->cap ? s->cap : 65536;
			while (cap < s->len + len)
				cap *= 2;
			uint8_t *n = realloc(s->buf, cap);
			if (!n)
				return -ENOMEM;
			s->buf = n;
			s->cap = cap;
		}
		memcpy(s->buf + s->len, buf, len);
	} else {
		free(s->buf);
		s->buf = NULL;
	}
	s->len += len;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfs_node *root = NULL;
	char *err = NULL;
	struct sink s = { .buf = malloc(1) };
	struct cfs_write_options wo = { .min_version = 0, .max_version = 1,
					.write = sink_write, .userdata = &s };
	int r;

	if (!s.buf)
		return 0;
	r = cfs_dump_parse_mem(data, size, 0, &root, &err);
	free(err);
	if (r >= 0) {
		r = cfs_write_image(root, &wo, NULL);
		cfs_node_free(root);
		if (r >= 0 && s.buf) {
			struct cfs_image *img = NULL;
			FILE *null = fopen("/dev/null", "we");
			struct sink again = { .buf = NULL };

			/* What the writer produced, the reader must accept. */
			if (cfs_img_open_mem(s.buf, s.len, 0, &img) < 0)
				abort();
			if (cfs_tree_from_image(img, NULL, &root, NULL) < 0)
				abort();
			if (null) {
				if (cfs_dump_print(root, null) < 0)
					abort();
				fclose(null);
			}
			wo.userdata = &again;
			(void)cfs_write_image(root, &wo, NULL);
			cfs_node_free(root);
			cfs_img_unref(img);
		}
	}
	free(s.buf);
	return 0;
}
