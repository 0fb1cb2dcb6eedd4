/* bn_py.h - the CPython bindings' shared declarations (bn_module.c calls each
 * part's add function from the module's init). */
#ifndef BN_PY_H
#define BN_PY_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "bn.h"

int bn_py_segment_add(PyObject *module);
int bn_py_guard_add(PyObject *module);
int bn_py_session_add(PyObject *module);
int bn_py_lane_add(PyObject *module);

/* The Session type (bn_py_session.c): a Python object around a bn_session. */
typedef struct {
    PyObject_HEAD
    bn_session s;
} BnSessionObject;
extern PyTypeObject BnSession_Type;
#define BnSession_Check(op) PyObject_TypeCheck(op, &BnSession_Type)

#endif
