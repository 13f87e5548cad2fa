/* Line index of a block of JSON lines, shared by _canonscan (index) and _hsmatch (scan_lines).
   Included once per extension: everything here is static. Needs Python.h and stdint.h first. */
#ifndef FLOWTRAIL_LINEINDEX_H
#define FLOWTRAIL_LINEINDEX_H

#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Where the lines of a block are and what they look like, in one pass over its bytes.
 *
 * starts/ends: int64 offsets of each line without its terminator ('\n', and a '\r' before it or
 * ending the data); flags per line: 1 plain (2 bytes or more, '{' first, '}' last, at most
 * max_line bytes, no other byte below 0x20 or above 0x7f, no space between two JSON tokens),
 * 2 plain and starting with prefix. Control, non-ASCII and space bytes are found 16 or 64 at a
 * time: as signed bytes they are all below 0x21.
 *
 * Plain lines are what prefilters may skip: their patterns are written for the compact spelling
 * Hubble prints, and a line spelled with spaces (`"a": 1`, as Go's protojson and other writers may
 * print it) would hide from them. A space is between tokens when the bytes around its run allow
 * it by JSON's grammar (see token_space); inside strings only rare text does (an escaped quote
 * before a space, "{ "): such a line is decoded for nothing, never skipped wrongly. Compact lines
 * have a few spaces, all inside strings (Summary: "TCP Flags: ACK, PSH"). */
typedef struct {
    int64_t *starts, *ends;
    uint8_t *flags;
    Py_ssize_t n, cap;
} lines_t;

static int add_line(lines_t *L, const uint8_t *buf, Py_ssize_t size, int64_t a, int64_t b, int odd,
                    Py_ssize_t max_line, const uint8_t *prefix, Py_ssize_t plen) {
    if (L->n == L->cap) {
        Py_ssize_t cap = L->cap ? L->cap * 2 : 1024;
        int64_t *s = (int64_t *)realloc(L->starts, (size_t)cap * sizeof(int64_t));
        if (!s) return 0;
        L->starts = s;
        int64_t *e = (int64_t *)realloc(L->ends, (size_t)cap * sizeof(int64_t));
        if (!e) return 0;
        L->ends = e;
        uint8_t *f = (uint8_t *)realloc(L->flags, (size_t)cap);
        if (!f) return 0;
        L->flags = f;
        L->cap = cap;
    }
    if (b > a && buf[b - 1] == '\r') b--; /* CRLF */
    int64_t len = b - a;
    uint8_t flag = 0;
    if (!odd && len >= 2 && len <= max_line && buf[a] == '{' && buf[b - 1] == '}') {
        flag = 1;
        if (len >= plen + 2 && memcmp(buf + a, prefix, (size_t)plen) == 0) flag |= 2;
    }
    L->starts[L->n] = a;
    L->ends[L->n] = b;
    L->flags[L->n] = flag;
    L->n++;
    (void)size;
    return 1;
}

static inline int value_end(uint8_t c) { /* the last byte of a number, true, false, null or string */
    return (c >= '0' && c <= '9') || c == 'e' || c == 'l' || c == '"';
}

/* Whether the run of spaces buf[p, q) of the line starting at a (r: the byte after the run, '\n'
   at the end of the data) can sit between two JSON tokens, by the bytes around it. */
