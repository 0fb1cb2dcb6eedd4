/* bn_py_segment.c - test and reference bindings of bn_segment.c:
 * ones_sum, complete_checksum, clamp_mss, segment_tcp and coalesce, each
 * taking what its Python twin takes (bytes-like via the buffer protocol) and
 * returning what it returns; bad arguments raise TypeError or ValueError.
 */
#include "bn_py.h"

#include <limits.h>
#include <string.h>

/* An int in [lo, hi], else ValueError (TypeError for a non-int). */
static int get_int(PyObject *o, long long lo, long long hi, const char *name, long long *out) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "%s out of range [%lld, %lld]", name, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *py_ones_sum(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t s = bn_ones_sum(b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(s);
}

static PyObject *py_complete_checksum(PyObject *self, PyObject *args) {
    Py_buffer b;
    PyObject *so, *oo;
    long long start, offset;
    if (!PyArg_ParseTuple(args, "y*OO:complete_checksum", &b, &so, &oo))
        return NULL;
    if (get_int(so, 0, LLONG_MAX, "csum_start", &start) < 0
        || get_int(oo, 0, LLONG_MAX, "csum_offset", &offset) < 0) {
        PyBuffer_Release(&b);
        return NULL;
    }
    PyObject *r = PyBytes_FromStringAndSize(b.buf, b.len);
    PyBuffer_Release(&b);
    if (r == NULL)
        return NULL;
    if (bn_complete_checksum((uint8_t *)PyBytes_AS_STRING(r), (size_t)PyBytes_GET_SIZE(r),
                             (size_t)start, (size_t)offset) < 0) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_ValueError, "the checksum field is not inside the frame");
        return NULL;
    }
    return r;
}

static PyObject *py_clamp_mss(PyObject *self, PyObject *args) {
    Py_buffer b;
    PyObject *ro;
    int partial;
    long long room;
    if (!PyArg_ParseTuple(args, "y*Op:clamp_mss", &b, &ro, &partial))
        return NULL;
    /* room > 65535 could make Python's struct.pack raise; INT_MIN: no limit. */
    if (get_int(ro, INT_MIN, 0xFFFF, "room", &room) < 0) {
        PyBuffer_Release(&b);
        return NULL;
    }
    PyObject *r = PyBytes_FromStringAndSize(b.buf, b.len);
    PyBuffer_Release(&b);
    if (r == NULL)
        return NULL;
    if (!bn_clamp_mss((uint8_t *)PyBytes_AS_STRING(r), (size_t)PyBytes_GET_SIZE(r), (int)room,
                      partial)) {
        Py_DECREF(r);
        Py_RETURN_NONE;
    }
    return r;
}

/* The output buffers grow (x4) until they fit, up to this many bytes. */
#define SEGMENT_CAP_LIMIT ((size_t)64 << 20)

