/*
 * A Hubble Relay response (observer.GetFlowsResponse, protobuf wire bytes) written straight as
 * the JSON line `hubble observe -o json` prints, without building a protobuf message and a dict.
 *
 * Through grpcio, parsing each response into a upb message and converting it field by field in
 * Python cost about as much as receiving it; the relay source was bound by that per-message work.
 * This walks the wire format once per message, driven by a table made from the generated
 * descriptors (flowtrail.sources.relay builds it), and writes the same bytes as the Python
 * converter (relay.response_json): proto names, declaration order, proto3 zero values omitted,
 * set sub-messages printed even when empty, enums by name (a number without a name as a
 * number), 64-bit integers as strings, bytes in base64, Timestamps in RFC 3339 with 0/3/6/9
 * fractional digits, wrappers as their value, strings escaped as orjson escapes them.
 *
 * Exactness over coverage: whatever this does not reproduce exactly answers None and the caller
 * takes the Python path, which also reports the errors. That is: a google.protobuf.Any, a
 * singular message field repeated on the wire (protobuf merges those), two members of one oneof,
 * a string that is not valid UTF-8 (upb refuses the message), a Timestamp outside years
 * 1970-9999 or with nanos out of range, groups, malformed wire data, nesting deeper than 32.
 * Unknown fields, and known fields sent with another wire type, are skipped, as upb keeps them
 * as unknown fields that the converter never prints.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    K_STRING = 1, K_BYTES, K_BOOL, K_INT32, K_UINT32, K_INT64, K_UINT64, K_ENUM, K_MSG, K_TIMESTAMP,
    K_W_BOOL, K_W_INT32, K_W_UINT32, K_W_STRING, K_W_INT64, K_W_UINT64, K_ANY, K_LAST
};

#define MAX_FIELDS 128
#define MAX_DEPTH 32
#define DENSE_MAX 4096

typedef struct {
    uint32_t number;
    char *key; /* "\"name\":" */
    size_t key_len;
    int kind;
    int repeated;
    int child; /* message index (K_MSG) or enum index (K_ENUM) */
    int oneof; /* -1: none */
} field_t;

typedef struct {
    int nfields;
    field_t *fields;   /* declaration order */
    int16_t *dense;    /* field number -> index + 1, for numbers < ndense */
    uint32_t ndense;
    int noneofs;
} message_t;

typedef struct {
    int n;
    int32_t *numbers; /* sorted */
    char **names;     /* "\"NAME\"" */
    size_t *lens;
} enum_t;

typedef struct {
    int nmsgs, nenums;
    message_t *msgs;
    enum_t *enums;
    int root;
    /* what the relay source reads besides the line */
    uint32_t time_no, flow_no, flow_time_no, flow_uuid_no, lost_no, lost_num_no;
    int kind_oneof; /* the root's oneof telling the response's kind */
} schema_t;

/* ---- output buffer ------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    int fail; /* set when allocation failed */
} out_t;

static int grow(out_t *o, size_t need) {
    if (o->len + need <= o->cap) return 0;
    size_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + need) cap *= 2;
    char *np = realloc(o->p, cap);
    if (!np) {
        o->fail = 1;
        return -1;
    }
    o->p = np;
    o->cap = cap;
    return 0;
}

static inline int put(out_t *o, const char *s, size_t n) {
    if (grow(o, n)) return -1;
    memcpy(o->p + o->len, s, n);
    o->len += n;
    return 0;
}

static inline int putc1(out_t *o, char c) {
    if (grow(o, 1)) return -1;
    o->p[o->len++] = c;
    return 0;
}

static int put_u64(out_t *o, uint64_t v) {
    char tmp[24];
    int i = 24;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return put(o, tmp + i, (size_t)(24 - i));
}

