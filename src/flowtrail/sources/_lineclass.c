/*
 * Line classes for the policy replay: flow lines that differ only in fields the replay never
 * reads are one class, decoded once and counted with a weight.
 *
 * A day of Hubble flows is mostly the same connections again and again: what changes from one
 * flow of a connection to the next is its time, uuid, source port, TCP flags, Summary text and
 * L7 latency. The replay (flowtrail.policy.replay) judges a flow on everything else, so two lines
 * whose bytes are equal once those values are cut out get the same verdict, and the audit only
 * needs, per class, how many flows it holds, their first and last time and the first uuids.
 *
 * Exactness, not probability: lines are put in one class only when their bytes, with the masked
 * members removed, are equal (compared with memcmp after the hash has found the candidate). A
 * masked value is checked to be of the form the decoder accepts for it (a time exactly as
 * protojson prints it, a port of digits, flags of true/false, ...), so a member of a class can
 * never be a line the decoder would have rejected while its representative was accepted. Every
 * doubt (an escape where a value is read, a time in another spelling, invalid JSON) leaves the
 * line out of any class: the caller decodes it as before.
 *
 * toFQDNs rules see the names learned from DNS answers *before* a flow. A class therefore also
 * keys on how many answer lines so far named its destination address: an answer for that
 * address starts new classes. Answer lines themselves are never classed.
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MAX_DEPTH 64
#define EXAMPLES 3

/* ---- JSON walking -------------------------------------------------------------------------- */

typedef const unsigned char *cp;

static inline cp ws(cp p, cp e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    return p;
}

/* p at the opening quote; the byte after the closing quote, or NULL. A backslash sets *esc. */
/* what a walk noticed on the way: an escape in a value or in a key, a key "ips" (DNS answers) */
typedef struct {
    int esc, key_esc, ips;
} scan_t;

static inline cp skip_key(cp p, cp e, scan_t *S);

static inline cp skip_string(cp p, cp e, int *esc) {
    p++;
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
    while (e - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)));
        if (m == 0) {
            p += 16;
            continue;
        }
        p += __builtin_ctz(m);
        if (*p == '"') return p + 1;
        *esc = 1;
        if (e - p < 2) return NULL;
        p += 2;
    }
#endif
    while (p < e) {
        if (*p == '"') return p + 1;
        if (*p == '\\') {
            *esc = 1;
            if (e - p < 2) return NULL;
            p += 2;
            continue;
        }
        p++;
    }
    return NULL;
}

static cp skip_number(cp p, cp e) {
    if (p < e && *p == '-') p++;
    cp d = p;
    while (p < e && *p >= '0' && *p <= '9') p++;
    if (p == d) return NULL;
    if (p < e && *p == '.') {
        d = ++p;
        while (p < e && *p >= '0' && *p <= '9') p++;
        if (p == d) return NULL;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        d = p;
        while (p < e && *p >= '0' && *p <= '9') p++;
        if (p == d) return NULL;
    }
    return p;
}

static cp skip_value(cp p, cp e, int depth, scan_t *S) {
    if (depth > MAX_DEPTH) return NULL;
    p = ws(p, e);
    if (p >= e) return NULL;
    switch (*p) {
    case '"':
        return skip_string(p, e, &S->esc);
    case '{':
        p = ws(p + 1, e);
        if (p < e && *p == '}') return p + 1;
        for (;;) {
            p = ws(p, e);
            if (p >= e || *p != '"') return NULL;
            if ((p = skip_key(p, e, S)) == NULL) return NULL;
            p = ws(p, e);
            if (p >= e || *p != ':') return NULL;
            if ((p = skip_value(p + 1, e, depth + 1, S)) == NULL) return NULL;
            p = ws(p, e);
            if (p >= e) return NULL;
            if (*p == ',') { p++; continue; }
            return *p == '}' ? p + 1 : NULL;
        }
    case '[':
        p = ws(p + 1, e);
        if (p < e && *p == ']') return p + 1;
        for (;;) {
            if ((p = skip_value(p, e, depth + 1, S)) == NULL) return NULL;
            p = ws(p, e);
            if (p >= e) return NULL;
            if (*p == ',') { p++; continue; }
            return *p == ']' ? p + 1 : NULL;
        }
    case 't':
        return (e - p >= 4 && memcmp(p, "true", 4) == 0) ? p + 4 : NULL;
    case 'f':
        return (e - p >= 5 && memcmp(p, "false", 5) == 0) ? p + 5 : NULL;
    case 'n':
        return (e - p >= 4 && memcmp(p, "null", 4) == 0) ? p + 4 : NULL;
    default:
        return skip_number(p, e);
    }
}

