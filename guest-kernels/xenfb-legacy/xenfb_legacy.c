// SPDX-License-Identifier: GPL-2.0-only
/*
 * xenfb_legacy - a Xen paravirtual framebuffer frontend with the old
 * (Linux 2.6.18 / RHEL-5) design, rebuilt as an out-of-tree module for
 * Debian's guest kernels, for the xenfb-harness project.  Written for
 * Debian 12's 6.1; it also builds for Debian 11's 5.10 and Debian 13's
 * 6.12 (see "Kernel versions" below).
 *
 * Written for the harness from the public interface descriptions
 * (include/xen/interface/io/fbif.h, the xenbus API, the 6.1 fault path).
 *
 * This one file builds two modules:
 *
 *   xenfb-legacy.ko        the old design, faithfully, including its race;
 *   xenfb-legacy-fixed.ko  the same file compiled with XENFB_LEGACY_FIXED
 *                          (see xenfb_legacy_fixed.c): the minimal fix, in
 *                          the blocks marked "#ifdef XENFB_LEGACY_FIXED".
 *
 * ------------------------------------------------------------------------
 * The old design
 * ------------------------------------------------------------------------
 * The framebuffer is ordinary vmalloc()ed guest memory.  The backend maps
 * it through the page directory in the shared page and repaints a
 * rectangle whenever the frontend sends an XENFB_TYPE_UPDATE event.  The
 * frontend must therefore learn which parts of the framebuffer user space
 * writes through mmap().  It does so with page faults:
 *
 *  - a user mapping starts with no PTEs; every access faults;
 *  - the fault handler records the fault on the mapping (faults++), grows
 *    the dirty rectangle by the rows of the faulting page and arms a
 *    refresh timer (HZ/20);
 *  - the timer wakes a kernel thread, which zaps every mapping that has
 *    faulted since the last tick (so the next write faults again), clears
 *    its fault count, then takes the dirty rectangle and sends one update.
 *
 * ------------------------------------------------------------------------
 * The race (the point of the plain build)
 * ------------------------------------------------------------------------
 * The fault handler only records the fault; the PTE is installed by the
 * core (finish_fault()) after the handler has returned, outside the driver
 * lock.  So:
 *
 *   writer (fault path)                 refresh thread
 *   -------------------                 --------------
 *   mutex_lock; faults++; grow rect;
 *   arm timer; mutex_unlock
 *            <-- window -->             mutex_lock; zap the mapping (the
 *                                       PTE is not there yet: nothing to
 *                                       do); faults = 0; take rect; unlock;
 *                                       send update (page content is old)
 *   handler returns; core installs PTE
 *   user writes the page: no fault, the mapping is "clean" (faults == 0),
 *   nothing will zap it again and no update covers the write.
 *
 * finish_fault() (in 5.10, 6.1 and 6.12 alike) only re-checks that the
 * PTE slot is still empty; a zap of a PTE that was never there leaves it
 * empty, so the stale PTE is installed anyway.  The write stays invisible
 * until another fault on the same mapping makes the thread zap it again
 * and the page is written again.
 *
 * race_window_ms (module parameter) sleeps in exactly that window, after
 * the driver lock is dropped and before the page is returned; it widens
 * the real gap and changes nothing else.  With a delay of two refresh
 * periods or more (>= 100 ms) the thread always runs inside the window.
 *
 * ------------------------------------------------------------------------
 * The fix (XENFB_LEGACY_FIXED)
 * ------------------------------------------------------------------------
 * In both builds the fault handler locks its page before dropping the
 * driver lock and returns VM_FAULT_LOCKED, so the page stays locked until
 * the core has installed the PTE.  (The core would lock it anyway right
 * after the handler returns, in __do_fault(), and keep it locked through
 * finish_fault(); we only take it a little earlier, so the whole window
 * is covered.)  Before zapping a mapping and clearing its count, the
 * thread try-locks the pages the mapping faulted on: a page it cannot
 * lock belongs to a fault inside the window.  The old design zaps anyway
 * and counts a race hit; the fix postpones that mapping to the next tick
 * (counter "deferred").  See the "THE FIX" comments for the argument.
 * In the fixed build no zap runs while a fault is inside the window, so
 * race_hits stays 0 by construction.
 *
 * ------------------------------------------------------------------------
 * Negative controls (XENFB_BREAK_*): deliberately broken builds
 * ------------------------------------------------------------------------
 * Each XENFB_BREAK_* switch breaks the send path so that the LAST update
 * of a burst never reaches the backend while the guest stays quiet, and
 * any later drawing heals it.  They exist to prove that a verdict taken
 * at a quiet point catches such a frontend, where a verdict taken while
 * something keeps drawing (a heartbeat) would be healed.  Our Kbuild never
 * defines them: a test builds a copy of this folder whose Kbuild adds
 * "ccflags-y += -DXENFB_BREAK_...".  At most one may be defined; it applies
 * on top of either build (it matters most on the fixed one, which has no
 * race of its own).  The module then says which one at load (an error-level
 * line, so that it reaches a "quiet" console), has a read-only parameter
 * "negative_control" and a modinfo field of that name.
 *
 * Each break holds back every update it sends and lets it go when
 * something new is drawn (a fault or a kernel-side draw): a writer that
 * keeps drawing sees its updates one drawing late, and the update of the
 * last tick of a burst stays held for as long as the guest is quiet.  Any
 * later drawing releases it, which is what a heartbeat would do.  The
 * module counts both ("held", "released" parameters, in the writer's
 * STATS).
 *
 *   XENFB_BREAK_UNNOTIFIED_LAST ("unnotified-last"): the event is put on
 *     the ring and published, but its notify is withheld until something
 *     new is drawn.  QEMU's backend reads the out ring only when
 *     notified, so the event sits there.  Two more details
 *     keep it there: while it does, the notify that acknowledges the
 *     backend's in-events is withheld too (QEMU sends a REFRESH_PERIOD
 *     in-event whenever its display refresh interval changes, which it
 *     does as the display goes idle; acknowledging it would carry the
 *     stale event along), and before publishing, the send waits (bounded)
 *     for the backend to consume what it was notified of, so that a late
 *     backend cannot pick the new event up through an older notify.
 *   XENFB_BREAK_UNPUBLISHED_LAST ("unpublished-last"): the event is
 *     written into its ring slot and the backend is notified, but the
 *     producer index is advanced over it only when something new is
 *     drawn.  The backend reads only up to the producer index.
 *   XENFB_BREAK_DROPPED_LAST ("dropped-last"): the rectangle of a tick is
 *     kept back by the frontend, not put on the ring; something new drawn
 *     wakes the thread to send it (and the next tick would send it first
 *     anyway).  While the guest stays quiet it is, in effect, dropped.
 *
 * For a writer that draws a burst and stops, all three are deterministic
 * on the frontend's side: the update of the burst's last tick is never
 * delivered.  The screen shows everything that update alone covers as
 * stale; if the burst spans several ticks, what an earlier (delivered)
 * update's repaint happened to read after it was written is not stale.
 * A burst that ends within one refresh period (HZ/20) is all stale.
 *
 * ------------------------------------------------------------------------
 * Counters (read-only module parameters)
 * ------------------------------------------------------------------------
 *   faults     faults handled (each one counted on its mapping);
 *   zaps       mappings zapped by the refresh thread;
 *   updates    XENFB_TYPE_UPDATE events put on the ring;
 *   draws      kernel-side drawing: write() and the fb_ops fbcon uses;
 *   race_hits  zaps that hit a mapping while a fault on it was inside the
 *              window (see below);
 *   mmap_busy  zaps postponed because mmap_read_trylock() failed;
 *   deferred   (fixed build only) zaps postponed because a fault on the
 *              mapping had not installed its PTE yet.
 *
 * A race hit: the thread, under the driver lock, counts one when it zaps
 * (and clears the fault count of) a mapping while a page of the mapping's
 * recorded range is locked, i.e. while a fault recorded on it is between
 * dropping the driver lock and the core installing its PTE (the whole
 * window, as the page lock covers it exactly).  The zap cannot remove
 * that PTE (not there yet), and the count the fault added is thrown away,
 * so the page will end up mapped but untracked.  At most one hit is
 * counted per zap.  A race hit does not prove a lost write (the writer may
 * never write that page again), nor even an untracked PTE: the core
 * unlocks the page a little after installing the PTE (after dropping the
 * page-table lock, where a preemptible kernel may switch tasks), and a
 * zap in that last stretch removes the PTE as it should and is counted
 * too.  So race_hits is an upper bound of the PTEs left untracked.  Limit: with
 * several mappings of one page (forked writers), a fault on another
 * mapping of a page in the range also holds its lock; the harness's
 * workers never write one page from two mappings in a round.
 *
 * ------------------------------------------------------------------------
 * Locks and their order
 * ------------------------------------------------------------------------
 *   mm_lock    (mutex)  the list of mappings and, per mapping, the fault
 *                       count and the faulted page range;
 *   dirty_lock (spin, irqsave)  the dirty rectangle, arming the timer,
 *                       update_wanted, irq and the out ring.  Taken from
 *                       fbcon drawing, which may run in atomic context, so
 *                       it cannot be the mutex.
 *
 *   fault:   mmap_lock (read, taken by the core) -> mm_lock
 *            -> page lock ; dirty_lock is taken and released
 *            while mm_lock is held, never around a sleeping call.
 *   mmap:    mmap_lock (write) -> fb core's info->mm_lock -> mm_lock
 *   open/close: mmap_lock (write, or read after munmap's downgrade) ->
 *            mm_lock
 *   thread:  mm_lock -> mmap_read_trylock(vma->vm_mm) -> page trylock
 *            -> dirty_lock.
 *
 * The thread takes mmap_lock after mm_lock, the reverse of the fault path,
 * so it may only try-lock it: if that fails it keeps the mapping's count
 * and retries on the next tick.  The page lock is also
 * only try-locked by the thread.  Nothing that holds a page lock of ours
 * ever waits for mm_lock (the core, after our handler returned, only takes
 * the page-table lock before unlocking the page), so there is no cycle.
 *
 * ------------------------------------------------------------------------
 * Kernel versions
 * ------------------------------------------------------------------------
 * Built for Debian 11 (5.10), 12 (6.1) and 13 (6.12).  The API differences
 * are handled with LINUX_VERSION_CODE checks where they are used; each one
 * names the upstream change it follows and the release it landed in (and
 * the 6.1 stable release, where it was backported there).  None changes
 * the behaviour: the fault path this design relies on (a VM_FAULT_LOCKED
 * page stays locked through finish_fault() until its PTE is installed, no
 * ->map_pages, so no fault-around; in 6.12 a fault taken under the
 * per-VMA lock is retried under mmap_lock, as we have no ->map_pages) is
 * the same in all three.
 *   - is_cow_mapping() (5.10: private to mm/, same definition here);
 *   - zap_page_range() -> zap_vma_pages() (6.3);
 *   - vma->vm_flags is read-only, vm_flags_set() (6.3);
 *   - timer_shutdown_sync() (6.2, 6.1.158; 5.10: del_timer_sync() and a
 *     flag that keeps __xenfb_arm() from re-arming);
 *   - xenbus_driver.remove returns void (6.2, 6.1.162; before: int);
 *   - xenbus_driver.not_essential (5.16; 5.10 treats device/vfb as not
 *     essential by its node name);
 *   - FBINFO_FLAG_DEFAULT (0) is gone (6.6).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/version.h>
#include <linux/kernel.h>
#include <linux/errno.h>
#include <linux/fb.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/pagemap.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/timer.h>
#include <linux/kthread.h>
#include <linux/wait.h>
#include <linux/delay.h>
#include <linux/interrupt.h>

#include <xen/xen.h>
#include <xen/events.h>
#include <xen/page.h>
#include <xen/xenbus.h>
#include <xen/platform_pci.h>
#include <xen/interface/io/fbif.h>
#include <xen/interface/io/protocols.h>

/*
 * is_cow_mapping() moved from mm/internal.h to <linux/mm.h> in "mm:
 * introduce page_needs_cow_for_dma() for deciding whether cow" (5.12).
 * Before it (Debian 11's 5.10): the same definition, here.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 12, 0)
static inline bool is_cow_mapping(vm_flags_t flags)
{
	return (flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE;
}
#endif

#ifdef XENFB_LEGACY_FIXED
#define XENFB_VARIANT "legacy-fixed"
#else
#define XENFB_VARIANT "legacy"
#endif

/* Negative controls: never defined by our own Kbuild (see the top). */
#if defined(XENFB_BREAK_UNNOTIFIED_LAST) + defined(XENFB_BREAK_UNPUBLISHED_LAST) + \
	defined(XENFB_BREAK_DROPPED_LAST) > 1
