/* bn_py_segment.c - bindings (placeholder until the part lands). */
#include "bn_py.h"
int bn_py_segment_add(PyObject *module) { (void)module; return 0; }