static int token_space(const uint8_t *buf, int64_t a, int64_t p, uint8_t r) {
    if (p == a || r == '\n' || r == '\r') return 1; /* at the line's start or end: not plain anyway */
    uint8_t l = buf[p - 1];
    if (l == '{' || l == '[') return 1;
    if (l == ':') return p - 1 > a && buf[p - 2] == '"';  /* after a key's colon */
    if (l == ',') /* after a value's comma, before a value or key */
        return p - 1 > a && (value_end(buf[p - 2]) || buf[p - 2] == '}' || buf[p - 2] == ']') &&
               (r == '"' || r == '{' || r == '[' || (r >= '0' && r <= '9') || r == '-' || r == 't' ||
                r == 'f' || r == 'n');
    if (value_end(l) || l == '}' || l == ']') return r == ':' || r == ',' || r == '}' || r == ']';
    return 0;
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
/* The position of the first byte below 0x21 or above 0x7f at or after p (n when none, or the
   last < 64 bytes unscanned: the caller's loops finish those). Lines are ~1.7 KB of plain ASCII:
   two 32-byte compares per step instead of one 16-byte one (11 → ~6 ms per 64 MB here). */
__attribute__((target("avx2"))) static Py_ssize_t skip_plain_avx2(const uint8_t *buf, Py_ssize_t p, Py_ssize_t n) {
    const __m256i lim = _mm256_set1_epi8(0x21);
    while (n - p >= 64) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(buf + p));
        __m256i b = _mm256_loadu_si256((const __m256i *)(buf + p + 32));
        /* signed compare: bytes >= 0x80 are negative, so below 0x21 too */
        __m256i m = _mm256_or_si256(_mm256_cmpgt_epi8(lim, a), _mm256_cmpgt_epi8(lim, b));
        if (!_mm256_testz_si256(m, m)) {
            unsigned lo = (unsigned)_mm256_movemask_epi8(_mm256_cmpgt_epi8(lim, a));
            if (lo) return p + __builtin_ctz(lo);
            unsigned hi = (unsigned)_mm256_movemask_epi8(_mm256_cmpgt_epi8(lim, b));
            return p + 32 + __builtin_ctz(hi);
        }
        p += 64;
    }
    return p;
}
static int use_avx2 = -1;
#endif


/* Index the lines of buf[from, to) into L (offsets from buf). `to` is n (the block's end) or just
   after a newline, so that a range never splits a line; 0 when out of memory. */
static int index_range(lines_t *L, const uint8_t *buf, Py_ssize_t from, Py_ssize_t to, Py_ssize_t n,
                       Py_ssize_t max_line, const uint8_t *prefix, Py_ssize_t plen) {
    Py_ssize_t p = from;
    int64_t start = from;
    int odd = 0;
#ifdef HAVE_AVX2_PATH
    if (use_avx2 < 0) use_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    const int avx2 = use_avx2;
#endif
    while (p < to) {
        /* skip to the next special byte */
#ifdef HAVE_AVX2_PATH
        if (avx2) p = skip_plain_avx2(buf, p, to);
#endif
#ifdef __SSE2__
        const __m128i lim = _mm_set1_epi8(0x21);
        while (to - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(buf + p));
            int m = _mm_movemask_epi8(_mm_cmplt_epi8(v, lim));
            if (m) {
                p += __builtin_ctz((unsigned)m);
                break;
            }
            p += 16;
        }
#endif
        while (p < to && (int8_t)buf[p] > 0x20) p++;
        if (p >= to) break;
        uint8_t c = buf[p];
        if (c == ' ') {
            Py_ssize_t q = p + 1;
            while (q < to && buf[q] == ' ') q++;
            if (!odd && token_space(buf, start, p, q < to ? buf[q] : (uint8_t)'\n')) odd = 1;
            p = q;
            continue;
        }
        if (c == '\n') {
            if (!add_line(L, buf, n, start, p, odd, max_line, prefix, plen)) return 0;
            start = p + 1;
            odd = 0;
        } else if (!(c == '\r' && (p + 1 == n || buf[p + 1] == '\n'))) {
            odd = 1; /* a CR ending a line is its terminator; any other special byte is odd */
        }
        p++;
    }
    if (start < to && !add_line(L, buf, n, start, to, odd, max_line, prefix, plen)) return 0;
    return 1;
}

/* The end of the range that starts at `from` and holds about `size` bytes: just after the first
   newline at or after from + size - 1, or n. */
static inline Py_ssize_t range_end(const uint8_t *buf, Py_ssize_t from, Py_ssize_t size, Py_ssize_t n) {
    if (n - from <= size) return n;
    const uint8_t *nl = memchr(buf + from + size - 1, '\n', (size_t)(n - (from + size - 1)));
    return nl ? (Py_ssize_t)(nl - buf) + 1 : n;
}

#endif