#error "define at most one XENFB_BREAK_* switch"
#endif
#if defined(XENFB_BREAK_UNNOTIFIED_LAST)
#define XENFB_BREAK "unnotified-last"
#define XENFB_BREAK_DOC "the last update of a burst is published but its notify is withheld until more is drawn"
#elif defined(XENFB_BREAK_UNPUBLISHED_LAST)
#define XENFB_BREAK "unpublished-last"
#define XENFB_BREAK_DOC "the last update of a burst is written to the ring but out_prod is not advanced until more is drawn"
#elif defined(XENFB_BREAK_DROPPED_LAST)
#define XENFB_BREAK "dropped-last"
#define XENFB_BREAK_DOC "the last update of a burst is held back by the frontend and sent only when more is drawn"
#endif

/* Refresh period of the old driver: 20 updates per second at most. */
#define XENFB_REFRESH_DELAY	(HZ / 20 ? HZ / 20 : 1)

/* Default video memory limit in MiB, as the upstream driver. */
#define XENFB_DEFAULT_VIDEORAM	2

/* ---------------------------------------------------------------------- */
/* Knobs and counters                                                      */
/* ---------------------------------------------------------------------- */

static unsigned int race_window_ms;
module_param(race_window_ms, uint, 0644);
MODULE_PARM_DESC(race_window_ms,
	"Sleep this long in the fault handler after dropping the driver lock and before returning the page (widens the race window; 0 = off)");

/*
 * The counters are updated under mm_lock (faults, zaps, race_hits,
 * mmap_busy, deferred) or dirty_lock (updates), and read without locks
 * through sysfs.
 */
static unsigned long stat_faults;
module_param_named(faults, stat_faults, ulong, 0444);
MODULE_PARM_DESC(faults, "Page faults handled on framebuffer mappings");

static unsigned long stat_zaps;
module_param_named(zaps, stat_zaps, ulong, 0444);
MODULE_PARM_DESC(zaps, "Mappings zapped by the refresh thread");

static unsigned long stat_updates;
module_param_named(updates, stat_updates, ulong, 0444);
MODULE_PARM_DESC(updates, "XENFB_TYPE_UPDATE events sent to the backend");

static unsigned long stat_draws;
module_param_named(draws, stat_draws, ulong, 0444);
MODULE_PARM_DESC(draws, "Kernel-side drawing: write() and the fb_ops fbcon uses (fill, copy, blit)");

static unsigned long stat_race_hits;
module_param_named(race_hits, stat_race_hits, ulong, 0444);
MODULE_PARM_DESC(race_hits,
	"Zaps of a mapping while a fault on it was between dropping the driver lock and its PTE being installed");

static unsigned long stat_mmap_busy;
module_param_named(mmap_busy, stat_mmap_busy, ulong, 0444);
MODULE_PARM_DESC(mmap_busy,
	"Zaps postponed to the next tick because mmap_read_trylock() failed");

#ifdef XENFB_LEGACY_FIXED
static unsigned long stat_deferred;
module_param_named(deferred, stat_deferred, ulong, 0444);
MODULE_PARM_DESC(deferred,
	"Zaps postponed to the next tick because a fault on the mapping had not installed its PTE yet");
#endif

#ifdef XENFB_BREAK
/* Which negative control this build is: read-only, and not settable at
 * load time either (a wrong label would be worse than none). */
static int xenfb_break_set(const char *val, const struct kernel_param *kp)
{
	return -EPERM;
}

static int xenfb_break_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s\n", XENFB_BREAK);
}

static const struct kernel_param_ops xenfb_break_ops = {
	.set	= xenfb_break_set,
	.get	= xenfb_break_get,
};
module_param_cb(negative_control, &xenfb_break_ops, NULL, 0444);
MODULE_PARM_DESC(negative_control,
	"NEGATIVE CONTROL, a deliberately broken build: " XENFB_BREAK " (" XENFB_BREAK_DOC ")");
MODULE_INFO(negative_control, XENFB_BREAK);
#endif

/* ---------------------------------------------------------------------- */
/* Data structures                                                         */
/* ---------------------------------------------------------------------- */

