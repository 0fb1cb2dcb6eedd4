/* bn_py_lane.c - bindings (placeholder until the part lands). */
#include "bn_py.h"
int bn_py_lane_add(PyObject *module) { (void)module; return 0; }