static inline cp skip_key(cp p, cp e, scan_t *S) {
    int esc = 0;
    cp end = skip_string(p, e, &esc);
    if (esc) S->key_esc = 1;
    if (end == p + 5 && memcmp(p + 1, "ips", 3) == 0) S->ips = 1;
    return end;
}

/* ---- masked values ------------------------------------------------------------------------- */

static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int digits(cp p, int n, int64_t *out) {
    int64_t v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

/* A string value "YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z" (p at its opening quote) as ns since the epoch;
 * the byte after the closing quote, or NULL for anything else (left to the decoder). */
static cp parse_time(cp p, cp e, int64_t *ns) {
    if (e - p < 22 || *p != '"') return NULL;
    cp s = p + 1;
    int64_t y, mo, d, h, mi, sec;
    if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' || !digits(s + 8, 2, &d) ||
        s[10] != 'T' || !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' ||
        !digits(s + 17, 2, &sec))
        return NULL;
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap) || h > 23 || mi > 59 ||
        sec > 59)
        return NULL;
    cp q = s + 19;
    int64_t frac = 0;
    if (q < e && *q == '.') {
        q++;
        int n = 0;
        while (q < e && *q >= '0' && *q <= '9' && n < 10) { frac = frac * 10 + (*q - '0'); q++; n++; }
        if (n == 0 || n > 9) return NULL;
        for (; n < 9; n++) frac *= 10;
    }
    if (e - q < 2 || q[0] != 'Z' || q[1] != '"') return NULL;
    int64_t days = days_from_civil(y, mo, d);
    /* beyond int64 ns (years before 1678 or after 2261): the decoder decides */
    if (days < -106751 || days > 106750) return NULL;
    *ns = ((days * 86400 + h * 3600 + mi * 60 + sec) * 1000000000LL) + frac;
    return q + 2;
}

/* A masked string value (p at its opening quote) that every JSON reader accepts: escapes of
 * JSON's set only, no lone surrogate, no control or non-ASCII byte. The byte after it, or NULL. */
static cp strict_string(cp p, cp e) {
    if (p >= e || *p != '"') return NULL;
    for (p++; p < e; p++) {
        unsigned char c = *p;
        if (c == '"') return p + 1;
        if (c < 0x20 || c >= 0x80) return NULL;
        if (c != '\\') continue;
        if (++p >= e) return NULL;
        switch (*p) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            break;
        case 'u': {
            if (e - p < 5) return NULL;
            unsigned v = 0;
            for (int i = 1; i <= 4; i++) {
                unsigned char h = p[i];
                v <<= 4;
                if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
                else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
                else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
                else return NULL;
            }
            if (v >= 0xD800 && v <= 0xDFFF) return NULL; /* pairs too: rare, left to the decoder */
            p += 4;
            break;
        }
        default:
            return NULL;
        }
    }
    return NULL;
}

/* a port as the decoder reads it: up to 10 digits, at most 2^32-1 */
static cp parse_port(cp p, cp e) {
    cp s = p;
    int64_t v = 0;
    while (p < e && *p >= '0' && *p <= '9' && p - s < 11) { v = v * 10 + (*p - '0'); p++; }
    if (p == s || p - s > 10 || v > 4294967295LL) return NULL;
    if (p - s > 1 && *s == '0') return NULL;
    return p;
}

