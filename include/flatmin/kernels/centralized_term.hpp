#pragma once
/// @file centralized_term.hpp
/// Gradient centralisation of the ascent's gradient (perturb::centralized, GCSAM): the row means
/// of g and the term that hands an inner perturbation's term g − mean_row(i) instead of g.

#include <cstddef>
#include <cstdint>

#include "../backend/layout.hpp"
#include "../config.hpp"
#include "perturb_terms.hpp"
#include "rows.hpp"

namespace flatmin::kernels {

/// The mean of g (divided by the gradients' scale) over every row r of a tensor of two or more
/// dimensions, in double over row_sum's strands, rounded to T; 0 for a whole-tensor row (a tensor
/// of one dimension is not centralised, as gradient centralisation leaves biases alone).
template <class T, class W, class G>
struct row_mean_pass {
  const backend::tensor_rec<W, G>* tensors;
  const std::uint64_t* row_tensor;
  const row_table_entry* table;
  T inv_scale;
  T* means;
  FLATMIN_HD void operator()(std::size_t r) const {
    const std::uint64_t t = row_tensor[r];
    const row_table_entry e = table[t];
    if (e.row_length == tensors[t].size) {
      means[r] = T(0);
      return;
    }
    const G* g = tensors[t].g + (r - e.first_row) * e.row_length;
    const double s = row_sum(
        e.row_length, [&](std::uint64_t j) { return static_cast<double>(static_cast<T>(g[j]) * inv_scale); });
    means[r] = static_cast<T>(s / static_cast<double>(e.row_length));
  }
};

/// The inner term on the centralised gradient: norm / dir (w, g − mean_row(i)). The row is looked
/// up per element (backend::thrust) or its tensor's entry resolved by `for_tensor`
/// once per run of its segments (backend::eigen), which also resolves the inner term's.
template <class T, class Inner>
struct centralized_term {
  Inner inner;
  const row_table_entry* table;
  const T* means;
  bool resolved = false;  ///< set by for_tensor: this copy serves one tensor, `at`
  row_locator at{};

  FLATMIN_HD centralized_term for_tensor(std::uint32_t flags, std::uint32_t tensor) const {
    centralized_term r = *this;
    r.inner = backend::for_tensor(inner, flags, tensor);
    r.at = row_locator::of(table[tensor]);
    r.resolved = true;
    return r;
  }
  FLATMIN_HD T centred(T g, std::size_t i, std::uint32_t flags, std::uint32_t tensor) const {
    return resolved ? g - means[at.row(i)] : for_tensor(flags, tensor).centred(g, i, flags, tensor);
  }
  FLATMIN_HD T norm(T w, T g, std::size_t i, std::uint32_t flags, std::uint32_t tensor) const {
    return call_norm(inner, w, centred(g, i, flags, tensor), i, flags, tensor);
  }
  FLATMIN_HD T dir(T w, T g, std::size_t i, std::uint32_t flags, std::uint32_t tensor) const {
    return call_dir(inner, w, centred(g, i, flags, tensor), i, flags, tensor);
  }
};

}  // namespace flatmin::kernels
