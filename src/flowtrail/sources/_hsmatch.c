/* Which lines of a block hold a match of which pattern set: Hyperscan, driven from C.

   The PyPI `hyperscan` wheel carries its own copy of the library, built for SSE only, and calls
   back into Python for every match. This module links the system's libhs instead (Debian's is
   built with a fat runtime that dispatches to AVX2: 1.5-3x faster scans on these machines) and
   turns match offsets into (line, set) pairs in C, so that a frequent pattern (`"is_reply":true`
   is on 40 % of Hubble lines) costs no Python call per match.

   Database(patterns, ids): compile regular expressions (Hyperscan syntax, block mode), pattern
   i reporting set ids[i]. Database.lines(data, starts, nsets) -> (lines, sets): the distinct
   (line, set) pairs of matches in data, as int64 and int32 buffers; line j of data begins at
   starts[j] (int64, increasing, starts[0] == 0). A match belongs to the line holding its end,
   which for patterns that never span a newline is the line holding the whole match. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <hs/hs.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_lineindex.h"

typedef struct {
    PyObject_HEAD
    hs_database_t *db;
    hs_scratch_t *proto; /* cloned per scan: a scan releases the GIL, so two threads may scan at once */
} Database;

typedef struct {
    const int64_t *starts;
    Py_ssize_t nlines;
    Py_ssize_t cursor; /* line of the last match: matches mostly arrive in offset order */
    int64_t *seen;     /* per set: 1 + the last line it was recorded for */
    Py_ssize_t nsets;
    int64_t *lines;
    int32_t *sets;
    Py_ssize_t n, cap;
    int failed;
} collect_t;

static Py_ssize_t line_of(collect_t *c, int64_t pos) {
    /* the last line starting at or before pos */
    const int64_t *s = c->starts;
    Py_ssize_t i = c->cursor;
    if (s[i] <= pos && (i + 1 == c->nlines || s[i + 1] > pos)) return i;
    if (i + 1 < c->nlines && s[i + 1] <= pos && (i + 2 == c->nlines || s[i + 2] > pos)) return i + 1;
    Py_ssize_t lo = 0, hi = c->nlines - 1;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo + 1) / 2;
        if (s[mid] <= pos) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Record a match ending at pos (its last byte) of pattern set id. */
static int record(collect_t *c, int64_t pos, unsigned int id) {
    Py_ssize_t line = line_of(c, pos);
    c->cursor = line;
    if (c->seen[id] == line + 1) return 0;
    c->seen[id] = line + 1;
    if (c->n == c->cap) {
        Py_ssize_t cap = c->cap ? 2 * c->cap : 1024;
        int64_t *l = realloc(c->lines, cap * sizeof(int64_t));
        if (!l) { c->failed = 1; return 1; }
        c->lines = l;
        int32_t *t = realloc(c->sets, cap * sizeof(int32_t));
        if (!t) { c->failed = 1; return 1; }
        c->sets = t;
        c->cap = cap;
    }
    c->lines[c->n] = line;
    c->sets[c->n] = (int32_t)id;
    c->n++;
    return 0;
}

static void collect_free(collect_t *c) {
    free(c->seen);
    free(c->lines);
    free(c->sets);
}

/* 0 when a scan ended normally; else -1 with the Python error set. */
static int scan_status(hs_error_t rc, int nomem) {
    if (nomem) {
        PyErr_NoMemory();
        return -1;
    }
    if (rc != HS_SUCCESS && rc != HS_SCAN_TERMINATED) {
        PyErr_Format(PyExc_RuntimeError, "hs_scan failed (%d)", (int)rc);
        return -1;
    }
    return 0;
}

static int on_match(unsigned int id, unsigned long long from, unsigned long long to, unsigned int flags,
                    void *ctx) {
    collect_t *c = (collect_t *)ctx;
    if (to == 0 || (Py_ssize_t)id >= c->nsets) return 0;
    return record(c, (int64_t)to - 1, id);
}

/* Matches of one chunk, kept as (last byte, set) until the chunk's lines are indexed. */
typedef struct {
    int64_t *pos;
    unsigned int *id;
    Py_ssize_t n, cap, nsets;
    int64_t base;
    int failed;
} raw_t;