/* TCP flags: {"SYN":true,...}, every value true or false */
static cp parse_flags(cp p, cp e) {
    if (p >= e || *p != '{') return NULL;
    p = ws(p + 1, e);
    if (p < e && *p == '}') return p + 1;
    for (;;) {
        p = ws(p, e);
        if (p >= e || *p != '"') return NULL;
        if ((p = strict_string(p, e)) == NULL) return NULL;
        p = ws(p, e);
        if (p >= e || *p != ':') return NULL;
        p = ws(p + 1, e);
        if (e - p >= 4 && memcmp(p, "true", 4) == 0) p += 4;
        else if (e - p >= 5 && memcmp(p, "false", 5) == 0) p += 5;
        else return NULL;
        p = ws(p, e);
        if (p >= e) return NULL;
        if (*p == ',') { p++; continue; }
        return *p == '}' ? p + 1 : NULL;
    }
}

/* latency_ns: a uint64 as protojson prints it (quoted digits), or bare digits */
static cp parse_u64(cp p, cp e) {
    int quoted = p < e && *p == '"';
    if (quoted) p++;
    cp s = p;
    while (p < e && *p >= '0' && *p <= '9') p++;
    if (p == s || p - s > 19 || (p - s > 1 && *s == '0')) return NULL;
    if (quoted) {
        if (p >= e || *p != '"') return NULL;
        p++;
    }
    return p;
}

/* ---- one line ------------------------------------------------------------------------------ */

typedef struct {
    cp line;         /* where unmasked bytes are copied from */
    cp seg;          /* start of the bytes not yet copied */
    unsigned char *buf;
    size_t len, cap;
    int64_t time;
    int has_time;
    cp uuid;
    Py_ssize_t uuid_len;
    cp dst;          /* IP.destination */
    Py_ssize_t dst_len;
    int flow_seen;
    scan_t S;
} line_t;

static int put(line_t *L, const void *src, size_t n) {
    if (L->len + n > L->cap) {
        size_t cap = L->cap ? L->cap : 4096;
        while (cap < L->len + n) cap *= 2;
        unsigned char *b = realloc(L->buf, cap);
        if (b == NULL) return 0;
        L->buf = b;
        L->cap = cap;
    }
    memcpy(L->buf + L->len, src, n);
    L->len += n;
    return 1;
}

/* Leave out [from, to) of the line: copy what precedes it and mark the cut with 0xFF (a byte no
 * valid line holds, so two remainders are equal only with their cuts at the same places) and the
 * kind of member cut. */
static int cut(line_t *L, cp from, cp to, char mark) {
    unsigned char m[2] = {0xFF, (unsigned char)mark};
    if (!put(L, L->seg, (size_t)(from - L->seg)) || !put(L, m, 2)) return 0;
    L->seg = to;
    return 1;
}

typedef cp (*member_fn)(line_t *L, cp key, size_t klen, cp member, cp value, cp e, int depth);

/* Walk an object (p at '{'): fn handles each member and returns the end of its value. */
static cp walk_object(line_t *L, cp p, cp e, int depth, member_fn fn) {
    if (p >= e || *p != '{' || depth > MAX_DEPTH) return NULL;
    p = ws(p + 1, e);
    if (p < e && *p == '}') return p + 1;
    for (;;) {
        p = ws(p, e);
        if (p >= e || *p != '"') return NULL;
        cp member = p, key = p + 1;
        if ((p = skip_key(p, e, &L->S)) == NULL) return NULL;
        size_t klen = (size_t)(p - 1 - key);
        p = ws(p, e);
        if (p >= e || *p != ':') return NULL;
        p = ws(p + 1, e);
        if ((p = fn(L, key, klen, member, p, e, depth + 1)) == NULL) return NULL;
        p = ws(p, e);
        if (p >= e) return NULL;
        if (*p == ',') { p++; continue; }
        return *p == '}' ? p + 1 : NULL;
    }
}

#define KEY(s) (klen == sizeof(s) - 1 && memcmp(key, s, sizeof(s) - 1) == 0)

static cp l4_inner(line_t *L, cp key, size_t klen, cp member, cp v, cp e, int depth) {
    if (KEY("source_port")) {
        cp end = parse_port(v, e);
        return (end && cut(L, member, end, 'p')) ? end : NULL;
    }
    if (KEY("flags")) {
        cp end = parse_flags(v, e);
        return (end && cut(L, member, end, 'f')) ? end : NULL;
    }
    return skip_value(v, e, depth, &L->S);
}

