/* bn_py_session.c - bindings: the Session type, a Python object around a
 * bn_session (the twin of protocol.keypair.Keypair's keys, counter and replay
 * window).
 *
 * The bn_session lives inside the object (BnSessionObject.s), so its address
 * is fixed for the object's lifetime: the native loop may keep a pointer to
 * it while it holds a reference.  Bad arguments raise TypeError/ValueError.
 */
#include "bn_py.h"

#include <math.h>
#include <stddef.h>
#include <string.h>
#include <sodium.h>
#include <structmember.h>

/* An int (or __index__ object) in [0, max], else TypeError / ValueError. */
static int get_uint(PyObject *arg, uint64_t max, const char *what, uint64_t *out) {
    PyObject *num = PyNumber_Index(arg);
    if (num == NULL)
        return -1;
    unsigned long long v = PyLong_AsUnsignedLongLong(num);
    Py_DECREF(num);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear(); /* negative, or above 2**64 - 1 */
    } else if (v <= max) {
        *out = v;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "%s must be in 0..%llu", what, (unsigned long long)max);
    return -1;
}

static int get_key(PyObject *arg, const char *what, uint8_t key[32]) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return -1;
    if (b.len != 32) {
        PyErr_Format(PyExc_ValueError, "%s must be 32 bytes, not %zd", what, b.len);
        PyBuffer_Release(&b);
        return -1;
    }
    memcpy(key, b.buf, 32);
    PyBuffer_Release(&b);
    return 0;
}

static PyObject *session_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"local_index", "remote_index", "send_key", "receive_key",
                             "created", NULL};
    PyObject *local, *remote, *skey, *rkey;
    double created;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOd:Session", kwlist, &local, &remote,
                                     &skey, &rkey, &created))
        return NULL;
    bn_session s;
    memset(&s, 0, sizeof s);
    uint64_t li, ri;
    if (get_uint(local, UINT32_MAX, "local_index", &li) < 0
        || get_uint(remote, UINT32_MAX, "remote_index", &ri) < 0
        || get_key(skey, "send_key", s.send_key) < 0
        || get_key(rkey, "receive_key", s.recv_key) < 0) {
        sodium_memzero(&s, sizeof s);
        return NULL;
    }
    s.local_index = (uint32_t)li;
    s.remote_index = (uint32_t)ri;
    s.send_counter = 0;
    s.created = created;
    bn_replay_init(&s.replay);
    BnSessionObject *self = (BnSessionObject *)type->tp_alloc(type, 0);
    if (self != NULL)
        memcpy(&self->s, &s, sizeof s);
    sodium_memzero(&s, sizeof s);
    return (PyObject *)self;
}

static void session_dealloc(PyObject *op) {
    BnSessionObject *self = (BnSessionObject *)op;
    sodium_memzero(&self->s, sizeof self->s);
    Py_TYPE(op)->tp_free(op);
}

/* Zero the keys for good.  The send counter goes to the message limit and the
 * creation time to -inf, so the lane's own checks (too many messages, too old)
 * refuse the session wherever a pointer to it may still sit; seal() and open()
 * refuse it here. */
static PyObject *session_wipe(PyObject *op, PyObject *unused) {
    bn_session *s = &((BnSessionObject *)op)->s;
    sodium_memzero(s->send_key, sizeof s->send_key);
    sodium_memzero(s->recv_key, sizeof s->recv_key);
    s->send_counter = BN_REJECT_AFTER_MESSAGES;
    s->created = -INFINITY;
    s->wiped = 1;
    Py_RETURN_NONE;
}

static int check_not_wiped(PyObject *op) {
    if (((BnSessionObject *)op)->s.wiped) {
        PyErr_SetString(PyExc_ValueError, "the session's keys were wiped");
        return -1;
    }
    return 0;
}

static PyObject *session_get_wiped(PyObject *op, void *closure) {
    return PyBool_FromLong(((BnSessionObject *)op)->s.wiped);
}

static PyObject *session_check(PyObject *op, PyObject *arg) {
    uint64_t counter;
    if (get_uint(arg, UINT64_MAX, "counter", &counter) < 0)
        return NULL;
    return PyLong_FromLong(bn_replay_check(&((BnSessionObject *)op)->s.replay, counter));
}