static int put_i64(out_t *o, int64_t v) {
    if (v < 0) {
        if (putc1(o, '-')) return -1;
        return put_u64(o, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(o, (uint64_t)v);
}

/* ---- wire format --------------------------------------------------------------------------- */

typedef const uint8_t *cp;

/* A varint at *pp (at most 10 bytes); 0 on success. */
static inline int varint(cp *pp, cp end, uint64_t *out) {
    cp p = *pp;
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (p >= end) return -1;
        uint8_t b = *p++;
        if (shift == 63 && b > 1) return -1; /* more than 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pp = p;
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Skip one field's value of wire type wt; 0 on success. */
static inline int skip(cp *pp, cp end, unsigned wt) {
    uint64_t v;
    switch (wt) {
    case 0:
        return varint(pp, end, &v);
    case 1:
        if (end - *pp < 8) return -1;
        *pp += 8;
        return 0;
    case 2:
        if (varint(pp, end, &v) || v > (uint64_t)(end - *pp)) return -1;
        *pp += v;
        return 0;
    case 5:
        if (end - *pp < 4) return -1;
        *pp += 4;
        return 0;
    default: /* groups (3, 4) and invalid types */
        return -1;
    }
}

/* Field numbers are 1 to 2^29 - 1: protobuf refuses a message with any other. */
static inline int bad_number(uint64_t tag) {
    return (tag >> 3) == 0 || (tag >> 3) > 536870911u;
}

static inline int wire_type_of(int kind) {
    switch (kind) {
    case K_BOOL: case K_INT32: case K_UINT32: case K_INT64: case K_UINT64: case K_ENUM:
        return 0;
    default:
        return 2;
    }
}

static inline int field_index(const message_t *m, uint64_t number) {
    if (number < m->ndense) return m->dense[number] - 1;
    for (int i = 0; i < m->nfields; i++)
        if (m->fields[i].number == number) return i;
    return -1;
}

/* ---- strings ------------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (1-4), or 0 when invalid (overlong, surrogate, above
 * U+10FFFF, cut short). */
static inline int utf8_seq(cp p, cp end) {
    uint8_t c = p[0];
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0;
    if (c < 0xE0) return (end - p >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c < 0xF0) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0;  /* overlong */
        if (c == 0xED && p[1] >= 0xA0) return 0; /* surrogate */
        return 3;
    }
    if (c < 0xF5) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0; /* overlong */
        if (c == 0xF4 && p[1] >= 0x90) return 0; /* above U+10FFFF */
        return 4;
    }
    return 0;
}

static const char HEX[] = "0123456789abcdef";

/* A JSON string as orjson writes it: '"' and '\\' escaped, \b \t \n \f \r, other controls as
 * \u00XX, everything else (DEL and non-ASCII included) as it is. -1 on invalid UTF-8 or memory. */
static int put_string(out_t *o, cp p, size_t n) {
    cp end = p + n;
    if (grow(o, n + 2)) return -1;
    o->p[o->len++] = '"';
    cp run = p;
    while (p < end) {
        uint8_t c = *p;
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            p++;
            continue;
        }
        if (c >= 0x80) {
            int k = utf8_seq(p, end);
            if (!k) return -1;
            p += k;
            continue;
        }
        if (put(o, (const char *)run, (size_t)(p - run))) return -1;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t el = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\t': esc[1] = 't'; break;
        case '\n': esc[1] = 'n'; break;
        case '\f': esc[1] = 'f'; break;
        case '\r': esc[1] = 'r'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = HEX[c >> 4];
            esc[5] = HEX[c & 15];
            el = 6;
        }
        if (put(o, esc, el)) return -1;
        run = ++p;
    }
    if (put(o, (const char *)run, (size_t)(p - run))) return -1;
    return putc1(o, '"');
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int put_base64(out_t *o, cp p, size_t n) {
    if (grow(o, (n + 2) / 3 * 4 + 2)) return -1;
    char *w = o->p + o->len;
    *w++ = '"';
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8) | p[i + 2];
        *w++ = B64[v >> 18];
        *w++ = B64[(v >> 12) & 63];
        *w++ = B64[(v >> 6) & 63];
        *w++ = B64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        *w++ = B64[v >> 18];
        *w++ = B64[(v >> 12) & 63];
        *w++ = '=';
        *w++ = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8);
        *w++ = B64[v >> 18];
        *w++ = B64[(v >> 12) & 63];
        *w++ = B64[(v >> 6) & 63];
        *w++ = '=';
    }
    *w++ = '"';
    o->len = (size_t)(w - o->p);
    return 0;
}