static cp l4_member(line_t *L, cp key, size_t klen, cp member, cp v, cp e, int depth) {
    if (v < e && *v == '{') return walk_object(L, v, e, depth, l4_inner);
    return skip_value(v, e, depth, &L->S);
}

static cp l7_member(line_t *L, cp key, size_t klen, cp member, cp v, cp e, int depth) {
    if (KEY("latency_ns")) {
        cp end = parse_u64(v, e);
        return (end && cut(L, member, end, 'l')) ? end : NULL;
    }
    return skip_value(v, e, depth, &L->S);
}

static cp ip_member(line_t *L, cp key, size_t klen, cp member, cp v, cp e, int depth) {
    if (KEY("destination") && v < e && *v == '"') {
        int esc = 0;
        cp end = skip_string(v, e, &esc);
        if (end == NULL || esc) return NULL;
        L->dst = v + 1;
        L->dst_len = end - v - 2;
        return end;
    }
    return skip_value(v, e, depth, &L->S);
}

static cp flow_member(line_t *L, cp key, size_t klen, cp member, cp v, cp e, int depth) {
    cp end;
    switch (klen) {
    case 4:
        if (KEY("time")) {
            if (L->has_time || (end = parse_time(v, e, &L->time)) == NULL) return NULL;
            L->has_time = 1;
            return cut(L, member, end, 't') ? end : NULL;
        }
        if (KEY("uuid")) {
            if (L->uuid != NULL || (end = strict_string(v, e)) == NULL || memchr(v, '\\', (size_t)(end - v)))
                return NULL;
            L->uuid = v + 1;
            L->uuid_len = end - v - 2;
            return cut(L, member, end, 'u') ? end : NULL;
        }
        break;
    case 7:
        if (KEY("Summary")) {
            if ((end = strict_string(v, e)) == NULL) return NULL;
            return cut(L, member, end, 's') ? end : NULL;
        }
        break;
    case 2:
        if (KEY("l4") && v < e && *v == '{') return walk_object(L, v, e, depth, l4_member);
        if (KEY("l7") && v < e && *v == '{') return walk_object(L, v, e, depth, l7_member);
        if (KEY("IP") && v < e && *v == '{') return walk_object(L, v, e, depth, ip_member);
        break;
    }
    return skip_value(v, e, depth, &L->S);
}

static cp top_member(line_t *L, cp key, size_t klen, cp member, cp v, cp e, int depth) {
    if (KEY("flow")) {
        if (L->flow_seen || v >= e || *v != '{') return NULL;
        L->flow_seen = 1;
        return walk_object(L, v, e, depth, flow_member);
    }
    if (KEY("time")) {
        int64_t ignored;
        cp end = parse_time(v, e, &ignored);
        return (end && cut(L, member, end, 'T')) ? end : NULL;
    }
    return skip_value(v, e, depth, &L->S);
}

/* 0: the line is left out of classes; 1: L holds its masked bytes, time, uuid and destination */
static int mask_line(line_t *L, cp p, cp e) {
    L->line = L->seg = p;
    L->len = 0;
    L->has_time = 0;
    L->uuid = L->dst = NULL;
    L->uuid_len = L->dst_len = 0;
    L->flow_seen = 0;
    L->S.esc = L->S.key_esc = L->S.ips = 0;
    cp end = walk_object(L, ws(p, e), e, 0, top_member);
    if (end == NULL || ws(end, e) != e || !L->flow_seen || !L->has_time) return 0;
    return put(L, L->seg, (size_t)(e - L->seg));
}

/* ---- hashing ------------------------------------------------------------------------------- */

