/*
 * One pass over a JSON line that decides whether it is a flow event exactly as Hubble prints it.
 *
 * `flowtrail observe -o json` copies such a line to its output instead of re-encoding it, and the
 * decoder parses it column-wise with Arrow; any other line takes the exact path in Python
 * (orjson + flowtrail.model.normalize), which reproduces what protojson accepts and prints. So
 * this scanner only has to be right when it says "canonical": every doubt (an unknown key, a
 * value protojson would omit or spell differently, whitespace, a duplicate key, a lone
 * surrogate, a number out of range, anything not valid JSON) answers "not canonical".
 *
 * It replaces two passes (an RE2 pattern run by Arrow, and Arrow's JSON reader in validation
 * mode), which together cost ~11 µs per 1.7 KB line, by one walk guided by the flow.proto tree.
 *
 * The tree comes from Python (flowtrail.sources.canonscan) as a flat table: an open-addressing
 * hash of (owner, name) -> field, where the owner is a message (its fields) or an enum (its
 * value names). Python computes the same FNV-1a hash when it lays the table out.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum {
    K_STR = 1, K_U32 = 2, K_I32 = 3, K_U64 = 4, K_I64 = 5, K_BOOL = 6, K_BOOLVALUE = 7,
    K_ENUM = 8, K_TS = 9, K_MSG = 10, K_ANY = 11, K_REJECT = 12,
};
#define K_REPEATED 0x100u

/* one slot of the table: 8 uint32 */
typedef struct {
    uint32_t hash;
    uint32_t owner_plus1; /* 0: empty slot */
    uint32_t kind;        /* K_* (| K_REPEATED) */
    uint32_t child;       /* message id for K_MSG, enum id for K_ENUM */
    uint32_t name_off;
    uint32_t name_len;
    uint32_t field_index; /* bit in the message's seen-set (duplicate keys) */
    int32_t node;         /* output node of a projected field (extract), else -1 */
} slot_t;

typedef struct {
    const slot_t *slots;
    uint32_t mask;
    const uint8_t *names;
    uint32_t root;
    /* Lines of one source spell their keys in the same order: after the field in slot i (or, at
     * slot count + message id, as a message's first key) comes most often the field in slot
     * next[i]. A key is first compared with that guess, which skips hashing and probing. */
    int32_t *next;
} schema_t;

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    const schema_t *s;
    int depth;
} scan_t;

#define MAX_DEPTH 48
#define FNV_OFFSET 2166136261u
#define FNV_PRIME 16777619u

static inline uint32_t mix(uint32_t h, uint32_t owner) {
    h ^= owner * 0x9E3779B1u;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 12;
    return h;
}

/* memcmp for the short names of the table, inlined (a call costs more than the compare). */
static inline int same(const uint8_t *a, const uint8_t *b, size_t n) {
    while (n >= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y) return 0;
        a += 8;
        b += 8;
        n -= 8;
    }
    while (n--)
        if (*a++ != *b++) return 0;
    return 1;
}

static const slot_t *lookup(const schema_t *s, uint32_t owner, const uint8_t *name, size_t len, uint32_t fnv) {
    uint32_t h = mix(fnv, owner);
    uint32_t i = h & s->mask;
    for (;;) {
        const slot_t *sl = &s->slots[i];
        if (!sl->owner_plus1)
            return NULL;
        if (sl->hash == h && sl->owner_plus1 == owner + 1 && sl->name_len == len &&
            same(s->names + sl->name_off, name, len))
            return sl;
        i = (i + 1) & s->mask;
    }
}