/* ---- well-known types ---------------------------------------------------------------------- */

/* Fields 1 and 2 of a small message (Timestamp: seconds, nanos; wrappers: value in field 1) as
 * varints, last occurrence winning; *has1 tells whether field 1 was there. */
static int two_varints(cp p, cp end, uint64_t *f1, uint64_t *f2) {
    *f1 = *f2 = 0;
    while (p < end) {
        uint64_t tag, v;
        if (varint(&p, end, &tag) || bad_number(tag)) return -1;
        unsigned wt = (unsigned)(tag & 7);
        uint64_t no = tag >> 3;
        if (wt == 0 && (no == 1 || no == 2)) {
            if (varint(&p, end, &v)) return -1;
            if (no == 1) *f1 = v;
            else *f2 = v;
        } else if (skip(&p, end, wt)) {
            return -1;
        }
    }
    return 0;
}

#define MAX_SECONDS 253402300799LL /* 9999-12-31T23:59:59Z */
#define MAX_NS_SECONDS 9223372035LL /* the last second whose ns all fit an int64 */

/* seconds and nanos of a Timestamp's wire bytes, checked to be in the range written here. */
static int timestamp_parts(cp p, cp end, int64_t *sec, int32_t *nanos) {
    uint64_t s, n;
    if (two_varints(p, end, &s, &n)) return -1;
    *sec = (int64_t)s;
    *nanos = (int32_t)(uint32_t)n;
    if (*sec < 0 || *sec > MAX_SECONDS || *nanos < 0 || *nanos > 999999999) return -1;
    return 0;
}

static int put_timestamp(out_t *o, int64_t sec, int32_t nanos) {
    int64_t days = sec / 86400, rem = sec % 86400;
    /* civil date from days since 1970-01-01 (proleptic Gregorian) */
    int64_t z = days + 719468;
    int64_t era = z / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2) y++;
    char b[40];
    int hh = (int)(rem / 3600), mm = (int)(rem % 3600 / 60), ss = (int)(rem % 60);
    int n = snprintf(b, sizeof b, "\"%04d-%02d-%02dT%02d:%02d:%02d", (int)y, (int)m, (int)d, hh, mm, ss);
    if (nanos) {
        if (nanos % 1000000 == 0) n += snprintf(b + n, sizeof b - (size_t)n, ".%03d", nanos / 1000000);
        else if (nanos % 1000 == 0) n += snprintf(b + n, sizeof b - (size_t)n, ".%06d", nanos / 1000);
        else n += snprintf(b + n, sizeof b - (size_t)n, ".%09d", nanos);
    }
    b[n++] = 'Z';
    b[n++] = '"';
    return put(o, b, (size_t)n);
}

static int put_enum(out_t *o, const enum_t *e, int32_t v) {
    int lo = 0, hi = e->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (e->numbers[mid] == v) return put(o, e->names[mid], e->lens[mid]);
        if (e->numbers[mid] < v) lo = mid + 1;
        else hi = mid - 1;
    }
    return put_i64(o, v);
}

/* ---- messages ------------------------------------------------------------------------------ */

typedef struct {
    cp ptr;
    uint64_t val; /* varint value, or length */
    int present;
} slot_t;

static int message(const schema_t *s, int mi, cp p, cp end, out_t *o, int depth);

