/*
 * xfb-writer: draws the xenfb-harness test pattern into a Linux framebuffer.
 *
 * The pattern specification is the module docstring of harness/pattern.py; this file is its C twin and
 * tests/test_pattern.py checks that both produce the same bytes. In brief: splitmix64 PRNG; round r of seed s
 * starts from s ^ (r * 0xD1B54A32D192ED03); round 0 blacks out the whole screen; round r >= 1 draws 1 + next()%12
 * ops, each kind = next()%2, colour = next() (r=bits 16..23, g=8..15, b=0..7), then either a rect (x, y, w, h
 * from next(), h <= 128) or a whole 4096-byte page of pixels (by first-byte offset). Padding bytes are never
 * touched. That is mode "mixed", the default. Mode "sparse" (--mode sparse) instead writes, in rounds r >= 1, P
 * seeded pages (--pages P; page = next()%npages, then T colours = next() each, --touches T), each filled once per
 * colour, in generation order or, with --order ascending, stably sorted by page: a missed page stays wrong on
 * screen.
 *
 * Pattern options (both modes): [--mode mixed|sparse] [--pages 1..65536 (8)] [--touches 1..65536 (1)]
 *     [--order random|ascending]; pages, touches and order only change what "sparse" draws.
 * Guest mode:  xfb-writer [--fb /dev/fb0] [--lifecycle persistent|per-round|second-opener] [pattern options]
 *              [--touch-gap-us N (0)] [--final-gap-us N (0)] [--mappings K (1)] [--workers N (1)]
 *              [--worker-kind thread|process]
 *              [--stats-dir DIR]
 *     prints "XFB READY ...", then obeys "GO <round> <seed>", "STATS" and "QUIT" lines on stdin (see
 *     harness/protocol.py). Between a DONE and the next command it draws nothing and only waits on stdin:
 *     any drawing would make the frontend send updates that carry along one it failed to send, hiding the miss.
 *     Drawing goes straight through a MAP_SHARED mapping: the frontend's page-fault dirty tracking is part of what
 *     is under test. Round 0 (the baseline) is written with pwrite(2) instead (see write_baseline).
 *     --lifecycle says how the framebuffer is used, as real programs use it; it never changes what is drawn:
 *       persistent (default): open and map once, draw every round through that mapping.
 *       per-round: after reading the geometry (open, ioctls, close) the writer holds nothing of the device; each
 *         GO forks a process that opens and maps it, draws the round, unmaps, closes and exits, as a splash
 *         screen, an image viewer or cat > /dev/fb0 do. DONE follows its clean exit.
 *       second-opener: persistent, plus each GO forks a process that opens the device, queries it as fbset does
 *         (FBIOGET_VSCREENINFO, FBIOGET_FSCREENINFO) and closes it while the round is drawn; DONE waits for it.
 *     A forked process that fails (non-zero exit or a signal) is an "XFB ERROR" and the writer exits.
 *     --touch-gap-us N sleeps N microseconds (at most 10000000) between two touches of one page in sparse mode:
 *     timing only, the bytes drawn are the same.
 *     --final-gap-us N (sparse mode; at most 10000000) holds back the last touch of every page whose number is a
 *     multiple of 1 + ceil(stride / 4096) (every other page at 800x600x32; pages that far apart share no screen
 *     row): once the workers are done and half a second has passed, those last touches are made one page at a
 *     time, in ascending page order, N microseconds apart (the final pass). Timing only: every page still ends
 *     in its last touch.
 *     --mappings K (0..65536, default 1) maps the framebuffer as K mmap()s of consecutive page-aligned chunks, each
 *     at its own file offset, placed back to back (MAP_FIXED) so the drawing code sees one buffer: the frontend
 *     then serves faults at non-zero offsets and tracks K mappings. 0 maps each page on its own.
 *     --workers N (1..16, default 1) splits each sparse round among N threads or, with --worker-kind process,
 *     N processes forked for the round (their mappings are fork's copies). Worker k draws the entries whose
 *     page % N == k, in round order, so every page still ends in its last touch: the bytes are the same.
 *     STATS answers "XFB STATS name=value ...": the frontend module's counters, read afresh from DIR (--stats-dir)
 *     each time. Each regular file directly in DIR whose name is [A-Za-z0-9_]+ and whose content is an unsigned
 *     decimal integer (one trailing newline allowed) gives a pair; other files are skipped; pairs are sorted by
 *     name, at most 32. With no --stats-dir, or a DIR that cannot be read, the answer is "XFB STATS" alone.
 *     Tests only: adding --geometry (below) treats --fb as a plain file of that layout instead of a device
 *     ("file mode": no ioctls; every lifecycle opens and maps the file as it would the device).
 * Workload mode (writer.kind "command"): xfb-writer --workload CGROUP [--workload-log FILE] [--fb /dev/fb0]
 *              [--stats-dir DIR]
 *     draws nothing itself: it runs someone else's workload and stops it at the points the harness picks. CGROUP is
 *     a cgroup v2 directory the guest's init made; the X server, if any, already runs in CGROUP/xorg. It prints
 *     READY with the framebuffer's geometry (opened, queried, closed: it holds nothing of the device) and obeys:
 *       START <hex>: run /bin/sh -c <the hex-decoded command> in CGROUP/workload (stdin /dev/null, output to the
 *         --workload-log FILE, default /tmp/workload.log); no answer.
 *       FREEZE <round>: freeze CGROUP (cgroup.freeze). Once cgroup.events says every process in it is frozen, and
 *         the workload and the X server are still there, "XFB DONE <round>": no userspace program draws until THAW.
 *         The kernel, and the frontend in it, keep running.
 *       THAW: let CGROUP run again; no answer.
 *       STATS as in guest mode; QUIT kills every process in CGROUP, waits until it is empty, then says BYE.
 *     The workload's exit (it should run until QUIT), the X server's, or a freeze that does not complete within
 *     10 s is an "XFB ERROR". The log's last 16 KiB are printed between XFB-WORKLOAD-LOG-BEGIN and
 *     XFB-WORKLOAD-LOG-END lines before such an error and before BYE.
 * Dump mode:   xfb-writer --dump OUT --geometry W,H,BPP,STRIDE,RO/RL,GO/GL,BO/BL --seed S --rounds N
 *              [pattern options]
 *     draws rounds 0..N-1 into a zeroed H*STRIDE buffer and writes it to OUT.
 *
 * X mode: the same source built with -DXFB_X11 is xfb-xwriter, an X client: it draws the same pattern with
 * XFillRectangle on the root window of an X server (--display, default $DISPLAY), which writes it into the
 * framebuffer itself, and XSync()s before saying DONE. The geometry still comes from --fb (ioctl only; nothing is
 * mapped), and must match the X screen's size and TrueColor masks, so that a pattern pixel value is the X pixel
 * value. Round 0 goes through X too, unless --baseline-device DEV (usually /dev/fb0) writes it there with
 * pwrite(2) as guest mode does. --lifecycle per-round: each round a forked client connects, draws, XSync()s,
 * disconnects and exits (the writer itself only checks the screen at start-up); second-opener: a forked process
 * opens --fb, queries and closes it while the client draws. --probe SECONDS waits (at most that long) until the X
 * server answers, checks that its screen is the framebuffer, and exits 0 without a word: the X server has then
 * drawn its start-up screen. --mappings and --workers are refused (Xlib calls stay on one thread); dump mode is
 * not built.
 *
 * Build: gcc -static -O2 -Wall -Wextra -pthread -o xfb-writer xfb-writer.c
 *        gcc -O2 -Wall -Wextra -DXFB_X11 -o xfb-xwriter xfb-writer.c -lX11
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
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
#ifdef XFB_X11
#include <X11/Xlib.h>
#include <X11/Xutil.h>
#endif

/* Copies of the spec's constants (harness/pattern.py, harness/geometry.py). */
#define SPLITMIX_GAMMA 0x9E3779B97F4A7C15ULL
#define SPLITMIX_MUL1 0xBF58476D1CE4E5B9ULL
#define SPLITMIX_MUL2 0x94D049BB133111EBULL
#define ROUND_MUL 0xD1B54A32D192ED03ULL
#define MAX_OPS 12
#define OP_KINDS 2
#define MAX_RECT_H 128
#define FB_PAGE 4096ULL
#define MAX_SPARSE_PAGES 65536 /* pattern.MAX_SPARSE_PAGES */
#define MAX_TOUCHES 65536 /* pattern.MAX_TOUCHES */
#define MAX_TOUCH_GAP_US 10000000
#define MAX_STATS 32
#define MAX_MAPPINGS MAX_SPARSE_PAGES
/* --final-gap-us: the pause between the last of the other touches and the first final one, long enough for the
 * backend to have repainted everything the frontend sent for the others (its refresh lags tens of ms under TCG) */
