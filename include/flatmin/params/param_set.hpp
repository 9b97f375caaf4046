#pragma once
/// @file param_set.hpp
/// `param_set<T>`: the user's parameters and gradients as named, shaped, non-owning views.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <functional>
#include <initializer_list>
#include <limits>
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

/// Indices of the two factors of a LoRA pair (update = B·A or x·yᵀ) in a `param_set`, and its
/// frozen base weight when one was registered (`param_set::frozen()[base]`).
struct lora_pair {
  static constexpr std::size_t no_base = static_cast<std::size_t>(-1);
  std::string name;
  std::size_t a = 0;        ///< index of the first factor (x)
  std::size_t b = 0;        ///< index of the second factor (y)
  std::size_t base = no_base;  ///< index of the frozen base weight W in `param_set::frozen()`
  double scale = 1;         ///< s of the merged weight W + s·B·A (the LoRA α / r)
};

/// The frozen base weight W (out × in, row-major) of a LoRA pair, as `add_lora_pair` takes it:
/// the merged weight is W + scale·B·A. Not trained (no gradient, no optimizer state); only a
/// perturbation that works on the merged weight writes it (perturb::flat_lora, Flat-LoRA).
template <class T>
struct lora_base {
  T* value = nullptr;
  double scale = 1;
};

/// A non-trainable view: a frozen base weight of a LoRA pair (`param_set::frozen()`).
template <class T>
struct frozen_view {
  std::string name;  ///< the pair's name + ".base"
  T* value = nullptr;
  std::size_t rows = 0;  ///< out: B's rows
  std::size_t cols = 0;  ///< in: A's columns
  memory_space space = memory_space::host;
};

/// A buffer `param_set::add` takes: contiguous host memory or a `buffer_traits` specialisation.
template <class C, class T>
concept buffer_of = contiguous_buffer_of<C, T> || foreign_buffer_of<C, T>;

/// The parameters an optimizer trains: an ordered list of `tensor_view<T, Grad>` (weights of type
/// T, gradients of type Grad; `param_set<float>`: float both). Views are validated as they are
/// added (null pointers, empty tensors, negative extents, shape/size mismatch, value
/// aliasing its gradient, duplicate names) and `std::invalid_argument` names the offending tensor.
/// Every `add` form runs the same checks (`push`).
///
/// A braced list of integers after the buffers is always the shape (`{16, 8}`, in any one integer
/// type, or mixed with size_t); a shape may also be any range of integers (`std::vector<int64_t>`,
/// `std::array<int, 2>`, libtorch's `sizes()`). Per-tensor options are written with designated
/// initializers (`{.weight_decay = false}`) or as `tensor_options{...}`.
template <class T, class Grad = T>
class param_set {
 public:
  using value_type = T;
  using grad_type = Grad;
  using view_type = tensor_view<T, Grad>;

  /// Adds a tensor from raw pointers. `shape` must multiply to the number of elements (at least 1).
  view_type& add(std::string name, T* value, Grad* grad, tensor_shape shape, tensor_options options = {},
                 memory_space space = memory_space::host) {
    return push(std::move(name), {value, 0, space, {}}, {grad, 0, space, {}}, false, &shape, options);
  }

  /// Adds a tensor from two buffers of equal size, contiguous host memory (`std::vector`,
  /// `std::span`, `Eigen::Matrix` / `Map` / `Ref`; strided Eigen objects are rejected at run time)
  /// or another memory space (see `buffer_traits`). The shape is the buffer's: rows() × cols() when
  /// it has them, else {size}.
  template <class V, class G>
    requires buffer_of<std::remove_reference_t<V>, T> && buffer_of<std::remove_reference_t<G>, Grad>
        view_type
  &add(std::string name, V&& value, G&& grad, tensor_options options = {}) {
    return add_buffers(std::move(name), value, grad, nullptr, options);
  }

  /// The same with an explicit shape written as a braced list: `{rows, cols}`; `{}` keeps the
  /// buffer's own shape. (Ranked above `tensor_options` for a list of integers: an
  /// initializer_list is a standard conversion, an aggregate a user-defined one.)
  template <class V, class G>
    requires buffer_of<std::remove_reference_t<V>, T> && buffer_of<std::remove_reference_t<G>, Grad>
        view_type
  &add(std::string name, V&& value, G&& grad, std::initializer_list<std::size_t> shape,
       tensor_options options = {}) {
    const tensor_shape s(shape);
    return add_buffers(std::move(name), value, grad, s.empty() ? nullptr : &s, options);
  }
  template <class V, class G, std::integral I>
    requires buffer_of<std::remove_reference_t<V>, T> && buffer_of<std::remove_reference_t<G>, Grad>
        view_type
  &add(std::string name, V&& value, G&& grad, std::initializer_list<I> shape, tensor_options options = {}) {
    const tensor_shape s(shape);
    return add_buffers(std::move(name), value, grad, &s, options);
  }