/* One value of field f (not its key): varint v, or bytes [ptr, ptr + len). */
static int value(const schema_t *s, const field_t *f, uint64_t v, cp ptr, size_t len, out_t *o, int depth) {
    uint64_t a, b;
    switch (f->kind) {
    case K_STRING:
        return put_string(o, ptr, len);
    case K_BYTES:
        return put_base64(o, ptr, len);
    case K_BOOL:
        return v ? put(o, "true", 4) : put(o, "false", 5);
    case K_INT32:
        return put_i64(o, (int32_t)(uint32_t)v);
    case K_UINT32:
        return put_u64(o, (uint32_t)v);
    case K_INT64:
        if (putc1(o, '"') || put_i64(o, (int64_t)v)) return -1;
        return putc1(o, '"');
    case K_UINT64:
        if (putc1(o, '"') || put_u64(o, v)) return -1;
        return putc1(o, '"');
    case K_ENUM:
        return put_enum(o, &s->enums[f->child], (int32_t)(uint32_t)v);
    case K_MSG:
        return message(s, f->child, ptr, ptr + len, o, depth + 1);
    case K_TIMESTAMP: {
        int64_t sec;
        int32_t nanos;
        if (timestamp_parts(ptr, ptr + len, &sec, &nanos)) return -1;
        return put_timestamp(o, sec, nanos);
    }
    case K_W_BOOL:
        if (two_varints(ptr, ptr + len, &a, &b)) return -1;
        return a ? put(o, "true", 4) : put(o, "false", 5);
    case K_W_INT32:
        if (two_varints(ptr, ptr + len, &a, &b)) return -1;
        return put_i64(o, (int32_t)(uint32_t)a);
    case K_W_UINT32:
        if (two_varints(ptr, ptr + len, &a, &b)) return -1;
        return put_u64(o, (uint32_t)a);
    case K_W_INT64:
        if (two_varints(ptr, ptr + len, &a, &b)) return -1;
        if (putc1(o, '"') || put_i64(o, (int64_t)a)) return -1;
        return putc1(o, '"');
    case K_W_UINT64:
        if (two_varints(ptr, ptr + len, &a, &b)) return -1;
        if (putc1(o, '"') || put_u64(o, a)) return -1;
        return putc1(o, '"');
    case K_W_STRING: {
        /* StringValue: field 1, length-delimited, last occurrence wins */
        cp q = ptr, e = ptr + len, sp = NULL;
        uint64_t sl = 0;
        while (q < e) {
            uint64_t tag;
            if (varint(&q, e, &tag) || bad_number(tag)) return -1;
            if ((tag >> 3) == 1 && (tag & 7) == 2) {
                if (varint(&q, e, &sl) || sl > (uint64_t)(e - q)) return -1;
                sp = q;
                q += sl;
            } else if (skip(&q, e, (unsigned)(tag & 7))) {
                return -1;
            }
        }
        return put_string(o, sp ? sp : (cp) "", sp ? (size_t)sl : 0);
    }
    default: /* K_ANY: the Python path resolves the packed type */
        return -1;
    }
}

/* Is a singular value the proto3 default (then it is not printed)? */
static inline int is_zero(const field_t *f, const slot_t *sl) {
    switch (f->kind) {
    case K_STRING: case K_BYTES:
        return sl->val == 0;
    case K_BOOL: case K_INT64: case K_UINT64:
        return sl->val == 0;
    case K_INT32: case K_UINT32: case K_ENUM:
        return (uint32_t)sl->val == 0;
    default: /* messages: printed once set, even when empty */
        return 0;
    }
}

