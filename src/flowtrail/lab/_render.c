/* The simulator's last step in C: events of a segment's sessions flattened into columns, and
 * sorted events written out as exporter lines.
 *
 * Python did this with a 9-column object array joined once per segment, then encoded: about
 * 4 us per flow (flattening the event tuples, timestamp text, the join, the UTF-8 copy), as much
 * as building the sessions themselves. Here a line is written straight into the result from its
 * pieces: one copy of each body, no intermediate string. Output is byte-identical to the Python
 * path (flowtrail.lab.simulate), which stays as the fallback where no C compiler is found.
 *
 * An event body is a str, or a tuple (sep, parts) standing for sep.join(parts): TCP templates are
 * split at the ephemeral port, and joining them here instead of per event in Python saves a copy
 * of ~1.5 KB per flow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ text of a str, as UTF-8 */

static int
utf8_of(PyObject *s, const char **p, Py_ssize_t *n)
{
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "event body parts must be str");
        return -1;
    }
    if (PyUnicode_IS_COMPACT_ASCII(s)) {
        *p = (const char *)PyUnicode_1BYTE_DATA(s);
        *n = PyUnicode_GET_LENGTH(s);
        return 0;
    }
    *p = PyUnicode_AsUTF8AndSize(s, n);  /* cached on the object */
    return *p == NULL ? -1 : 0;
}

/* Length of a body (str or (sep, parts)) in bytes, or -1 with an exception set. */
static Py_ssize_t
body_len(PyObject *b)
{
    const char *p;
    Py_ssize_t n;
    if (PyUnicode_Check(b)) {
        if (utf8_of(b, &p, &n) < 0)
            return -1;
        return n;
    }
    if (!PyTuple_Check(b) || PyTuple_GET_SIZE(b) != 2) {
        PyErr_SetString(PyExc_TypeError, "an event body is a str or a (sep, parts) tuple");
        return -1;
    }
    Py_ssize_t sep_n;
    if (utf8_of(PyTuple_GET_ITEM(b, 0), &p, &sep_n) < 0)
        return -1;
    PyObject *parts = PyTuple_GET_ITEM(b, 1);
    if (!PyList_Check(parts) && !PyTuple_Check(parts)) {
        PyErr_SetString(PyExc_TypeError, "body parts must be a list or tuple");
        return -1;
    }
    Py_ssize_t k = PySequence_Fast_GET_SIZE(parts), total = k > 0 ? sep_n * (k - 1) : 0;
    PyObject **items = PySequence_Fast_ITEMS(parts);
    for (Py_ssize_t i = 0; i < k; i++) {
        if (utf8_of(items[i], &p, &n) < 0)
            return -1;
        total += n;
    }
    return total;
}

/* Writes a body checked by body_len; returns the end. */
static char *
body_write(PyObject *b, char *out)
{
    const char *p;
    Py_ssize_t n;
    if (PyUnicode_Check(b)) {
        utf8_of(b, &p, &n);
        memcpy(out, p, n);
        return out + n;
    }
    const char *sep;
    Py_ssize_t sep_n;
    utf8_of(PyTuple_GET_ITEM(b, 0), &sep, &sep_n);
    PyObject *parts = PyTuple_GET_ITEM(b, 1);
    /* a list or tuple: checked by body_len */
    Py_ssize_t k = PySequence_Fast_GET_SIZE(parts);
    PyObject **items = PySequence_Fast_ITEMS(parts);
    for (Py_ssize_t i = 0; i < k; i++) {
        if (i) {
            memcpy(out, sep, sep_n);
            out += sep_n;
        }
        utf8_of(items[i], &p, &n);
        memcpy(out, p, n);
        out += n;
    }
    return out;
}

/* ------------------------------------------------------------------ protojson timestamps */

#define NS 1000000000LL

/* Proleptic Gregorian date of a day count since 1970-01-01 (400-year eras of 146097 days,
 * years counted from March so that the leap day is the last of a year). */