  /// The same with a shape held in a range of integers or a `tensor_shape`.
  template <class V, class G, class S>
    requires buffer_of<std::remove_reference_t<V>, T> && buffer_of<std::remove_reference_t<G>, Grad> &&
        (integer_range<std::remove_cvref_t<S>> ||
         std::same_as<std::remove_cvref_t<S>, tensor_shape>)view_type& add(std::string name, V&& value,
                                                                                G&& grad, const S& shape,
                                                                                tensor_options options = {}) {
      const tensor_shape s(shape);
      return add_buffers(std::move(name), value, grad, &s, options);
    }

    /// Registers a LoRA pair (factors x = A and y = B; the update is B·A) as two tensors named
    /// `name + ".A"` and `name + ".B"`. Used by `regularize::balancedness` (BAR); every other policy
    /// treats them as ordinary tensors.
    const lora_pair& add_lora_pair(const std::string& name, T* a, Grad* grad_a, tensor_shape shape_a, T* b,
                                   Grad* grad_b, tensor_shape shape_b, tensor_options options = {},
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

    /// Registers a LoRA pair with its frozen base weight W (shape {out, in} with A {r, in} and
    /// B {out, r}): the pair as above, and W as a non-trainable view named `name + ".base"` (no
    /// gradient; `frozen()`), which perturb::flat_lora (Flat-LoRA) perturbs around the backward
    /// pass. W must not overlap any other tensor; `base.scale` (s of W + s·B·A) must be finite.
    const lora_pair& add_lora_pair(const std::string& name, T* a, Grad* grad_a, tensor_shape shape_a, T* b,
                                   Grad* grad_b, tensor_shape shape_b, lora_base<T> base,
                                   tensor_options options = {}, memory_space space = memory_space::host) {
      const auto fail = [&](const std::string& what) {
        throw std::invalid_argument("flatmin::param_set: LoRA pair " + detail::quote(name) + " " + what);
      };
      const auto& da = shape_a.dims();
      const auto& db = shape_b.dims();
      if (da.size() != 2 || db.size() != 2 || shape_a.has_negative() || shape_b.has_negative())
        fail("with a frozen base needs A of shape {r, in} and B of shape {out, r}");
      if (db[1] != da[0])
        fail("has A of " + std::to_string(da[0]) + " rows but B of " + std::to_string(db[1]) + " columns");
      if (base.value == nullptr) fail("has a null frozen base pointer");
      if (!(std::abs(base.scale) <= std::numeric_limits<double>::max()))
        fail("has scale " + detail::format_value(base.scale) + ": it must be finite");
      if (names_.count(name + ".base")) fail("has a base name " + detail::quote(name + ".base") + " in use");
      const std::size_t rows = db[0], cols = da[1];
      if (cols != 0 && rows > static_cast<std::size_t>(-1) / cols)
        fail("has a base whose size overflows size_t");
      add_lora_pair(name, a, grad_a, std::move(shape_a), b, grad_b, std::move(shape_b), options, space);
      frozen_.push_back({name + ".base", base.value, rows, cols, space});
      names_.insert(frozen_.back().name);
      pairs_.back().base = frozen_.size() - 1;
      pairs_.back().scale = base.scale;
      return pairs_.back();
    }

    const std::vector<view_type>& tensors() const { return views_; }
    const std::vector<lora_pair>& lora_pairs() const { return pairs_; }
    /// The non-trainable views (frozen base weights of LoRA pairs), in registration order.
    const std::vector<frozen_view<T>>& frozen() const { return frozen_; }
    const view_type& operator[](std::size_t i) const { return views_.at(i); }
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
      struct range {  // byte addresses: values and gradients may have different types
        const char* lo;
        const char* hi;
        const std::string* name;
      };
      std::vector<range> r;
      r.reserve(2 * views_.size());
      for (const auto& v : views_) {
        r.push_back({bytes(v.value), bytes(v.value + v.size), &v.name});
        r.push_back({bytes(v.grad), bytes(v.grad + v.size), &v.name});
      }
      for (const auto& f : frozen_) r.push_back({bytes(f.value), bytes(f.value + f.rows * f.cols), &f.name});
      std::sort(r.begin(), r.end(),
                [](const range& x, const range& y) { return std::less<const char*>{}(x.lo, y.lo); });
      for (std::size_t i = 1; i < r.size(); ++i)
        if (std::less<const char*>{}(r[i].lo, r[i - 1].hi))
          throw std::invalid_argument("flatmin::param_set: the memory of tensors " +
                                      detail::quote(*r[i - 1].name) + " and " + detail::quote(*r[i].name) +
                                      " overlaps");
    }

   private:
    /// One side of a view (value or gradient, E = T or Grad) as `push` checks it.
    template <class E>
    struct side {
      E* data;
      std::size_t size;
      memory_space space;
      std::vector<std::size_t> shape;  ///< the buffer's own shape
    };