static int message(const schema_t *s, int mi, cp p, cp end, out_t *o, int depth) {
    if (depth > MAX_DEPTH) return -1;
    const message_t *m = &s->msgs[mi];
    slot_t slots[MAX_FIELDS];
    memset(slots, 0, sizeof(slot_t) * (size_t)m->nfields);
    cp start = p;
    while (p < end) {
        uint64_t tag;
        if (varint(&p, end, &tag) || bad_number(tag)) return -1;
        unsigned wt = (unsigned)(tag & 7);
        int i = field_index(m, tag >> 3);
        if (i < 0 || wire_type_of(m->fields[i].kind) != (int)wt) {
            if (skip(&p, end, wt)) return -1;
            continue;
        }
        const field_t *f = &m->fields[i];
        slot_t *sl = &slots[i];
        uint64_t v;
        if (varint(&p, end, &v)) return -1;
        if (wt == 2) {
            if (v > (uint64_t)(end - p)) return -1;
            if (f->repeated) {
                /* printed from a second walk, in wire order */
            } else if (sl->present && f->kind >= K_MSG) {
                return -1; /* a singular message sent twice: protobuf merges them */
            } else if (sl->present && f->kind == K_STRING) {
                /* the earlier value is not printed, but upb refuses the message if it is not UTF-8 */
                for (cp q = sl->ptr, e = sl->ptr + sl->val; q < e;) {
                    int k = utf8_seq(q, e);
                    if (!k) return -1;
                    q += k;
                }
            }
            sl->ptr = p;
            p += v;
        }
        sl->val = v;
        sl->present = 1;
    }
    if (m->noneofs) {
        int seen[MAX_FIELDS];
        memset(seen, 0, sizeof(int) * (size_t)m->noneofs);
        for (int i = 0; i < m->nfields; i++)
            if (slots[i].present && m->fields[i].oneof >= 0 && seen[m->fields[i].oneof]++) return -1;
    }
    if (putc1(o, '{')) return -1;
    int first = 1;
    for (int i = 0; i < m->nfields; i++) {
        const field_t *f = &m->fields[i];
        const slot_t *sl = &slots[i];
        if (!sl->present || (!f->repeated && is_zero(f, sl))) continue;
        if (!first && putc1(o, ',')) return -1;
        first = 0;
        if (put(o, f->key, f->key_len)) return -1;
        if (!f->repeated) {
            if (value(s, f, sl->val, sl->ptr, (size_t)sl->val, o, depth)) return -1;
            continue;
        }
        /* every occurrence in wire order (the walk above checked the message) */
        if (putc1(o, '[')) return -1;
        int n = 0;
        for (cp q = start; q < end;) {
            uint64_t tag = 0, v = 0;
            varint(&q, end, &tag);
            unsigned wt = (unsigned)(tag & 7);
            if ((tag >> 3) != f->number || wt != 2) {
                skip(&q, end, wt);
                continue;
            }
            varint(&q, end, &v);
            if (n++ && putc1(o, ',')) return -1;
            if (value(s, f, 0, q, (size_t)v, o, depth)) return -1;
            q += v;
        }
        if (putc1(o, ']')) return -1;
    }
    return putc1(o, '}');
}

/* ---- what the relay source reads besides the line ------------------------------------------- */

/* The last occurrence of field `no` with wire type wt in [p, end): its value or bytes. */
static int find(cp p, cp end, uint32_t no, unsigned want_wt, cp *ptr, uint64_t *val) {
    int found = 0;
    while (p < end) {
        uint64_t tag, v;
        if (varint(&p, end, &tag)) return -1;
        unsigned wt = (unsigned)(tag & 7);
        if ((tag >> 3) == no && wt == want_wt) {
            if (varint(&p, end, &v)) return -1;
            if (wt == 2) {
                if (v > (uint64_t)(end - p)) return -1;
                *ptr = p;
                p += v;
            }
            *val = v;
            found = 1;
        } else if (skip(&p, end, wt)) {
            return -1;
        }
    }
    return found;
}

/* ---- Python ------------------------------------------------------------------------------- */

static void schema_free(schema_t *s) {
    if (!s) return;
    for (int i = 0; i < s->nmsgs; i++) {
        message_t *m = &s->msgs[i];
        for (int j = 0; j < m->nfields; j++) free(m->fields[j].key);
        free(m->fields);
        free(m->dense);
    }
    for (int i = 0; i < s->nenums; i++) {
        enum_t *e = &s->enums[i];
        for (int j = 0; j < e->n; j++) free(e->names[j]);
        free(e->numbers);
        free(e->names);
        free(e->lens);
    }
    free(s->msgs);
    free(s->enums);
    free(s);
}

static void capsule_free(PyObject *cap) {
    schema_free((schema_t *)PyCapsule_GetPointer(cap, "wirejson.schema"));
}

static char *quoted(PyObject *str, const char *suffix, size_t *len) {
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(str, &n);
    if (!u) return NULL;
    size_t sl = strlen(suffix);
    char *k = malloc((size_t)n + 2 + sl + 1);
    if (!k) {
        PyErr_NoMemory();
        return NULL;
    }
    k[0] = '"';
    memcpy(k + 1, u, (size_t)n);
    k[n + 1] = '"';
    memcpy(k + n + 2, suffix, sl + 1);
    *len = (size_t)n + 2 + sl;
    return k;
}