static int hexval(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A JSON string starting at the opening quote. On success the cursor is past the closing quote,
 * *body and *len describe the raw bytes between the quotes, *fnv their hash and *escaped whether
 * they hold an escape (then the raw bytes are not the value). */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* Non-zero when one of the 8 bytes of w is '"', '\\', below 0x20 or above 0x7f. */
static inline uint64_t special8(uint64_t w) {
    uint64_t q = w ^ (ONES * '"'), b = w ^ (ONES * '\\');
    return (((q - ONES) & ~q) | ((b - ONES) & ~b) | (w - ONES * 0x20) | w) & HIGHS;
}

/* The first byte from p on that is '"', '\\', a control or a non-ASCII byte (or end). */
static inline const uint8_t *skip_plain(const uint8_t *p, const uint8_t *end) {
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), lim = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                                   _mm_cmplt_epi8(v, lim)); /* signed: bytes above 0x7f are below 0x20 */
        int m = _mm_movemask_epi8(hit);
        if (m) return p + __builtin_ctz((unsigned)m);
        p += 16;
    }
#endif
    while (end - p >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        if (special8(w)) break;
        p += 8;
    }
    return p;
}

static int string(scan_t *st, const uint8_t **body, size_t *len, uint32_t *fnv, int *escaped) {
    const uint8_t *p = st->p + 1, *end = st->end;
    uint32_t h = FNV_OFFSET;
    int esc = 0;
    const uint8_t *start = p;
    if (!fnv) p = skip_plain(p, end); /* a value: its bytes are not hashed, plain runs are skipped */
    while (p < end) {
        uint8_t c = *p;
        if (c == '"') {
            *body = start;
            *len = (size_t)(p - start);
            if (fnv) *fnv = h;
            *escaped = esc;
            st->p = p + 1;
            return 1;
        }
        if (c < 0x20 || c >= 0x80)
            return 0; /* control bytes are invalid; non-ASCII lines never come here, be safe */
        if (c == '\\') {
            esc = 1;
            if (p + 1 >= end) return 0;
            uint8_t e = p[1];
            if (e == 'u') {
                if (p + 6 > end) return 0;
                int v = 0;
                for (int k = 2; k < 6; k++) {
                    int x = hexval(p[k]);
                    if (x < 0) return 0;
                    v = v * 16 + x;
                }
                if (v >= 0xD800 && v <= 0xDFFF) return 0; /* surrogates: leave pairing to the exact path */
                p += 6;
                if (!fnv) p = skip_plain(p, end);
                continue;
            }
            if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' && e != 'r' && e != 't')
                return 0;
            h = (h ^ c) * FNV_PRIME;
            h = (h ^ e) * FNV_PRIME;
            p += 2;
            if (!fnv) p = skip_plain(p, end);
            continue;
        }
        h = (h ^ c) * FNV_PRIME;
        p++;
        if (!fnv) p = skip_plain(p, end);
    }
    return 0;
}

/* Digits of a canonical non-zero integer (no sign, no leading zero) within max. */
static int digits_upto(const uint8_t *d, size_t n, const char *max) {
    size_t mlen = __builtin_strlen(max); /* a literal: folded by the compiler once inlined */
    if (n == 0 || d[0] < '1' || d[0] > '9') return 0;
    for (size_t i = 0; i < n; i++)
        if (d[i] < '0' || d[i] > '9') return 0;
    if (n != mlen) return n < mlen;
    return memcmp(d, max, n) <= 0;
}

/* An integer in a JSON number or string body: optional '-', then canonical digits. */
static int canonical_int(const uint8_t *d, size_t n, int is_signed, const char *max_pos, const char *max_neg) {
    if (n && d[0] == '-') {
        if (!is_signed) return 0;
        return digits_upto(d + 1, n - 1, max_neg);
    }
    return digits_upto(d, n, max_pos);
}

static int two(const uint8_t *d, int lo, int hi) {
    if (d[0] < '0' || d[0] > '9' || d[1] < '0' || d[1] > '9') return 0;
    int v = (d[0] - '0') * 10 + (d[1] - '0');
    return v >= lo && v <= hi;
}

