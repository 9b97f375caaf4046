#pragma once
/// @file tensor_view.hpp
/// A named, shaped, non-owning view of one parameter tensor and its gradient.

#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <ranges>
#include <string>
#include <type_traits>
#include <vector>

#include "../config.hpp"

namespace flatmin {

/// Per-tensor options. Defaults: everything on.
struct tensor_options {
  bool weight_decay = true;   ///< the base optimizer's weight decay applies to this tensor
  bool perturb = true;        ///< SAM perturbs this tensor (false: excluded from ε and its norm)
  bool adaptive = true;       ///< ASAM scales this tensor by |w| + η (false: T = 1, as for biases)
  bool mask_eligible = true;  ///< sparse masks may drop entries of this tensor (false: dense)
  /// Per-tensor multipliers of the base optimizer's learning rate and weight decay (torch's param
  /// groups): this tensor steps with lr · lr_scale and decays with weight_decay · weight_decay_scale.
  /// Finite and >= 0 (0 freezes the tensor, resp. turns its decay off); fixed at construction.
  double lr_scale = 1;
  double weight_decay_scale = 1;
  /// Per-tensor multiplier of the perturbation's radius (torch's per-group ρ, as in the official
  /// SAM, davda54/sam sam.py: scale = group["rho"] / (grad_norm + 1e-12) with one norm over every
  /// group): this tensor moves by ρ · rho_scale · dir / (‖dir‖ + ξ), the norm still taken over all
  /// perturbed tensors. 0 leaves the tensor unperturbed but in the norm (`perturb = false` takes it
  /// out of both). Finite and >= 0; fixed at construction. Compositions that do not perturb the
  /// layout's tensors (plain base optimizers, BAR, Flat-LoRA) refuse a value other than 1.
  double rho_scale = 1;
};

/// Bits of `tensor_options` as the kernels see them.
namespace tensor_flags {
inline constexpr std::uint32_t weight_decay = 1u << 0;
inline constexpr std::uint32_t perturb = 1u << 1;
inline constexpr std::uint32_t adaptive = 1u << 2;
inline constexpr std::uint32_t mask_eligible = 1u << 3;
inline constexpr std::uint32_t lora_a = 1u << 4;  ///< first factor of a registered LoRA pair
inline constexpr std::uint32_t lora_b = 1u << 5;  ///< second factor of a registered LoRA pair
/// Bits from `scale_shift` up: the tensor's slot in the layout's table of distinct (lr_scale,
/// weight_decay_scale, rho_scale) triples (backend/layout.hpp); slot 0 is (1, 1, 1). Not part of
/// the option bits.
inline constexpr std::uint32_t scale_shift = 16;
inline constexpr std::uint32_t option_bits = (1u << scale_shift) - 1;
}  // namespace tensor_flags

inline std::uint32_t to_flags(const tensor_options& o) {
  return (o.weight_decay ? tensor_flags::weight_decay : 0u) | (o.perturb ? tensor_flags::perturb : 0u) |
         (o.adaptive ? tensor_flags::adaptive : 0u) | (o.mask_eligible ? tensor_flags::mask_eligible : 0u);
}

/// A range of integers usable as a shape: `std::vector<std::int64_t>` (libtorch's
/// `sizes().vec()`), `std::array<int, 2>`, `std::span`, libtorch's `IntArrayRef`, ...
template <class R>
concept integer_range =
    std::ranges::input_range<const R> && std::integral<std::ranges::range_value_t<const R>> &&
    !std::same_as<std::ranges::range_value_t<const R>, bool>;

/// A tensor's shape as the caller wrote it, in any integer type. A negative extent is kept (as
/// `negative()`) rather than thrown here, so that `param_set::add` can name the tensor.
class tensor_shape {
 public:
  tensor_shape() = default;
  tensor_shape(std::initializer_list<std::size_t> dims) { assign(dims); }
  /// Preferred to the size_t list for a list of one integer type (`{16, 8}`, `{rows, cols}`).
  template <std::integral I>
  tensor_shape(std::initializer_list<I> dims) {
    static_assert(!std::same_as<I, bool>,
                  "flatmin: a braced list of integers is a tensor shape; write per-tensor options with "
                  "designated initializers, {.weight_decay = false}, or as flatmin::tensor_options{...}");
    assign(dims);
  }
  template <class R>
    requires integer_range<R> &&(!std::same_as<R, tensor_shape>)tensor_shape(const R& dims) { assign(dims); }

    const std::vector<std::size_t>& dims() const { return dims_; }
    bool empty() const { return dims_.empty(); }
    /// Whether an extent was negative, and the first such value.
    bool has_negative() const { return has_negative_; }
    long long negative() const { return negative_; }

   private:
    template <class R>
    void assign(const R& r) {
      for (const auto d : r) {
        if constexpr (std::is_signed_v<std::remove_cv_t<decltype(d)>>) {
          if (d < 0) {
            if (!has_negative_) negative_ = static_cast<long long>(d);
            has_negative_ = true;
            dims_.push_back(0);
            continue;
          }
        }
        dims_.push_back(static_cast<std::size_t>(d));
      }
    }

    std::vector<std::size_t> dims_;
    bool has_negative_ = false;
    long long negative_ = 0;
};

/// A non-owning view: `size` contiguous values (of type W) at `value` and their gradient (of type
/// G) at `grad`, both in `space`. The library never owns, frees or reallocates them.
template <class W, class G = W>
struct tensor_view {
  std::string name;
  W* value = nullptr;
  G* grad = nullptr;
  std::size_t size = 0;
  std::vector<std::size_t> shape;
  tensor_options options;
  memory_space space = memory_space::host;
  std::uint32_t extra_flags = 0;  ///< set by the library (LoRA membership)

  std::uint32_t flags() const { return to_flags(options) | extra_flags; }
};

}  // namespace flatmin