/* compile(messages, enums, root, probe) -> capsule
 *   messages: [(noneofs, [(number, name, kind, repeated, child, oneof), ...]), ...]
 *   enums: [[(number, name), ...], ...] sorted by number
 *   probe: (time_no, flow_no, flow_time_no, flow_uuid_no, lost_no, lost_num_no, kind_oneof) */
static PyObject *py_compile(PyObject *self, PyObject *args) {
    PyObject *msgs, *enums;
    int root;
    schema_t *s = calloc(1, sizeof(schema_t));
    if (!s) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(args, "O!O!i(IIIIIIi)", &PyList_Type, &msgs, &PyList_Type, &enums, &root, &s->time_no,
                          &s->flow_no, &s->flow_time_no, &s->flow_uuid_no, &s->lost_no, &s->lost_num_no,
                          &s->kind_oneof)) {
        free(s);
        return NULL;
    }
    s->root = root;
    s->nmsgs = (int)PyList_GET_SIZE(msgs);
    s->nenums = (int)PyList_GET_SIZE(enums);
    s->msgs = calloc((size_t)s->nmsgs + 1, sizeof(message_t));
    s->enums = calloc((size_t)s->nenums + 1, sizeof(enum_t));
    if (!s->msgs || !s->enums) {
        schema_free(s);
        return PyErr_NoMemory();
    }
    if (root < 0 || root >= s->nmsgs) goto bad;
    for (int i = 0; i < s->nenums; i++) {
        PyObject *vals = PyList_GET_ITEM(enums, i);
        if (!PyList_Check(vals)) goto bad;
        enum_t *e = &s->enums[i];
        e->n = (int)PyList_GET_SIZE(vals);
        e->numbers = calloc((size_t)e->n + 1, sizeof(int32_t));
        e->names = calloc((size_t)e->n + 1, sizeof(char *));
        e->lens = calloc((size_t)e->n + 1, sizeof(size_t));
        if (!e->numbers || !e->names || !e->lens) goto nomem;
        for (int j = 0; j < e->n; j++) {
            int num;
            PyObject *name;
            if (!PyArg_ParseTuple(PyList_GET_ITEM(vals, j), "iU", &num, &name)) goto fail;
            if (j && num <= e->numbers[j - 1]) goto bad;
            e->numbers[j] = num;
            if (!(e->names[j] = quoted(name, "", &e->lens[j]))) goto fail;
        }
    }
    for (int i = 0; i < s->nmsgs; i++) {
        PyObject *fields;
        message_t *m = &s->msgs[i];
        if (!PyArg_ParseTuple(PyList_GET_ITEM(msgs, i), "iO!", &m->noneofs, &PyList_Type, &fields)) goto fail;
        m->nfields = (int)PyList_GET_SIZE(fields);
        if (m->nfields > MAX_FIELDS || m->noneofs > MAX_FIELDS || m->noneofs < 0) goto bad;
        m->fields = calloc((size_t)m->nfields + 1, sizeof(field_t));
        if (!m->fields) goto nomem;
        uint32_t maxno = 0;
        for (int j = 0; j < m->nfields; j++) {
            field_t *f = &m->fields[j];
            PyObject *name;
            if (!PyArg_ParseTuple(PyList_GET_ITEM(fields, j), "IUiiii", &f->number, &name, &f->kind, &f->repeated,
                                  &f->child, &f->oneof))
                goto fail;
            if (f->kind < K_STRING || f->kind >= K_LAST || f->number == 0 || f->oneof >= m->noneofs) goto bad;
            if (f->kind == K_MSG && (f->child < 0 || f->child >= s->nmsgs)) goto bad;
            if (f->kind == K_ENUM && (f->child < 0 || f->child >= s->nenums)) goto bad;
            if (f->repeated && wire_type_of(f->kind) != 2) goto bad; /* packed scalars: not in these protos */
            if (!(f->key = quoted(name, ":", &f->key_len))) goto fail;
            if (f->number < DENSE_MAX && f->number > maxno) maxno = f->number;
        }
        m->ndense = maxno + 1;
        m->dense = calloc(m->ndense, sizeof(int16_t));
        if (!m->dense) goto nomem;
        for (int j = 0; j < m->nfields; j++)
            if (m->fields[j].number < m->ndense) m->dense[m->fields[j].number] = (int16_t)(j + 1);
    }
    return PyCapsule_New(s, "wirejson.schema", capsule_free);
