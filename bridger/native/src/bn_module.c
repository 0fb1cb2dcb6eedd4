/* bn_module.c - bridger.native._lane: the native per-packet path. */
#include "bn_py.h"
#include <sodium.h>

static struct PyModuleDef lane_module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "bridger.native._lane",
    .m_doc = "bridger's native per-packet path (see bridger/native/__init__.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__lane(void) {
    if (sodium_init() < 0) {
        PyErr_SetString(PyExc_ImportError, "libsodium failed to initialise");
        return NULL;
    }
    PyObject *m = PyModule_Create(&lane_module);
    if (m == NULL)
        return NULL;
    if (bn_py_segment_add(m) < 0 || bn_py_guard_add(m) < 0 || bn_py_session_add(m) < 0
        || bn_py_lane_add(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