/* protojson's Timestamp: UTC, 0, 3, 6 or 9 fractional digits, never a trailing group of 000. */
static int canonical_ts(const uint8_t *d, size_t n) {
    if (n != 20 && n != 24 && n != 27 && n != 30) return 0;
    for (int i = 0; i < 4; i++)
        if (d[i] < '0' || d[i] > '9') return 0;
    if (d[0] == '0' && d[1] == '0' && d[2] == '0' && d[3] == '0') return 0;
    if (d[4] != '-' || d[7] != '-' || d[10] != 'T' || d[13] != ':' || d[16] != ':' || d[n - 1] != 'Z') return 0;
    if (!two(d + 5, 1, 12) || !two(d + 8, 1, 31) || !two(d + 11, 0, 23) || !two(d + 14, 0, 59) ||
        !two(d + 17, 0, 59))
        return 0;
    if (n == 20) return 1;
    if (d[19] != '.') return 0;
    size_t frac = n - 21;
    for (size_t i = 20; i < n - 1; i++)
        if (d[i] < '0' || d[i] > '9') return 0;
    const uint8_t *last = d + 20 + frac - 3;
    return !(last[0] == '0' && last[1] == '0' && last[2] == '0');
}

/* A JSON number's extent (grammar checked); the cursor moves past it. */
static int number(scan_t *st, const uint8_t **body, size_t *len) {
    const uint8_t *p = st->p, *end = st->end, *start = p;
    if (p < end && *p == '-') p++;
    if (p >= end) return 0;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        return 0;
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return 0;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return 0;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    *body = start;
    *len = (size_t)(p - start);
    st->p = p;
    return 1;
}

#define literal(st, word) literal_n(st, word, sizeof(word) - 1)

static int literal_n(scan_t *st, const char *word, size_t n) {
    if ((size_t)(st->end - st->p) < n || !same(st->p, (const uint8_t *)word, n)) return 0;
    st->p += n;
    return 1;
}

/* After a value in an object or list: 1 at a ',' (another value follows), 0 at the closing
 * bracket (consumed), -1 at anything else. */
static inline int after_value(scan_t *st, uint8_t close) {
    if (st->p >= st->end) return -1;
    if (*st->p == ',') {
        st->p++;
        return 1;
    }
    if (*st->p != close) return -1;
    st->p++;
    return 0;
}

static int any_value(scan_t *st);

/* Any valid compact JSON value (google.protobuf.Any and other free-form fields). */
static int any_value(scan_t *st) {
    const uint8_t *b;
    size_t n;
    int esc;
    if (st->p >= st->end) return 0;
    uint8_t c = *st->p;
    if (c == '"') return string(st, &b, &n, NULL, &esc);
    if (c == 't') return literal(st, "true");
    if (c == 'f') return literal(st, "false");
    if (c == 'n') return literal(st, "null");
    if (c == '-' || (c >= '0' && c <= '9')) return number(st, &b, &n);
    if (c != '{' && c != '[') return 0;
    if (++st->depth > MAX_DEPTH) return 0;
    uint8_t close = c == '{' ? '}' : ']';
    st->p++;
    if (st->p < st->end && *st->p == close) {
        st->p++;
        st->depth--;
        return 1;
    }
    for (;;) {
        if (c == '{') {
            if (st->p >= st->end || *st->p != '"' || !string(st, &b, &n, NULL, &esc)) return 0;
            if (st->p >= st->end || *st->p != ':') return 0;
            st->p++;
        }
        if (!any_value(st)) return 0;
        int more = after_value(st, close);
        if (more < 0) return 0;
        if (more) continue;
        st->depth--;
        return 1;
    }
}

/* -- emission of projected values (extract) ---------------------------------------------------
 *
 * A projected field has an output node (slot.node; -1: not projected). Every value found for it
 * is appended to the node's records (rec_t): the instance it belongs to (the row, or the item of
 * the enclosing list) and by node kind: a string's offset and length in the node's bytes (its
 * values decoded, in order);
 * an integer or boolean value; nothing for a message's presence; a list's item count.
 * Items of a list are instances of their own, numbered per list node, in order; a list of
 * scalars keeps its items' values in node + 1. Python turns the records into Arrow arrays. */
