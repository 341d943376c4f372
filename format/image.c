/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The image reader: placeholder until the reader lands. */