static PyObject *py_segment_tcp(PyObject *self, PyObject *args) {
    Py_buffer fb, hb;
    PyObject *mo;
    long long max_frame;
    if (!PyArg_ParseTuple(args, "y*y*O:segment_tcp", &fb, &hb, &mo))
        return NULL;
    PyObject *result = NULL;
    uint8_t *out = NULL;
    size_t *offs = NULL;
    uint16_t *lens = NULL;
    bn_vnet hdr;
    if (get_int(mo, INT_MIN, INT_MAX, "max_frame", &max_frame) < 0)
        goto done;
    if (hb.len != BN_VNET_HDR_LEN || bn_vnet_decode(hb.buf, (size_t)hb.len, &hdr) < 0) {
        PyErr_SetString(PyExc_ValueError, "the virtio-net header must be 10 bytes");
        goto done;
    }
    size_t len = (size_t)fb.len;
    /* At most len + 1 segments (mss >= 1). */
    size_t segs_limit = len + 1 < (size_t)INT_MAX ? len + 1 : (size_t)INT_MAX;
    size_t segs = 64, cap = len + 64 * 320;
    int csum_start = 0, count;
    for (;;) {
        if (segs > segs_limit)
            segs = segs_limit;
        PyMem_Free(out);
        PyMem_Free(offs);
        PyMem_Free(lens);
        out = PyMem_Malloc(cap);
        offs = PyMem_Malloc(segs * sizeof *offs);
        lens = PyMem_Malloc(segs * sizeof *lens);
        if (out == NULL || offs == NULL || lens == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        count = bn_segment_tcp(fb.buf, len, &hdr, (int)max_frame, out, cap, 0, 0, offs, lens,
                               (int)segs, &csum_start);
        if (count == -1) {
            PyErr_SetString(PyExc_ValueError, "cannot segment the frame (SegmentError)");
            goto done;
        }
        if (count >= 1)
            break;
        if ((segs >= segs_limit && cap >= SEGMENT_CAP_LIMIT) || cap >= SEGMENT_CAP_LIMIT) {
            PyErr_SetString(PyExc_ValueError, "too large for the native path's buffers (-2)");
            goto done;
        }
        segs *= 4;
        cap = cap * 4 < SEGMENT_CAP_LIMIT ? cap * 4 : SEGMENT_CAP_LIMIT;
    }
    PyObject *list = PyList_New(count);
    if (list == NULL)
        goto done;
    for (int i = 0; i < count; i++) {
        PyObject *s = PyBytes_FromStringAndSize((const char *)out + offs[i], lens[i]);
        if (s == NULL) {
            Py_DECREF(list);
            goto done;
        }
        PyList_SET_ITEM(list, i, s);
    }
    result = Py_BuildValue("(Ni)", list, csum_start);
done:
    PyMem_Free(out);
    PyMem_Free(offs);
    PyMem_Free(lens);
    PyBuffer_Release(&fb);
    PyBuffer_Release(&hb);
    return result;
}

/* csum[index] as (csum_start, csum_offset), both in [0, 65535]; 0 or -1. */
static int get_meta(PyObject *csum, Py_ssize_t index, bn_frame_in *f) {
    f->csum_start = -1;
    f->csum_offset = 0;
    PyObject *key = PyLong_FromSsize_t(index);
    if (key == NULL)
        return -1;
    PyObject *meta = PyDict_GetItemWithError(csum, key);
    Py_DECREF(key);
    if (meta == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(meta) || PyTuple_GET_SIZE(meta) != 2) {
        PyErr_SetString(PyExc_TypeError, "csum values must be (csum_start, csum_offset)");
        return -1;
    }
    long long start, offset;
    if (get_int(PyTuple_GET_ITEM(meta, 0), 0, 0xFFFF, "csum_start", &start) < 0
        || get_int(PyTuple_GET_ITEM(meta, 1), 0, 0xFFFF, "csum_offset", &offset) < 0)
        return -1;
    f->csum_start = (int32_t)start;
    f->csum_offset = (uint16_t)offset;
    return 0;
}

static PyObject *py_coalesce(PyObject *self, PyObject *args) {
    PyObject *frames_o, *csum;
    int udp = 0;
    if (!PyArg_ParseTuple(args, "OO!|p:coalesce", &frames_o, &PyDict_Type, &csum, &udp))
        return NULL;
    PyObject *seq = PySequence_Fast(frames_o, "frames must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *result = NULL;
    Py_ssize_t got = 0;
    Py_buffer *bufs = NULL;
    bn_frame_in *in = NULL;
    bn_out_frame *out = NULL;
    if (n > INT_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "too many frames");
        goto done;
    }
    size_t alloc_n = n ? (size_t)n : 1;
    bufs = PyMem_Malloc(alloc_n * sizeof *bufs);
    in = PyMem_Malloc(alloc_n * sizeof *in);
    out = PyMem_Malloc(alloc_n * sizeof *out);
    if (bufs == NULL || in == NULL || out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < n; got++) {
        if (PyObject_GetBuffer(items[got], &bufs[got], PyBUF_SIMPLE) < 0)
            goto done;
        if ((size_t)bufs[got].len > UINT32_MAX) {
            got++;
            PyErr_SetString(PyExc_ValueError, "frame too long");
            goto done;
        }
        in[got].data = bufs[got].buf;
        in[got].len = (uint32_t)bufs[got].len;
        if (get_meta(csum, got, &in[got]) < 0) {
            got++;
            goto done;
        }
    }
    int k = bn_coalesce2(in, (int)n, out, udp);
    PyObject *list = PyList_New(k);
    if (list == NULL)
        goto done;
    for (int i = 0; i < k; i++) {
        const bn_out_frame *o = &out[i];
        PyObject *frame;
        if (o->head_len == 0) {
            frame = items[o->first];
            Py_INCREF(frame);
        } else {
            size_t total = o->head_len;
            for (uint32_t j = o->first; j < o->first + o->count; j++)
                total += in[j].len - o->head_len;
            frame = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
            if (frame != NULL) {
                char *p = PyBytes_AS_STRING(frame);
                memcpy(p, o->head, o->head_len);
                p += o->head_len;
                for (uint32_t j = o->first; j < o->first + o->count; j++) {
                    memcpy(p, in[j].data + o->head_len, in[j].len - o->head_len);
                    p += in[j].len - o->head_len;
                }
            }
        }
        PyObject *t = frame == NULL ? NULL
                      : Py_BuildValue("(y#NII)", (const char *)o->vnet,
                                      (Py_ssize_t)BN_VNET_HDR_LEN, frame,
                                      (unsigned int)o->count, (unsigned int)o->nbytes);
        if (t == NULL) {
            Py_DECREF(list);
            goto done;
        }
        PyList_SET_ITEM(list, i, t);
    }
    result = list;
done:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&bufs[i]);
    PyMem_Free(bufs);
    PyMem_Free(in);
    PyMem_Free(out);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef segment_methods[] = {
    {"ones_sum", py_ones_sum, METH_O, "checksum.ones_sum(data) in C."},
    {"complete_checksum", py_complete_checksum, METH_VARARGS,
     "checksum.complete_checksum(frame, csum_start, csum_offset) in C (ValueError: no fit)."},
    {"clamp_mss", py_clamp_mss, METH_VARARGS, "segment.clamp_mss(frame, room, partial) in C."},
    {"segment_tcp", py_segment_tcp, METH_VARARGS,
     "segment.segment_tcp(frame, vnet_hdr_bytes, max_frame) in C (ValueError: SegmentError)."},
    {"coalesce", py_coalesce, METH_VARARGS, "list(segment.coalesce(frames, csum, udp=False)) in C."},
    {NULL, NULL, 0, NULL},
};

int bn_py_segment_add(PyObject *module) {
    return PyModule_AddFunctions(module, segment_methods);
}
