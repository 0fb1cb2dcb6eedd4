/* bn_py_guard.c - bindings (placeholder until the part lands). */
#include "bn_py.h"
int bn_py_guard_add(PyObject *module) { (void)module; return 0; }
