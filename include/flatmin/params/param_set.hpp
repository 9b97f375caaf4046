#pragma once
/// @file param_set.hpp
/// `param_set<T>`: the user's parameters and gradients as named, shaped, non-owning views.

#include <algorithm>
#include <concepts>
#include <functional>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tensor_view.hpp"

namespace flatmin {

/// A contiguous buffer of `T` that exposes `data()` and `size()`: `std::vector`, `std::span`,
/// `Eigen::Matrix`, `Eigen::Map`, `Eigen::Ref`, ... Strided Eigen objects are rejected at run time.
template <class C, class T>
concept contiguous_buffer_of = requires(C& c) {
  { c.data() } -> std::convertible_to<T*>;
  { c.size() } -> std::convertible_to<std::size_t>;
};

/// Customisation point for buffers in another memory space (whose `data()` is not a `T*`):
/// specialise with `static T* data(C&)`, `static std::size_t size(const C&)` and
/// `static constexpr memory_space space`. params/thrust_views.hpp does it for
/// `thrust::device_vector`.
template <class C>
struct buffer_traits;

template <class C, class T>
concept foreign_buffer_of = requires(C& c) {
  { buffer_traits<std::remove_cv_t<C>>::data(c) } -> std::convertible_to<T*>;
  { buffer_traits<std::remove_cv_t<C>>::size(c) } -> std::convertible_to<std::size_t>;
  { buffer_traits<std::remove_cv_t<C>>::space } -> std::convertible_to<memory_space>;
};

/// Indices of the two factors of a LoRA pair (update = B·A or x·yᵀ) in a `param_set`.
struct lora_pair {
  std::string name;
  std::size_t a = 0;  ///< index of the first factor (x)
  std::size_t b = 0;  ///< index of the second factor (y)
};

/// The parameters an optimizer trains: an ordered list of `tensor_view<T>`. Views are validated as
/// they are added (null pointers, empty tensors, shape/size mismatch, value aliasing its gradient,
/// duplicate names) and `std::invalid_argument` names the offending tensor.
template <class T>
class param_set {
 public:
  using value_type = T;

  /// Adds a tensor from raw pointers. `shape` must multiply to the number of elements (at least 1).
  tensor_view<T>& add(std::string name, T* value, T* grad, std::vector<std::size_t> shape,
                      tensor_options options = {}, memory_space space = memory_space::host) {
    const std::size_t n = std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>{});
    if (shape.empty()) throw std::invalid_argument("flatmin::param_set: tensor " + detail::quote(name) + " has an empty shape");
    return push(std::move(name), value, grad, n, std::move(shape), options, space);
  }

  /// Adds a tensor from two contiguous buffers of equal size (shape taken from rows()/cols() when
  /// the buffer has them, else {size}).
  template <class V, class G>
    requires contiguous_buffer_of<std::remove_reference_t<V>, T> && contiguous_buffer_of<std::remove_reference_t<G>, T>
  tensor_view<T>& add(std::string name, V&& value, G&& grad, tensor_options options = {}) {
    check_contiguous(name, value, "value");
    check_contiguous(name, grad, "gradient");
    const std::size_t nv = static_cast<std::size_t>(value.size()), ng = static_cast<std::size_t>(grad.size());
    if (nv != ng)
      throw std::invalid_argument("flatmin::param_set: tensor " + detail::quote(name) + " has " + std::to_string(nv) +
                                  " values but " + std::to_string(ng) + " gradient entries");
    return push(std::move(name), value.data(), grad.data(), nv, shape_of(value), options, memory_space::host);
  }