typedef struct {
    int64_t a;     /* string offset, integer or boolean value, list item count */
    int32_t inst;  /* row or item */
    uint32_t b;    /* string length */
} rec_t;

typedef struct {
    rec_t *rec;
    Py_ssize_t n, cap;
    int64_t items;     /* a list node: items so far */
    uint8_t *bytes;    /* a string node: its values, decoded, one after the other */
    Py_ssize_t blen, bcap;
    /* what to roll back to when the current line fails: the state before its first write */
    Py_ssize_t line, mark_n, mark_blen;
    int64_t mark_items;
} out_t;

typedef struct {
    out_t *outs;
    Py_ssize_t nodes;
    Py_ssize_t line; /* the line being scanned */
    Py_ssize_t hint; /* first capacity: most projected fields have a value per line */
    int failed;      /* out of memory */
} emit_t;

static inline out_t *touch(emit_t *em, int32_t node) {
    out_t *o = &em->outs[node];
    if (o->line != em->line) {
        o->line = em->line;
        o->mark_n = o->n;
        o->mark_blen = o->blen;
        o->mark_items = o->items;
    }
    return o;
}

static uint8_t *utf8(uint8_t *w, uint32_t cp);

/* The bytes of a JSON string body with its escapes decoded (checked by string()); returns the end. */
static uint8_t *unescape(uint8_t *w, const uint8_t *p, const uint8_t *end) {
    while (p < end) {
        if (*p != '\\') {
            *w++ = *p++;
            continue;
        }
        uint8_t e = p[1];
        p += 2;
        switch (e) {
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
            uint32_t cp = 0;
            for (int k = 0; k < 4; k++) cp = cp * 16 + (uint32_t)hexval(p[k]);
            p += 4;
            w = utf8(w, cp);
            break;
        }
        default: *w++ = e; break; /* " \ / */
        }
    }
    return w;
}

static int emit(emit_t *em, int32_t node, int64_t inst, int64_t a, uint32_t b);

/* A string value: copied (decoded) into the node's bytes while its line is in the cache; the
 * record holds its offset there and its length. */
static int emit_string(emit_t *em, int32_t node, int64_t inst, const uint8_t *p, size_t n, int esc) {
    out_t *o = touch(em, node);
    if (o->blen + (Py_ssize_t)n > o->bcap) {
        Py_ssize_t cap = o->bcap ? o->bcap * 2 : 1 << 16;
        while (cap < o->blen + (Py_ssize_t)n) cap *= 2;
        uint8_t *bytes = (uint8_t *)realloc(o->bytes, (size_t)cap);
        if (!bytes) {
            em->failed = 1;
            return 0;
        }
        o->bytes = bytes;
        o->bcap = cap;
    }
    Py_ssize_t at = o->blen;
    if (esc) {
        o->blen = unescape(o->bytes + at, p, p + n) - o->bytes;
    } else {
        memcpy(o->bytes + at, p, n);
        o->blen = at + (Py_ssize_t)n;
    }
    return emit(em, node, inst, at, (uint32_t)(o->blen - at));
}

static int emit(emit_t *em, int32_t node, int64_t inst, int64_t a, uint32_t b) {
    out_t *o = touch(em, node);
    if (o->n == o->cap) {
        Py_ssize_t cap = o->cap ? o->cap * 2 : em->hint;
        rec_t *rec = (rec_t *)realloc(o->rec, (size_t)cap * sizeof(rec_t));
        if (!rec) {
            em->failed = 1;
            return 0;
        }
        o->rec = rec;
        o->cap = cap;
    }
    rec_t *r = o->rec + o->n;
    r->a = a;
    r->inst = (int32_t)inst;
    r->b = b;
    o->n++;
    return 1;
}

static int64_t parse_int(const uint8_t *d, size_t n) {
    int neg = n && d[0] == '-';
    int64_t v = 0;
    for (size_t i = neg; i < n; i++) v = v * 10 + (d[i] - '0');
    return neg ? -v : v;
}

