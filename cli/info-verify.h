/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The `composefs-info verify` subcommand, implemented in info-verify.c.
 *
 * composefs-info.c parses the global options (--basedir, --filter,
 * --tree-cache, --threads), opens each IMAGE operand in turn and calls
 * cfs_info_verify() once per image:
 *   @img         the opened, validated image (borrowed; do not unref)
 *   @image_path  the operand as given, for messages
 *   @basedir     the --basedir value (one or more directories separated by
 *                ':'), or NULL if none was given
 *   @argc/@argv  the program's complete, unmodified argument vector, so the
 *                subcommand can read options such as --tree-cache=DIR or
 *                --threads=N itself (composefs-info accepts and otherwise
 *                ignores them)
 * Returns 0 if every object is present and matches its digest, > 0 if some
 * object is missing or corrupt (already reported on stdout/stderr), or a
 * negative errno on failure (composefs-info prints one line for it).
 * composefs-info exits 0 only if every call returned 0.
 */
#pragma once

#include "cfs-image.h"

int cfs_info_verify(struct cfs_image *img, const char *image_path, const char *basedir, int argc,
		    char **argv);
