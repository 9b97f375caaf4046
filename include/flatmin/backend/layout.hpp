#pragma once
/// @file layout.hpp
/// The backend-neutral tensor table every pass runs over.
///
/// All tensors are laid end to end in one *global index space* [0, N): tensor t occupies
/// [offset_t, offset_t + size_t). The optimizer's own state (saved weights, moments, Fisher sums,
/// mask bits) is indexed by that global index and lives in contiguous backend allocations; the
/// user's values and gradients stay where they are. Each tensor is cut into *segments* of at most
/// `S` elements (S a power of two chosen by the backend); a pass is one launch over a segment list,
/// which is how one launch covers 1 or 1000 tensors, and how a block-sparse mask runs a pass over
/// its active blocks only (a shorter segment list).

#include <algorithm>
#include <array>
#include <concepts>
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../params/param_set.hpp"

namespace flatmin::backend {

/// Where a tensor lies in the global index space, without its memory: what a mask's unit lookups
/// read (the same for every element type).
struct tensor_extent {
  std::uint64_t offset;  ///< global index of element 0
  std::uint64_t size;
  std::uint32_t flags;  ///< `tensor_flags` bits
  std::uint32_t pad;
};

/// One tensor as the kernels see it: weights of type W, gradients of type G.
template <class W, class G = W>
struct tensor_rec {
  W* w;                  ///< user values
  G* g;                  ///< user gradients
  std::uint64_t offset;  ///< global index of element 0
  std::uint64_t size;
  std::uint32_t flags;  ///< `tensor_flags` bits
  std::uint32_t pad;
};

/// The frozen base weight W (rows × cols, row-major) of a LoRA pair registered with one
/// (`param_set::add_lora_pair` with a `lora_base`): its merged weight is W + scale·B·A, A and B the
/// layout's tensors `a` ({rank, cols}) and `b` ({rows, rank}). `first_row` / `first_entry` number
/// its rows and entries across every base of the layout, in registration order.
template <class W>
struct lora_base_rec {
  W* w;
  std::uint64_t rows;
  std::uint64_t cols;
  std::uint64_t rank;
  std::uint64_t first_row;
  std::uint64_t first_entry;
  double scale;
  std::uint32_t a;
  std::uint32_t b;
};

/// A run of `len` elements of tensor `tensor`, starting at element `local` of that tensor
/// (global index `index`). `slot` is where the run's first element lives in compact per-run
/// storage (equal to `index` for dense storage).
struct segment {
  std::uint64_t index;
  std::uint64_t local;
  std::uint64_t slot;
  std::uint32_t tensor;
  std::uint32_t len;
};

/// What a kernel is handed for each element: references to the user's value and gradient, the
/// global index `i`, the compact slot `k`, the tensor's index and flags. A kernel converts w and g
/// to its compute type when W or G is another type.
template <class W, class G = W>
struct elem {
  W& w;
  G& g;
  std::size_t i;
  std::size_t k;
  std::uint32_t tensor;
  std::uint32_t flags;
};

/// Whether F's form for a tensor depends on the tensor's index (`for_tensor(flags, tensor)`: RWP's
/// row table, a centred gradient's row means) or on its flags alone (`for_tensor(flags)`: the base
/// updates' lr and weight decay, the descent that forwards to them).
template <class F>
concept form_by_tensor = requires(const F& f, std::uint32_t u) {
  { f.for_tensor(u, u) } -> std::same_as<F>;
};
template <class F>
concept form_by_flags = !form_by_tensor<F> && requires(const F& f, std::uint32_t u) {
  { f.for_tensor(u) } -> std::same_as<F>;
};

/// A pass functor's form for the elements of one tensor (index `tensor`, its `flags`):
/// `f.for_tensor(flags, tensor)` or `f.for_tensor(flags)` when the functor has one (the base
/// updates resolve their per-tensor lr / weight-decay multipliers there, the descent pass forwards
/// to its base update, the ascent pass to its term), else `f` itself. The result computes bit for
/// bit what `f` computes on that tensor's elements. The host backend calls it once per run of
/// segments that share the form (backend/host/tensor_forms.hpp), so that the element loop holds
/// no per-tensor lookup and vectorises; the Thrust backend runs `f` as it is, which resolves per
/// element.
template <class F>
FLATMIN_HD F for_tensor(const F& f, std::uint32_t flags, std::uint32_t tensor) {
  if constexpr (form_by_tensor<F>) {
    return f.for_tensor(flags, tensor);
  } else if constexpr (form_by_flags<F>) {
    return f.for_tensor(flags);
  } else {
    return f;
  }
}

/// One segment resolved to its tensor's memory, as a host fast form sees it (backend/host/).
template <class W, class G = W>
struct segment_view {
  W* w;
  G* g;
  std::uint32_t len;
  std::uint32_t flags;
  std::uint64_t index;  ///< global index of the first element
  std::uint32_t tensor = 0;  ///< the tensor's place in the layout
};

/// What `Backend::count_and_collect` returns: how many indices the classifier marked 1 (counted)
/// and 2 (collected; their indices were written only if they fit the caller's capacity).
struct count_collect_result {
  std::uint64_t counted = 0;
  std::uint64_t collected = 0;
};
/// A classifier's optional host fast path over 32 consecutive indices: how many are 1, and the
/// bit mask of the 2s (bit j: index i + j).
struct code_group {
  std::uint32_t ones = 0;
  std::uint32_t twos = 0;
};

/// A pass: a tensor table and a segment list, both in the backend's memory.
template <class W, class G = W>
struct pass_range {
  const tensor_rec<W, G>* tensors = nullptr;
  const segment* segments = nullptr;
  std::size_t count = 0;     ///< number of segments
  std::size_t elements = 0;  ///< total elements over the segments
};

/// Host-side tensor table of a `param_set`.
template <class W, class G>
std::vector<tensor_rec<W, G>> make_tensor_table(const param_set<W, G>& ps) {
  std::vector<tensor_rec<W, G>> t;
  t.reserve(ps.size());
  std::uint64_t off = 0;
  for (const auto& v : ps.tensors()) {
    t.push_back({v.value, v.grad, off, v.size, v.flags(), 0u});
    off += v.size;
  }
  return t;
}

/// Cuts every tensor into segments of at most `seg` elements (dense storage: slot == index).
template <class W, class G>
std::vector<segment> make_segments(const std::vector<tensor_rec<W, G>>& tensors, std::size_t seg) {
  std::vector<segment> s;
  for (std::uint32_t t = 0; t < tensors.size(); ++t)
    for (std::uint64_t b = 0; b < tensors[t].size; b += seg) {
      const auto len = static_cast<std::uint32_t>(std::min<std::uint64_t>(seg, tensors[t].size - b));
      s.push_back({tensors[t].offset + b, b, tensors[t].offset + b, t, len});
    }
  return s;
}

}  // namespace flatmin::backend