static int message(scan_t *st, uint32_t msg, emit_t *em, int64_t inst);

/* One value of a known field in canonical form; emitted to ``node`` (when >= 0) for ``inst``. */
static int field_value(scan_t *st, uint32_t kind, uint32_t child, emit_t *em, int32_t node, int64_t inst) {
    const uint8_t *b;
    size_t n;
    uint32_t h;
    int esc;
    if (st->p >= st->end) return 0;
    uint8_t c = *st->p;
    int ok;
    switch (kind) {
    case K_STR:
        ok = c == '"' && string(st, &b, &n, NULL, &esc) && n > 0;
        break;
    case K_U32:
        ok = number(st, &b, &n) && canonical_int(b, n, 0, "4294967295", "");
        if (ok && em && node >= 0) return emit(em, node, inst, parse_int(b, n), 0);
        return ok;
    case K_I32:
        ok = number(st, &b, &n) && canonical_int(b, n, 1, "2147483647", "2147483648");
        if (ok && em && node >= 0) return emit(em, node, inst, parse_int(b, n), 0);
        return ok;
    case K_U64:
        ok = c == '"' && string(st, &b, &n, NULL, &esc) && !esc &&
             canonical_int(b, n, 0, "18446744073709551615", "");
        break;
    case K_I64:
        ok = c == '"' && string(st, &b, &n, NULL, &esc) && !esc &&
             canonical_int(b, n, 1, "9223372036854775807", "9223372036854775808");
        break;
    case K_BOOL:
        /* false is the default: protojson omits it */
        ok = literal(st, "true");
        if (ok && em && node >= 0) return emit(em, node, inst, 1, 0);
        return ok;
    case K_BOOLVALUE:
        if (literal(st, "true")) {
            if (em && node >= 0) return emit(em, node, inst, 1, 0);
            return 1;
        }
        if (literal(st, "false")) {
            if (em && node >= 0) return emit(em, node, inst, 0, 0);
            return 1;
        }
        return 0;
    case K_ENUM:
        /* a known, non-zero value name (protojson omits the zero value) */
        ok = c == '"' && string(st, &b, &n, &h, &esc) && !esc && lookup(st->s, child | 0x80000000u, b, n, h);
        break;
    case K_TS:
        ok = c == '"' && string(st, &b, &n, NULL, &esc) && !esc && canonical_ts(b, n);
        break;
    case K_MSG:
        if (c != '{') return 0;
        if (em && node >= 0 && !emit(em, node, inst, 0, 0)) return 0;
        return message(st, child, em, inst);
    case K_ANY:
        return any_value(st);
    default:
        return 0;
    }
    if (ok && em && node >= 0) return emit_string(em, node, inst, b, n, esc);
    return ok;
}