/* Half-open rectangle [x1, x2) x [y1, y2); empty when x1 >= x2 or y1 >= y2. */
struct xenfb_rect {
	int x1, y1, x2, y2;
};

struct xenfb_info;

/* One per VMA that maps the framebuffer. */
struct xenfb_mapping {
	struct list_head	link;		/* info->mappings, mm_lock */
	struct vm_area_struct	*vma;
	struct xenfb_info	*info;
	/* Under mm_lock: faults since the last zap, and the framebuffer
	 * page range [pg_lo, pg_hi] they hit (empty when faults == 0). */
	unsigned long		faults;
	unsigned long		pg_lo, pg_hi;
};

struct xenfb_info {
	struct xenbus_device	*xbdev;
	struct fb_info		*fb_info;
	bool			fb_registered;

	unsigned char		*fb;		/* vmalloc()ed framebuffer */
	unsigned long		fb_len;
	unsigned long		nr_pages;
	int			width, height, line_length;
	unsigned long		*gfns;		/* page directory contents */
	struct xenfb_page	*page;		/* shared page */

	struct mutex		mm_lock;
	struct list_head	mappings;	/* struct xenfb_mapping */

	spinlock_t		dirty_lock;
	struct xenfb_rect	dirty;		/* dirty_lock */
	int			update_wanted;	/* dirty_lock; backend asked */
	int			irq;		/* dirty_lock; -1 if unbound */
	struct timer_list	refresh;	/* armed under dirty_lock */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 1, 158)
	bool			refresh_shut;	/* dirty_lock; never re-arm
						 * (no timer_shutdown_sync()) */
#endif

	struct task_struct	*thread;
	wait_queue_head_t	wq;
	unsigned long		kick;		/* bit 0: timer fired; bit 1:
						 * send the held update
						 * (XENFB_BREAK_DROPPED_LAST) */

#ifdef XENFB_BREAK_UNNOTIFIED_LAST
	bool			unnotified;	/* dirty_lock; published event
						 * not notified yet */
#endif
#ifdef XENFB_BREAK_UNPUBLISHED_LAST
	u32			unpublished;	/* dirty_lock; events written
						 * past out_prod */
#endif
#ifdef XENFB_BREAK_DROPPED_LAST
	struct xenfb_rect	held;		/* refresh thread only */
	bool			held_pending;	/* dirty_lock; held is set */
#endif

	/* Backend was Closed/Closing at probe: wait for it to reset. */
	bool			await_reset;

	u32			palette[256];
};

static int xenfb_connect_backend(struct xenbus_device *dev,
				 struct xenfb_info *info);
static void xenfb_disconnect_backend(struct xenfb_info *info);

/* ---------------------------------------------------------------------- */
/* Dirty rectangle and refresh timer                                       */
/* ---------------------------------------------------------------------- */

static void xenfb_rect_reset(struct xenfb_rect *r)
{
	r->x1 = r->y1 = INT_MAX;
	r->x2 = r->y2 = 0;
}

static bool xenfb_rect_empty(const struct xenfb_rect *r)
{
	return r->x1 >= r->x2 || r->y1 >= r->y2;
}

#ifdef XENFB_BREAK
/*
 * NEGATIVE CONTROLS: every update is held back when it is sent, and let go
 * only when something new is drawn (a fault, a kernel-side draw): the
 * update of the last tick of a burst is then held for as long as the guest
 * stays quiet.  Whether an update is the last of its burst is known only
 * later, so every update is held: the last one stays held whatever the
 * refresh timer does meanwhile.  Counted in held/released.
 */
static unsigned long stat_held;
module_param_named(held, stat_held, ulong, 0444);
MODULE_PARM_DESC(held, "NEGATIVE CONTROL: updates held back when sent");
static unsigned long stat_released;
module_param_named(released, stat_released, ulong, 0444);
MODULE_PARM_DESC(released, "NEGATIVE CONTROL: held updates let go because something new was drawn");

/*
 * NEGATIVE CONTROLS: something new was drawn, so the update held back last
 * was not the last of its burst after all: release it.  This is what heals
 * each break as soon as anything is drawn again.  dirty_lock held.
 */
static void __xenfb_break_release(struct xenfb_info *info)
{
#if defined(XENFB_BREAK_UNNOTIFIED_LAST)
	if (info->unnotified && info->irq >= 0) {
		info->unnotified = false;
		notify_remote_via_irq(info->irq);
		stat_released++;
	}
#elif defined(XENFB_BREAK_UNPUBLISHED_LAST)
	if (info->unpublished && info->irq >= 0) {
		wmb();		/* slots visible before the producer index */
		info->page->out_prod += info->unpublished;
		info->unpublished = 0;
		notify_remote_via_irq(info->irq);
		stat_released++;
	}
#elif defined(XENFB_BREAK_DROPPED_LAST)
	if (info->held_pending) {
		set_bit(1, &info->kick);
		wake_up(&info->wq);
		stat_released++;
	}
#endif
}
#endif

/* Arm the refresh timer unless it is already pending.  dirty_lock held. */
static void __xenfb_arm(struct xenfb_info *info)
{
	/* After timer_shutdown_sync() in remove, mod_timer() is a no-op. */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 1, 158)
	/* Without it (see xenfb_refresh_shutdown()), we make it one. */
	if (info->refresh_shut)
		return;
#endif
	if (!timer_pending(&info->refresh))
		mod_timer(&info->refresh, jiffies + XENFB_REFRESH_DELAY);
}

/* Grow the dirty rectangle by [x1,x2) x [y1,y2).  dirty_lock held. */
static void __xenfb_grow(struct xenfb_info *info, long x1, long y1,
			 long x2, long y2)
{
	struct xenfb_rect *d = &info->dirty;

	x1 = clamp_t(long, x1, 0, info->width);
	x2 = clamp_t(long, x2, 0, info->width);
	y1 = clamp_t(long, y1, 0, info->height);
	y2 = clamp_t(long, y2, 0, info->height);
	if (x1 >= x2 || y1 >= y2)
		return;
	if (x1 < d->x1)
		d->x1 = x1;
	if (y1 < d->y1)
		d->y1 = y1;
	if (x2 > d->x2)
		d->x2 = x2;
	if (y2 > d->y2)
		d->y2 = y2;
}

/* Grow the dirty rectangle by the full-width rows of framebuffer pages
 * [lo, hi].  dirty_lock held. */
static void __xenfb_dirty_pages(struct xenfb_info *info, unsigned long lo,
				unsigned long hi)
{
	unsigned long y1 = (lo << PAGE_SHIFT) / info->line_length;
	unsigned long y2 = (((hi + 1) << PAGE_SHIFT) - 1) / info->line_length + 1;

	__xenfb_grow(info, 0, y1, info->width, y2);
}

/* Kernel-side drawing: mark a rectangle dirty and arm the timer. */
static void xenfb_refresh(struct xenfb_info *info, long x, long y,
			  long w, long h)
{
	unsigned long flags;

	spin_lock_irqsave(&info->dirty_lock, flags);
	stat_draws++;
	__xenfb_grow(info, x, y, x + w, y + h);
#ifdef XENFB_BREAK
	__xenfb_break_release(info);	/* something new was drawn */
#endif
	if (!xenfb_rect_empty(&info->dirty))
		__xenfb_arm(info);
	spin_unlock_irqrestore(&info->dirty_lock, flags);
}

static void xenfb_timer_fn(struct timer_list *t)
{
	struct xenfb_info *info = from_timer(info, t, refresh);

	set_bit(0, &info->kick);
	wake_up(&info->wq);
}

/*
 * Stop the refresh timer for good: wait for a running callback, and make
 * every later arming a no-op (faults on a framebuffer that is still
 * mapped go on arming it after remove).
 *
 * timer_shutdown_sync() came with "timers: Provide timer_shutdown[_sync]()"
 * (6.2; backported to 6.1.158).  Before it (Debian 11's 5.10): a flag,
 * set under dirty_lock, under which every arming happens (__xenfb_arm()),
 * then del_timer_sync(): the same guarantee.
 */
static void xenfb_refresh_shutdown(struct xenfb_info *info)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 158)
	timer_shutdown_sync(&info->refresh);
#else
	unsigned long flags;

	spin_lock_irqsave(&info->dirty_lock, flags);
	info->refresh_shut = true;
	spin_unlock_irqrestore(&info->dirty_lock, flags);
	del_timer_sync(&info->refresh);
#endif
}

/* ---------------------------------------------------------------------- */
/* Out ring                                                                */
/* ---------------------------------------------------------------------- */

