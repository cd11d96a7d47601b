/*
 * xfb-mapcheck: does the guest's framebuffer frontend survive, and keep tracking, the ways real programs use an
 * mmap of /dev/fb0? Splitting it (mprotect), forking, moving and shrinking it (mremap), unmapping part of it,
 * and unmapping it while faults are still waiting for the refresh thread.
 *
 * Usage: xfb-mapcheck [--fb /dev/fb0] [--stats-dir DIR]
 *
 * For each check it prints "XFB CHECK <name> ok <detail>" or "XFB CHECK <name> FAIL <reason>" (see
 * harness/protocol.py), and exits 1 after the first failure. A crash of the frontend shows on the console as a
 * kernel BUG/Oops, which the harness watches for.
 *
 * "Tracked" is tested through the frontend's counters (DIR holds files "faults" and "zaps", as the xenfb_legacy
 * module's parameters do): a write to a page that is not mapped must fault; after the refresh thread has run, the
 * mapping must have been zapped, so the next write faults again. Every write is also read back through the
 * device with pread(), which proves the mapping shows the framebuffer page its offset names. Without
 * --stats-dir (the built-in frontend has no counters) only the read-back and survival are checked.
 * Tests only: a regular file as --fb stands for a framebuffer of its size.
 *
 * Build: gcc -static -O2 -Wall -Wextra -o xfb-mapcheck xfb-mapcheck.c
 */
#define _GNU_SOURCE /* mremap */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fb.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PG 4096UL
#define TICK_WAIT_US 200000 /* four refresh periods of the old design (HZ/20): the thread has run */
#define CHURN 50

static int fd = -1;
static const char *fb_path = "/dev/fb0", *stats_dir;
static uint64_t fb_pages;
static const char *check = "setup";
static uint32_t stamp = 0x5a000000;

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("XFB CHECK %s FAIL ", check);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    exit(1);
}

static void sleep_us(long us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint64_t counter(const char *name)
{
    char path[512], buf[32];
    snprintf(path, sizeof path, "%s/%s", stats_dir, name);
    int c = open(path, O_RDONLY);
    if (c < 0)
        fail("cannot open %s: %s", path, strerror(errno));
    ssize_t n = read(c, buf, sizeof buf - 1);
    close(c);
    if (n <= 0)
        fail("cannot read %s", path);
    buf[n] = '\0';
    return strtoull(buf, NULL, 10);
}

/* A shared mapping of `pages` framebuffer pages from page `first`, anywhere. */
static uint8_t *map(uint64_t first, uint64_t pages)
{
    void *p = mmap(NULL, pages * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)(first * PG));
    if (p == MAP_FAILED)
        fail("mmap of pages %" PRIu64 "..%" PRIu64 ": %s", first, first + pages - 1, strerror(errno));
    return p;
}

static void unmap(void *p, uint64_t pages)
{
    if (munmap(p, pages * PG) != 0)
        fail("munmap: %s", strerror(errno));
}

/* One write through the mapping at p, which shows framebuffer page `page`, read back through the device. */
static void write_and_read_back(uint8_t *p, uint64_t page)
{
    uint32_t value = ++stamp, seen = 0;
    *(volatile uint32_t *)p = value;
    if (pread(fd, &seen, sizeof seen, (off_t)(page * PG)) != (ssize_t)sizeof seen)
        fail("pread of page %" PRIu64 ": %s", page, strerror(errno));
    if (seen != value)
        fail("wrote 0x%08" PRIx32 " through the mapping of page %" PRIu64 ", the device holds 0x%08" PRIx32,
             value, page, seen);
}

/*
 * The frontend traps writes through this mapping: after a refresh tick (which zaps whatever faulted before),
 * a write faults; after the next tick the mapping has been zapped again, so the next write faults again.
 */
static void expect_tracked(uint8_t *p, uint64_t page)
{
    if (!stats_dir) {
        write_and_read_back(p, page);
        return;
    }
    sleep_us(TICK_WAIT_US);
    uint64_t f0 = counter("faults");
    write_and_read_back(p, page);
    uint64_t f1 = counter("faults");
    if (f1 == f0)
        fail("a write to page %" PRIu64 " did not fault (faults stayed %" PRIu64 ")", page, f0);
    uint64_t z1 = counter("zaps");
    sleep_us(TICK_WAIT_US);
    uint64_t z2 = counter("zaps"), f2 = counter("faults");
    if (z2 == z1)
        fail("no zap within %d ms after a fault on page %" PRIu64, TICK_WAIT_US / 1000, page);
    write_and_read_back(p, page);
    if (counter("faults") == f2)
        fail("after the zap, a write to page %" PRIu64 " did not fault again: the mapping is not tracked", page);
}

static void passed(const char *detail)
{
    printf("XFB CHECK %s ok %s\n", check, detail);
    fflush(stdout);
}

static pid_t spawn(void (*body)(uint8_t *, uint64_t), uint8_t *p, uint64_t page)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        fail("fork: %s", strerror(errno));
    if (pid == 0) {
        body(p, page);
        fflush(stdout);
        _exit(0);
    }
    return pid;
}

static void reap(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            fail("waitpid: %s", strerror(errno));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        exit(1); /* the child printed its FAIL line */
}