static int message(scan_t *st, uint32_t msg, emit_t *em, int64_t inst) {
    const uint8_t *b;
    size_t n;
    uint32_t h;
    int esc;
    uint64_t seen = 0;
    if (++st->depth > MAX_DEPTH) return 0;
    st->p++; /* '{' */
    if (st->p < st->end && *st->p == '}') {
        st->p++;
        st->depth--;
        return 1;
    }
    const schema_t *s = st->s;
    int32_t *guess = &s->next[s->mask + 1 + (msg & s->mask)];
    for (;;) {
        const slot_t *f = NULL;
        if (st->p >= st->end || *st->p != '"') return 0;
        if (*guess >= 0) {
            const slot_t *g = &s->slots[*guess];
            const uint8_t *q = st->p + 1;
            size_t len = g->name_len;
            if (g->owner_plus1 == msg + 1 && (size_t)(st->end - q) > len && q[len] == '"' &&
                same(q, s->names + g->name_off, len)) {
                f = g;
                st->p = q + len + 1;
            }
        }
        if (!f) {
            if (!string(st, &b, &n, &h, &esc) || esc) return 0;
            f = lookup(s, msg, b, n, h);
            if (!f) return 0;
            *guess = (int32_t)(f - s->slots);
        }
        guess = &s->next[f - s->slots];
        if (f->kind == K_REJECT) return 0;
        uint64_t bit = (uint64_t)1 << (f->field_index & 63);
        if (seen & bit) return 0; /* a repeated key: protojson rejects it */
        seen |= bit;
        if (st->p >= st->end || *st->p != ':') return 0;
        st->p++;
        int32_t node = em ? (int32_t)f->node : -1;
        if (f->kind & K_REPEATED) {
            uint32_t item = f->kind & ~K_REPEATED;
            /* protojson omits an empty list */
            if (st->p + 1 >= st->end || *st->p != '[' || st->p[1] == ']') return 0;
            st->p++;
            int64_t count = 0;
            for (;;) {
                int64_t item_inst = 0;
                int32_t item_node = -1;
                if (node >= 0) {
                    item_inst = touch(em, node)->items++;
                    /* a message item's fields carry their own nodes; a scalar item goes to node + 1 */
                    item_node = item == K_MSG ? -1 : node + 1;
                }
                if (item == K_MSG) {
                    if (st->p >= st->end || *st->p != '{' ||
                        !message(st, f->child, node >= 0 ? em : NULL, item_inst))
                        return 0;
                } else if (!field_value(st, item, f->child, em, item_node, item_inst)) {
                    return 0;
                }
                count++;
                int more = after_value(st, ']');
                if (more < 0) return 0;
                if (!more) break;
            }
            if (node >= 0 && !emit(em, node, inst, count, 0)) return 0;
        } else if (!field_value(st, f->kind, f->child, node >= 0 ? em : NULL, node, inst)) {
            return 0;
        }
        int more = after_value(st, '}');
        if (more < 0) return 0;
        if (more) continue;
        st->depth--;
        return 1;
    }
}

static int canonical_line(const schema_t *s, const uint8_t *p, const uint8_t *end, emit_t *em, int64_t row) {
    scan_t st = {p, end, s, 0};
    if (p >= end || *p != '{') return 0;
    if (!message(&st, s->root, em, row)) return 0;
    return st.p == end;
}

/* extract(table, names, root, nodes, data, starts, ends, out) -> [(records, bytes)] per node
 *
 * table: bytes of slot_t (a power of two of them); names: the bytes slots point into; root: the
 * envelope message id; nodes: how many output nodes the table's slots name (0: only check);
 * data: the block; starts/ends: int64 offsets of the lines to scan; out: uint8 per line, set to 1
 * where the line is not canonical, 0 where it is. For the canonical lines, numbered in order
 * from 0, the records of every projected value (see emit). A line found not canonical
 * half-way leaves no records: each line's records are rolled back when it fails. */