static int on_raw(unsigned int id, unsigned long long from, unsigned long long to, unsigned int flags, void *ctx) {
    raw_t *r = (raw_t *)ctx;
    if (to == 0 || (Py_ssize_t)id >= r->nsets) return 0;
    if (r->n == r->cap) {
        Py_ssize_t cap = r->cap ? 2 * r->cap : 1024;
        int64_t *p = realloc(r->pos, cap * sizeof(int64_t));
        if (!p) { r->failed = 1; return 1; }
        r->pos = p;
        unsigned int *i = realloc(r->id, cap * sizeof(unsigned int));
        if (!i) { r->failed = 1; return 1; }
        r->id = i;
        r->cap = cap;
    }
    r->pos[r->n] = r->base + (int64_t)to - 1;
    r->id[r->n] = id;
    r->n++;
    return 0;
}

static int Database_init(Database *self, PyObject *args, PyObject *kwds) {
    PyObject *patterns, *ids;
    static char *kwlist[] = {"patterns", "ids", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kwlist, &patterns, &ids)) return -1;
    PyObject *pseq = PySequence_Fast(patterns, "patterns must be a sequence of bytes");
    if (!pseq) return -1;
    PyObject *iseq = PySequence_Fast(ids, "ids must be a sequence of int");
    if (!iseq) { Py_DECREF(pseq); return -1; }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(pseq);
    int rc = -1;
    const char **exprs = NULL;
    unsigned int *flags = NULL, *idv = NULL;
    if (n == 0 || n != PySequence_Fast_GET_SIZE(iseq)) {
        PyErr_SetString(PyExc_ValueError, "patterns and ids: same non-zero length");
        goto done;
    }
    exprs = calloc(n, sizeof(char *));
    flags = calloc(n, sizeof(unsigned int));
    idv = calloc(n, sizeof(unsigned int));
    if (!exprs || !flags || !idv) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PySequence_Fast_GET_ITEM(pseq, i);
        if (!PyBytes_Check(p)) { PyErr_SetString(PyExc_TypeError, "patterns must be bytes"); goto done; }
        if ((Py_ssize_t)strlen(PyBytes_AS_STRING(p)) != PyBytes_GET_SIZE(p)) {
            PyErr_SetString(PyExc_ValueError, "a pattern holds a NUL byte: write it \\x00");
            goto done;
        }
        exprs[i] = PyBytes_AS_STRING(p);
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(iseq, i));
        if (v == -1 && PyErr_Occurred()) goto done;
        if (v < 0 || v > 1 << 20) { PyErr_SetString(PyExc_ValueError, "ids: 0 .. 2**20"); goto done; }
        idv[i] = (unsigned int)v;
    }
    hs_database_t *db = NULL;
    hs_compile_error_t *err = NULL;
    if (hs_compile_multi(exprs, flags, idv, (unsigned int)n, HS_MODE_BLOCK, NULL, &db, &err) != HS_SUCCESS) {
        PyErr_Format(PyExc_ValueError, "pattern %d: %s", err ? err->expression : -1,
                     err && err->message ? err->message : "not compiled");
        hs_free_compile_error(err);
        goto done;
    }
    hs_scratch_t *scratch = NULL;
    if (hs_alloc_scratch(db, &scratch) != HS_SUCCESS) {
        hs_free_database(db);
        PyErr_NoMemory();
        goto done;
    }
    if (self->proto) hs_free_scratch(self->proto);
    if (self->db) hs_free_database(self->db);
    self->db = db;
    self->proto = scratch;
    rc = 0;
done:
    free(exprs);
    free(flags);
    free(idv);
    Py_DECREF(pseq);
    Py_DECREF(iseq);
    return rc;
}

