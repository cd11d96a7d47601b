/*
 * xfb-writer: draws the xenfb-harness test pattern into a Linux framebuffer.
 *
 * The pattern specification is the module docstring of harness/pattern.py; this file is its C twin and
 * tests/test_pattern.py checks that both produce the same bytes. In brief: splitmix64 PRNG; round r of seed s
 * starts from s ^ (r * 0xD1B54A32D192ED03); round 0 blacks out the drawable rows [0, height-2); round r >= 1
 * draws 1 + next()%12 ops, each kind = next()%2, colour = next() (r=bits 16..23, g=8..15, b=0..7), then either a
 * rect (x, y, w, h from next(), h <= 128) or a whole 4096-byte page of pixels (by first-byte offset). The last
 * row shows a 24-bit tick counter (white = 1). Padding bytes and the two ticker rows are never touched by rounds.
 *
 * Guest mode:  xfb-writer [--fb /dev/fb0] [--tick-ms 10]
 *     prints "XFB READY ...", then obeys "GO <round> <seed>" and "QUIT" lines on stdin (see harness/protocol.py),
 *     ticking while idle. Drawing goes straight through the MAP_SHARED mapping: the frontend's page-fault dirty
 *     tracking is part of what is under test.
 *     Tests only: adding --geometry (below) treats --fb as a plain file of that layout instead of a device.
 * Dump mode:   xfb-writer --dump OUT --geometry W,H,BPP,STRIDE,RO/RL,GO/GL,BO/BL --seed S --rounds N
 *     draws rounds 0..N-1 into a zeroed H*STRIDE buffer and writes it to OUT.
 *
 * Build: gcc -static -O2 -Wall -Wextra -o xfb-writer xfb-writer.c
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Copies of the spec's constants (harness/pattern.py, harness/geometry.py). */
#define SPLITMIX_GAMMA 0x9E3779B97F4A7C15ULL
#define SPLITMIX_MUL1 0xBF58476D1CE4E5B9ULL
#define SPLITMIX_MUL2 0x94D049BB133111EBULL
#define ROUND_MUL 0xD1B54A32D192ED03ULL
#define MAX_OPS 12
#define OP_KINDS 2
#define MAX_RECT_H 128
#define FB_PAGE 4096ULL
#define TICKER_ROWS 2
#define TICKER_BITS 24

struct chan {
    unsigned offset, length;
};