static bool xenfb_queue_full(struct xenfb_info *info)
{
	u32 cons = READ_ONCE(info->page->out_cons);
	u32 prod = info->page->out_prod;

#ifdef XENFB_BREAK_UNPUBLISHED_LAST
	prod += info->unpublished;	/* their slots are taken too */
#endif
	return prod - cons >= XENFB_OUT_RING_LEN;
}

#ifdef XENFB_BREAK_UNNOTIFIED_LAST
/*
 * NEGATIVE CONTROL unnotified-last: before publishing an event, let the
 * backend finish reading what it has been notified of (out_cons catches
 * up), so that a backend still running its handler cannot see the new
 * event through an older notify.  Bounded (about 0.1-0.2 s): a backend
 * that does not consume only delays us.  Refresh thread, no lock held.
 */
static void xenfb_wait_consumed(struct xenfb_info *info)
{
	unsigned long flags;
	unsigned int i;
	bool done;

	for (i = 0; i < 100; i++) {
		spin_lock_irqsave(&info->dirty_lock, flags);
		done = info->unnotified || info->irq < 0 ||
		       READ_ONCE(info->page->out_cons) == info->page->out_prod;
		spin_unlock_irqrestore(&info->dirty_lock, flags);
		if (done)
			return;
		usleep_range(1000, 2000);
	}
}
#endif

/*
 * Put one update on the ring.  Only the refresh thread produces events, so
 * the ring, checked not full when the rectangle was taken, is still not
 * full.  dirty_lock makes the send atomic with respect to a disconnect,
 * which clears irq and update_wanted under it before unbinding.
 */
static void xenfb_send_update(struct xenfb_info *info,
			      const struct xenfb_rect *r)
{
	union xenfb_out_event ev;
	unsigned long flags;
	u32 prod;

	memset(&ev, 0, sizeof(ev));
	ev.update.type = XENFB_TYPE_UPDATE;
	ev.update.x = r->x1;
	ev.update.y = r->y1;
	ev.update.width = r->x2 - r->x1;
	ev.update.height = r->y2 - r->y1;

#ifdef XENFB_BREAK_UNNOTIFIED_LAST
	xenfb_wait_consumed(info);
#endif
	spin_lock_irqsave(&info->dirty_lock, flags);
	if (info->irq >= 0 && info->update_wanted) {
		prod = info->page->out_prod;
#ifdef XENFB_BREAK_UNPUBLISHED_LAST
		prod += info->unpublished;	/* next free slot */
#endif
		mb();		/* out_cons read before the slot is reused */
		XENFB_OUT_RING_REF(info->page, prod) = ev;
		wmb();		/* event visible before the new producer index */
#if defined(XENFB_BREAK_UNPUBLISHED_LAST)
		/* NEGATIVE CONTROL unpublished-last: the producer index is
		 * advanced over this event when something new is drawn
		 * (__xenfb_break_release()). */
		info->unpublished++;
		stat_held++;
		notify_remote_via_irq(info->irq);
#elif defined(XENFB_BREAK_UNNOTIFIED_LAST)
		/* NEGATIVE CONTROL unnotified-last: published, but notified
		 * only when something new is drawn. */
		info->page->out_prod = prod + 1;
		info->unnotified = true;
		stat_held++;
#else
		info->page->out_prod = prod + 1;
		notify_remote_via_irq(info->irq);
#endif
		stat_updates++;
	}
	spin_unlock_irqrestore(&info->dirty_lock, flags);
}

/* ---------------------------------------------------------------------- */
/* The refresh thread                                                      */
/* ---------------------------------------------------------------------- */

static struct page *xenfb_fb_page(struct xenfb_info *info, unsigned long pg)
{
	return vmalloc_to_page(info->fb + (pg << PAGE_SHIFT));
}

/* Forget the faults of a mapping.  mm_lock held. */
static void xenfb_mapping_clear(struct xenfb_mapping *map)
{
	map->faults = 0;
	map->pg_lo = ULONG_MAX;
	map->pg_hi = 0;
}

/*
 * THE FIX: why every write through a mapping reaches an update.
 *
 * "Record" below means a mapping's fault count and page range.
 *
 * (I1) Every PTE of a mapping M was installed by a fault recorded on M
 *      (faults++, page in [pg_lo, pg_hi], rows added to the dirty
 *      rectangle).  PTEs have no other way in: no ->map_pages, no remap,
 *      fork copies none for a shared mapping, and split or mremap hand the
 *      record over in xenfb_vm_open().
 * (I2) With the fix, the thread clears M's record only in the mm_lock
 *      section of a zap that ran after every fault recorded on M had
 *      installed its PTE (xenfb_faults_settled() below).  So the zap
 *      removed every PTE that such a fault installed.  Faults recorded
 *      later start a fresh record, because they need mm_lock.  Therefore:
 *      if M has a PTE for page p, then M's current record contains p.
 *      The old design breaks exactly this: it may clear the record while a
 *      recorded fault has not installed its PTE yet, which leaves a PTE
 *      with no record.
 * (I3) While M's record contains p, p is in the dirty rectangle at every
 *      tick.  The fault put it there, and only a tick resets the
 *      rectangle.  That tick either clears M's record in the same section,
 *      or re-adds the range of every mapping it kept (deferred, mmap
 *      busy).  A full ring keeps the rectangle as it is.
 *
 * Take a write W to page p through M.  It goes through a PTE, so by (I2)
 * M's record contains p, from before W until the tick T that clears it.
 * T zaps M (or finds its VMA or mm gone, so that nothing can be written
 * through it anymore).  Only after that does T take the rectangle, which
 * contains p by (I3), and send the update, so the update is sent after W.
 * A write after T's zap has no PTE: it faults again and is counted, and a
 * new record starts.  So every dirty page reaches an update that is sent
 * after the write.
 *
 * THE FIX, part 2 (part 1 is in xenfb_vm_fault()).
 *
 * Called under mm_lock and mmap_read_lock, before zapping @map and
 * clearing its fault count.  Returns true when no fault recorded on @map
 * is still between "recorded" and "PTE installed".  Both builds ask; only
 * the fixed one waits for the answer (the old design zaps anyway, and the
 * answer "false" is then a race hit).
 *
 * Every fault recorded on @map since its last zap hit a page in
 * [pg_lo, pg_hi], and locked that page before releasing mm_lock (part 1).
 * The core keeps the page locked until finish_fault() has installed the
 * PTE (or given up), and only then unlocks it.  We hold mm_lock now, so
 * every such fault has already taken its page lock.  If trylock_page()
 * succeeds on every page of the range, every one of those faults has
 * therefore already released its lock, i.e. has finished installing its
 * PTE: the zap that follows removes all of them.  If one trylock fails,
 * a fault may still be about to install a PTE behind our back; the caller
 * must not zap-and-clear now (it keeps the count, re-dirties the range
 * and re-arms the timer, so the mapping is retried on the next tick).
 *
 * Faults recorded after this check need mm_lock, which we hold until the
 * count is cleared, so they are counted afresh after the zap.  A lock held
 * by another mapping's fault on the same page only causes a spurious
 * deferral.  We never block on a page lock here: trylock only, because
 * the fault path takes the page lock while holding mm_lock.
 */
static bool xenfb_faults_settled(struct xenfb_info *info,
				 struct xenfb_mapping *map)
{
	unsigned long pg;

	for (pg = map->pg_lo; pg <= map->pg_hi; pg++) {
		struct page *page = xenfb_fb_page(info, pg);

		if (!trylock_page(page))
			return false;
		unlock_page(page);
	}
	return true;
}

enum { XENFB_ZAP_IDLE, XENFB_ZAP_DONE, XENFB_ZAP_RETRY };

/*
 * Zap one mapping if it has faulted since its last zap.  mm_lock held.
 * Returns XENFB_ZAP_RETRY if the mapping must be retried on the next tick
 * (its count and range are kept).
 */
static int xenfb_zap_mapping(struct xenfb_info *info,
			     struct xenfb_mapping *map)
{
	struct vm_area_struct *vma = map->vma;
	struct mm_struct *mm;
	int ret = XENFB_ZAP_DONE;

	if (!map->faults)
		return XENFB_ZAP_IDLE;