static PyObject *extract(PyObject *self, PyObject *args) {
    Py_buffer table, names, data, starts, ends, out;
    unsigned int root;
    Py_ssize_t nodes;
    if (!PyArg_ParseTuple(args, "y*y*Iny*y*y*w*", &table, &names, &root, &nodes, &data, &starts, &ends, &out))
        return NULL;
    PyObject *result = NULL;
    emit_t em = {NULL, nodes, 0, 0, 0};
    int32_t *next = NULL;
    Py_ssize_t nslots = table.len / (Py_ssize_t)sizeof(slot_t);
    Py_ssize_t count = starts.len / 8;
    if (nslots == 0 || (nslots & (nslots - 1)) || table.len % (Py_ssize_t)sizeof(slot_t) || nodes < 0) {
        PyErr_SetString(PyExc_ValueError, "table size must be a power of two of slots");
        goto done;
    }
    if (ends.len != starts.len || out.len < count) {
        PyErr_SetString(PyExc_ValueError, "starts, ends and out must describe the same lines");
        goto done;
    }
    const int64_t *st = (const int64_t *)starts.buf, *en = (const int64_t *)ends.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (st[i] < 0 || en[i] < st[i] || en[i] > data.len) {
            PyErr_SetString(PyExc_ValueError, "line offsets outside the data");
            goto done;
        }
    }
    em.outs = (out_t *)calloc((size_t)nodes + 1, sizeof(out_t));
    if (!em.outs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < nodes; k++) em.outs[k].line = -1;
    em.hint = count + 64;
    next = (int32_t *)malloc((size_t)nslots * 2 * sizeof(int32_t));
    if (!next) {
        PyErr_NoMemory();
        goto done;
    }
    memset(next, 0xFF, (size_t)nslots * 2 * sizeof(int32_t));
    schema_t s = {(const slot_t *)table.buf, (uint32_t)(nslots - 1), (const uint8_t *)names.buf, root, next};
    const uint8_t *buf = (const uint8_t *)data.buf;
    uint8_t *o = (uint8_t *)out.buf;
    int64_t row = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count && !em.failed; i++) {
        em.line = i;
        int ok = canonical_line(&s, buf + st[i], buf + en[i], &em, row);
        o[i] = (uint8_t)!ok;
        if (ok) {
            row++;
        } else {
            for (Py_ssize_t k = 0; k < nodes; k++) {
                out_t *t = &em.outs[k];
                if (t->line == i) {
                    t->n = t->mark_n;
                    t->blen = t->mark_blen;
                    t->items = t->mark_items;
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (em.failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyList_New(nodes);
    if (!result) goto done;
    for (Py_ssize_t k = 0; k < nodes; k++) {
        out_t *t = &em.outs[k];
        PyObject *b = Py_BuildValue("(y#y#)", t->n ? (const char *)t->rec : "", t->n * (Py_ssize_t)sizeof(rec_t),
                                    t->blen ? (const char *)t->bytes : "", t->blen);
        if (!b) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, k, b);
    }
done:
    if (em.outs) {
        for (Py_ssize_t k = 0; k < nodes; k++) {
            free(em.outs[k].rec);
            free(em.outs[k].bytes);
        }
        free(em.outs);
    }
    free(next);
    PyBuffer_Release(&table);
    PyBuffer_Release(&names);
    PyBuffer_Release(&data);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&out);
    return result;
}

static uint8_t *utf8(uint8_t *w, uint32_t cp) {
    if (cp < 0x80) {
        *w++ = (uint8_t)cp;
    } else if (cp < 0x800) {
        *w++ = (uint8_t)(0xC0 | (cp >> 6));
        *w++ = (uint8_t)(0x80 | (cp & 0x3F));
    } else {
        *w++ = (uint8_t)(0xE0 | (cp >> 12));
        *w++ = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        *w++ = (uint8_t)(0x80 | (cp & 0x3F));
    }
    return w;
}

#include "_lineindex.h"

/* index(data, max_line, prefix) -> (starts, ends, flags): see _lineindex.h. */
static PyObject *index_lines(PyObject *self, PyObject *args) {
    Py_buffer data, pre;
    Py_ssize_t max_line;
    if (!PyArg_ParseTuple(args, "y*ny*", &data, &max_line, &pre)) return NULL;
    PyObject *result = NULL;
    lines_t L = {NULL, NULL, NULL, 0, 0};
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = !index_range(&L, (const uint8_t *)data.buf, 0, data.len, data.len, max_line, (const uint8_t *)pre.buf,
                          pre.len);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    /* (a NULL pointer would make None of an empty result) */
    result = Py_BuildValue("(y#y#y#)", L.n ? (const char *)L.starts : "", L.n * (Py_ssize_t)sizeof(int64_t),
                           L.n ? (const char *)L.ends : "", L.n * (Py_ssize_t)sizeof(int64_t),
                           L.n ? (const char *)L.flags : "", L.n);
done:
    free(L.starts);
    free(L.ends);
    free(L.flags);
    PyBuffer_Release(&data);
    PyBuffer_Release(&pre);
    return result;
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2,popcnt"))) static Py_ssize_t newlines_avx2(const uint8_t *buf, Py_ssize_t n,
                                                                       Py_ssize_t *done) {
    const __m256i nl = _mm256_set1_epi8('\n');
    Py_ssize_t p = 0, count = 0;
    for (; n - p >= 64; p += 64) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(buf + p));
        __m256i b = _mm256_loadu_si256((const __m256i *)(buf + p + 32));
        count += __builtin_popcount((unsigned)_mm256_movemask_epi8(_mm256_cmpeq_epi8(a, nl)));
        count += __builtin_popcount((unsigned)_mm256_movemask_epi8(_mm256_cmpeq_epi8(b, nl)));
    }
    *done = p;
    return count;
}
#endif