namespace flatmin::backend {

/// `Backend` for a policy whose state type T is not the element type of the user's weights (W) or
/// gradients (G): the optimizer instantiates its policies' states as `state<T, with_elements<
/// Backend, W, G>>` then, and as `state<T, Backend>` when W = G = T. It is `Backend` in all but
/// the element types its `layout` binds (`weight_of`, `grad_of`).
template <class Backend, class W, class G>
struct with_elements : Backend {
  using base_backend = Backend;
};

/// The element types a layout of (T, Backend) binds: T for both, unless Backend says otherwise.
template <class T, class Backend>
struct element_types {
  using weight = T;
  using grad = T;
};
template <class T, class Backend, class W, class G>
struct element_types<T, with_elements<Backend, W, G>> {
  using weight = W;
  using grad = G;
};
template <class T, class Backend>
using weight_of = typename element_types<T, Backend>::weight;
template <class T, class Backend>
using grad_of = typename element_types<T, Backend>::grad;
/// What a policy of (T, Backend) is handed: the range of a pass and an element.
template <class T, class Backend>
using range_of = pass_range<weight_of<T, Backend>, grad_of<T, Backend>>;
template <class T, class Backend>
using elem_of = elem<weight_of<T, Backend>, grad_of<T, Backend>>;

/// A `param_set` bound to a backend: the tensor table and the full segment list in the backend's
/// memory, plus their host copies. Built once when an optimizer is constructed. T is the state
/// type of the policies that use it; the user's element types are `weight_type` and `grad_type`.
template <class T, class Backend>
class layout {
 public:
  using weight_type = weight_of<T, Backend>;
  using grad_type = grad_of<T, Backend>;
  using rec_type = tensor_rec<weight_type, grad_type>;
  using range_type = pass_range<weight_type, grad_type>;

  explicit layout(const param_set<weight_type, grad_type>& ps)
      : host_tensors_(make_tensor_table(ps)),
        host_segments_(make_segments(host_tensors_, Backend::segment_size)),
        tensors_(Backend::from_host(host_tensors_)),
        segments_(Backend::from_host(host_segments_)) {
    assign_scale_slots(ps);
    for (const auto& v : ps.tensors())
      host_row_lengths_.push_back(v.shape.size() > 1 && v.shape[0] > 0 ? v.size / v.shape[0] : v.size);
    std::uint64_t rows = 0, entries = 0;
    for (const auto& p : ps.lora_pairs()) {
      if (p.base == lora_pair::no_base) continue;
      const auto& f = ps.frozen()[p.base];
      host_lora_bases_.push_back({f.value, f.rows, f.cols, ps[p.a].shape[0], rows, entries, p.scale,
                                  static_cast<std::uint32_t>(p.a), static_cast<std::uint32_t>(p.b)});
      rows += f.rows;
      entries += f.rows * f.cols;
    }
    for (const auto& t : host_tensors_) {
      n_ += t.size;
      host_extents_.push_back({t.offset, t.size, t.flags, 0u});
    }
    extents_ = Backend::from_host(host_extents_);
  }