	/*
	 * The VMA and its mm are alive: close() has not removed @map (it
	 * needs mm_lock, which we hold), and the VMA is freed after close(),
	 * the mm after all its VMAs.  Pin the address space while zapping.
	 * If mm_users is already zero the process is exiting; its page
	 * tables go away with it and nobody can write through them anymore.
	 */
	mm = vma->vm_mm;
	if (!mmget_not_zero(mm)) {
		xenfb_mapping_clear(map);
		return XENFB_ZAP_DONE;
	}

	/* Reverse order of the fault path (mmap_lock -> mm_lock): try only. */
	if (!mmap_read_trylock(mm)) {
		stat_mmap_busy++;
		ret = XENFB_ZAP_RETRY;
		goto out_put;
	}

	/*
	 * munmap() detaches the VMA and may free its page tables under a
	 * downgraded (read) mmap_lock before close() runs.  If the VMA is
	 * no longer the process's, munmap is removing its PTEs itself and
	 * close() will drop @map: just forget the faults.
	 */
	if (find_vma(mm, vma->vm_start) != vma) {
		xenfb_mapping_clear(map);
		goto out_unlock;
	}

	if (!xenfb_faults_settled(info, map)) {
#ifdef XENFB_LEGACY_FIXED
		/* THE FIX, part 2: never zap-and-clear behind an unfinished
		 * fault. */
		stat_deferred++;
		ret = XENFB_ZAP_RETRY;
		goto out_unlock;
#else
		/* The old design does not look: this zap loses a PTE. */
		stat_race_hits++;
#endif
	}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	/* "mm: remove zap_page_range and create zap_vma_pages" (6.3): the
	 * same zap of the whole VMA. */
	zap_vma_pages(vma);
#else
	zap_page_range(vma, vma->vm_start, vma->vm_end - vma->vm_start);
#endif
	stat_zaps++;
	xenfb_mapping_clear(map);

out_unlock:
	mmap_read_unlock(mm);
out_put:
	/*
	 * We hold mm_lock: if ours was the last reference, a plain mmput()
	 * would run exit_mmap() -> our close() -> mm_lock here.  Defer it.
	 */
	mmput_async(mm);
	return ret;
}

#ifdef XENFB_BREAK_DROPPED_LAST
/* NEGATIVE CONTROL dropped-last: send the update held back, if any.
 * Refresh thread only; no lock held.  The ring had room for it when its
 * rectangle was taken, and nothing was put on the ring since. */
static void xenfb_send_held(struct xenfb_info *info)
{
	struct xenfb_rect r = info->held;
	unsigned long flags;

	if (!READ_ONCE(info->update_wanted))
		return;		/* kept for when the backend wants updates */

	/* Consumes the release request (kick bit 1) too: it was for this
	 * rectangle, not for one held after it. */
	spin_lock_irqsave(&info->dirty_lock, flags);
	info->held_pending = false;
	clear_bit(1, &info->kick);
	spin_unlock_irqrestore(&info->dirty_lock, flags);

	if (xenfb_rect_empty(&r))
		return;
	xenfb_rect_reset(&info->held);
	xenfb_send_update(info, &r);
}
#endif

/* One refresh tick. */
static void xenfb_update_screen(struct xenfb_info *info)
{
	struct xenfb_mapping *map;
	unsigned long keep_lo = ULONG_MAX, keep_hi = 0;
	struct xenfb_rect r;
	bool send = false, retry = false;
	unsigned long flags;
#ifdef XENFB_BREAK_DROPPED_LAST
	bool hold = false;
#endif

	/* Backend has not asked for updates: leave everything dirty. */
	if (!READ_ONCE(info->update_wanted))
		return;

#ifdef XENFB_BREAK_DROPPED_LAST
	/* A tick runs only when more came: what was held goes out first. */
	xenfb_send_held(info);
#endif

	mutex_lock(&info->mm_lock);

	list_for_each_entry(map, &info->mappings, link) {
		if (xenfb_zap_mapping(info, map) != XENFB_ZAP_RETRY)
			continue;
		/*
		 * Not zapped: its pages stay mapped and may be written after
		 * the update we are about to send, so they must stay in the
		 * dirty rectangle for the tick that finally zaps it.
		 */
		retry = true;
		keep_lo = min(keep_lo, map->pg_lo);
		keep_hi = max(keep_hi, map->pg_hi);
	}

	/*
	 * Take the rectangle while still holding mm_lock, after the zaps:
	 * a fault recorded after this point is in the next rectangle and
	 * its mapping has a nonzero count again.
	 */
	spin_lock_irqsave(&info->dirty_lock, flags);
	if (!xenfb_rect_empty(&info->dirty)) {
		if (xenfb_queue_full(info)) {
			retry = true;	/* keep it dirty for the next tick */
		} else {
			r = info->dirty;
			xenfb_rect_reset(&info->dirty);
			send = true;
		}
	}
	if (keep_lo <= keep_hi)
		__xenfb_dirty_pages(info, keep_lo, keep_hi);
	if (retry)
		__xenfb_arm(info);
#ifdef XENFB_BREAK_DROPPED_LAST
	/* NEGATIVE CONTROL dropped-last: keep the rectangle back instead of
	 * sending it; something new drawn sends it. */
	if (send) {
		info->held_pending = true;
		send = false;
		hold = true;
		stat_held++;
	}
#endif
	spin_unlock_irqrestore(&info->dirty_lock, flags);

	mutex_unlock(&info->mm_lock);

#ifdef XENFB_BREAK_DROPPED_LAST
	/* Thread only; a release waits for us.  Normally nothing is held
	 * here (sent above); if it was kept (the backend stopped wanting
	 * updates meanwhile), keep both. */
	if (hold) {
		if (!xenfb_rect_empty(&info->held)) {
			r.x1 = min(r.x1, info->held.x1);
			r.y1 = min(r.y1, info->held.y1);
			r.x2 = max(r.x2, info->held.x2);
			r.y2 = max(r.y2, info->held.y2);
		}
		info->held = r;
	}
#endif
	if (send)
		xenfb_send_update(info, &r);
}

static int xenfb_thread(void *data)
{
	struct xenfb_info *info = data;

	while (!kthread_should_stop()) {
		wait_event_interruptible(info->wq, kthread_should_stop() ||
					 READ_ONCE(info->kick));
#ifdef XENFB_BREAK_DROPPED_LAST
		if (test_bit(1, &info->kick))
			xenfb_send_held(info);	/* clears bit 1 */
#endif
		if (test_and_clear_bit(0, &info->kick))
			xenfb_update_screen(info);
	}
	return 0;
}

/* ---------------------------------------------------------------------- */
/* mmap: VMA tracking and the fault handler                                */
/* ---------------------------------------------------------------------- */

static struct xenfb_mapping *xenfb_mapping_new(struct xenfb_info *info,
					       struct vm_area_struct *vma,
					       gfp_t gfp)
{
	struct xenfb_mapping *map = kzalloc(sizeof(*map), gfp);

	if (!map)
		return NULL;
	map->vma = vma;
	map->info = info;
	xenfb_mapping_clear(map);
	return map;
}

/*
 * A new VMA copied from one of ours: split (__split_vma), mremap
 * (copy_vma) or fork (dup_mmap).  vm_private_data still points to the
 * source's mapping; give the new VMA its own.  A split or a moved mapping
 * keeps the source's PTEs, so the new entry inherits the source's faults
 * (for fork, which copies no PTEs here, that only costs one extra zap).
 * open() cannot fail, hence __GFP_NOFAIL (a small allocation).
 */
static void xenfb_vm_open(struct vm_area_struct *vma)
{
	struct xenfb_mapping *src = vma->vm_private_data;
	struct xenfb_info *info = src->info;
	struct xenfb_mapping *map;

	map = xenfb_mapping_new(info, vma, GFP_KERNEL | __GFP_NOFAIL);

	mutex_lock(&info->mm_lock);
	map->faults = src->faults;
	map->pg_lo = src->pg_lo;
	map->pg_hi = src->pg_hi;
	list_add(&map->link, &info->mappings);
	mutex_unlock(&info->mm_lock);

	vma->vm_private_data = map;
}

static void xenfb_vm_close(struct vm_area_struct *vma)
{
	struct xenfb_mapping *map = vma->vm_private_data;
	struct xenfb_info *info = map->info;

	mutex_lock(&info->mm_lock);
	list_del(&map->link);
	mutex_unlock(&info->mm_lock);
	vma->vm_private_data = NULL;
	kfree(map);
}