nomem:
    PyErr_NoMemory();
    schema_free(s);
    return NULL;
bad:
    PyErr_SetString(PyExc_ValueError, "wirejson: malformed schema table");
fail:
    schema_free(s);
    return NULL;
}

/* convert(schema, data) -> (kind_number, t_ns, uuid, lost, line) or None (take the Python path)
 *   kind_number: the field number of the root oneof member set (0: none);
 *   t_ns: the response's time, else its flow's time, in ns (0 when neither);
 *   uuid: the flow's uuid ("" when none); lost: lost_events.num_events_lost. */
static PyObject *py_convert(PyObject *self, PyObject *args) {
    PyObject *cap;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "Oy*", &cap, &buf)) return NULL;
    schema_t *s = PyCapsule_GetPointer(cap, "wirejson.schema");
    if (!s) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    cp p = buf.buf, end = p + buf.len;
    out_t o = {0};
    PyObject *res = NULL;
    int rc = message(s, s->root, p, end, &o, 0);
    if (o.fail) {
        PyErr_NoMemory();
        goto done;
    }
    if (rc) {
        res = Py_None;
        Py_INCREF(res);
        goto done;
    }
    /* the line is known to be convertible: the wire is well formed from here on */
    const message_t *root = &s->msgs[s->root];
    uint32_t kind = 0;
    for (int i = 0; i < root->nfields; i++) {
        const field_t *f = &root->fields[i];
        cp fp;
        uint64_t fv;
        if (f->oneof == s->kind_oneof && s->kind_oneof >= 0 && find(p, end, f->number, wire_type_of(f->kind), &fp, &fv) > 0)
            kind = f->number;
    }
    int64_t t_ns = 0, sec;
    int32_t nanos;
    cp tp, fp, up = NULL, lp;
    uint64_t tl, fl, ul = 0, ll, lost = 0;
    cp fend = NULL;
    int has_flow = find(p, end, s->flow_no, 2, &fp, &fl) > 0;
    if (has_flow) fend = fp + fl;
    if (find(p, end, s->time_no, 2, &tp, &tl) > 0) {
        /* past 2262 the time in ns is no int64: Python's integers hold it */
        if (timestamp_parts(tp, tp + tl, &sec, &nanos) || sec > MAX_NS_SECONDS) goto fallback;
        t_ns = sec * 1000000000LL + nanos;
    } else if (has_flow && kind == s->flow_no && find(fp, fend, s->flow_time_no, 2, &tp, &tl) > 0) {
        /* past 2262 the time in ns is no int64: Python's integers hold it */
        if (timestamp_parts(tp, tp + tl, &sec, &nanos) || sec > MAX_NS_SECONDS) goto fallback;
        t_ns = sec * 1000000000LL + nanos;
    }
    if (has_flow && find(fp, fend, s->flow_uuid_no, 2, &up, &ul) <= 0) up = NULL;
    if (find(p, end, s->lost_no, 2, &lp, &ll) > 0) {
        uint64_t v;
        cp q;
        if (find(lp, lp + ll, s->lost_num_no, 0, &q, &v) > 0) lost = v;
    }
    res = Py_BuildValue("(kLNKy#)", (unsigned long)kind, (long long)t_ns,
                        PyUnicode_DecodeUTF8(up ? (const char *)up : "", up ? (Py_ssize_t)ul : 0, "strict"),
                        (unsigned long long)lost, o.p, (Py_ssize_t)o.len);
    goto done;
fallback:
    res = Py_None;
    Py_INCREF(res);
done:
    free(o.p);
    PyBuffer_Release(&buf);
    return res;
}

static PyMethodDef methods[] = {
    {"compile", py_compile, METH_VARARGS, "compile(messages, enums, root, probe) -> schema"},
    {"convert", py_convert, METH_VARARGS,
     "convert(schema, data) -> (kind_number, t_ns, uuid, lost, line) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wirejson",
                                    "GetFlowsResponse wire bytes to Hubble JSON lines", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__wirejson(void) { return PyModule_Create(&module); }
