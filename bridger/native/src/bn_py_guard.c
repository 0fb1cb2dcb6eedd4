/* bn_py_guard.c - bindings of bn_guard.c on bridger.native._lane.
 *
 * guard_config(...) packs a bn_guard_cfg into bytes (built from plain
 * arguments; bridger.native.guardcfg.guard_cfg makes them from a
 * GuardConfig); guard_fast_out / guard_fast_in take those bytes back and
 * answer for one frame; account(frame, count, nbytes) returns the counts one
 * call of bn_account adds to a zeroed bn_dir.  Bad arguments raise TypeError
 * or ValueError, never crash.
 */
#include "bn_py.h"

#include <string.h>

/* The bytes of a packed config back into a (properly aligned) struct. */
static int cfg_from_buffer(const Py_buffer *buf, bn_guard_cfg *cfg) {
    if (buf->len != (Py_ssize_t)sizeof(bn_guard_cfg)) {
        PyErr_Format(PyExc_ValueError, "guard config must be %zd bytes (from guard_config), not %zd",
                     (Py_ssize_t)sizeof(bn_guard_cfg), buf->len);
        return -1;
    }
    memcpy(cfg, buf->buf, sizeof(bn_guard_cfg));
    return 0;
}

/* Set the allow-list bits of `vlans` (an iterable of VLAN ids 1-4094). */
static int set_vlans(bn_guard_cfg *cfg, PyObject *vlans) {
    PyObject *seq = PySequence_Fast(vlans, "vlans must be None or a sequence of VLAN ids");
    if (seq == NULL)
        return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < len; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyLong_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "vlans must hold ints");
            Py_DECREF(seq);
            return -1;
        }
        int overflow = 0;
        long v = PyLong_AsLongAndOverflow(item, &overflow);
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        if (overflow || v < 1 || v > 4094) {
            PyErr_SetString(PyExc_ValueError, "vlans must be VLAN ids 1-4094");
            Py_DECREF(seq);
            return -1;
        }
        cfg->allowed[v >> 3] |= (uint8_t)(1u << (v & 7));
    }
    Py_DECREF(seq);
    return 0;
}

PyDoc_STRVAR(guard_config_doc,
"guard_config(*, on=True, dhcp_local=False, ra_local=False, vlans=None, untagged=True,\n"
"             flood_rate=0, site_id=None) -> bytes\n\n"
"A packed guard config for guard_fast_out / guard_fast_in: GuardConfig's dhcp/ra\n"
"== \"local\", vlans, untagged and flood_rate; on=False: no guard (every frame passes);\n"
"site_id (8 bytes): Guard.free_probes (None: every probe is looked at).");

static PyObject *py_guard_config(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"on",         "dhcp_local", "ra_local", "vlans", "untagged",
                             "flood_rate", "site_id",    NULL};
    int on = 1, dhcp = 0, ra = 0, untagged = 1;
    PyObject *vlans = Py_None, *flood_rate = NULL, *site_id = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$pppOpOO:guard_config", kwlist, &on,
                                     &dhcp, &ra, &vlans, &untagged, &flood_rate, &site_id))
        return NULL;
    bn_guard_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    if (site_id != Py_None) {
        if (!PyBytes_Check(site_id) || PyBytes_GET_SIZE(site_id) != (Py_ssize_t)sizeof cfg.site_id) {
            PyErr_SetString(PyExc_ValueError, "site_id must be None or 8 bytes");
            return NULL;
        }
        memcpy(cfg.site_id, PyBytes_AS_STRING(site_id), sizeof cfg.site_id);
        cfg.probe_free = 1;
    }
    cfg.on = on;
    cfg.dhcp = dhcp;
    cfg.ra = ra;
    if (flood_rate != NULL) {
        if (!PyLong_Check(flood_rate)) {
            PyErr_SetString(PyExc_TypeError, "flood_rate must be an int");
            return NULL;
        }
        int overflow = 0;
        long long rate = PyLong_AsLongLongAndOverflow(flood_rate, &overflow);
        if (rate == -1 && PyErr_Occurred())
            return NULL;
        if (overflow < 0 || (!overflow && rate < 0)) {
            PyErr_SetString(PyExc_ValueError, "flood_rate must be >= 0");
            return NULL;
        }
        cfg.storm = overflow > 0 || rate > 0;
    }
    if (vlans != Py_None) {
        cfg.have_allowed = 1;
        if (set_vlans(&cfg, vlans) < 0)
            return NULL;
        if (untagged)
            cfg.allowed[0] |= 1u;
    }
    /* Guard._plain */
    cfg.plain = !cfg.have_allowed && !cfg.dhcp && !cfg.ra;
    return PyBytes_FromStringAndSize((const char *)&cfg, (Py_ssize_t)sizeof cfg);
}

PyDoc_STRVAR(guard_fast_out_doc,
"guard_fast_out(cfg, frame, dst_known) -> bool\n\n"
"True when Guard.outbound(frame) (peer not blocked; dst_known: `known` is None or\n"
"holds frame[:6]) passes the frame on its hot path without the full look.");

