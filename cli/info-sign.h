/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* composefs-info sign: an fs-verity signature of IMAGE's digest into @out. */
int cfs_info_sign(const char *image, const char *key, const char *cert, const char *out);
/* composefs-info verify-signature: 0 if @sig signs IMAGE for one of @certs. */
int cfs_info_verify_signature(const char *image, const char *sig, const char *certs);