static void Database_dealloc(Database *self) {
    if (self->proto) hs_free_scratch(self->proto);
    if (self->db) hs_free_database(self->db);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Database_lines(Database *self, PyObject *args) {
    Py_buffer data, starts;
    Py_ssize_t nsets;
    if (!self->db) { PyErr_SetString(PyExc_RuntimeError, "database not compiled"); return NULL; }
    if (!PyArg_ParseTuple(args, "y*y*n", &data, &starts, &nsets)) return NULL;
    PyObject *result = NULL;
    collect_t c = {0};
    hs_scratch_t *scratch = NULL;
    if (starts.len % (Py_ssize_t)sizeof(int64_t) || nsets <= 0) {
        PyErr_SetString(PyExc_ValueError, "starts: int64 values; nsets > 0");
        goto done;
    }
    c.starts = (const int64_t *)starts.buf;
    c.nlines = starts.len / (Py_ssize_t)sizeof(int64_t);
    c.nsets = nsets;
    if (c.nlines == 0 || data.len == 0) {
        result = Py_BuildValue("(y#y#)", "", (Py_ssize_t)0, "", (Py_ssize_t)0);
        goto done;
    }
    if (c.starts[0] != 0) { PyErr_SetString(PyExc_ValueError, "starts[0] must be 0"); goto done; }
    if (data.len > UINT32_MAX) { PyErr_SetString(PyExc_ValueError, "a block over 4 GiB"); goto done; }
    c.seen = calloc(nsets, sizeof(int64_t));
    if (!c.seen || hs_clone_scratch(self->proto, &scratch) != HS_SUCCESS) { PyErr_NoMemory(); goto done; }
    hs_error_t rc;
    Py_BEGIN_ALLOW_THREADS
    rc = hs_scan(self->db, (const char *)data.buf, (unsigned int)data.len, 0, scratch, on_match, &c);
    Py_END_ALLOW_THREADS
    if (scan_status(rc, c.failed) < 0) goto done;
    result = Py_BuildValue("(y#y#)", c.n ? (const char *)c.lines : "", c.n * (Py_ssize_t)sizeof(int64_t),
                           c.n ? (const char *)c.sets : "", c.n * (Py_ssize_t)sizeof(int32_t));
done:
    if (scratch) hs_free_scratch(scratch);
    collect_free(&c);
    PyBuffer_Release(&data);
    PyBuffer_Release(&starts);
    return result;
}

/* scan_lines(data, max_line, prefix, nsets, chunk) -> (starts, ends, flags, lines, sets): the
   line index of _canonscan.index(data, max_line, prefix) and the pairs of lines(data, starts,
   nsets), in one pass. The block is taken `chunk` bytes at a time (cut after a newline): the
   scan reads a chunk from memory, and the index reads it again from the CPU's cache, where two
   passes over a whole block (64 MB, larger than the cache) would read it from memory twice. */
static PyObject *Database_scan_lines(Database *self, PyObject *args) {
    Py_buffer data, pre;
    Py_ssize_t max_line, nsets, chunk;
    if (!self->db) { PyErr_SetString(PyExc_RuntimeError, "database not compiled"); return NULL; }
    if (!PyArg_ParseTuple(args, "y*ny*nn", &data, &max_line, &pre, &nsets, &chunk)) return NULL;
    PyObject *result = NULL;
    lines_t L = {NULL, NULL, NULL, 0, 0};
    collect_t c = {0};
    raw_t r = {0};
    hs_scratch_t *scratch = NULL;
    if (nsets <= 0 || chunk <= 0) {
        PyErr_SetString(PyExc_ValueError, "nsets > 0 and chunk > 0");
        goto done;
    }
    if (data.len > UINT32_MAX) { PyErr_SetString(PyExc_ValueError, "a block over 4 GiB"); goto done; }
    c.nsets = r.nsets = nsets;
    c.seen = calloc(nsets, sizeof(int64_t));
    if (!c.seen || hs_clone_scratch(self->proto, &scratch) != HS_SUCCESS) { PyErr_NoMemory(); goto done; }
    const uint8_t *buf = (const uint8_t *)data.buf;
    Py_ssize_t n = data.len;
    hs_error_t rc = HS_SUCCESS;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t from = 0; from < n && !nomem;) {
        Py_ssize_t to = range_end(buf, from, chunk, n);
        r.n = 0;
        r.base = from;
        rc = hs_scan(self->db, (const char *)buf + from, (unsigned int)(to - from), 0, scratch, on_raw, &r);
        if (r.failed || (rc != HS_SUCCESS && rc != HS_SCAN_TERMINATED)) break;
        if (!index_range(&L, buf, from, to, n, max_line, (const uint8_t *)pre.buf, pre.len)) { nomem = 1; break; }
        c.starts = L.starts;
        c.nlines = L.n;
        for (Py_ssize_t i = 0; i < r.n && !c.failed; i++) record(&c, r.pos[i], r.id[i]);
        if (c.failed) break;
        from = to;
    }
    Py_END_ALLOW_THREADS
    if (scan_status(rc, nomem || r.failed || c.failed) < 0) goto done;
    result = Py_BuildValue("(y#y#y#y#y#)", L.n ? (const char *)L.starts : "", L.n * (Py_ssize_t)sizeof(int64_t),
                           L.n ? (const char *)L.ends : "", L.n * (Py_ssize_t)sizeof(int64_t),
                           L.n ? (const char *)L.flags : "", L.n,
                           c.n ? (const char *)c.lines : "", c.n * (Py_ssize_t)sizeof(int64_t),
                           c.n ? (const char *)c.sets : "", c.n * (Py_ssize_t)sizeof(int32_t));
done:
    if (scratch) hs_free_scratch(scratch);
    free(L.starts);
    free(L.ends);
    free(L.flags);
    free(r.pos);
    free(r.id);
    collect_free(&c);
    PyBuffer_Release(&data);
    PyBuffer_Release(&pre);
    return result;
}

