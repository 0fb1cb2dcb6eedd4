/* bn_py_session.c - bindings (placeholder until the part lands). */
#include "bn_py.h"
int bn_py_session_add(PyObject *module) { (void)module; return 0; }