#define FINAL_SETTLE_US 500000
#define MAX_WORKERS 16
#define MAX_LINE 4096 /* the console tty's longest line; START carries a command of up to 2000 bytes as hex */

struct chan {
    unsigned offset, length;
};

struct geom {
    uint64_t width, height, bpp, stride; /* 64-bit so every product below is computed without overflow */
    struct chan red, green, blue;
};

enum mode { MODE_MIXED, MODE_SPARSE };
enum order { ORDER_RANDOM, ORDER_ASCENDING };
enum worker_kind { WORKER_THREAD, WORKER_PROCESS };
enum lifecycle { LIFE_PERSISTENT, LIFE_PER_ROUND, LIFE_SECOND_OPENER };

/* pattern.WriterParams, plus guest-only options that change timing, mappings and processes, never the bytes */
struct params {
    enum mode mode;
    uint64_t pages, touches;
    enum order order;
    uint64_t touch_gap_us, final_gap_us;
    uint64_t mappings, workers;
    enum worker_kind worker_kind;
    enum lifecycle lifecycle;
};

/* One sparse-mode entry: its page, its place in generation order (the stable sort's tie-break) and the PRNG
 * state just before its first colour, from which its touches' colours are drawn again when it is filled. */
struct sparse_entry {
    uint64_t page, index, state;
};

#if defined(__GNUC__)
#define NORETURN_PRINTF __attribute__((noreturn, format(printf, 1, 2)))
#else
#define NORETURN_PRINTF
#endif

static void fatal(const char *fmt, ...) NORETURN_PRINTF;
static void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("XFB ERROR ", stdout);
    vprintf(fmt, ap);
    va_end(ap);
    fputs("\n", stdout);
    fflush(stdout);
    exit(1);
}

static uint64_t next(uint64_t *state)
{
    uint64_t z;
    *state += SPLITMIX_GAMMA;
    z = *state;
    z = (z ^ (z >> 30)) * SPLITMIX_MUL1;
    z = (z ^ (z >> 27)) * SPLITMIX_MUL2;
    return z ^ (z >> 31);
}

static uint32_t pack_chan(struct chan c, unsigned v)
{
    /* 64-bit so a zero-length channel at offset 32 is not an over-wide shift */
    return (uint32_t)((uint64_t)((v & 0xFFu) >> (8 - c.length)) << c.offset);
}

static uint32_t pack(const struct geom *g, unsigned r, unsigned gr, unsigned b)
{
    return pack_chan(g->red, r) | pack_chan(g->green, gr) | pack_chan(g->blue, b);
}

#ifdef XFB_X11
/* X mode draws on the root window of this display; fb and g still describe the layout. */
static Display *dpy;
static GC gc;

static void fill_rect(uint8_t *fb, const struct geom *g, uint64_t x, uint64_t y, uint64_t w, uint64_t h,
                      uint32_t pixel)
{
    (void)fb, (void)g;
    XSetForeground(dpy, gc, pixel);
    XFillRectangle(dpy, DefaultRootWindow(dpy), gc, (int)x, (int)y, (unsigned)w, (unsigned)h);
}
#else
/* w x h pixels of one value, little-endian, from (x, y). */
static void fill_rect(uint8_t *fb, const struct geom *g, uint64_t x, uint64_t y, uint64_t w, uint64_t h,
                      uint32_t pixel)
{
    uint64_t bytes = g->bpp / 8;
    for (uint64_t row = y; row < y + h; row++) {
        uint8_t *p = fb + row * g->stride + x * bytes;
        for (uint64_t i = 0; i < w; i++)
            for (uint64_t k = 0; k < bytes; k++)
                *p++ = (uint8_t)(pixel >> (8 * k));
    }
}
#endif

/* Every pixel whose first byte lies in page `page` (same walk as pattern.page_rects). */
static void fill_page(uint8_t *fb, const struct geom *g, uint64_t page, uint32_t pixel)
{
    uint64_t bytes = g->bpp / 8;
    uint64_t start = page * FB_PAGE, end = start + FB_PAGE;
    for (uint64_t y = start / g->stride; y < g->height && y <= (end - 1) / g->stride; y++) {
        uint64_t row = y * g->stride;
        uint64_t x_lo = row >= start ? 0 : (start - row + bytes - 1) / bytes;
        uint64_t x_hi = (end - row + bytes - 1) / bytes; /* end > row for every y in this loop */
        if (x_hi > g->width)
            x_hi = g->width;
        if (x_lo < x_hi)
            fill_rect(fb, g, x_lo, y, x_hi - x_lo, 1, pixel);
    }
}

static uint32_t colour_pixel(const struct geom *g, uint64_t c)
{
    return pack(g, (unsigned)(c >> 16) & 0xFF, (unsigned)(c >> 8) & 0xFF, (unsigned)c & 0xFF);
}

