// The Python module ger_kernels._C. It has no Python functions: importing it loads
// this library, whose static initializers register the ops under torch.ops.ger_kernels.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
