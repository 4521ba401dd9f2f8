// Schemas of every ger_kernels op, defined once, and their shape checks.
#include <torch/library.h>

#include "expand_filter.h"
#include "group_tables.h"

namespace ger_kernels {

namespace {

void check_group_order(int64_t group_order) {
  TORCH_CHECK(is_supported_group_order(group_order),
              "group_order must be 8 (p4m) or 4 (p4), got ", group_order);
}

void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating point tensor, got ",
              t.scalar_type());
}

}  // namespace

FilterShape check_expand_filter(const at::Tensor& weight, int64_t group_order) {
  check_group_order(group_order);
  check_floating(weight, "weight");
  TORCH_CHECK(weight.dim() == 5, "weight must be 5-D (C_out, C_in, S_in, k, k), got shape ", weight.sizes());
  const int64_t s_in = weight.size(2);
  TORCH_CHECK(s_in == 1 || s_in == group_order, "weight.shape[2] (S_in) must be 1 (lifting) or ", group_order,
              ", got ", s_in);
  TORCH_CHECK(weight.size(3) == weight.size(4), "weight must have square k x k taps, got ", weight.size(3), " x ",
              weight.size(4));
  return {weight.size(0), weight.size(1), s_in, weight.size(3), group_order};
}

FilterShape check_expand_filter_backward(const at::Tensor& grad, int64_t group_order, int64_t in_orientations) {
  check_group_order(group_order);
  check_floating(grad, "grad");
  TORCH_CHECK(in_orientations == 1 || in_orientations == group_order, "in_orientations must be 1 or ", group_order,
              ", got ", in_orientations);
  TORCH_CHECK(grad.dim() == 4, "grad must be 4-D (C_out*S, C_in*S_in, k, k), got shape ", grad.sizes());
  TORCH_CHECK(grad.size(0) % group_order == 0 && grad.size(1) % in_orientations == 0,
              "grad must have shape (C_out*", group_order, ", C_in*", in_orientations, ", k, k), got ", grad.sizes());
  TORCH_CHECK(grad.size(2) == grad.size(3), "grad must have square k x k taps, got ", grad.sizes());
  return {grad.size(0) / group_order, grad.size(1) / in_orientations, in_orientations, grad.size(2), group_order};
}

TORCH_LIBRARY(ger_kernels, m) {
  m.def("expand_filter(Tensor weight, int group_order) -> Tensor");
  m.def("expand_filter_backward(Tensor grad, int group_order, int in_orientations) -> Tensor");
}

}  // namespace ger_kernels
