// Element type of a tensor handed to a torch-free CUDA launcher.
#pragma once

namespace ger_kernels {

enum class FloatKind { kHalf, kBFloat16, kFloat, kDouble };

}  // namespace ger_kernels