  /// Total number of scalars (the size of the global index space).
  std::size_t numel() const { return n_; }
  std::size_t tensor_count() const { return host_tensors_.size(); }
  const std::vector<rec_type>& host_tensors() const { return host_tensors_; }
  const std::vector<segment>& host_segments() const { return host_segments_; }
  const rec_type* tensors() const { return Backend::data(tensors_); }
  /// The tensors' extents, in the backend's memory and on the host.
  const tensor_extent* extents() const { return Backend::data(extents_); }
  const std::vector<tensor_extent>& host_extents() const { return host_extents_; }

  /// Per tensor, the length of one row along its first dimension (a filter: an output channel of a
  /// convolution, an output row of a linear layer's weight): size / shape[0] for a tensor of two or
  /// more dimensions, the whole size otherwise. Row-major tensors hold each row contiguously.
  const std::vector<std::uint64_t>& host_row_lengths() const { return host_row_lengths_; }

  /// The frozen base weights of the LoRA pairs registered with one, host copy (their memory is
  /// the user's, in the tensors' memory space). Not trained: no pass over the layout reads them.
  const std::vector<lora_base_rec<weight_type>>& host_lora_bases() const { return host_lora_bases_; }

  /// Every element of every tensor, dense slots.
  range_type full() const {
    return {Backend::data(tensors_), Backend::data(segments_), host_segments_.size(), n_};
  }

  /// The table of distinct (lr_scale, weight_decay_scale, rho_scale) triples, three T per slot
  /// (the slot is in each tensor's flags, `tensor_flags::scale_shift`), in the backend's memory;
  /// null when every tensor has the default (1, 1, 1), so that the base updates and the ascent then
  /// run as they did without it.
  const T* scales() const { return host_scales_.size() > 3 ? Backend::data(scales_) : nullptr; }
  /// Whether some perturbed tensor has a rho_scale other than 1.
  bool scales_rho() const { return scales_rho_; }
  const std::vector<T>& host_scales() const { return host_scales_; }

  /// A range over another segment list (in the backend's memory) of this layout.
  range_type over(const typename Backend::template vector<segment>& segs, std::size_t count,
                     std::size_t elements) const {
    return {Backend::data(tensors_), Backend::data(segs), count, elements};
  }

 private:
  /// Gives each tensor the slot of its (lr_scale, weight_decay_scale, rho_scale) triple, slot 0
  /// being (1, 1, 1).
  void assign_scale_slots(const param_set<weight_type, grad_type>& ps) {
    host_scales_ = {T(1), T(1), T(1)};
    std::vector<std::array<double, 3>> triples{{1.0, 1.0, 1.0}};
    const auto& views = ps.tensors();
    bool any = false;
    scales_rho_ = false;
    for (std::size_t t = 0; t < views.size(); ++t) {
      const tensor_options& o = views[t].options;
      const std::array<double, 3> p{o.lr_scale, o.weight_decay_scale, o.rho_scale};
      std::size_t slot = std::find(triples.begin(), triples.end(), p) - triples.begin();
      if (slot == triples.size()) {
        if (slot > 0xFFFFu)
          throw std::invalid_argument(
              "flatmin: more than 65535 distinct (lr_scale, weight_decay_scale, rho_scale) triples");
        triples.push_back(p);
        for (double x : p) host_scales_.push_back(static_cast<T>(x));
      }
      host_tensors_[t].flags |= static_cast<std::uint32_t>(slot) << tensor_flags::scale_shift;
      any = any || slot != 0;
      scales_rho_ = scales_rho_ || (o.perturb && o.rho_scale != 1.0);
    }
    if (any) tensors_ = Backend::from_host(host_tensors_);
    scales_ = Backend::from_host(host_scales_);
  }

  std::vector<rec_type> host_tensors_;
  std::vector<segment> host_segments_;
  typename Backend::template vector<rec_type> tensors_;
  typename Backend::template vector<segment> segments_;
  std::vector<tensor_extent> host_extents_;
  typename Backend::template vector<tensor_extent> extents_;
  std::vector<std::uint64_t> host_row_lengths_;
  std::vector<lora_base_rec<weight_type>> host_lora_bases_;
  std::vector<T> host_scales_;
  typename Backend::template vector<T> scales_;
  bool scales_rho_ = false;
  std::size_t n_ = 0;
};

}  // namespace flatmin::backend