/* A write that faults if the page is not mapped, checking nothing (page: for spawn(), unused). */
static void touch_only(uint8_t *p, uint64_t page)
{
    (void)page;
    *(volatile uint32_t *)p = ++stamp;
}

static void check_plain(void)
{
    check = "plain";
    uint8_t *p = map(0, fb_pages);
    expect_tracked(p + PG, 1);
    expect_tracked(p + (fb_pages - 1) * PG, fb_pages - 1);
    unmap(p, fb_pages);
    passed("whole framebuffer, first and last page tracked");
}

static void check_offset(void)
{
    check = "offset";
    uint8_t *p = map(5, 3);
    expect_tracked(p + PG, 6);
    unmap(p, 3);
    passed("3 pages at page offset 5 show pages 5..7, tracked");
}

static void check_split(void)
{
    check = "split";
    uint8_t *p = map(0, 12);
    if (mprotect(p + 4 * PG, 4 * PG, PROT_READ) != 0) /* three VMAs: rw, ro, rw */
        fail("mprotect: %s", strerror(errno));
    expect_tracked(p + PG, 1);
    expect_tracked(p + 9 * PG, 9);
    if (mprotect(p + 4 * PG, 4 * PG, PROT_READ | PROT_WRITE) != 0)
        fail("mprotect back: %s", strerror(errno));
    expect_tracked(p + 5 * PG, 5);
    unmap(p, 12);
    passed("mprotect split one mapping in three; each part tracked, also after write access came back");
}

static void check_fork(void)
{
    check = "fork";
    uint8_t *p = map(0, 8);
    touch_only(p + 2 * PG, 2); /* a fault pending on the parent's mapping at fork time */
    reap(spawn(expect_tracked, p + 3 * PG, 3));
    expect_tracked(p + 2 * PG, 2);
    for (int i = 0; i < CHURN; i++) { /* children that write and exit while the thread walks the mappings */
        touch_only(p + (uint64_t)(i % 8) * PG, (uint64_t)(i % 8));
        reap(spawn(touch_only, p + (uint64_t)((i + 3) % 8) * PG, (uint64_t)((i + 3) % 8)));
    }
    expect_tracked(p + 4 * PG, 4);
    unmap(p, 8);
    passed("a child's copy of the mapping tracked; 50 short-lived writing children; the parent's still tracked");
}

static void check_mremap(void)
{
    check = "mremap";
    uint8_t *p = map(10, 4);
    touch_only(p, 10); /* a fault pending when the mapping moves */
    uint8_t *spot = mmap(NULL, 4 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (spot == MAP_FAILED)
        fail("reserving address space: %s", strerror(errno));
    uint8_t *moved = mremap(p, 4 * PG, 4 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, spot);
    if (moved == MAP_FAILED)
        fail("mremap (move): %s", strerror(errno));
    expect_tracked(moved + 2 * PG, 12);
    if (mremap(moved, 4 * PG, 2 * PG, 0) == MAP_FAILED) /* shrink in place */
        fail("mremap (shrink): %s", strerror(errno));
    expect_tracked(moved + PG, 11);
    unmap(moved, 2);
    passed("moved mapping tracked at its new address, and after shrinking");
}

static void check_munmap_part(void)
{
    check = "munmap-part";
    uint8_t *p = map(0, 12);
    touch_only(p + 5 * PG, 5); /* a fault pending in the part that goes */
    unmap(p + 4 * PG, 4);
    expect_tracked(p + PG, 1);
    expect_tracked(p + 10 * PG, 10);
    unmap(p, 4);
    expect_tracked(p + 9 * PG, 9);
    unmap(p + 8 * PG, 4);
    passed("a hole punched in a mapping, then its head unmapped; what is left stays tracked");
}

static void check_munmap_pending(void)
{
    check = "munmap-pending";
    for (int i = 0; i < CHURN; i++) {
        uint8_t *p = map(0, 4);
        for (uint64_t k = 0; k < 4; k++)
            touch_only(p + k * PG, k);
        unmap(p, 4); /* before the refresh thread has zapped it */
        if (i % 10 == 0)
            sleep_us(60000); /* sometimes across a tick */
    }
    uint8_t *p = map(0, 4);
    expect_tracked(p + 3 * PG, 3);
    unmap(p, 4);
    passed("50 mappings unmapped with faults pending; a new mapping tracked");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--fb") == 0)
            fb_path = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--stats-dir") == 0)
            stats_dir = argv[++i];
        else
            fail("usage: xfb-mapcheck [--fb PATH] [--stats-dir DIR]");
    }
    fd = open(fb_path, O_RDWR);
    if (fd < 0)
        fail("cannot open %s: %s", fb_path, strerror(errno));
    struct fb_fix_screeninfo fix;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
        fb_pages = (uint64_t)st.st_size / PG;
    else if (ioctl(fd, FBIOGET_FSCREENINFO, &fix) == 0)
        fb_pages = fix.smem_len / PG;
    else
        fail("FBIOGET_FSCREENINFO on %s: %s", fb_path, strerror(errno));
    if (fb_pages < 16)
        fail("the framebuffer has %" PRIu64 " pages, the checks need 16", fb_pages);
    check_plain();
    check_offset();
    check_split();
    check_fork();
    check_mremap();
    check_munmap_part();
    check_munmap_pending();
    close(fd);
    return 0;
}