static PyObject *Database_serialize(Database *self, PyObject *unused) {
    if (!self->db) { PyErr_SetString(PyExc_RuntimeError, "database not compiled"); return NULL; }
    char *bytes = NULL;
    size_t len = 0;
    if (hs_serialize_database(self->db, &bytes, &len) != HS_SUCCESS) return PyErr_NoMemory();
    PyObject *out = PyBytes_FromStringAndSize(bytes, (Py_ssize_t)len);
    free(bytes); /* the misc allocator: malloc unless hs_set_misc_allocator was called */
    return out;
}

static PyObject *Database_deserialize(PyTypeObject *type, PyObject *args) {
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b)) return NULL;
    hs_database_t *db = NULL;
    hs_error_t rc = hs_deserialize_database((const char *)b.buf, (size_t)b.len, &db);
    PyBuffer_Release(&b);
    if (rc != HS_SUCCESS) {
        PyErr_Format(PyExc_ValueError, "not a usable Hyperscan database (%d)", (int)rc);
        return NULL;
    }
    hs_scratch_t *scratch = NULL;
    if (hs_alloc_scratch(db, &scratch) != HS_SUCCESS) {
        /* also what a database built for another CPU gives */
        hs_free_database(db);
        PyErr_SetString(PyExc_ValueError, "Hyperscan database not usable on this CPU");
        return NULL;
    }
    Database *self = (Database *)type->tp_alloc(type, 0);
    if (!self) {
        hs_free_scratch(scratch);
        hs_free_database(db);
        return NULL;
    }
    self->db = db;
    self->proto = scratch;
    return (PyObject *)self;
}

static PyMethodDef Database_methods[] = {
    {"lines", (PyCFunction)Database_lines, METH_VARARGS,
     "lines(data, starts, nsets) -> (int64 lines, int32 sets): the distinct (line, set) pairs of matches."},
    {"scan_lines", (PyCFunction)Database_scan_lines, METH_VARARGS,
     "scan_lines(data, max_line, prefix, nsets, chunk) -> (starts, ends, flags, lines, sets): index and lines at once."},
    {"serialize", (PyCFunction)Database_serialize, METH_NOARGS, "The compiled database as bytes."},
    {"deserialize", (PyCFunction)Database_deserialize, METH_VARARGS | METH_CLASS,
     "deserialize(bytes) -> Database: one serialize() wrote (ValueError when unusable here)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DatabaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flowtrail.sources._hsmatch.Database",
    .tp_basicsize = sizeof(Database),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Database(patterns: list[bytes], ids: list[int]): Hyperscan block-mode patterns.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Database_init,
    .tp_dealloc = (destructor)Database_dealloc,
    .tp_methods = Database_methods,
};

static PyObject *build_tag(PyObject *self, PyObject *unused) {
    /* what a compiled database depends on: the library's version and the CPU it targets */
    hs_platform_info_t plat;
    if (hs_populate_platform(&plat) != HS_SUCCESS) memset(&plat, 0, sizeof plat);
    return PyUnicode_FromFormat("%s tune=%u features=%llu", hs_version(), plat.tune,
                                (unsigned long long)plat.cpu_features);
}

static PyMethodDef module_methods[] = {
    {"build_tag", build_tag, METH_NOARGS, "Hyperscan's version and the host platform it compiles for."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hsmatch", NULL, -1, module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__hsmatch(void) {
    if (hs_valid_platform() != HS_SUCCESS) {
        PyErr_SetString(PyExc_ImportError, "Hyperscan does not support this CPU");
        return NULL;
    }
    if (PyType_Ready(&DatabaseType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&DatabaseType);
    if (PyModule_AddObject(m, "Database", (PyObject *)&DatabaseType) < 0) {
        Py_DECREF(&DatabaseType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