  /// Adds a tensor from two buffers of another memory space (see `buffer_traits`), tagged with
  /// that space; `shape` defaults to {size}.
  template <class V, class G>
    requires foreign_buffer_of<std::remove_reference_t<V>, T> && foreign_buffer_of<std::remove_reference_t<G>, T>
  tensor_view<T>& add(std::string name, V&& value, G&& grad, tensor_options options = {},
                      std::vector<std::size_t> shape = {}) {
    using VT = buffer_traits<std::remove_cv_t<std::remove_reference_t<V>>>;
    using GT = buffer_traits<std::remove_cv_t<std::remove_reference_t<G>>>;
    static_assert(VT::space == GT::space, "flatmin::param_set: value and gradient buffers live in different memory spaces");
    const std::size_t nv = VT::size(value), ng = GT::size(grad);
    if (nv != ng)
      throw std::invalid_argument("flatmin::param_set: tensor " + detail::quote(name) + " has " + std::to_string(nv) +
                                  " values but " + std::to_string(ng) + " gradient entries");
    if (shape.empty()) shape = {nv};
    const std::size_t n = std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>{});
    if (n != nv)
      throw std::invalid_argument("flatmin::param_set: tensor " + detail::quote(name) + ": shape does not match buffer size");
    return push(std::move(name), VT::data(value), GT::data(grad), nv, std::move(shape), options, VT::space);
  }

  /// Adds a tensor from two contiguous buffers with an explicit `std::vector<std::size_t>` shape.
  /// (The shape is a deduced parameter so that a braced `{.weight_decay = false}` never picks it.)
  template <class V, class G, class S>
    requires contiguous_buffer_of<std::remove_reference_t<V>, T> && contiguous_buffer_of<std::remove_reference_t<G>, T> &&
             std::same_as<std::remove_cvref_t<S>, std::vector<std::size_t>>
  tensor_view<T>& add(std::string name, V&& value, G&& grad, S&& shape, tensor_options options = {}) {
    check_contiguous(name, value, "value");
    check_contiguous(name, grad, "gradient");
    const std::size_t nv = static_cast<std::size_t>(value.size());
    if (nv != static_cast<std::size_t>(grad.size()))
      throw std::invalid_argument("flatmin::param_set: tensor " + detail::quote(name) + ": value and gradient sizes differ");
    const std::size_t ns = std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>{});
    if (shape.empty() || ns != nv)
      throw std::invalid_argument("flatmin::param_set: tensor " + detail::quote(name) + ": shape does not match buffer size " +
                                  std::to_string(nv));
    return push(std::move(name), value.data(), grad.data(), nv, std::vector<std::size_t>(shape), options,
                memory_space::host);
  }

  /// Registers a LoRA pair (factors x = A and y = B; the update is B·A) as two tensors named
  /// `name + ".A"` and `name + ".B"`. Used by `regularize::balancedness` (BAR); every other policy
  /// treats them as ordinary tensors.
  const lora_pair& add_lora_pair(const std::string& name, T* a, T* grad_a, std::vector<std::size_t> shape_a, T* b,
                                 T* grad_b, std::vector<std::size_t> shape_b, tensor_options options = {},
                                 memory_space space = memory_space::host) {
    add(name + ".A", a, grad_a, std::move(shape_a), options, space).extra_flags |= tensor_flags::lora_a;
    try {
      add(name + ".B", b, grad_b, std::move(shape_b), options, space).extra_flags |= tensor_flags::lora_b;
    } catch (...) {  // leave the set as it was: no half-registered pair
      names_.erase(views_.back().name);
      views_.pop_back();
      throw;
    }
    pairs_.push_back({name, views_.size() - 2, views_.size() - 1});
    return pairs_.back();
  }

  const std::vector<tensor_view<T>>& tensors() const { return views_; }
  const std::vector<lora_pair>& lora_pairs() const { return pairs_; }
  const tensor_view<T>& operator[](std::size_t i) const { return views_.at(i); }
  std::size_t size() const { return views_.size(); }
  bool empty() const { return views_.empty(); }

  /// Total number of scalars over all tensors.
  std::size_t numel() const {
    std::size_t n = 0;
    for (const auto& v : views_) n += v.size;
    return n;
  }

  /// Throws std::invalid_argument if the set is empty or two views overlap in memory.
  void validate() const {
    if (views_.empty()) throw std::invalid_argument("flatmin::param_set: no tensors were added");
    struct range {
      const T* lo;
      const T* hi;
      const std::string* name;
    };
    std::vector<range> r;
    r.reserve(2 * views_.size());
    for (const auto& v : views_) {
      r.push_back({v.value, v.value + v.size, &v.name});
      r.push_back({v.grad, v.grad + v.size, &v.name});
    }
    std::sort(r.begin(), r.end(), [](const range& x, const range& y) { return std::less<const T*>{}(x.lo, y.lo); });
    for (std::size_t i = 1; i < r.size(); ++i)
      if (std::less<const T*>{}(r[i].lo, r[i - 1].hi))
        throw std::invalid_argument("flatmin::param_set: the memory of tensors " + detail::quote(*r[i - 1].name) +
                                    " and " + detail::quote(*r[i].name) + " overlaps");
  }

 private:
  tensor_view<T>& push(std::string name, T* value, T* grad, std::size_t n, std::vector<std::size_t> shape,
                       tensor_options options, memory_space space) {
    const std::string q = detail::quote(name);
    if (name.empty()) throw std::invalid_argument("flatmin::param_set: a tensor needs a name");
    if (names_.count(name)) throw std::invalid_argument("flatmin::param_set: duplicate tensor name " + q);
    if (n == 0) throw std::invalid_argument("flatmin::param_set: tensor " + q + " has no elements");
    if (value == nullptr) throw std::invalid_argument("flatmin::param_set: tensor " + q + " has a null value pointer");
    if (grad == nullptr) throw std::invalid_argument("flatmin::param_set: tensor " + q + " has a null gradient pointer");
    if (value == grad) throw std::invalid_argument("flatmin::param_set: tensor " + q + " uses the same memory for value and gradient");
    names_.insert(name);
    views_.push_back(tensor_view<T>{std::move(name), value, grad, n, std::move(shape), options, space, 0u});
    return views_.back();
  }

  template <class C>
  static void check_contiguous(const std::string& name, const C& c, const char* what) {
    if constexpr (requires { c.innerStride(); c.outerStride(); c.innerSize(); c.outerSize(); }) {
      const bool ok = c.size() == 0 || (c.innerStride() == 1 && (c.outerSize() <= 1 || c.outerStride() == c.innerSize()));
      if (!ok)
        throw std::invalid_argument("flatmin::param_set: the " + std::string(what) + " of tensor " + detail::quote(name) +
                                    " is not contiguous (strided Eigen view)");
    }
  }

  template <class C>
  static std::vector<std::size_t> shape_of(const C& c) {
    if constexpr (requires { c.rows(); c.cols(); })
      return {static_cast<std::size_t>(c.rows()), static_cast<std::size_t>(c.cols())};
    else
      return {static_cast<std::size_t>(c.size())};
  }

  std::vector<tensor_view<T>> views_;
  std::vector<lora_pair> pairs_;
  std::unordered_set<std::string> names_;
};

}  // namespace flatmin