static PyObject *session_seal(PyObject *op, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "seal() takes 2 arguments (counter, plaintext), %zd given",
                     nargs);
        return NULL;
    }
    if (check_not_wiped(op) < 0)
        return NULL;
    uint64_t counter;
    if (get_uint(args[0], UINT64_MAX, "counter", &counter) < 0)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[1], &b, PyBUF_SIMPLE) < 0)
        return NULL;
    if ((size_t)b.len > crypto_aead_chacha20poly1305_ietf_MESSAGEBYTES_MAX
        || b.len > PY_SSIZE_T_MAX - BN_TRANSPORT_OVERHEAD) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "plaintext too long");
        return NULL;
    }
    PyObject *res = PyBytes_FromStringAndSize(NULL, b.len + BN_TRANSPORT_OVERHEAD);
    if (res != NULL)
        bn_seal(&((BnSessionObject *)op)->s, counter, b.buf, (size_t)b.len,
                (uint8_t *)PyBytes_AS_STRING(res));
    PyBuffer_Release(&b);
    return res;
}

static PyObject *session_open(PyObject *op, PyObject *arg) {
    if (check_not_wiped(op) < 0)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    if (b.len < BN_TRANSPORT_OVERHEAD) {
        PyBuffer_Release(&b);
        Py_RETURN_NONE;
    }
    const uint8_t *d = b.buf;
    uint64_t counter = bn_le64(d + 8);
    PyObject *res = PyBytes_FromStringAndSize(NULL, b.len - BN_TRANSPORT_OVERHEAD);
    if (res != NULL
        && bn_open(&((BnSessionObject *)op)->s, counter, d, (size_t)b.len,
                   (uint8_t *)PyBytes_AS_STRING(res)) < 0) {
        Py_DECREF(res);
        res = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&b);
    return res;
}

static PyObject *session_get_send_key(PyObject *op, void *closure) {
    return PyBytes_FromStringAndSize((const char *)((BnSessionObject *)op)->s.send_key, 32);
}

static PyObject *session_get_receive_key(PyObject *op, void *closure) {
    return PyBytes_FromStringAndSize((const char *)((BnSessionObject *)op)->s.recv_key, 32);
}

static PyObject *session_get_send_counter(PyObject *op, void *closure) {
    return PyLong_FromUnsignedLongLong(((BnSessionObject *)op)->s.send_counter);
}

static int session_set_send_counter(PyObject *op, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "send_counter cannot be deleted");
        return -1;
    }
    uint64_t v;
    if (get_uint(value, UINT64_MAX, "send_counter", &v) < 0)
        return -1;
    ((BnSessionObject *)op)->s.send_counter = v;
    return 0;
}