static vm_fault_t xenfb_vm_fault(struct vm_fault *vmf)
{
	struct xenfb_mapping *map = vmf->vma->vm_private_data;
	struct xenfb_info *info = map->info;
	unsigned long pg = vmf->pgoff;	/* framebuffer page: honours vm_pgoff */
	unsigned long flags;
	unsigned int delay;
	struct page *page;
	vm_fault_t ret = 0;

	if (pg >= info->nr_pages)
		return VM_FAULT_SIGBUS;
	page = xenfb_fb_page(info, pg);

	mutex_lock(&info->mm_lock);

	map->faults++;
	stat_faults++;
	map->pg_lo = min(map->pg_lo, pg);
	map->pg_hi = max(map->pg_hi, pg);

	spin_lock_irqsave(&info->dirty_lock, flags);
	__xenfb_dirty_pages(info, pg, pg);
#ifdef XENFB_BREAK
	__xenfb_break_release(info);	/* something new was drawn */
#endif
	__xenfb_arm(info);
	spin_unlock_irqrestore(&info->dirty_lock, flags);

	/*
	 * THE FIX, part 1 (both builds: the old design only uses it to count
	 * race hits): lock the page before dropping mm_lock and hand it
	 * to the core locked.  __do_fault() accepts a VM_FAULT_LOCKED page
	 * as is; do_read_fault()/do_shared_fault() keep it locked through
	 * finish_fault() (we have no ->page_mkwrite) and unlock it only
	 * after the PTE is installed (or the fault is abandoned).  So from
	 * the moment this fault is recorded until its PTE exists, the page is
	 * locked, and the thread can see that with trylock_page() (part 2).
	 * Order: mmap_lock -> mm_lock -> page lock.  Blocking here while
	 * holding mm_lock is safe: whoever holds the page lock is another
	 * fault that is past its own mm_lock section and needs no lock of
	 * ours to finish.
	 */
	lock_page(page);
	ret = VM_FAULT_LOCKED;

	mutex_unlock(&info->mm_lock);

	/* The race window: recorded, PTE not installed yet. */
	delay = READ_ONCE(race_window_ms);
	if (delay)
		msleep(delay);

	get_page(page);
	vmf->page = page;
	return ret;
}

static const struct vm_operations_struct xenfb_vm_ops = {
	.open	= xenfb_vm_open,
	.close	= xenfb_vm_close,
	.fault	= xenfb_vm_fault,
	/* No .map_pages: no fault-around, every page goes through .fault.
	 * No .page_mkwrite: the core keeps a locked page locked until the
	 * PTE is set. */
};

static int xenfb_fb_mmap(struct fb_info *fb_info, struct vm_area_struct *vma)
{
	struct xenfb_info *info = fb_info->par;
	struct xenfb_mapping *map;

	/*
	 * A writable private mapping would COW the framebuffer away from the
	 * backend: refuse it (the old driver did too).  MAP_SHARED, and
	 * read-only mappings that can never be written, are fine.
	 */
	if (is_cow_mapping(vma->vm_flags))
		return -EINVAL;
	if (vma->vm_pgoff >= info->nr_pages ||
	    vma_pages(vma) > info->nr_pages - vma->vm_pgoff)
		return -EINVAL;

	map = xenfb_mapping_new(info, vma, GFP_KERNEL);
	if (!map)
		return -ENOMEM;

	mutex_lock(&info->mm_lock);
	list_add(&map->link, &info->mappings);
	mutex_unlock(&info->mm_lock);

	/* Starts unpopulated: every page is brought in by xenfb_vm_fault(). */
	vma->vm_ops = &xenfb_vm_ops;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	/* "mm: introduce vma->vm_flags wrapper functions" (6.3): vm_flags
	 * is read-only, changed through the wrappers. */
	vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP);
#else
	vma->vm_flags |= VM_DONTEXPAND | VM_DONTDUMP;
#endif
	vma->vm_private_data = map;
	return 0;
}

/* ---------------------------------------------------------------------- */
/* fb_ops: kernel-side drawing                                             */
/* ---------------------------------------------------------------------- */

static int xenfb_setcolreg(unsigned int regno, unsigned int red,
			   unsigned int green, unsigned int blue,
			   unsigned int transp, struct fb_info *fb_info)
{
	const struct fb_var_screeninfo *var = &fb_info->var;
	u32 v;

	if (regno >= ARRAY_SIZE(((struct xenfb_info *)NULL)->palette))
		return 1;

	/* 16-bit colour components scaled down to the field widths. */
	red >>= 16 - var->red.length;
	green >>= 16 - var->green.length;
	blue >>= 16 - var->blue.length;
	v = (red << var->red.offset) | (green << var->green.offset) |
	    (blue << var->blue.offset);
	((u32 *)fb_info->pseudo_palette)[regno] = v;
	return 0;
}

static void xenfb_fillrect(struct fb_info *p, const struct fb_fillrect *rect)
{
	sys_fillrect(p, rect);
	xenfb_refresh(p->par, rect->dx, rect->dy, rect->width, rect->height);
}

static void xenfb_copyarea(struct fb_info *p, const struct fb_copyarea *area)
{
	sys_copyarea(p, area);
	xenfb_refresh(p->par, area->dx, area->dy, area->width, area->height);
}

static void xenfb_imageblit(struct fb_info *p, const struct fb_image *image)
{
	sys_imageblit(p, image);
	xenfb_refresh(p->par, image->dx, image->dy, image->width,
		      image->height);
}

static ssize_t xenfb_write(struct fb_info *p, const char __user *buf,
			   size_t count, loff_t *ppos)
{
	struct xenfb_info *info = p->par;
	loff_t start = *ppos;
	ssize_t res;

	res = fb_sys_write(p, buf, count, ppos);
	if (res > 0) {
		long y1 = start / info->line_length;
		long y2 = (start + res - 1) / info->line_length + 1;

		xenfb_refresh(info, 0, y1, info->width, y2 - y1);
	}
	return res;
}

static void xenfb_free(struct xenfb_info *info);

/* Last reference to the fb_info gone (unregistered and no longer open):
 * no mapping can exist anymore (a VMA holds the file open). */
static void xenfb_fb_destroy(struct fb_info *fb_info)
{
	xenfb_free(fb_info->par);
}

static const struct fb_ops xenfb_fb_ops = {
	.owner		= THIS_MODULE,
	.fb_read	= fb_sys_read,
	.fb_write	= xenfb_write,
	.fb_setcolreg	= xenfb_setcolreg,
	.fb_fillrect	= xenfb_fillrect,
	.fb_copyarea	= xenfb_copyarea,
	.fb_imageblit	= xenfb_imageblit,
	.fb_mmap	= xenfb_fb_mmap,
	.fb_destroy	= xenfb_fb_destroy,
};

/* ---------------------------------------------------------------------- */
/* Backend connection                                                      */
/* ---------------------------------------------------------------------- */

static irqreturn_t xenfb_event_handler(int irq, void *dev_id)
{
	struct xenfb_info *info = dev_id;
	struct xenfb_page *page = info->page;
	unsigned long flags;

	/* No in events are used: consume them all. */
	if (page->in_cons != page->in_prod) {
		page->in_cons = page->in_prod;
#ifdef XENFB_BREAK_UNNOTIFIED_LAST
		/*
		 * NEGATIVE CONTROL unnotified-last: this notify would make the
		 * backend read the out ring, carrying a withheld update along.
		 * QEMU sends in-events (REFRESH_PERIOD) by itself as its display
		 * goes idle, so withhold it while an update is unnotified (the
		 * backend needs no notify to see in_cons move).
		 */
		spin_lock_irqsave(&info->dirty_lock, flags);
		if (!info->unnotified)
			notify_remote_via_irq(irq);
		spin_unlock_irqrestore(&info->dirty_lock, flags);
#else
		notify_remote_via_irq(irq);
#endif
	}

	/* The backend may have made room in a full out ring: flush soon. */
	spin_lock_irqsave(&info->dirty_lock, flags);
	if (info->update_wanted && !xenfb_rect_empty(&info->dirty))
		__xenfb_arm(info);
	spin_unlock_irqrestore(&info->dirty_lock, flags);

	return IRQ_HANDLED;
}

static unsigned long xenfb_vmalloc_to_gfn(void *addr)
{
	return xen_page_to_gfn(vmalloc_to_page(addr));
}