/* The number of newline bytes in a buffer: a followed file's chunk is counted before it is
   queued (its line numbers), and bytes.count runs at ~1.4 GB/s here, holding the GIL. */
static PyObject *newlines(PyObject *self, PyObject *args) {
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b)) return NULL;
    const uint8_t *buf = (const uint8_t *)b.buf;
    Py_ssize_t n = b.len, p = 0, count = 0;
#ifdef HAVE_AVX2_PATH
    if (use_avx2 < 0) use_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    const int avx2 = use_avx2;
#endif
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_AVX2_PATH
    if (avx2) count = newlines_avx2(buf, n, &p);
#endif
    for (; p < n; p++) count += buf[p] == '\n';
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return PyLong_FromSsize_t(count);
}

/* The spans [starts[i], ends[i]) of a buffer, each followed by a newline, as one bytes object:
   a worker sends the few lines a selective filter kept as one buffer, and a list of thousands
   of memoryview slices joined by bytes.join cost ~3 ms per 64 MB block. */
static PyObject *gather(PyObject *self, PyObject *args) {
    Py_buffer data, sb, eb;
    if (!PyArg_ParseTuple(args, "y*y*y*", &data, &sb, &eb)) return NULL;
    PyObject *out = NULL;
    if (sb.len != eb.len || sb.len % (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "starts and ends: int64 buffers of one length");
        goto done;
    }
    const int64_t *starts = (const int64_t *)sb.buf, *ends = (const int64_t *)eb.buf;
    Py_ssize_t n = sb.len / (Py_ssize_t)sizeof(int64_t), total = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (starts[i] < 0 || ends[i] < starts[i] || ends[i] > data.len) {
            PyErr_Format(PyExc_ValueError, "span %zd out of the buffer", i);
            goto done;
        }
        total += ends[i] - starts[i];
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) goto done;
    char *dst = PyBytes_AS_STRING(out);
    const char *src = (const char *)data.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t len = (size_t)(ends[i] - starts[i]);
        memcpy(dst, src + starts[i], len);
        dst += len;
        *dst++ = '\n';
    }
    Py_END_ALLOW_THREADS
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&eb);
    return out;
}

static PyObject *fnv(PyObject *self, PyObject *args) {
    Py_buffer b;
    unsigned int owner;
    if (!PyArg_ParseTuple(args, "y*I", &b, &owner)) return NULL;
    uint32_t h = FNV_OFFSET;
    const uint8_t *p = (const uint8_t *)b.buf;
    for (Py_ssize_t i = 0; i < b.len; i++) h = (h ^ p[i]) * FNV_PRIME;
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(mix(h, owner));
}

static PyMethodDef methods[] = {
    {"extract", extract, METH_VARARGS, "Mark the lines that are not canonical Hubble flow events; "
                                       "the projected values of the others."},
    {"index", index_lines, METH_VARARGS, "Where the lines of a block are and which are plain flow objects."},
    {"newlines", newlines, METH_VARARGS, "The number of newline bytes in a buffer."},
    {"gather", gather, METH_VARARGS, "Spans of a buffer, each followed by a newline, as one bytes object."},
    {"slot_hash", fnv, METH_VARARGS, "The table hash of a name under an owner (for laying out the table)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_canonscan", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__canonscan(void) { return PyModule_Create(&module); }
