// SPDX-License-Identifier: GPL-2.0-only
/*
 * xenfb_legacy_fixed - the same source as xenfb_legacy.c, built with the
 * fix for the fault/zap race enabled.  Everything that differs is in the
 * "#ifdef XENFB_LEGACY_FIXED" blocks of xenfb_legacy.c.
 */
#define XENFB_LEGACY_FIXED 1
#include "xenfb_legacy.c"