struct geom {
    uint64_t width, height, bpp, stride; /* 64-bit so every product below is computed without overflow */
    struct chan red, green, blue;
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

/* Write w pixels of one value, little-endian, starting at (x, y). */
static void fill_span(uint8_t *fb, const struct geom *g, uint64_t x, uint64_t y, uint64_t w, uint32_t pixel)
{
    uint64_t bytes = g->bpp / 8;
    uint8_t *p = fb + y * g->stride + x * bytes;
    for (uint64_t i = 0; i < w; i++)
        for (uint64_t k = 0; k < bytes; k++)
            *p++ = (uint8_t)(pixel >> (8 * k));
}

/* Every drawable pixel whose first byte lies in page `page` (same walk as pattern.page_rects). */
static void fill_page(uint8_t *fb, const struct geom *g, uint64_t page, uint32_t pixel)
{
    uint64_t bytes = g->bpp / 8, drawable = g->height - TICKER_ROWS;
    uint64_t start = page * FB_PAGE, end = start + FB_PAGE;
    for (uint64_t y = start / g->stride; y < drawable && y <= (end - 1) / g->stride; y++) {
        uint64_t row = y * g->stride;
        uint64_t x_lo = row >= start ? 0 : (start - row + bytes - 1) / bytes;
        uint64_t x_hi = (end - row + bytes - 1) / bytes; /* end > row for every y in this loop */
        if (x_hi > g->width)
            x_hi = g->width;
        if (x_lo < x_hi)
            fill_span(fb, g, x_lo, y, x_hi - x_lo, pixel);
    }
}

static void draw_round(uint8_t *fb, const struct geom *g, uint64_t seed, uint64_t round)
{
    uint64_t drawable = g->height - TICKER_ROWS;
    if (round == 0) {
        for (uint64_t y = 0; y < drawable; y++)
            fill_span(fb, g, 0, y, g->width, 0);
        return;
    }
    uint64_t state = seed ^ (round * ROUND_MUL);
    uint64_t npages = (drawable * g->stride + FB_PAGE - 1) / FB_PAGE;
    uint64_t n = 1 + next(&state) % MAX_OPS;
    for (uint64_t op = 0; op < n; op++) {
        /* One next() per statement: C leaves the evaluation order inside an expression unspecified. */
        uint64_t kind = next(&state) % OP_KINDS;
        uint64_t c = next(&state);
        uint32_t pixel = pack(g, (unsigned)(c >> 16) & 0xFF, (unsigned)(c >> 8) & 0xFF, (unsigned)c & 0xFF);
        if (kind == 0) {
            uint64_t x = next(&state) % g->width;
            uint64_t y = next(&state) % drawable;
            uint64_t w = 1 + next(&state) % (g->width - x);
            uint64_t hmax = drawable - y < MAX_RECT_H ? drawable - y : MAX_RECT_H;
            uint64_t h = 1 + next(&state) % hmax;
            for (uint64_t row = y; row < y + h; row++)
                fill_span(fb, g, x, row, w, pixel);
        } else {
            fill_page(fb, g, next(&state) % npages, pixel);
        }
    }
}

static void draw_ticker(uint8_t *fb, const struct geom *g, uint32_t tick)
{
    uint32_t white = pack(g, 255, 255, 255);
    for (uint64_t i = 0; i < TICKER_BITS && i < g->width; i++)
        fill_span(fb, g, i, g->height - 1, 1, (tick >> i) & 1 ? white : 0);
}

/* Same rules as harness/geometry.py, plus what keeps our own arithmetic in range. */
static void check_geom(const struct geom *g)
{
    const struct chan *chans[3] = {&g->red, &g->green, &g->blue};
    if (g->bpp != 16 && g->bpp != 24 && g->bpp != 32)
        fatal("unsupported bits per pixel %" PRIu64 " (expected 16, 24 or 32)", g->bpp);
    if (g->width == 0 || g->height <= TICKER_ROWS || g->width > 65536 || g->height > 65536)
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

static int dump_mode(const char *out, const struct geom *g, uint64_t seed, uint64_t rounds)
{
    uint8_t *buf = calloc(g->height, g->stride);
    if (!buf)
        fatal("out of memory");
    for (uint64_t r = 0; r < rounds; r++)
        draw_round(buf, g, seed, r);
    FILE *f = fopen(out, "wb");
    if (!f)
        fatal("cannot open %s: %s", out, strerror(errno));
    if (fwrite(buf, 1, g->height * g->stride, f) != g->height * g->stride || fclose(f) != 0)
        fatal("cannot write %s: %s", out, strerror(errno));
    free(buf);
    return 0;
}

/* Map the framebuffer device, or (tests) a plain file laid out as *file_geom. Fills *g and *smem. */
static uint8_t *map_fb(const char *path, const struct geom *file_geom, struct geom *g, uint64_t *smem)
{
    int fd = open(path, O_RDWR);
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
    void *fb = mmap(NULL, (size_t)*smem, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (fb == MAP_FAILED)
        fatal("mmap %s (%" PRIu64 " bytes): %s", path, *smem, strerror(errno));
    close(fd); /* the mapping keeps the device open */
    return fb;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One input line, without its terminator. */
static void handle_line(char *line, uint8_t *fb, const struct geom *g, uint32_t tick)
{
    size_t len = strlen(line);
    const char *s = line;
    uint64_t round, seed;
    while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
        line[--len] = '\0';
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == '\0')
        return;
    if (strcmp(s, "QUIT") == 0) {
        printf("XFB BYE\n");
        fflush(stdout);
        exit(0);
    }
    if (strncmp(s, "GO", 2) == 0 && (s[2] == ' ' || s[2] == '\t')) {
        const char *p = s + 2;
        if (parse_u64(&p, &round) && round <= UINT32_MAX && (*p == ' ' || *p == '\t') && parse_u64(&p, &seed) &&
            *p == '\0') {
            draw_round(fb, g, seed, round);
            printf("XFB DONE %" PRIu64 " tick=%" PRIu32 "\n", round, tick);
            fflush(stdout);
            return;
        }
    }
    printf("XFB ERROR unknown command: %s\n", s);
    fflush(stdout);
}

static int guest_mode(const char *path, const struct geom *file_geom, uint64_t tick_ms)
{
    struct geom g;
    uint64_t smem;
    uint8_t *fb = map_fb(path, file_geom, &g, &smem);
    char line[256], chunk[256];
    size_t len = 0;
    int overlong = 0;

    printf("XFB READY width=%" PRIu64 " height=%" PRIu64 " bpp=%" PRIu64 " stride=%" PRIu64
           " red=%u/%u green=%u/%u blue=%u/%u smem=%" PRIu64 "\n",
           g.width, g.height, g.bpp, g.stride, g.red.offset, g.red.length, g.green.offset, g.green.length,
           g.blue.offset, g.blue.length, smem);
    fflush(stdout);

    uint32_t tick = 1;
    draw_ticker(fb, &g, tick);
    uint64_t deadline = now_ms() + tick_ms;
    for (;;) {
        uint64_t now = now_ms();
        if (now >= deadline) {
            draw_ticker(fb, &g, ++tick);
            deadline += tick_ms;
            if (deadline <= now) /* fell behind (e.g. the guest was paused): resume, do not burst */
                deadline = now + tick_ms;
            continue;
        }
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        int ready = poll(&pfd, 1, (int)(deadline - now));
        if (ready < 0 && errno != EINTR)
            fatal("poll stdin: %s", strerror(errno));
        if (ready <= 0)
            continue;
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fatal("read stdin: %s", strerror(errno));
        }
        if (n == 0)
            exit(0); /* EOF: the harness is gone or done */
        for (ssize_t i = 0; i < n; i++) {
            char ch = chunk[i];
            if (ch == '\n' || ch == '\r') {
                line[len] = '\0';
                if (overlong) { /* report a shortened copy rather than acting on half a command */
                    printf("XFB ERROR unknown command: %s...\n", line);
                    fflush(stdout);
                } else {
                    handle_line(line, fb, &g, tick);
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

static void usage(void)
{
    fatal("usage: xfb-writer [--fb PATH] [--tick-ms MS] | --dump OUT --geometry W,H,BPP,STRIDE,RO/RL,GO/GL,BO/BL "
          "--seed S --rounds N");
}

int main(int argc, char **argv)
{
    const char *fb_path = "/dev/fb0", *dump = NULL, *geometry = NULL;
    uint64_t tick_ms = 10, seed = 0, rounds = 0;
    int have_seed = 0, have_rounds = 0;

    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *val = argv[++i];
        if (strcmp(opt, "--fb") == 0)
            fb_path = val;
        else if (strcmp(opt, "--tick-ms") == 0)
            tick_ms = parse_arg_u64(opt, val, 60000);
        else if (strcmp(opt, "--dump") == 0)
            dump = val;
        else if (strcmp(opt, "--geometry") == 0)
            geometry = val;
        else if (strcmp(opt, "--seed") == 0)
            seed = parse_arg_u64(opt, val, UINT64_MAX), have_seed = 1;
        else if (strcmp(opt, "--rounds") == 0)
            rounds = parse_arg_u64(opt, val, UINT32_MAX), have_rounds = 1;
        else
            usage();
    }
    if (tick_ms == 0)
        fatal("--tick-ms must be at least 1");
    if (dump) {
        if (!geometry || !have_seed || !have_rounds)
            usage();
        struct geom g = parse_geom(geometry);
        return dump_mode(dump, &g, seed, rounds);
    }
    if (geometry) {
        struct geom g = parse_geom(geometry);
        return guest_mode(fb_path, &g, tick_ms);
    }
    return guest_mode(fb_path, NULL, tick_ms);
}