static void xenfb_init_shared_page(struct xenfb_info *info)
{
	unsigned long epd = PAGE_SIZE / sizeof(info->gfns[0]);
	unsigned long i;

	for (i = 0; i < info->nr_pages; i++)
		info->gfns[i] = xenfb_vmalloc_to_gfn(info->fb + i * PAGE_SIZE);

	memset(info->page->pd, 0, sizeof(info->page->pd));
	for (i = 0; i * epd < info->nr_pages; i++)
		info->page->pd[i] = xenfb_vmalloc_to_gfn(&info->gfns[i * epd]);

	info->page->width = info->width;
	info->page->height = info->height;
	info->page->depth = XENFB_DEPTH;
	info->page->line_length = info->line_length;
	info->page->mem_length = info->fb_len;
	info->page->in_cons = info->page->in_prod = 0;
	info->page->out_cons = info->page->out_prod = 0;
}

static int xenfb_connect_backend(struct xenbus_device *dev,
				 struct xenfb_info *info)
{
	struct xenbus_transaction xbt;
	evtchn_port_t evtchn;
	unsigned long flags;
	int ret, irq;

	ret = xenbus_alloc_evtchn(dev, &evtchn);
	if (ret)
		return ret;
	irq = bind_evtchn_to_irqhandler(evtchn, xenfb_event_handler, 0,
					dev->devicetype, info);
	if (irq < 0) {
		xenbus_free_evtchn(dev, evtchn);
		xenbus_dev_fatal(dev, irq, "bind_evtchn_to_irqhandler");
		return irq;
	}

	spin_lock_irqsave(&info->dirty_lock, flags);
	info->irq = irq;
	spin_unlock_irqrestore(&info->dirty_lock, flags);

again:
	ret = xenbus_transaction_start(&xbt);
	if (ret) {
		xenbus_dev_fatal(dev, ret, "starting transaction");
		goto unbind;
	}
	ret = xenbus_printf(xbt, dev->nodename, "page-ref", "%lu",
			    virt_to_gfn(info->page));
	if (ret)
		goto abort;
	ret = xenbus_printf(xbt, dev->nodename, "event-channel", "%u", evtchn);
	if (ret)
		goto abort;
	ret = xenbus_printf(xbt, dev->nodename, "protocol", "%s",
			    XEN_IO_PROTO_ABI_NATIVE);
	if (ret)
		goto abort;
	ret = xenbus_printf(xbt, dev->nodename, "feature-update", "1");
	if (ret)
		goto abort;
	ret = xenbus_transaction_end(xbt, 0);
	if (ret) {
		if (ret == -EAGAIN)
			goto again;
		xenbus_dev_fatal(dev, ret, "completing transaction");
		goto unbind;
	}

	xenbus_switch_state(dev, XenbusStateInitialised);
	return 0;

abort:
	xenbus_transaction_end(xbt, 1);
	xenbus_dev_fatal(dev, ret, "writing xenstore");
unbind:
	xenfb_disconnect_backend(info);
	return ret;
}

/* Stop talking to the backend.  Also unbinds (and closes) the event
 * channel; safe to call when not connected. */
static void xenfb_disconnect_backend(struct xenfb_info *info)
{
	unsigned long flags;
	int irq;

	spin_lock_irqsave(&info->dirty_lock, flags);
	irq = info->irq;
	info->irq = -1;
	info->update_wanted = 0;
#ifdef XENFB_BREAK_UNNOTIFIED_LAST
	info->unnotified = false;	/* the ring is reset on reconnect */
#endif
#ifdef XENFB_BREAK_UNPUBLISHED_LAST
	info->unpublished = 0;
#endif
	spin_unlock_irqrestore(&info->dirty_lock, flags);

	if (irq >= 0)
		unbind_from_irqhandler(irq, info);
}

static void xenfb_backend_connected(struct xenbus_device *dev,
				    struct xenfb_info *info)
{
	unsigned long flags;
	int want;

	want = !!xenbus_read_unsigned(dev->otherend, "request-update", 0);

	spin_lock_irqsave(&info->dirty_lock, flags);
	info->update_wanted = want;
	/* Flush what was drawn or faulted before the backend was ready. */
	if (want)
		__xenfb_arm(info);
	spin_unlock_irqrestore(&info->dirty_lock, flags);

	dev_info(&dev->dev, "backend connected, request-update=%d\n", want);
}

static void xenfb_stop_updates(struct xenfb_info *info)
{
	unsigned long flags;

	spin_lock_irqsave(&info->dirty_lock, flags);
	info->update_wanted = 0;
	spin_unlock_irqrestore(&info->dirty_lock, flags);
}

static void xenfb_backend_changed(struct xenbus_device *dev,
				  enum xenbus_state backend_state)
{
	struct xenfb_info *info = dev_get_drvdata(&dev->dev);

	switch (backend_state) {
	case XenbusStateInitialising:
	case XenbusStateInitialised:
	case XenbusStateReconfiguring:
	case XenbusStateReconfigured:
	case XenbusStateUnknown:
		break;

	case XenbusStateInitWait:
		if (info->await_reset) {
			/* The backend has reset: connect now. */
			info->await_reset = false;
			if (xenfb_connect_backend(dev, info))
				break;
		}
		xenbus_switch_state(dev, XenbusStateConnected);
		break;

	case XenbusStateConnected:
		if (info->await_reset)
			break;
		/* InitWait may have been skipped if the backend was quick. */
		if (dev->state != XenbusStateConnected)
			xenbus_switch_state(dev, XenbusStateConnected);
		xenfb_backend_connected(dev, info);
		break;

	case XenbusStateClosed:
		if (info->await_reset || dev->state == XenbusStateClosed)
			break;
		fallthrough;	/* missed the backend's Closing */
	case XenbusStateClosing:
		if (info->await_reset)
			break;
		xenfb_stop_updates(info);
		xenbus_frontend_closed(dev);
		break;
	}
}

/* ---------------------------------------------------------------------- */
/* Probe / remove                                                          */
/* ---------------------------------------------------------------------- */

/* Free everything.  The thread, timer and event channel are gone. */
static void xenfb_free(struct xenfb_info *info)
{
	WARN_ON(!list_empty(&info->mappings));
	if (info->fb_info) {
		fb_dealloc_cmap(&info->fb_info->cmap);
		framebuffer_release(info->fb_info);
	}
	free_page((unsigned long)info->page);
	vfree(info->gfns);
	vfree(info->fb);
	kfree(info);
}

/*
 * Stop the thread and timer and the backend connection, then drop the
 * framebuffer.  If the framebuffer is still open (and perhaps mapped), the
 * fb core keeps the fb_info and xenfb_fb_destroy() frees everything at the
 * last close; until then faults still work (they only no longer produce
 * updates), because the timer is shut down and mod_timer() is a no-op.
 */
static void xenfb_teardown(struct xenfb_info *info)
{
	if (info->thread) {
		kthread_stop(info->thread);
		info->thread = NULL;
	}
	xenfb_refresh_shutdown(info);
	xenfb_disconnect_backend(info);

	if (info->fb_registered)
		unregister_framebuffer(info->fb_info);	/* may free info */
	else
		xenfb_free(info);
}