static void
civil(int64_t days, int64_t *y, int *m, int *d)
{
    days += 719468;  /* days from 0000-03-01 to 1970-01-01 */
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    int64_t doe = days - era * 146097;                                   /* [0, 146096] */
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* [0, 399] */
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               /* [0, 365] */
    int64_t mp = (5 * doy + 2) / 153;                                    /* March = 0 */
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static void
digits(char *out, int64_t v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        out[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

typedef struct {
    int64_t sec;  /* the second `head` holds, or INT64_MIN */
    char head[19];
} Clock;

/* Writes the protojson text of t (ns since the epoch: years 1677-2262); returns its length. */
static int
timestamp(Clock *c, int64_t t, char *out)
{
    int64_t sec = t / NS, nanos = t % NS;
    if (nanos < 0) { /* floor division: nanos within [0, NS) before 1970 too */
        nanos += NS;
        sec -= 1;
    }
    if (sec != c->sec) {
        int64_t days = sec / 86400, rest = sec % 86400;
        if (rest < 0) {
            rest += 86400;
            days -= 1;
        }
        int64_t y;
        int m, d;
        civil(days, &y, &m, &d);
        char *h = c->head;
        digits(h, y, 4);
        h[4] = '-';
        digits(h + 5, m, 2);
        h[7] = '-';
        digits(h + 8, d, 2);
        h[10] = 'T';
        digits(h + 11, rest / 3600, 2);
        h[13] = ':';
        digits(h + 14, rest / 60 % 60, 2);
        h[16] = ':';
        digits(h + 17, rest % 60, 2);
        c->sec = sec;
    }
    memcpy(out, c->head, 19);
    int n = 19;
    if (nanos) {
        out[n++] = '.';
        if (nanos % 1000000 == 0) {
            digits(out + n, nanos / 1000000, 3);
            n += 3;
        } else if (nanos % 1000 == 0) {
            digits(out + n, nanos / 1000, 6);
            n += 6;
        } else {
            digits(out + n, nanos, 9);
            n += 9;
        }
    }
    out[n++] = 'Z';
    return n;
}

/* ------------------------------------------------------------------ buffers */

#define FILE_BUFFER (1 << 20)

static int
write_all(int fd, const char *p, Py_ssize_t n)
{
    while (n > 0) {
        ssize_t k;
        Py_BEGIN_ALLOW_THREADS
        k = write(fd, p, (size_t)n);
        Py_END_ALLOW_THREADS
        if (k < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    return -1;
                continue;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        p += k;
        n -= k;
    }
    return 0;
}

typedef struct {
    Py_buffer view;
    int held;
} Buf;

static int
int64s(PyObject *obj, Buf *b, const char *what, Py_ssize_t need)
{
    if (PyObject_GetBuffer(obj, &b->view, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    b->held = 1;
    if (b->view.len % 8 || (need >= 0 && b->view.len / 8 < need)) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd int64 values", what, need);
        return -1;
    }
    return 0;
}

static void
release(Buf *b)
{
    if (b->held)
        PyBuffer_Release(&b->view);
    b->held = 0;
}

/* ------------------------------------------------------------------ flatten */

static PyObject *
flatten(PyObject *self, PyObject *args)
{
    PyObject *chunks;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &chunks))
        return NULL;
    Py_ssize_t nchunks = PyList_GET_SIZE(chunks), total = 0;
    for (Py_ssize_t i = 0; i < nchunks; i++) {
        PyObject *evs = PyList_GET_ITEM(chunks, i);
        if (!PyList_Check(evs)) {
            PyErr_SetString(PyExc_TypeError, "a session is a list of events");
            return NULL;
        }
        total += PyList_GET_SIZE(evs);
    }
    PyObject *offs = PyBytes_FromStringAndSize(NULL, total * 8);
    PyObject *nodes = PyBytes_FromStringAndSize(NULL, total * 8);
    PyObject *counts = PyBytes_FromStringAndSize(NULL, nchunks * 8);
    PyObject *bodies = PyList_New(total);
    if (!offs || !nodes || !counts || !bodies)
        goto fail;
    int64_t *o = (int64_t *)PyBytes_AS_STRING(offs), *nd = (int64_t *)PyBytes_AS_STRING(nodes);
    int64_t *cn = (int64_t *)PyBytes_AS_STRING(counts);
    Py_ssize_t j = 0;
    for (Py_ssize_t i = 0; i < nchunks; i++) {
        PyObject *evs = PyList_GET_ITEM(chunks, i);
        Py_ssize_t k = PyList_GET_SIZE(evs);
        cn[i] = k;
        for (Py_ssize_t e = 0; e < k; e++, j++) {
            PyObject *ev = PyList_GET_ITEM(evs, e);
            if (!PyTuple_Check(ev) || PyTuple_GET_SIZE(ev) != 3) {
                PyErr_SetString(PyExc_TypeError, "an event is an (offset, node, body) tuple");
                goto fail;
            }
            o[j] = PyLong_AsLongLong(PyTuple_GET_ITEM(ev, 0));
            nd[j] = PyLong_AsLongLong(PyTuple_GET_ITEM(ev, 1));
            if (PyErr_Occurred())
                goto fail;
            PyObject *b = PyTuple_GET_ITEM(ev, 2);
            Py_INCREF(b);
            PyList_SET_ITEM(bodies, j, b);
        }
    }
    return Py_BuildValue("(NNNN)", offs, nodes, counts, bodies);
fail:
    Py_XDECREF(offs);
    Py_XDECREF(nodes);
    Py_XDECREF(counts);
    Py_XDECREF(bodies);
    return NULL;
}

/* ------------------------------------------------------------------ lines */

static PyObject *
lines(PyObject *self, PyObject *args)
{
    PyObject *bodies, *order_o, *times_o, *nodes_o, *tails;
    Py_buffer uuids;
    const char *head, *emitter;
    Py_ssize_t head_n, emitter_n, split;
    PyObject *out_o = Py_None;
    if (!PyArg_ParseTuple(args, "O!OOOy*O!y#y#n|O", &PyList_Type, &bodies, &order_o, &times_o, &nodes_o, &uuids,
                          &PyList_Type, &tails, &head, &head_n, &emitter, &emitter_n, &split, &out_o))
        return NULL;
    Buf order = {0}, times = {0}, nodes = {0}, target = {0};
    int fd = -1;
    if (PyLong_Check(out_o)) {
        fd = _PyLong_AsInt(out_o);
        if (fd < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "out: a negative descriptor");
            PyBuffer_Release(&uuids);
            return NULL;
        }
    } else if (out_o != Py_None) {
        if (PyObject_GetBuffer(out_o, &target.view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            PyBuffer_Release(&uuids);
            return NULL;
        }
        target.held = 1;
    }
    PyObject *blob = NULL, *offsets = NULL, *spill = NULL, *result = NULL;
    char *tmp = NULL, *fbuf = NULL;
    Py_ssize_t n = uuids.len / 36;
    if (uuids.len % 36) {
        PyErr_SetString(PyExc_ValueError, "uuids: 36 bytes each");
        goto done;
    }
    if (int64s(order_o, &order, "order", n) < 0 || int64s(times_o, &times, "times", n) < 0
        || int64s(nodes_o, &nodes, "nodes", n) < 0)
        goto done;
    if (split < 0 || split > n) {
        PyErr_SetString(PyExc_ValueError, "split out of range");
        goto done;
    }
    const int64_t *ord = order.view.buf, *tm = times.view.buf, *nd = nodes.view.buf;
    Py_ssize_t nb = PyList_GET_SIZE(bodies), ntails = PyList_GET_SIZE(tails);
    for (Py_ssize_t t = 0; t < ntails; t++) {
        if (!PyBytes_Check(PyList_GET_ITEM(tails, t))) {
            PyErr_SetString(PyExc_TypeError, "tails must be bytes");
            goto done;
        }
    }
    /* sizes first: the lines are written into one bytes object of the exact length */
    Clock clk = {INT64_MIN, {0}};
    char ts[32];
    Py_ssize_t fixed = head_n + 10 + 36 + emitter_n + 3, size = 0, longest = 0, max_line = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (ord[i] < 0 || ord[i] >= nb || nd[i] < 0 || nd[i] >= ntails) {
            PyErr_SetString(PyExc_IndexError, "event index or node out of range");
            goto done;
        }
        Py_ssize_t bl = body_len(PyList_GET_ITEM(bodies, ord[i]));
        if (bl < 0)
            goto done;
        Py_ssize_t len = fixed + 2 * timestamp(&clk, tm[i], ts) + bl + PyBytes_GET_SIZE(PyList_GET_ITEM(tails, nd[i]));
        if (len > max_line)
            max_line = len;
        if (i < split)
            size += len;
        else if (len > longest)
            longest = len;
    }
    /* To a file: through a small buffer that stays in the cache, instead of a fresh blob of
     * tens of MB whose every page is faulted in and zeroed before it is copied to the file. */
    Py_ssize_t cap = fd >= 0 ? (max_line > FILE_BUFFER ? max_line : FILE_BUFFER) : size;
    /* into the caller's buffer where the lines fit (else a new bytes object, as without one) */
    int direct = target.held && size <= target.view.len;
    blob = fd >= 0 || direct ? (Py_INCREF(Py_None), Py_None) : PyBytes_FromStringAndSize(NULL, size);
    offsets = PyBytes_FromStringAndSize(NULL, (split + 1) * 8);
    spill = PyList_New(n - split);
    tmp = longest ? PyMem_Malloc(longest) : NULL;
    fbuf = fd >= 0 ? PyMem_Malloc(cap > 0 ? cap : 1) : NULL;
    if (!blob || !offsets || !spill || (longest && !tmp) || (fd >= 0 && !fbuf)) {
        if ((longest && !tmp) || (fd >= 0 && !fbuf))
            PyErr_NoMemory();
        goto done;
    }
    int64_t *off = (int64_t *)PyBytes_AS_STRING(offsets);
    char *base = fd >= 0 ? fbuf : direct ? (char *)target.view.buf : PyBytes_AS_STRING(blob), *w = base;
    Py_ssize_t flushed = 0; /* bytes of earlier buffers already written to fd */
    const char *uu = uuids.buf;
    clk.sec = INT64_MIN;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (fd >= 0 && i < split && cap - (w - base) < max_line) {
            if (write_all(fd, base, w - base) < 0)
                goto done;
            flushed += w - base;
            w = base;
        }
        char *start = i < split ? w : tmp;
        char *p = start;
        int tn = timestamp(&clk, tm[i], ts);
        memcpy(p, head, head_n);
        p += head_n;
        memcpy(p, ts, tn);
        p += tn;
        memcpy(p, "\",\"uuid\":\"", 10);
        p += 10;
        memcpy(p, uu + 36 * i, 36);
        p += 36;
        memcpy(p, emitter, emitter_n);
        p += emitter_n;
        p = body_write(PyList_GET_ITEM(bodies, ord[i]), p);
        PyObject *tail = PyList_GET_ITEM(tails, nd[i]);
        memcpy(p, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
        p += PyBytes_GET_SIZE(tail);
        memcpy(p, ts, tn);
        p += tn;
        memcpy(p, "\"}\n", 3);
        p += 3;
        if (i < split) {
            off[i] = flushed + (start - base);
            w = p;
        } else {
            PyObject *s = PyUnicode_DecodeUTF8(start, p - start, "strict");
            if (s == NULL)
                goto done;
            PyList_SET_ITEM(spill, i - split, s);
        }
    }
    if (fd >= 0 && w > base && write_all(fd, base, w - base) < 0)
        goto done;
    off[split] = flushed + (w - base);
    result = Py_BuildValue("(OOO)", blob, offsets, spill);
done:
    PyMem_Free(tmp);
    PyMem_Free(fbuf);
    Py_XDECREF(blob);
    Py_XDECREF(offsets);
    Py_XDECREF(spill);
    release(&order);
    release(&times);
    release(&nodes);
    release(&target);
    PyBuffer_Release(&uuids);
    return result;
}

static PyMethodDef methods[] = {
    {"flatten", flatten, METH_VARARGS,
     "flatten(sessions) -> (offsets, nodes, counts, bodies): a segment's sessions (lists of\n"
     "(offset, node, body) events) as int64 buffers of offsets and nodes, int64 events per session,\n"
     "and the list of bodies, in session order."},
    {"lines", lines, METH_VARARGS,
     "lines(bodies, order, times, nodes, uuids, tails, head, emitter, split, out=None) -> (blob, offsets, spill):\n"
     "exporter lines of events bodies[order[i]] at times[i] (ns, sorted) on nodes[i], with uuids\n"
     "(36 bytes each); lines [0, split) joined into blob with their int64 start offsets (and the\n"
     "end), the rest as a list of str. `out`: a descriptor to write the lines to, or a writable\n"
     "buffer to put them in if they fit; blob is None when they went there."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_render", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__render(void)
{
    return PyModule_Create(&module);
}