static PyMethodDef session_methods[] = {
    {"check", session_check, METH_O,
     "check(counter) -> 0 ok (recorded), 1 replay, 2 too old: ReplayWindow.check."},
    {"seal", (PyCFunction)(void (*)(void))session_seal, METH_FASTCALL,
     "seal(counter, plaintext) -> the whole transport datagram (aead.seal_transport)."},
    {"wipe", session_wipe, METH_NOARGS,
     "wipe(): zero the keys now (a retired session); seal() and open() then raise\n"
     "ValueError and the lane refuses it.  Dealloc zeroes them too."},
    {"open", session_open, METH_O,
     "open(datagram) -> plaintext, or None when it is shorter than 32 bytes or fails\n"
     "authentication (counter from its header; the replay window is not touched)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef session_members[] = {
    {"local_index", T_UINT, offsetof(BnSessionObject, s.local_index), READONLY, NULL},
    {"remote_index", T_UINT, offsetof(BnSessionObject, s.remote_index), READONLY, NULL},
    {"created", T_DOUBLE, offsetof(BnSessionObject, s.created), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef session_getset[] = {
    {"send_key", session_get_send_key, NULL, NULL, NULL},
    {"receive_key", session_get_receive_key, NULL, NULL, NULL},
    {"send_counter", session_get_send_counter, session_set_send_counter, NULL, NULL},
    {"wiped", session_get_wiped, NULL, "the keys were zeroed by wipe()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject BnSession_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bridger.native._lane.Session",
    .tp_basicsize = sizeof(BnSessionObject),
    .tp_dealloc = session_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Session(local_index, remote_index, send_key, receive_key, created):\n"
              "one transport session's keys, send counter and replay window (the\n"
              "native twin of protocol.keypair.Keypair).",
    .tp_methods = session_methods,
    .tp_members = session_members,
    .tp_getset = session_getset,
    .tp_new = session_new,
};

/* aead_seal / aead_open: bn_aead_seal / bn_aead_open for the RFC 8439 tests. */
static int get_aead_args(PyObject *const *args, Py_ssize_t nargs, const char *name,
                         Py_buffer b[4]) {
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "%s() takes 4 arguments (key, nonce, aad, data)", name);
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        if (PyObject_GetBuffer(args[i], &b[i], PyBUF_SIMPLE) < 0) {
            while (i-- > 0)
                PyBuffer_Release(&b[i]);
            return -1;
        }
    }
    const char *bad = NULL;
    if (b[0].len != crypto_aead_chacha20poly1305_ietf_KEYBYTES)
        bad = "key must be 32 bytes";
    else if (b[1].len != crypto_aead_chacha20poly1305_ietf_NPUBBYTES)
        bad = "nonce must be 12 bytes";
    else if ((size_t)b[3].len > (1u << 20))
        bad = "data longer than 1 MiB";
    if (bad != NULL) {
        for (int i = 0; i < 4; i++)
            PyBuffer_Release(&b[i]);
        PyErr_SetString(PyExc_ValueError, bad);
        return -1;
    }
    return 0;
}

static PyObject *py_aead_seal(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer b[4];
    if (get_aead_args(args, nargs, "aead_seal", b) < 0)
        return NULL;
    PyObject *res = PyBytes_FromStringAndSize(NULL, b[3].len + BN_TAG_LEN);
    if (res != NULL)
        bn_aead_seal(b[0].buf, b[1].buf, b[2].buf, (size_t)b[2].len, b[3].buf, (size_t)b[3].len,
                     (uint8_t *)PyBytes_AS_STRING(res));
    for (int i = 0; i < 4; i++)
        PyBuffer_Release(&b[i]);
    return res;
}

static PyObject *py_aead_open(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer b[4];
    if (get_aead_args(args, nargs, "aead_open", b) < 0)
        return NULL;
    PyObject *res;
    if (b[3].len < BN_TAG_LEN) {
        res = Py_NewRef(Py_None);
    } else {
        size_t m = (size_t)b[3].len - BN_TAG_LEN;
        res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)m);
        if (res != NULL
            && bn_aead_open(b[0].buf, b[1].buf, b[2].buf, (size_t)b[2].len, b[3].buf, m,
                            (uint8_t *)PyBytes_AS_STRING(res)) != 0) {
            Py_DECREF(res);
            res = Py_NewRef(Py_None);
        }
    }
    for (int i = 0; i < 4; i++)
        PyBuffer_Release(&b[i]);
    return res;
}

static PyMethodDef aead_functions[] = {
    {"aead_seal", (PyCFunction)(void (*)(void))py_aead_seal, METH_FASTCALL,
     "aead_seal(key, nonce, aad, plaintext) -> ciphertext + tag: the AEAD step of\n"
     "Session.seal with any nonce and associated data (tests only)."},
    {"aead_open", (PyCFunction)(void (*)(void))py_aead_open, METH_FASTCALL,
     "aead_open(key, nonce, aad, ciphertext + tag) -> plaintext, or None when it fails\n"
     "authentication: the AEAD step of Session.open (tests only)."},
    {NULL, NULL, 0, NULL},
};

int bn_py_session_add(PyObject *module) {
    if (PyType_Ready(&BnSession_Type) < 0)
        return -1;
    if (PyModule_AddFunctions(module, aead_functions) < 0)
        return -1;
    return PyModule_AddType(module, &BnSession_Type);
}
