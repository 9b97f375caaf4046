#pragma once
/// @file tensor_view.hpp
/// A named, shaped, non-owning view of one parameter tensor and its gradient.

#include <cstdint>
#include <string>
#include <vector>

#include "../config.hpp"

namespace flatmin {

/// Per-tensor options. Defaults: everything on.
struct tensor_options {
  bool weight_decay = true;   ///< the base optimizer's weight decay applies to this tensor
  bool perturb = true;        ///< SAM perturbs this tensor (false: excluded from ε and its norm)
  bool adaptive = true;       ///< ASAM scales this tensor by |w| + η (false: T = 1, as for biases)
  bool mask_eligible = true;  ///< sparse masks may drop entries of this tensor (false: dense)
};

/// Bits of `tensor_options` as the kernels see them.
namespace tensor_flags {
inline constexpr std::uint32_t weight_decay = 1u << 0;
inline constexpr std::uint32_t perturb = 1u << 1;
inline constexpr std::uint32_t adaptive = 1u << 2;
inline constexpr std::uint32_t mask_eligible = 1u << 3;
inline constexpr std::uint32_t lora_a = 1u << 4;  ///< first factor of a registered LoRA pair
inline constexpr std::uint32_t lora_b = 1u << 5;  ///< second factor of a registered LoRA pair
}  // namespace tensor_flags

inline std::uint32_t to_flags(const tensor_options& o) {
  return (o.weight_decay ? tensor_flags::weight_decay : 0u) | (o.perturb ? tensor_flags::perturb : 0u) |
         (o.adaptive ? tensor_flags::adaptive : 0u) | (o.mask_eligible ? tensor_flags::mask_eligible : 0u);
}

/// A non-owning view: `size` contiguous values at `value` and their gradient at `grad`, both in
/// `space`. The library never owns, frees or reallocates them.
template <class T>
struct tensor_view {
  std::string name;
  T* value = nullptr;
  T* grad = nullptr;
  std::size_t size = 0;
  std::vector<std::size_t> shape;
  tensor_options options;
  memory_space space = memory_space::host;
  std::uint32_t extra_flags = 0;  ///< set by the library (LoRA membership)

  std::uint32_t flags() const { return to_flags(options) | extra_flags; }
};

}  // namespace flatmin