    template <class C, class E>
    static constexpr memory_space space_of() {
      if constexpr (foreign_buffer_of<C, E>)
        return buffer_traits<std::remove_cv_t<C>>::space;
      else
        return memory_space::host;
    }

    template <class E, class C>
    static side<E> describe(const std::string& name, C& c, const char* what) {
      if constexpr (foreign_buffer_of<C, E>) {
        using traits = buffer_traits<std::remove_cv_t<C>>;
        const std::size_t n = traits::size(c);
        return {traits::data(c), n, traits::space, {n}};
      } else {
        check_contiguous(name, c, what);
        return {c.data(), static_cast<std::size_t>(c.size()), memory_space::host, shape_of(c)};
      }
    }

    template <class V, class G>
    view_type& add_buffers(std::string name, V& value, G& grad, const tensor_shape* shape,
                           tensor_options options) {
      static_assert(space_of<V, T>() == space_of<G, Grad>(),
                    "flatmin::param_set: value and gradient buffers live in different memory spaces");
      side<T> v = describe<T>(name, value, "value");
      side<Grad> g = describe<Grad>(name, grad, "gradient");
      return push(std::move(name), std::move(v), std::move(g), true, shape, options);
    }

    /// Every check of every `add` form, in one place. `sized`: the sides carry their sizes (buffers);
    /// otherwise (raw pointers) the size is the shape's product. `shape`: the explicit shape, or
    /// null for the buffer's own.
    view_type& push(std::string name, side<T> value, side<Grad> grad, bool sized, const tensor_shape* shape,
                    tensor_options options) {
      const auto fail = [&](const std::string& what) {
        throw std::invalid_argument("flatmin::param_set: tensor " + detail::quote(name) + " " + what);
      };
      if (name.empty()) throw std::invalid_argument("flatmin::param_set: a tensor needs a name");
      if (names_.count(name))
        throw std::invalid_argument("flatmin::param_set: duplicate tensor name " + detail::quote(name));
      if (shape && shape->has_negative())
        fail("has a negative extent " + std::to_string(shape->negative()) + " in its shape");
      if (shape && shape->empty()) fail("has an empty shape");
      std::vector<std::size_t> dims = shape ? shape->dims() : std::move(value.shape);
      std::size_t n = 1;
      for (const std::size_t d : dims) {
        if (d != 0 && n > static_cast<std::size_t>(-1) / d)
          fail("has a shape whose product overflows size_t");
        n *= d;
      }
      if (sized && value.size != grad.size)
        fail("has " + std::to_string(value.size) + " values but " + std::to_string(grad.size) +
             " gradient entries");
      if (sized && n != value.size)
        fail("has a shape that does not match its buffer size " + std::to_string(value.size));
      if (n == 0) fail("has no elements");
      if (value.data == nullptr) fail("has a null value pointer");
      if (grad.data == nullptr) fail("has a null gradient pointer");
      if (bytes(value.data) == bytes(grad.data)) fail("uses the same memory for value and gradient");
      if (!(options.lr_scale >= 0 && options.lr_scale <= std::numeric_limits<double>::max()))
        fail("has lr_scale " + detail::format_value(options.lr_scale) + ": it must be finite and >= 0");
      const double top = std::numeric_limits<double>::max();
      if (!(options.weight_decay_scale >= 0 && options.weight_decay_scale <= top))
        fail("has weight_decay_scale " + detail::format_value(options.weight_decay_scale) +
             ": it must be finite and >= 0");
      if (!(options.rho_scale >= 0 && options.rho_scale <= top))
        fail("has rho_scale " + detail::format_value(options.rho_scale) + ": it must be finite and >= 0");
      names_.insert(name);
      views_.push_back(view_type{std::move(name), value.data, grad.data, n, std::move(dims), options,
                                 value.space, 0u});
      return views_.back();
    }

    template <class E>
    static const char* bytes(const E* p) {
      return reinterpret_cast<const char*>(p);
    }

    template <class C>
    static void check_contiguous(const std::string& name, const C& c, const char* what) {
      if constexpr (requires {
                      c.innerStride();
                      c.outerStride();
                      c.innerSize();
                      c.outerSize();
                    }) {
        const bool ok = c.size() == 0 ||
                        (c.innerStride() == 1 && (c.outerSize() <= 1 || c.outerStride() == c.innerSize()));
        if (!ok)
          throw std::invalid_argument("flatmin::param_set: the " + std::string(what) + " of tensor " +
                                      detail::quote(name) + " is not contiguous (strided Eigen view)");
      }
    }

    template <class C>
    static std::vector<std::size_t> shape_of(const C& c) {
      if constexpr (requires {
                      c.rows();
                      c.cols();
                    })
        return {static_cast<std::size_t>(c.rows()), static_cast<std::size_t>(c.cols())};
      else
        return {static_cast<std::size_t>(c.size())};
    }

    std::vector<view_type> views_;
    std::vector<lora_pair> pairs_;
    std::vector<frozen_view<T>> frozen_;
    std::unordered_set<std::string> names_;
};

}  // namespace flatmin