static void sleep_us(uint64_t us)
{
#ifdef XFB_X11
    if (dpy)
        XFlush(dpy); /* what was drawn before the pause reaches the X server before it, not at the next XSync */
#endif
    struct timespec ts = {.tv_sec = (time_t)(us / 1000000), .tv_nsec = (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static pid_t fork_or_die(void)
{
    pid_t pid = fork();
    if (pid < 0)
        fatal("fork: %s", strerror(errno));
    return pid;
}

/* Wait for child `pid`; anything but a clean exit is fatal. */
static void reap(pid_t pid, const char *what)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            fatal("waitpid: %s", strerror(errno));
    if (WIFSIGNALED(status))
        fatal("%s was killed by signal %d", what, WTERMSIG(status));
    if (WEXITSTATUS(status) != 0)
        fatal("%s exited with status %d", what, WEXITSTATUS(status));
}

static int cmp_entry(const void *pa, const void *pb)
{
    const struct sparse_entry *a = pa, *b = pb;
    if (a->page != b->page)
        return a->page < b->page ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index; /* qsort is not stable: generation order decides */
}

/* One worker's share of a sparse round: the entries whose page % workers == worker, in round order. With a final
 * pass, `last[page]` is the index of the page's last entry, whose last touch the final pass makes instead. */
struct share {
    uint8_t *fb;
    const struct geom *g;
    const struct sparse_entry *entries;
    const uint64_t *last;
    const struct params *pp;
    uint64_t worker;
};

static void draw_share(const struct share *sh)
{
    for (uint64_t i = 0; i < sh->pp->pages; i++) {
        const struct sparse_entry *e = &sh->entries[i];
        if (e->page % sh->pp->workers != sh->worker)
            continue;
        uint64_t st = e->state;
        uint64_t touches = sh->last && sh->last[e->page] == i ? sh->pp->touches - 1 : sh->pp->touches;
        for (uint64_t t = 0; t < touches; t++) {
            uint32_t pixel = colour_pixel(sh->g, next(&st));
            if (t > 0 && sh->pp->touch_gap_us > 0)
                sleep_us(sh->pp->touch_gap_us);
            fill_page(sh->fb, sh->g, e->page, pixel);
        }
    }
}

static void *share_thread(void *arg)
{
    draw_share(arg);
    return NULL;
}

/* All workers' shares; returns when every one is drawn. */
static void draw_shares(struct share *shares, const struct params *pp)
{
    pthread_t threads[MAX_WORKERS];
    pid_t pids[MAX_WORKERS];
    if (pp->workers == 1) {
        draw_share(&shares[0]);
        return;
    }
    for (uint64_t k = 0; k < pp->workers; k++) {
        if (pp->worker_kind == WORKER_THREAD) {
            int err = pthread_create(&threads[k], NULL, share_thread, &shares[k]);
            if (err)
                fatal("pthread_create: %s", strerror(err));
        } else {
            pids[k] = fork_or_die();
            if (pids[k] == 0) {
                draw_share(&shares[k]);
                _exit(0);
            }
        }
    }
    for (uint64_t k = 0; k < pp->workers; k++) {
        if (pp->worker_kind == WORKER_THREAD)
            pthread_join(threads[k], NULL);
        else
            reap(pids[k], "a worker process");
    }
}

/*
 * The final pass (--final-gap-us) is for the pages that are final_step(g) apart: the workers leave those pages'
 * last touches to it. Pages that far apart share no screen row (a full row lies between them), so while the
 * final pass writes one of them, no update of a neighbour repaints any of its rows.
 */
static uint64_t final_step(const struct geom *g) /* pattern.final_step */
{
    return 2 + (g->stride - 1) / FB_PAGE; /* 1 + ceil(stride / page): (step - 1) pages hold at least a row */
}

/*
 * The final pass: after the other touches and a pause, the final pages (see final_step) get their last touches,
 * one page at a time in ascending page order, gap_us apart. A frontend that tracks writes by faults then sends
 * one small update per page, which spans no other final page, and nothing else repaints their rows: a final
 * page whose write it missed stays wrong on screen, instead of being repainted by a neighbour's update, as in a
 * burst.
 */
static void draw_final_pass(uint8_t *fb, const struct geom *g, const struct sparse_entry *entries,
                            const uint64_t *last, uint64_t npages, const struct params *pp)
{
    int first = 1;
    sleep_us(FINAL_SETTLE_US);
    for (uint64_t page = 0; page < npages; page += final_step(g)) {
        if (last[page] == UINT64_MAX)
            continue;
        uint64_t st = entries[last[page]].state, c = 0;
        for (uint64_t t = 0; t < pp->touches; t++)
            c = next(&st);
        if (!first)
            sleep_us(pp->final_gap_us);
        first = 0;
        fill_page(fb, g, page, colour_pixel(g, c));
    }
}

static void draw_sparse(uint8_t *fb, const struct geom *g, uint64_t state, uint64_t npages, const struct params *pp)
{
    static struct sparse_entry *entries; /* kept between rounds: --pages does not change */
    static uint64_t *last;               /* kept too: the framebuffer's page count does not change */
    struct share shares[MAX_WORKERS];
    if (!entries && !(entries = calloc(pp->pages, sizeof *entries)))
        fatal("out of memory");
    if (pp->final_gap_us && !last && !(last = calloc(npages, sizeof *last)))
        fatal("out of memory");
    for (uint64_t i = 0; i < pp->pages; i++) {
        entries[i].page = next(&state) % npages;
        entries[i].index = i;
        entries[i].state = state;
        for (uint64_t t = 0; t < pp->touches; t++)
            next(&state); /* this entry's colours, drawn again from entries[i].state in draw_share */
    }
    if (pp->order == ORDER_ASCENDING)
        qsort(entries, pp->pages, sizeof *entries, cmp_entry);
    if (last) {
        for (uint64_t page = 0; page < npages; page++)
            last[page] = UINT64_MAX;
        for (uint64_t i = 0; i < pp->pages; i++)
            if (entries[i].page % final_step(g) == 0)
                last[entries[i].page] = i; /* the entries are in drawing order: the last one per page wins */
    }
    for (uint64_t k = 0; k < pp->workers; k++)
        shares[k] = (struct share){.fb = fb, .g = g, .entries = entries, .last = last, .pp = pp, .worker = k};
    draw_shares(shares, pp);
    if (last)
        draw_final_pass(fb, g, entries, last, npages, pp);
}

static void draw_round(uint8_t *fb, const struct geom *g, uint64_t seed, uint64_t round, const struct params *pp)
{
    if (round == 0) {
        fill_rect(fb, g, 0, 0, g->width, g->height, 0);
        return;
    }
    uint64_t state = seed ^ (round * ROUND_MUL);
    uint64_t npages = (g->height * g->stride + FB_PAGE - 1) / FB_PAGE;
    if (pp->mode == MODE_SPARSE) {
        draw_sparse(fb, g, state, npages, pp);
        return;
    }
    uint64_t n = 1 + next(&state) % MAX_OPS;
    for (uint64_t op = 0; op < n; op++) {
        /* One next() per statement: C leaves the evaluation order inside an expression unspecified. */
        uint64_t kind = next(&state) % OP_KINDS;
        uint32_t pixel = colour_pixel(g, next(&state));
        if (kind == 0) {
            uint64_t x = next(&state) % g->width;
            uint64_t y = next(&state) % g->height;
            uint64_t w = 1 + next(&state) % (g->width - x);
            uint64_t hmax = g->height - y < MAX_RECT_H ? g->height - y : MAX_RECT_H;
            uint64_t h = 1 + next(&state) % hmax;
            fill_rect(fb, g, x, y, w, h, pixel);
        } else {
            fill_page(fb, g, next(&state) % npages, pixel);
        }
    }
}

/* Same rules as harness/geometry.py, plus what keeps our own arithmetic in range. */
static void check_geom(const struct geom *g)
{
    const struct chan *chans[3] = {&g->red, &g->green, &g->blue};
    if (g->bpp != 16 && g->bpp != 24 && g->bpp != 32)
        fatal("unsupported bits per pixel %" PRIu64 " (expected 16, 24 or 32)", g->bpp);
    if (g->width == 0 || g->height == 0 || g->width > 65536 || g->height > 65536)
        fatal("unusable framebuffer size %" PRIu64 "x%" PRIu64, g->width, g->height);
    if (g->stride < g->width * (g->bpp / 8) || g->stride > (1u << 20))
        fatal("stride %" PRIu64 " does not fit lines of %" PRIu64 " pixels", g->stride, g->width);
    for (int i = 0; i < 3; i++)
        if (chans[i]->length > 8 || chans[i]->offset + chans[i]->length > g->bpp)
            fatal("unsupported colour channel %u/%u", chans[i]->offset, chans[i]->length);
}

/* Unsigned decimal at *s (leading blanks skipped); advances *s. Rejects signs, which strtoull would accept. */
static int parse_u64(const char **s, uint64_t *out)
{
    char *end;
    while (**s == ' ' || **s == '\t')
        (*s)++;
    if (**s < '0' || **s > '9')
        return 0;
    errno = 0;
    *out = strtoull(*s, &end, 10);
    if (errno == ERANGE)
        return 0;
    *s = end;
    return 1;
}

static uint64_t parse_arg_u64(const char *opt, const char *text, uint64_t max)
{
    uint64_t v;
    const char *s = text;
    if (!parse_u64(&s, &v) || *s != '\0' || v > max)
        fatal("bad value for %s: '%s'", opt, text);
    return v;
}

/* "W,H,BPP,STRIDE,RO/RL,GO/GL,BO/BL" */
static struct geom parse_geom(const char *text)
{
    uint64_t v[10];
    static const char seps[10] = {',', ',', ',', ',', '/', ',', '/', ',', '/', '\0'};
    const char *s = text;
    struct geom g;
    for (int i = 0; i < 10; i++) {
        if (!parse_u64(&s, &v[i]) || *s != seps[i] || v[i] > (1u << 20))
            fatal("bad --geometry '%s' (expected W,H,BPP,STRIDE,RO/RL,GO/GL,BO/BL)", text);
        if (seps[i])
            s++;
    }
    g.width = v[0], g.height = v[1], g.bpp = v[2], g.stride = v[3];
    g.red = (struct chan){(unsigned)v[4], (unsigned)v[5]};
    g.green = (struct chan){(unsigned)v[6], (unsigned)v[7]};
    g.blue = (struct chan){(unsigned)v[8], (unsigned)v[9]};
    check_geom(&g);
    return g;
}

#ifndef XFB_X11
static int dump_mode(const char *out, const struct geom *g, uint64_t seed, uint64_t rounds, const struct params *pp)
{
    uint8_t *buf = calloc(g->height, g->stride);
    if (!buf)
        fatal("out of memory");
    for (uint64_t r = 0; r < rounds; r++)
        draw_round(buf, g, seed, r, pp);
    FILE *f = fopen(out, "wb");
    if (!f)
        fatal("cannot open %s: %s", out, strerror(errno));
    if (fwrite(buf, 1, g->height * g->stride, f) != g->height * g->stride || fclose(f) != 0)
        fatal("cannot write %s: %s", out, strerror(errno));
    free(buf);
    return 0;
}
#endif

#ifndef XFB_X11
/*
 * The framebuffer as `mappings` MAP_SHARED mmap()s of page-aligned chunks at their own file offsets, back to back
 * in one reserved range, so the caller sees one buffer.
 */
static uint8_t *map_chunks(int fd, const char *path, uint64_t smem, uint64_t mappings)
{
    uint64_t pages = (smem + FB_PAGE - 1) / FB_PAGE;
    if (mappings == 0)
        mappings = pages; /* one mapping per page */
    if (mappings == 1) {
        void *fb = mmap(NULL, (size_t)smem, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (fb == MAP_FAILED)
            fatal("mmap %s (%" PRIu64 " bytes): %s", path, smem, strerror(errno));
        return fb;
    }
    uint8_t *base = mmap(NULL, (size_t)(pages * FB_PAGE), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        fatal("reserving %" PRIu64 " pages of address space: %s", pages, strerror(errno));
    for (uint64_t k = 0; k < mappings; k++) {
        uint64_t first = pages * k / mappings, end = pages * (k + 1) / mappings;
        uint64_t offset = first * FB_PAGE, len = (end - first) * FB_PAGE;
        if (offset + len > smem)
            len = smem - offset; /* the last chunk ends with the framebuffer */
        if (mmap(base + offset, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, (off_t)offset) ==
            MAP_FAILED)
            fatal("mmap %s chunk %" PRIu64 " (offset %" PRIu64 ", %" PRIu64 " bytes): %s", path, k, offset, len,
                  strerror(errno));
    }
    return base;
}

/* Undo map_chunks: one munmap covers every chunk (and the reservation around them). */
static void unmap_chunks(uint8_t *fb, uint64_t smem)
{
    if (munmap(fb, (size_t)((smem + FB_PAGE - 1) / FB_PAGE * FB_PAGE)) != 0)
        fatal("munmap: %s", strerror(errno));
}
#endif

/* Open the framebuffer device, or (tests) a plain file laid out as *file_geom; fills *g and *smem. */
static int open_fb(const char *path, const struct geom *file_geom, int flags, struct geom *g, uint64_t *smem)
{
    int fd = open(path, flags);
    if (fd < 0)
        fatal("cannot open %s: %s", path, strerror(errno));
    if (file_geom) {
        struct stat st;
        if (fstat(fd, &st) != 0)
            fatal("cannot stat %s: %s", path, strerror(errno));
        *g = *file_geom;
        *smem = (uint64_t)st.st_size;
    } else {
        struct fb_var_screeninfo var;
        struct fb_fix_screeninfo fix;
        if (ioctl(fd, FBIOGET_VSCREENINFO, &var) != 0)
            fatal("FBIOGET_VSCREENINFO on %s: %s", path, strerror(errno));
        if (ioctl(fd, FBIOGET_FSCREENINFO, &fix) != 0)
            fatal("FBIOGET_FSCREENINFO on %s: %s", path, strerror(errno));
        /* We draw at the start of the mapping, which is only what is shown if the display is not panned. */
        if (var.xoffset != 0 || var.yoffset != 0)
            fatal("panned framebuffer (xoffset=%u yoffset=%u) not supported", var.xoffset, var.yoffset);
        g->width = var.xres, g->height = var.yres, g->bpp = var.bits_per_pixel, g->stride = fix.line_length;
        g->red = (struct chan){var.red.offset, var.red.length};
        g->green = (struct chan){var.green.offset, var.green.length};
        g->blue = (struct chan){var.blue.offset, var.blue.length};
        *smem = fix.smem_len;
        check_geom(g);
    }
    if (g->height * g->stride > *smem)
        fatal("%" PRIu64 "x%" PRIu64 " lines of %" PRIu64 " bytes exceed smem %" PRIu64,
              g->width, g->height, g->stride, *smem);
    return fd;
}

#ifdef XFB_X11
static int x_error(Display *d, XErrorEvent *e)
{
    char text[256];
    XGetErrorText(d, e->error_code, text, sizeof text);
    fatal("X error: %s (request %u)", text, e->request_code);
}

static int x_io_error(Display *d)
{
    (void)d;
    fatal("lost the connection to the X server");
}

/* Connect, and check that a pattern pixel value means the same colour to this X screen. */
static void open_display(const char *name, const struct geom *g)
{
    if (!(dpy = XOpenDisplay(name)))
        fatal("cannot open X display '%s'", name ? name : "$DISPLAY");
    XSetErrorHandler(x_error);
    XSetIOErrorHandler(x_io_error);
    int screen = DefaultScreen(dpy);
    Visual *v = DefaultVisual(dpy, screen);
    unsigned long masks[3] = {v->red_mask, v->green_mask, v->blue_mask};
    const struct chan *chans[3] = {&g->red, &g->green, &g->blue};
    if ((uint64_t)DisplayWidth(dpy, screen) != g->width || (uint64_t)DisplayHeight(dpy, screen) != g->height)
        fatal("the X screen is %dx%d, the framebuffer %" PRIu64 "x%" PRIu64, DisplayWidth(dpy, screen),
              DisplayHeight(dpy, screen), g->width, g->height);
    if (v->class != TrueColor)
        fatal("the X screen's default visual is not TrueColor");
    for (int i = 0; i < 3; i++) {
        unsigned long want = ((1UL << chans[i]->length) - 1) << chans[i]->offset;
        if (masks[i] != want)
            fatal("X visual colour mask 0x%lx differs from the framebuffer's 0x%lx", masks[i], want);
    }
    gc = XCreateGC(dpy, DefaultRootWindow(dpy), 0, NULL);
    XSync(dpy, False);
}

/* --probe: wait for the X server, check its screen, say nothing. */
static int probe_mode(const char *path, const struct geom *file_geom, const char *display, uint64_t seconds)
{
    struct geom g;
    uint64_t smem;
    close(open_fb(path, file_geom, O_RDONLY, &g, &smem));
    uint64_t deadline = now_ms() + seconds * 1000;
    Display *d;
    while (!(d = XOpenDisplay(display))) {
        if (now_ms() >= deadline)
            fatal("no X server answered on '%s' within %" PRIu64 " s", display ? display : "$DISPLAY", seconds);
        sleep_us(100000);
    }
    XCloseDisplay(d);
    open_display(display, &g);
    return 0;
}
#endif

static int stat_name_ok(const char *name)
{
    if (*name == '\0')
        return 0;
    for (const char *c = name; *c; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_'))
            return 0;
    return 1;
}

/* The counter in regular file `name` of directory dfd: unsigned decimal, one trailing newline allowed. */
static int read_counter(int dfd, const char *name, uint64_t *value)
{
    char buf[32]; /* 20 digits and a newline at most */
    size_t len = 0;
    struct stat st;
    /* O_NONBLOCK: a FIFO must not hang us before fstat can tell it is not a regular file */
    int fd = openat(dfd, name, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return 0;
    int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    while (ok) {
        ssize_t n = read(fd, buf + len, sizeof buf - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            ok = n == 0;
            break;
        }
        len += (size_t)n;
        if (len == sizeof buf)
            ok = 0; /* too long to be a counter */
    }
    close(fd);
    if (!ok)
        return 0;
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (buf[i] < '0' || buf[i] > '9')
            return 0;
    buf[len] = '\0';
    const char *s = buf;
    return parse_u64(&s, value); /* fails only on overflow */
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "XFB STATS name=value ...", read afresh from dir; no pairs if there is no dir or it cannot be read. */
static void print_stats(const char *dir)
{
    DIR *d = dir ? opendir(dir) : NULL;
    fputs("XFB STATS", stdout);
    if (d) {
        char **names = NULL;
        size_t n = 0, cap = 0, shown = 0;
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (!stat_name_ok(de->d_name)) /* also skips "." and ".." */
                continue;
            if (n == cap) {
                size_t new_cap = cap ? 2 * cap : 64;
                char **grown = realloc(names, new_cap * sizeof *names);
                if (!grown)
                    break; /* out of memory: report what we have */
                names = grown, cap = new_cap;
            }
            if (!(names[n] = strdup(de->d_name)))
                break;
            n++;
        }
        if (n > 0)
            qsort(names, n, sizeof *names, cmp_name);
        for (size_t i = 0; i < n; i++) {
            uint64_t value;
            if (shown < MAX_STATS && read_counter(dirfd(d), names[i], &value)) {
                printf(" %s=%" PRIu64, names[i], value);
                shown++;
            }
            free(names[i]);
        }
        free(names);
        closedir(d);
    }
    fputs("\n", stdout);
    fflush(stdout);
}

/* Where round 0 is written with pwrite() (see below); NULL draws it like any round (X mode's default). */
static const char *baseline_path;

/*
 * Guest mode writes the baseline (round 0: a black screen) with write(2), not through the mapping. The bytes are
 * the spec's, and the frontend refreshes what write() touched; but no page faults: with an old-design frontend
 * and a widened race window, a fault per framebuffer page would cost a window each, for every run.
 */
static void write_zeros(int fd, const uint8_t *zeros, size_t n, uint64_t offset)
{
    for (size_t done = 0; done < n;) {
        ssize_t w = pwrite(fd, zeros + done, n - done, (off_t)(offset + done));
        if (w <= 0)
            fatal("baseline: write to %s: %s", baseline_path, w < 0 ? strerror(errno) : "short write");
        done += (size_t)w;
    }
}

static void write_baseline(const struct geom *g)
{
    uint64_t line = g->width * (g->bpp / 8);
    uint8_t *zeros = calloc(1, (size_t)(g->height * g->stride));
    int fd = open(baseline_path, O_WRONLY);
    if (!zeros || fd < 0)
        fatal("baseline: cannot open %s: %s", baseline_path, strerror(errno));
    if (line == g->stride) /* no padding: one write */
        write_zeros(fd, zeros, (size_t)(g->height * g->stride), 0);
    else /* padding bytes are never written */
        for (uint64_t y = 0; y < g->height; y++)
            write_zeros(fd, zeros, (size_t)line, y * g->stride);
    close(fd);
    free(zeros);
}

/* Guest mode: the framebuffer, and what this writer holds of it. */
struct session {
    const char *path;             /* --fb */
    const struct geom *file_geom; /* tests: --fb is a plain file of this layout */
    const char *display;          /* X mode */
    const char *stats_dir;
    const struct params *pp;
    struct geom g;                /* as READY reports it */
    uint64_t smem;
    uint8_t *fb;                  /* the mmap writer's mapping, unless per-round */
};

/* per-round: the round's own process, which holds the framebuffer only while it draws. */
static void draw_alone(const struct session *s, uint64_t round, uint64_t seed)
{
    if (round == 0 && baseline_path) {
        write_baseline(&s->g); /* opens, writes and closes the device itself */
        return;
    }
#ifdef XFB_X11
    open_display(s->display, &s->g);
    draw_round(NULL, &s->g, seed, round, s->pp);
    XSync(dpy, False);
    XCloseDisplay(dpy), dpy = NULL;
#else
    struct geom g; /* queried afresh, as a program of its own does before it maps */
    uint64_t smem;
    int fd = open_fb(s->path, s->file_geom, O_RDWR, &g, &smem);
    uint8_t *fb = map_chunks(fd, s->path, smem, s->pp->mappings);
    draw_round(fb, &g, seed, round, s->pp);
    unmap_chunks(fb, smem);
    close(fd);
#endif
}

/* second-opener: another process does what fbset does while we draw. */
static pid_t start_opener(const struct session *s)
{
    pid_t pid = fork_or_die();
    if (pid == 0) {
        struct geom g;
        uint64_t smem;
        close(open_fb(s->path, s->file_geom, O_RDONLY, &g, &smem));
        _exit(0);
    }
    return pid;
}

static void go(const struct session *s, uint64_t round, uint64_t seed)
{
    if (s->pp->lifecycle == LIFE_PER_ROUND) {
        pid_t pid = fork_or_die();
        if (pid == 0) {
            draw_alone(s, round, seed);
            _exit(0);
        }
        reap(pid, "the round's process");
    } else {
        pid_t opener = s->pp->lifecycle == LIFE_SECOND_OPENER ? start_opener(s) : 0;
        if (round == 0 && baseline_path)
            write_baseline(&s->g);
        else
            draw_round(s->fb, &s->g, seed, round, s->pp);
#ifdef XFB_X11
        XSync(dpy, False); /* DONE means drawn: the X server has carried out every request */
#endif
        if (opener)
            reap(opener, "the second opener");
    }
    printf("XFB DONE %" PRIu64 "\n", round);
    fflush(stdout);
}

/* A command line with its surrounding blanks removed; NULL if it is empty. */
static const char *trim(char *line)
{
    size_t len = strlen(line);
    const char *s = line;
    while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
        line[--len] = '\0';
    while (*s == ' ' || *s == '\t')
        s++;
    return *s ? s : NULL;
}

static void handle_line(char *line, const struct session *sess)
{
    const char *s = trim(line);
    uint64_t round, seed;
    if (!s)
        return;
    if (strcmp(s, "QUIT") == 0) {
        printf("XFB BYE\n");
        fflush(stdout);
        exit(0);
    }
    if (strcmp(s, "STATS") == 0) {
        print_stats(sess->stats_dir);
        return;
    }
    if (strncmp(s, "GO", 2) == 0 && (s[2] == ' ' || s[2] == '\t')) {
        const char *p = s + 2;
        if (parse_u64(&p, &round) && round <= UINT32_MAX && (*p == ' ' || *p == '\t') && parse_u64(&p, &seed) &&
            *p == '\0') {
            go(sess, round, seed);
            return;
        }
    }
    printf("XFB ERROR unknown command: %s\n", s);
    fflush(stdout);
}

/* Reads commands from stdin and hands each line to `handle`; returns only at EOF (the harness is gone). Nothing
 * draws between commands: we only wait for the next one. */
static void command_loop(void (*handle)(char *line, const struct session *s), const struct session *s)
{
    static char line[MAX_LINE];
    char chunk[256];
    size_t len = 0;
    int overlong = 0;
    for (;;) {
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        if (poll(&pfd, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            fatal("poll stdin: %s", strerror(errno));
        }
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fatal("read stdin: %s", strerror(errno));
        }
        if (n == 0)
            return;
        for (ssize_t i = 0; i < n; i++) {
            char ch = chunk[i];
            if (ch == '\n' || ch == '\r') {
                line[len] = '\0';
                if (overlong) { /* report a shortened copy rather than acting on half a command */
                    line[64] = '\0';
                    printf("XFB ERROR unknown command: %s...\n", line);
                    fflush(stdout);
                } else {
                    handle(line, s);
                }
                len = 0, overlong = 0;
            } else if (len < sizeof line - 1) {
                line[len++] = ch;
            } else {
                overlong = 1;
            }
        }
    }
}

static void print_ready(const struct session *s)
{
    printf("XFB READY width=%" PRIu64 " height=%" PRIu64 " bpp=%" PRIu64 " stride=%" PRIu64
           " red=%u/%u green=%u/%u blue=%u/%u smem=%" PRIu64 "\n",
           s->g.width, s->g.height, s->g.bpp, s->g.stride, s->g.red.offset, s->g.red.length, s->g.green.offset,
           s->g.green.length, s->g.blue.offset, s->g.blue.length, s->smem);
    fflush(stdout);
}

static int guest_mode(struct session *s)
{
    int fd = open_fb(s->path, s->file_geom, O_RDWR, &s->g, &s->smem);
    uint64_t pages = (s->smem + FB_PAGE - 1) / FB_PAGE;
    if (s->pp->mappings > pages) /* checked here so that per-round fails before READY too */
        fatal("--mappings %" PRIu64 " exceeds the framebuffer's %" PRIu64 " pages", s->pp->mappings, pages);
#ifdef XFB_X11
    close(fd); /* the X server maps the framebuffer, not us */
    open_display(s->display, &s->g);
    if (s->pp->lifecycle == LIFE_PER_ROUND)
        XCloseDisplay(dpy), dpy = NULL; /* the screen is checked; each round's process connects anew */
#else
    if (s->pp->lifecycle != LIFE_PER_ROUND)
        s->fb = map_chunks(fd, s->path, s->smem, s->pp->mappings);
    close(fd); /* a mapping keeps the device open; per-round keeps nothing */
#endif

    print_ready(s);
    command_loop(handle_line, s);
    exit(0); /* EOF: the harness is gone or done */
}

#ifndef XFB_X11
/* Workload mode (see the top of this file): a workload of someone else's programs, frozen at the harness's word. */
#define FREEZE_TIMEOUT_MS 10000
#define LOG_TAIL 16384

static struct {
    const char *cgroup;   /* --workload: the cgroup v2 directory that holds the workload and the X server */
    const char *log;      /* --workload-log */
    pid_t pid;            /* the workload's shell, once started */
} wl = {.log = "/tmp/workload.log"};

/* Write `text` to file `name` of the workload's cgroup (or of its `sub` directory); 0 if that failed. */
static int cg_write(const char *sub, const char *name, const char *text)
{
    char path[4096];
    snprintf(path, sizeof path, "%s%s%s/%s", wl.cgroup, sub ? "/" : "", sub ? sub : "", name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t w = write(fd, text, strlen(text));
    close(fd);
    return w == (ssize_t)strlen(text);
}

/* The value of `key` in cgroup.events of the cgroup (or its `sub`), e.g. "frozen" or "populated"; -1 if unknown. */
static int cg_event(const char *sub, const char *key)
{
    char path[4096], buf[512];
    snprintf(path, sizeof path, "%s%s%s/cgroup.events", wl.cgroup, sub ? "/" : "", sub ? sub : "");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    size_t klen = strlen(key);
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, key, klen) == 0 && line[klen] == ' ')
            return atoi(line + klen + 1);
    return -1;
}

static int has_sub(const char *sub)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", wl.cgroup, sub);
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The log's last LOG_TAIL bytes between marker lines: the harness keeps them as workload.log, and reads no
 * protocol line between the markers. */
static void print_log_tail(void)
{
    char buf[LOG_TAIL];
    int fd = open(wl.log, O_RDONLY | O_CLOEXEC);
    printf("XFB-WORKLOAD-LOG-BEGIN\n");
    if (fd >= 0) {
        off_t size = lseek(fd, 0, SEEK_END);
        off_t from = size > LOG_TAIL ? size - LOG_TAIL : 0;
        ssize_t n = pread(fd, buf, sizeof buf, from);
        close(fd);
        if (n > 0) {
            fwrite(buf, 1, (size_t)n, stdout);
            if (buf[n - 1] != '\n')
                fputs("\n", stdout);
        }
    }
    printf("XFB-WORKLOAD-LOG-END\n");
    fflush(stdout);
}

static void workload_fatal(const char *why)
{
    print_log_tail();
    fatal("%s", why);
}

static int hex_value(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void start_workload(const char *hex)
{
    size_t n = strlen(hex);
    char *command = malloc(n / 2 + 1);
    if (!command || n == 0 || n % 2)
        fatal("START needs the command as an even number of hex digits");
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
            fatal("START needs the command as hex digits, with no NUL byte");
        command[i] = (char)(hi << 4 | lo);
    }
    command[n / 2] = '\0';
    if (wl.pid)
        fatal("START: the workload already runs");
    fflush(stdout);
    pid_t pid = fork_or_die();
    if (pid == 0) {
        /* "0" moves the writing process itself: the workload and all it starts are in the frozen cgroup. */
        if (!cg_write("workload", "cgroup.procs", "0"))
            fatal("cannot move the workload into %s/workload: %s", wl.cgroup, strerror(errno));
        int in = open("/dev/null", O_RDONLY);
        int out = open(wl.log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
        if (in < 0 || out < 0)
            fatal("workload: cannot open /dev/null or %s: %s", wl.log, strerror(errno));
        dup2(in, 0), dup2(out, 1), dup2(out, 2);
        close(in), close(out);
        execl("/bin/sh", "sh", "-c", command, (char *)NULL);
        _exit(127);
    }
    free(command);
    wl.pid = pid;
}

/* The workload's shell and the X server must still be there: a workload that ended leaves a quiet screen that
 * proves nothing. */
static void check_workload(void)
{
    char why[256];
    int status;
    if (wl.pid) {
        pid_t r = waitpid(wl.pid, &status, WNOHANG);
        if (r == wl.pid) {
            if (WIFSIGNALED(status))
                snprintf(why, sizeof why, "the workload was killed by signal %d (it must run until the harness "
                         "stops it)", WTERMSIG(status));
            else
                snprintf(why, sizeof why, "the workload exited with status %d (it must run until the harness stops "
                         "it)", WEXITSTATUS(status));
            workload_fatal(why);
        }
    }
    if (has_sub("xorg") && cg_event("xorg", "populated") == 0)
        workload_fatal("the X server exited");
}

static void freeze(uint64_t round)
{
    check_workload(); /* before: a frozen zombie still counts as exited, but say it early */
    if (!cg_write(NULL, "cgroup.freeze", "1"))
        fatal("cannot freeze %s: %s", wl.cgroup, strerror(errno));
    uint64_t deadline = now_ms() + FREEZE_TIMEOUT_MS;
    while (cg_event(NULL, "frozen") != 1) {
        if (now_ms() > deadline)
            workload_fatal("the workload did not freeze within 10 s (a process stuck in the kernel?)");
        sleep_us(1000);
    }
    check_workload();
    printf("XFB DONE %" PRIu64 "\n", round);
    fflush(stdout);
}

/* Kill every process in the cgroup and below: cgroup.kill (Linux 5.14 and later), else a SIGKILL per process of
 * the cgroup and of the sub-cgroups we made. Then wait (bounded) until it is empty. */
static void stop_workload(void)
{
    if (!cg_write(NULL, "cgroup.kill", "1")) {
        static const char *const subs[] = {NULL, "workload", "xorg"};
        for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
            char path[4096], pid[32];
            snprintf(path, sizeof path, "%s%s%s/cgroup.procs", wl.cgroup, subs[i] ? "/" : "", subs[i] ? subs[i] : "");
            FILE *f = fopen(path, "r");
            while (f && fgets(pid, sizeof pid, f))
                kill((pid_t)atoi(pid), SIGKILL);
            if (f)
                fclose(f);
        }
    }
    cg_write(NULL, "cgroup.freeze", "0");
    uint64_t deadline = now_ms() + FREEZE_TIMEOUT_MS;
    while (cg_event(NULL, "populated") == 1 && now_ms() < deadline)
        sleep_us(10000);
    if (wl.pid)
        waitpid(wl.pid, NULL, WNOHANG);
}

static void handle_workload_line(char *line, const struct session *sess)
{
    const char *s = trim(line);
    uint64_t round;
    if (!s)
        return;
    if (strcmp(s, "QUIT") == 0) {
        stop_workload();
        print_log_tail();
        printf("XFB BYE\n");
        fflush(stdout);
        exit(0);
    }
    if (strcmp(s, "STATS") == 0) {
        print_stats(sess->stats_dir);
        return;
    }
    if (strcmp(s, "THAW") == 0) {
        if (!cg_write(NULL, "cgroup.freeze", "0"))
            fatal("cannot thaw %s: %s", wl.cgroup, strerror(errno));
        return;
    }
    if (strncmp(s, "START ", 6) == 0) {
        start_workload(s + 6);
        return;
    }
    if (strncmp(s, "FREEZE", 6) == 0 && (s[6] == ' ' || s[6] == '\t')) {
        const char *p = s + 6;
        if (parse_u64(&p, &round) && round <= UINT32_MAX && *p == '\0') {
            freeze(round);
            return;
        }
    }
    printf("XFB ERROR unknown command: %.64s\n", s);
    fflush(stdout);
}

static int workload_mode(struct session *s)
{
    close(open_fb(s->path, s->file_geom, O_RDONLY, &s->g, &s->smem));
    if (!has_sub("workload"))
        fatal("%s/workload is not a directory: the workload's cgroup must exist", wl.cgroup);
    print_ready(s);
    command_loop(handle_workload_line, s);
    stop_workload(); /* EOF: the harness is gone; leave nothing running */
    exit(0);
}
#endif

static void usage(void)
{
#ifdef XFB_X11
    fatal("usage: xfb-xwriter [--display NAME] [--fb PATH] [--baseline-device PATH] [--lifecycle LIFECYCLE] "
          "[PATTERN] [--touch-gap-us N] [--stats-dir DIR] | --probe SECONDS [--display NAME] [--fb PATH]; "
          "LIFECYCLE: persistent|per-round|second-opener; "
          "PATTERN: [--mode mixed|sparse] [--pages N] [--touches N] [--order random|ascending]");
#else
    fatal("usage: xfb-writer [--fb PATH] [--lifecycle LIFECYCLE] [PATTERN] [--touch-gap-us N] [--final-gap-us N] [--mappings K] "
          "[--workers N] [--worker-kind thread|process] [--stats-dir DIR] | "
          "--workload CGROUP [--workload-log FILE] [--fb PATH] [--stats-dir DIR] | "
          "--dump OUT --geometry W,H,BPP,STRIDE,RO/RL,GO/GL,BO/BL --seed S --rounds N [PATTERN]; "
          "LIFECYCLE: persistent|per-round|second-opener; "
          "PATTERN: [--mode mixed|sparse] [--pages N] [--touches N] [--order random|ascending]");
#endif
}

int main(int argc, char **argv)
{
    const char *fb_path = "/dev/fb0", *dump = NULL, *geometry = NULL, *stats_dir = NULL, *display = NULL;
    uint64_t seed = 0, rounds = 0;
    int have_seed = 0, have_rounds = 0, have_guest_only = 0, have_probe = 0;
    uint64_t probe_s = 0;
    struct params pp = {.mode = MODE_MIXED, .pages = 8, .touches = 1, .order = ORDER_RANDOM, .touch_gap_us = 0,
                        .mappings = 1, .workers = 1, .worker_kind = WORKER_THREAD, .lifecycle = LIFE_PERSISTENT};

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *val = argv[++i];
        if (strcmp(opt, "--fb") == 0)
            fb_path = val;
        else if (strcmp(opt, "--dump") == 0)
            dump = val;
        else if (strcmp(opt, "--geometry") == 0)
            geometry = val;
        else if (strcmp(opt, "--seed") == 0)
            seed = parse_arg_u64(opt, val, UINT64_MAX), have_seed = 1;
        else if (strcmp(opt, "--rounds") == 0)
            rounds = parse_arg_u64(opt, val, UINT32_MAX), have_rounds = 1;
        else if (strcmp(opt, "--mode") == 0 && strcmp(val, "mixed") == 0)
            pp.mode = MODE_MIXED;
        else if (strcmp(opt, "--mode") == 0 && strcmp(val, "sparse") == 0)
            pp.mode = MODE_SPARSE;
        else if (strcmp(opt, "--mode") == 0)
            fatal("bad value for --mode: '%s' (expected mixed or sparse)", val);
        else if (strcmp(opt, "--order") == 0 && strcmp(val, "random") == 0)
            pp.order = ORDER_RANDOM;
        else if (strcmp(opt, "--order") == 0 && strcmp(val, "ascending") == 0)
            pp.order = ORDER_ASCENDING;
        else if (strcmp(opt, "--order") == 0)
            fatal("bad value for --order: '%s' (expected random or ascending)", val);
        else if (strcmp(opt, "--pages") == 0)
            pp.pages = parse_arg_u64(opt, val, MAX_SPARSE_PAGES);
        else if (strcmp(opt, "--touches") == 0)
            pp.touches = parse_arg_u64(opt, val, MAX_TOUCHES);
        else if (strcmp(opt, "--touch-gap-us") == 0)
            pp.touch_gap_us = parse_arg_u64(opt, val, MAX_TOUCH_GAP_US), have_guest_only = 1;
        else if (strcmp(opt, "--final-gap-us") == 0)
            pp.final_gap_us = parse_arg_u64(opt, val, MAX_TOUCH_GAP_US), have_guest_only = 1;
        else if (strcmp(opt, "--mappings") == 0)
            pp.mappings = parse_arg_u64(opt, val, MAX_MAPPINGS), have_guest_only = 1;
        else if (strcmp(opt, "--workers") == 0)
            pp.workers = parse_arg_u64(opt, val, MAX_WORKERS), have_guest_only = 1;
        else if (strcmp(opt, "--worker-kind") == 0 && strcmp(val, "thread") == 0)
            pp.worker_kind = WORKER_THREAD, have_guest_only = 1;
        else if (strcmp(opt, "--worker-kind") == 0 && strcmp(val, "process") == 0)
            pp.worker_kind = WORKER_PROCESS, have_guest_only = 1;
        else if (strcmp(opt, "--worker-kind") == 0)
            fatal("bad value for --worker-kind: '%s' (expected thread or process)", val);
        else if (strcmp(opt, "--lifecycle") == 0 && strcmp(val, "persistent") == 0)
            pp.lifecycle = LIFE_PERSISTENT, have_guest_only = 1;
        else if (strcmp(opt, "--lifecycle") == 0 && strcmp(val, "per-round") == 0)
            pp.lifecycle = LIFE_PER_ROUND, have_guest_only = 1;
        else if (strcmp(opt, "--lifecycle") == 0 && strcmp(val, "second-opener") == 0)
            pp.lifecycle = LIFE_SECOND_OPENER, have_guest_only = 1;
        else if (strcmp(opt, "--lifecycle") == 0)
            fatal("bad value for --lifecycle: '%s' (expected persistent, per-round or second-opener)", val);
        else if (strcmp(opt, "--stats-dir") == 0)
            stats_dir = val;
#ifndef XFB_X11
        else if (strcmp(opt, "--workload") == 0)
            wl.cgroup = val;
        else if (strcmp(opt, "--workload-log") == 0)
            wl.log = val;
#endif
#ifdef XFB_X11
        else if (strcmp(opt, "--display") == 0)
            display = val;
        else if (strcmp(opt, "--baseline-device") == 0)
            baseline_path = val;
        else if (strcmp(opt, "--probe") == 0)
            probe_s = parse_arg_u64(opt, val, 3600), have_probe = 1;
#endif
        else
            usage();
    }
    if (pp.pages == 0 || pp.touches == 0)
        fatal("--pages and --touches must be at least 1");
    if (pp.workers == 0)
        fatal("--workers must be at least 1");
    if (pp.final_gap_us && pp.mode != MODE_SPARSE)
        fatal("--final-gap-us needs --mode sparse");
    if (pp.workers > 1 && pp.mode != MODE_SPARSE)
        fatal("--workers above 1 needs --mode sparse (mixed rounds overlap, so their order matters)");
    struct geom layout;
    const struct geom *file_geom = NULL;
    if (geometry)
        layout = parse_geom(geometry), file_geom = &layout;
#ifdef XFB_X11
    if (dump)
        fatal("xfb-xwriter has no dump mode (use xfb-writer)");
    if (pp.mappings != 1 || pp.workers != 1)
        fatal("--mappings and --workers are for xfb-writer only: the X server does the mapping, one client draws");
    (void)seed, (void)rounds, (void)have_seed, (void)have_rounds, (void)have_guest_only;
    if (have_probe)
        return probe_mode(fb_path, file_geom, display, probe_s);
#else
    (void)have_probe, (void)probe_s;
    if (dump) {
        if (!file_geom || !have_seed || !have_rounds)
            usage();
        if (have_guest_only || stats_dir)
            fatal("--lifecycle, --touch-gap-us, --final-gap-us, --mappings, --workers, --worker-kind and --stats-dir "
                  "are for guest mode only");
        return dump_mode(dump, file_geom, seed, rounds, &pp);
    }
    baseline_path = fb_path; /* guest mode always writes the baseline with pwrite() */
#endif
    struct session s = {.path = fb_path, .file_geom = file_geom, .display = display, .stats_dir = stats_dir,
                        .pp = &pp};
#ifndef XFB_X11
    if (wl.cgroup) {
        if (have_guest_only || have_seed || have_rounds)
            fatal("--workload takes only --fb, --workload-log, --stats-dir (and, in tests, --geometry)");
        return workload_mode(&s);
    }
#endif
    return guest_mode(&s);
}