/* The outbound looks' bindings: (cfg, frame, dst_known) -> fn's answer, or -1
 * with the exception set. */
typedef int (*outbound_look)(const bn_guard_cfg *g, const uint8_t *f, size_t n, int dst_known);

static int call_outbound(PyObject *args, const char *format, outbound_look fn) {
    Py_buffer cbuf, fbuf;
    int dst_known = 0;
    if (!PyArg_ParseTuple(args, format, &cbuf, &fbuf, &dst_known))
        return -1;
    bn_guard_cfg cfg;
    int r = -1;
    if (cfg_from_buffer(&cbuf, &cfg) == 0)
        r = fn(&cfg, (const uint8_t *)fbuf.buf, (size_t)fbuf.len, dst_known);
    PyBuffer_Release(&cbuf);
    PyBuffer_Release(&fbuf);
    return r;
}

static PyObject *py_guard_fast_out(PyObject *self, PyObject *args) {
    int r = call_outbound(args, "y*y*p:guard_fast_out", bn_guard_fast_out);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

PyDoc_STRVAR(guard_flood_class_doc,
"guard_flood_class(cfg, frame, dst_known) -> int\n\n"
"For a frame guard_fast_out refuses only as flooded: 1 when Guard._look would take\n"
"a token of the ND share, 2 of the general budget; 0 when Python must look.");

static PyObject *py_guard_flood_class(PyObject *self, PyObject *args) {
    int r = call_outbound(args, "y*y*p:guard_flood_class", bn_guard_flood_class);
    return r < 0 ? NULL : PyLong_FromLong(r);
}

PyDoc_STRVAR(guard_fast_in_doc,
"guard_fast_in(cfg, frame) -> bool\n\n"
"True when Guard.inbound(frame) (peer not blocked) passes the frame on its hot path\n"
"without the full look.");

static PyObject *py_guard_fast_in(PyObject *self, PyObject *args) {
    Py_buffer cbuf, fbuf;
    if (!PyArg_ParseTuple(args, "y*y*:guard_fast_in", &cbuf, &fbuf))
        return NULL;
    bn_guard_cfg cfg;
    int r = -1;
    if (cfg_from_buffer(&cbuf, &cfg) == 0)
        r = bn_guard_fast_in(&cfg, (const uint8_t *)fbuf.buf, (size_t)fbuf.len);
    PyBuffer_Release(&cbuf);
    PyBuffer_Release(&fbuf);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

/* A non-negative int that fits 64 bits, else ValueError / TypeError. */
static int as_u64(PyObject *o, const char *name, uint64_t *out) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s must be between 0 and 2**64 - 1", name);
        }
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

PyDoc_STRVAR(account_doc,
"account(frame, count, nbytes) -> tuple[int, ...]\n\n"
"What counters._account adds for `count` frames of `nbytes` headed like frame:\n"
"(frames, bytes, then dataplane.accounting.KINDS in order).");

static PyObject *py_account(PyObject *self, PyObject *args) {
    Py_buffer fbuf;
    PyObject *count_o, *nbytes_o;
    if (!PyArg_ParseTuple(args, "y*OO:account", &fbuf, &count_o, &nbytes_o))
        return NULL;
    uint64_t count = 0, nbytes = 0;
    if (as_u64(count_o, "count", &count) < 0 || as_u64(nbytes_o, "nbytes", &nbytes) < 0) {
        PyBuffer_Release(&fbuf);
        return NULL;
    }
    bn_dir d;
    memset(&d, 0, sizeof d);
    bn_account(&d, (const uint8_t *)fbuf.buf, (size_t)fbuf.len, count, nbytes);
    PyBuffer_Release(&fbuf);
    PyObject *out = PyTuple_New(2 + BN_NKINDS);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < 2 + BN_NKINDS; i++) {
        uint64_t v = i == 0 ? d.frames : i == 1 ? d.bytes : d.kinds[i - 2];
        PyObject *item = PyLong_FromUnsignedLongLong(v);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

static PyMethodDef guard_methods[] = {
    {"guard_config", (PyCFunction)(void (*)(void))py_guard_config, METH_VARARGS | METH_KEYWORDS,
     guard_config_doc},
    {"guard_fast_out", py_guard_fast_out, METH_VARARGS, guard_fast_out_doc},
    {"guard_fast_in", py_guard_fast_in, METH_VARARGS, guard_fast_in_doc},
    {"guard_flood_class", py_guard_flood_class, METH_VARARGS, guard_flood_class_doc},
    {"account", py_account, METH_VARARGS, account_doc},
    {NULL, NULL, 0, NULL},
};

int bn_py_guard_add(PyObject *module) {
    if (PyModule_AddFunctions(module, guard_methods) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "GUARD_CFG_SIZE", (long)sizeof(bn_guard_cfg));
}