static inline uint64_t mix(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_bytes(const unsigned char *p, size_t n, uint64_t seed) {
    uint64_t a = seed ^ (n * 0x9E3779B97F4A7C15ULL), b = 0x2545F4914F6CDD1DULL;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        uint64_t x, y;
        memcpy(&x, p + i, 8);
        memcpy(&y, p + i + 8, 8);
        a = (a ^ x) * 0x9E3779B97F4A7C15ULL;
        b = (b ^ y) * 0xC2B2AE3D27D4EB4FULL;
        a = (a << 29) | (a >> 35);
        b = (b << 31) | (b >> 33);
    }
    uint64_t t[2] = {0, 0};
    memcpy(t, p + i, n - i);
    a = (a ^ t[0]) * 0x9E3779B97F4A7C15ULL;
    b = (b ^ t[1]) * 0xC2B2AE3D27D4EB4FULL;
    return mix(a ^ mix(b));
}

/* ---- the address epochs (DNS answers) ------------------------------------------------------ */

typedef struct {
    uint64_t *hash;
    int64_t *off;   /* into arena */
    int32_t *len;
    int64_t *count;
    size_t cap, n;
    unsigned char *arena;
    size_t alen, acap;
} strmap_t;

static int64_t *strmap_slot(strmap_t *m, cp s, Py_ssize_t n, int insert) {
    if (insert && (m->n + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 256;
        uint64_t *h = calloc(cap, sizeof *h);
        int64_t *o = calloc(cap, sizeof *o), *c = calloc(cap, sizeof *c);
        int32_t *l = calloc(cap, sizeof *l);
        if (!h || !o || !c || !l) { free(h); free(o); free(c); free(l); return NULL; }
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->len[i]) continue;
            size_t j = m->hash[i] & (cap - 1);
            while (l[j]) j = (j + 1) & (cap - 1);
            h[j] = m->hash[i]; o[j] = m->off[i]; l[j] = m->len[i]; c[j] = m->count[i];
        }
        free(m->hash); free(m->off); free(m->len); free(m->count);
        m->hash = h; m->off = o; m->len = l; m->count = c; m->cap = cap;
    }
    if (m->cap == 0) return NULL;
    uint64_t hv = hash_bytes(s, (size_t)n, 7);
    size_t j = hv & (m->cap - 1);
    /* lengths are stored +1 so that an empty string is a key too */
    while (m->len[j]) {
        if (m->hash[j] == hv && m->len[j] == n + 1 && memcmp(m->arena + m->off[j], s, (size_t)n) == 0)
            return &m->count[j];
        j = (j + 1) & (m->cap - 1);
    }
    if (!insert) return NULL;
    if (m->alen + (size_t)n > m->acap) {
        size_t cap = m->acap ? m->acap : 4096;
        while (cap < m->alen + (size_t)n) cap *= 2;
        unsigned char *a = realloc(m->arena, cap);
        if (a == NULL) return NULL;
        m->arena = a;
        m->acap = cap;
    }
    memcpy(m->arena + m->alen, s, (size_t)n);
    m->hash[j] = hv; m->off[j] = (int64_t)m->alen; m->len[j] = (int32_t)n + 1; m->count[j] = 0;
    m->alen += (size_t)n;
    m->n++;
    return &m->count[j];
}

static void strmap_free(strmap_t *m) {
    free(m->hash); free(m->off); free(m->len); free(m->count); free(m->arena);
}

/* Count the addresses of every "ips" array of an answer line; 0 when it is not in the expected
 * form (the caller then classes nothing after it). */
static int learn_answers(strmap_t *m, cp p, cp e) {
    static const char key[] = "\"ips\"";
    for (;;) {
        cp at = memmem(p, (size_t)(e - p), key, 5);
        if (at == NULL) return 1;
        p = ws(at + 5, e);
        if (p >= e || *p != ':') return 0;
        p = ws(p + 1, e);
        if (p >= e || *p != '[') return 0;
        p = ws(p + 1, e);
        if (p < e && *p == ']') { p++; continue; }
        for (;;) {
            p = ws(p, e);
            if (p >= e || *p != '"') return 0;
            int esc = 0;
            cp end = skip_string(p, e, &esc);
            if (end == NULL || esc) return 0;
            int64_t *c = strmap_slot(m, p + 1, end - p - 2, 1);
            if (c == NULL) return 0;
            (*c)++;
            p = ws(end, e);
            if (p >= e) return 0;
            if (*p == ',') { p++; continue; }
            if (*p != ']') return 0;
            p++;
            break;
        }
    }
}