static int xenfb_probe(struct xenbus_device *dev,
		       const struct xenbus_device_id *id)
{
	struct xenfb_info *info;
	struct fb_info *fb_info;
	unsigned int videoram = XENFB_DEFAULT_VIDEORAM, val;
	int be_state;
	int ret;

	info = kzalloc(sizeof(*info), GFP_KERNEL);
	if (!info) {
		xenbus_dev_fatal(dev, -ENOMEM, "allocating info structure");
		return -ENOMEM;
	}
	info->xbdev = dev;
	info->irq = -1;
	mutex_init(&info->mm_lock);
	INIT_LIST_HEAD(&info->mappings);
	spin_lock_init(&info->dirty_lock);
	xenfb_rect_reset(&info->dirty);
#ifdef XENFB_BREAK_DROPPED_LAST
	xenfb_rect_reset(&info->held);
#endif
	timer_setup(&info->refresh, xenfb_timer_fn, 0);
	init_waitqueue_head(&info->wq);

	/* Geometry: 800x600x32 unless the backend asks for another size
	 * that fits in the video memory (as the upstream driver). */
	if (xenbus_scanf(XBT_NIL, dev->otherend, "videoram", "%u", &val) == 1 &&
	    val < videoram)
		videoram = val;
	info->width = xenbus_read_unsigned(dev->otherend, "width", XENFB_WIDTH);
	info->height = xenbus_read_unsigned(dev->otherend, "height",
					    XENFB_HEIGHT);
	if (info->width <= 0 || info->height <= 0 ||
	    (u64)info->width * info->height * (XENFB_DEPTH / 8) >
	    (u64)videoram * 1024 * 1024) {
		dev_warn(&dev->dev, "display %dx%d does not fit in %u MiB, using %dx%d\n",
			 info->width, info->height, videoram,
			 XENFB_WIDTH, XENFB_HEIGHT);
		info->width = XENFB_WIDTH;
		info->height = XENFB_HEIGHT;
	}
	info->line_length = info->width * (XENFB_DEPTH / 8);
	info->fb_len = (unsigned long)info->line_length * info->height;
	info->nr_pages = DIV_ROUND_UP(info->fb_len, PAGE_SIZE);

	ret = -ENOMEM;
	info->fb = vzalloc(info->fb_len);
	if (!info->fb)
		goto fail_nomem;
	info->gfns = vmalloc(array_size(sizeof(unsigned long), info->nr_pages));
	if (!info->gfns)
		goto fail_nomem;
	info->page = (void *)get_zeroed_page(GFP_KERNEL);
	if (!info->page)
		goto fail_nomem;

	fb_info = framebuffer_alloc(0, NULL);
	if (!fb_info)
		goto fail_nomem;
	info->fb_info = fb_info;
	fb_info->par = info;
	fb_info->pseudo_palette = info->palette;
	fb_info->screen_buffer = info->fb;
	fb_info->screen_size = info->fb_len;
	fb_info->fbops = &xenfb_fb_ops;

	fb_info->var.xres_virtual = fb_info->var.xres = info->width;
	fb_info->var.yres_virtual = fb_info->var.yres = info->height;
	fb_info->var.bits_per_pixel = XENFB_DEPTH;
	fb_info->var.red = (struct fb_bitfield){ 16, 8, 0 };
	fb_info->var.green = (struct fb_bitfield){ 8, 8, 0 };
	fb_info->var.blue = (struct fb_bitfield){ 0, 8, 0 };
	fb_info->var.activate = FB_ACTIVATE_NOW;
	fb_info->var.height = -1;
	fb_info->var.width = -1;
	fb_info->var.vmode = FB_VMODE_NONINTERLACED;

	strscpy(fb_info->fix.id, "xen", sizeof(fb_info->fix.id));
	fb_info->fix.type = FB_TYPE_PACKED_PIXELS;
	fb_info->fix.visual = FB_VISUAL_TRUECOLOR;
	fb_info->fix.line_length = info->line_length;
	fb_info->fix.smem_start = 0;
	fb_info->fix.smem_len = info->fb_len;
	fb_info->fix.accel = FB_ACCEL_NONE;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
	/* "fbdev: Remove FBINFO_DEFAULT and FBINFO_FLAG_DEFAULT" (6.6): it
	 * was 0. */
	fb_info->flags = FBINFO_VIRTFB;
#else
	fb_info->flags = FBINFO_FLAG_DEFAULT | FBINFO_VIRTFB;
#endif

	ret = fb_alloc_cmap(&fb_info->cmap, 256, 0);
	if (ret < 0) {
		xenbus_dev_fatal(dev, ret, "fb_alloc_cmap");
		goto fail;
	}

	xenfb_init_shared_page(info);
	dev_set_drvdata(&dev->dev, info);

	info->thread = kthread_run(xenfb_thread, info, "%s", KBUILD_MODNAME);
	if (IS_ERR(info->thread)) {
		ret = PTR_ERR(info->thread);
		info->thread = NULL;
		xenbus_dev_fatal(dev, ret, "starting refresh thread");
		goto fail;
	}

	/*
	 * If an earlier frontend instance (e.g. the other variant of this
	 * module, unbound through sysfs) left the device Closed, the backend
	 * is Closed too and only resets when it sees us Initialising; then
	 * it goes to InitWait, where we connect.  Otherwise connect now, as
	 * the upstream driver does.
	 */
	be_state = xenbus_read_driver_state(dev->otherend);
	if (be_state == XenbusStateClosed || be_state == XenbusStateClosing) {
		info->await_reset = true;
		ret = xenbus_switch_state(dev, XenbusStateInitialising);
	} else {
		ret = xenfb_connect_backend(dev, info);
	}
	if (ret < 0)
		goto fail;

	ret = register_framebuffer(fb_info);
	if (ret) {
		xenbus_dev_fatal(dev, ret, "register_framebuffer");
		goto fail;
	}
	info->fb_registered = true;

#ifdef XENFB_BREAK
	dev_info(&dev->dev, "%s frontend (negative control: %s): fb%d %dx%dx%d, %lu pages, race_window_ms=%u\n",
		 XENFB_VARIANT, XENFB_BREAK, fb_info->node, info->width,
		 info->height, XENFB_DEPTH, info->nr_pages,
		 READ_ONCE(race_window_ms));
#else
	dev_info(&dev->dev, "%s frontend: fb%d %dx%dx%d, %lu pages, race_window_ms=%u\n",
		 XENFB_VARIANT, fb_info->node, info->width, info->height,
		 XENFB_DEPTH, info->nr_pages, READ_ONCE(race_window_ms));
#endif
	return 0;

fail_nomem:
	xenbus_dev_fatal(dev, ret, "allocating device memory");
fail:
	dev_set_drvdata(&dev->dev, NULL);
	xenfb_teardown(info);
	return ret;
}

static int xenfb_resume(struct xenbus_device *dev)
{
	struct xenfb_info *info = dev_get_drvdata(&dev->dev);
	unsigned long flags;

	xenfb_disconnect_backend(info);
	xenfb_init_shared_page(info);

	/* The new backend has nothing yet: repaint everything on connect. */
	spin_lock_irqsave(&info->dirty_lock, flags);
	__xenfb_grow(info, 0, 0, info->width, info->height);
	spin_unlock_irqrestore(&info->dirty_lock, flags);

	return xenfb_connect_backend(dev, info);
}

/*
 * "xen: make remove callback of xen driver void returned" (6.2; backported
 * to 6.1.162).  Before it, remove returned an int, which the xenbus core
 * ignored.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 162)
static void xenfb_remove(struct xenbus_device *dev)
#else
static int xenfb_remove(struct xenbus_device *dev)
#endif
{
	struct xenfb_info *info = dev_get_drvdata(&dev->dev);

	dev_set_drvdata(&dev->dev, NULL);
	if (info)
		xenfb_teardown(info);
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 1, 162)
	return 0;
#endif
}

static const struct xenbus_device_id xenfb_ids[] = {
	{ "vfb" },
	{ "" }
};

static struct xenbus_driver xenfb_driver = {
	/* Not "vfb": that name is taken by the built-in xen-fbfront. */
	.name			= KBUILD_MODNAME,
	.ids			= xenfb_ids,
	.probe			= xenfb_probe,
	.remove			= xenfb_remove,
	.resume			= xenfb_resume,
	.otherend_changed	= xenfb_backend_changed,
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 16, 0)
	/* "xen: add "not_essential" flag to struct xenbus_driver" (5.16).
	 * Before it, xenbus treats device/vfb as not essential by its node
	 * name, which gives the same boot-time wait. */
	.not_essential		= true,
#endif
};

/* Not named xenfb_init: the built-in driver's initcall is blacklisted by
 * that name on the guest command line. */
static int __init xenfb_legacy_init(void)
{
	if (!xen_domain() || xen_initial_domain())
		return -ENODEV;
	if (!xen_has_pv_devices())
		return -ENODEV;

	pr_info("%s variant, race_window_ms=%u\n", XENFB_VARIANT,
		READ_ONCE(race_window_ms));
#ifdef XENFB_BREAK
	/* Error level: the harness's guests boot "quiet", which shows only
	 * errors on the console, and a run must show which control it is. */
	pr_err("negative control: %s: deliberately broken build, %s\n",
	       XENFB_BREAK, XENFB_BREAK_DOC);
#endif
	return xenbus_register_frontend(&xenfb_driver);
}

static void __exit xenfb_legacy_exit(void)
{
	xenbus_unregister_driver(&xenfb_driver);
}

module_init(xenfb_legacy_init);
module_exit(xenfb_legacy_exit);

#ifdef XENFB_LEGACY_FIXED
MODULE_DESCRIPTION("Xen PV framebuffer frontend, 2.6.18 design with the fault/zap race fixed (xenfb-harness)");
#else
MODULE_DESCRIPTION("Xen PV framebuffer frontend, 2.6.18 design with its fault/zap race (xenfb-harness)");
#endif
MODULE_AUTHOR("xenfb-harness");
MODULE_LICENSE("GPL");