/* ---- classify ------------------------------------------------------------------------------ */

typedef struct {
    uint64_t hash;
    int64_t off;    /* masked bytes in the arena */
    int64_t len;
    int64_t rep, count, tmin, tmax;
    int64_t ex_line[EXAMPLES];
    int64_t ex_off[EXAMPLES];
    int64_t ex_len[EXAMPLES];
    int n_ex;
} class_t;

static PyObject *as_bytes(const void *p, size_t n) {
    return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
}

static PyObject *classify(PyObject *self, PyObject *args) {
    Py_buffer data, sb, eb, lb, cb;
    int fqdn;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*p", &data, &sb, &eb, &lb, &cb, &fqdn)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = lb.len / (Py_ssize_t)sizeof(int64_t);
    const int64_t *starts = sb.buf, *ends = eb.buf, *lines = lb.buf;
    const uint8_t *cand = cb.buf;
    Py_ssize_t nlines = sb.len / (Py_ssize_t)sizeof(int64_t);
    int32_t *cls = malloc((size_t)(n ? n : 1) * sizeof *cls);
    size_t cap = 1024;
    while (cap < (size_t)n * 2) cap *= 2;
    int32_t *table = malloc(cap * sizeof *table);
    class_t *classes = NULL;
    size_t ncls = 0, ccap = 0;
    unsigned char *arena = NULL;
    size_t alen = 0, acap = 0;
    line_t L = {0};
    strmap_t epochs = {0};
    int give_up = 0, failed = 0;
    if (cls == NULL || table == NULL || cb.len < n || eb.len != sb.len) {
        if (cls && table) PyErr_SetString(PyExc_ValueError, "classify: mismatched arrays");
        else PyErr_NoMemory();
        goto done;
    }
    memset(table, 0xff, cap * sizeof *table);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        cls[i] = -1;
        int64_t li = lines[i];
        if (li < 0 || li >= nlines || starts[li] < 0 || ends[li] > data.len || starts[li] > ends[li]) {
            give_up = 1;
            continue;
        }
        cp p = (cp)data.buf + starts[li], e = (cp)data.buf + ends[li];
        if (give_up) continue;
        int ok = cand[i] && mask_line(&L, p, e);
        if (fqdn) {
            /* an answer line teaches addresses; a key spelled with an escape could be an unseen
             * "ips": nothing is classed after one */
            int answer, odd;
            if (ok) {
                answer = L.S.ips;
                odd = L.S.key_esc;
            } else {
                odd = memchr(p, '\\', (size_t)(e - p)) != NULL;
                answer = memmem(p, (size_t)(e - p), "\"ips\"", 5) != NULL;
            }
            if (odd) {
                give_up = 1;
                continue;
            }
            if (answer) {
                if (!learn_answers(&epochs, p, e)) give_up = 1;
                continue;
            }
        }
        if (!ok) continue;
        if (fqdn) {
            int64_t epoch = 0;
            if (L.dst != NULL) {
                int64_t *c = strmap_slot(&epochs, L.dst, L.dst_len, 0);
                if (c != NULL) epoch = *c;
            }
            if (!put(&L, "#", 1) || !put(&L, &epoch, sizeof epoch)) { failed = 1; break; }
        }
        uint64_t hv = hash_bytes(L.buf, L.len, 0x51ed270b27c1f4a3ULL);
        size_t j = hv & (cap - 1);
        int32_t c;
        for (;;) {
            c = table[j];
            if (c < 0) break;
            class_t *k = &classes[c];
            if (k->hash == hv && k->len == (int64_t)L.len && memcmp(arena + k->off, L.buf, L.len) == 0) break;
            j = (j + 1) & (cap - 1);
        }
        if (c < 0) {
            if (ncls == ccap) {
                size_t nc = ccap ? ccap * 2 : 256;
                class_t *k = realloc(classes, nc * sizeof *k);
                if (k == NULL) { failed = 1; break; }
                classes = k;
                ccap = nc;
            }
            if (alen + L.len > acap) {
                size_t na = acap ? acap : 1 << 16;
                while (na < alen + L.len) na *= 2;
                unsigned char *a = realloc(arena, na);
                if (a == NULL) { failed = 1; break; }
                arena = a;
                acap = na;
            }
            memcpy(arena + alen, L.buf, L.len);
            c = (int32_t)ncls++;
            class_t *k = &classes[c];
            k->hash = hv; k->off = (int64_t)alen; k->len = (int64_t)L.len;
            k->rep = li; k->count = 0; k->tmin = k->tmax = L.time; k->n_ex = 0;
            alen += L.len;
            table[j] = c;
        }
        class_t *k = &classes[c];
        k->count++;
        if (L.time < k->tmin) k->tmin = L.time;
        if (L.time > k->tmax) k->tmax = L.time;
        if (L.uuid_len > 0 && k->n_ex < EXAMPLES) {
            k->ex_line[k->n_ex] = li;
            k->ex_off[k->n_ex] = L.uuid - (cp)data.buf;
            k->ex_len[k->n_ex] = L.uuid_len;
            k->n_ex++;
        }
        cls[i] = c;
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    {
        /* per class: rep, count, tmin, tmax (int64 each); examples: line (-1: none) and the uuid
         * as Arrow string offsets (int32) into one blob */
        int64_t *cols = malloc((ncls * 4 + ncls * EXAMPLES + 1) * sizeof *cols);
        int32_t *offs = malloc((ncls * EXAMPLES + 1) * sizeof *offs);
        size_t blob_len = 0;
        for (size_t c = 0; c < ncls; c++)
            for (int x = 0; x < classes[c].n_ex; x++) blob_len += (size_t)classes[c].ex_len[x];
        char *blob = malloc(blob_len ? blob_len : 1);
        if (cols == NULL || offs == NULL || blob == NULL || blob_len > INT32_MAX) {
            free(cols); free(offs); free(blob);
            PyErr_NoMemory();
            goto done;
        }
        int64_t *ex_line = cols + ncls * 4;
        size_t at = 0;
        offs[0] = 0;
        for (size_t c = 0; c < ncls; c++) {
            class_t *k = &classes[c];
            cols[c] = k->rep;
            cols[ncls + c] = k->count;
            cols[2 * ncls + c] = k->tmin;
            cols[3 * ncls + c] = k->tmax;
            for (int x = 0; x < EXAMPLES; x++) {
                size_t s = c * EXAMPLES + (size_t)x;
                if (x < k->n_ex) {
                    ex_line[s] = k->ex_line[x];
                    memcpy(blob + at, (cp)data.buf + k->ex_off[x], (size_t)k->ex_len[x]);
                    at += (size_t)k->ex_len[x];
                } else {
                    ex_line[s] = -1;
                }
                offs[s + 1] = (int32_t)at;
            }
        }
        result = Py_BuildValue("(NNNNNNNN)", as_bytes(cls, (size_t)n * sizeof *cls),
                               as_bytes(cols, ncls * sizeof *cols), as_bytes(cols + ncls, ncls * sizeof *cols),
                               as_bytes(cols + 2 * ncls, ncls * sizeof *cols),
                               as_bytes(cols + 3 * ncls, ncls * sizeof *cols),
                               as_bytes(ex_line, ncls * EXAMPLES * sizeof *cols),
                               as_bytes(offs, (ncls * EXAMPLES + 1) * sizeof *offs), as_bytes(blob, at));
        free(cols); free(offs); free(blob);
    }
done:
    free(cls);
    free(table);
    free(classes);
    free(arena);
    free(L.buf);
    strmap_free(&epochs);
    PyBuffer_Release(&data);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&eb);
    PyBuffer_Release(&lb);
    PyBuffer_Release(&cb);
    return result;
}

static PyMethodDef methods[] = {
    {"classify", classify, METH_VARARGS,
     "classify(data, starts, ends, lines, candidate, fqdn) -> (class per line (int32), then per class: "
     "representative line, count, first ns, last ns (int64), example lines (int64, 3 per class, -1: none), "
     "example uuid offsets (int32), example uuid bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lineclass", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__lineclass(void) { return PyModule_Create(&module); }
