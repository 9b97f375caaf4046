#pragma once
/// @file unit_scores.hpp
/// The per-entry scores of the sparse masks (mask/detail/units.hpp): h(g / scale), summed into a
/// score buffer, with −1 for the entries that are not candidates. Here, below the backends, so that
/// backend::eigen's group form of the pass (backend/host/reduce_forms.hpp) can find it by its type.

#include <cstdint>

#include "../backend/layout.hpp"

namespace flatmin::kernels {

/// What a unit's score sums over its entries.
enum class score_of : std::uint8_t { square, magnitude, zero };

/// Whether a tensor's entries are candidates of a sparse mask (perturbed and eligible).
FLATMIN_HD inline bool candidate_flags(std::uint32_t f) {
  return (f & tensor_flags::perturb) && (f & tensor_flags::mask_eligible);
}

/// h(x) of one entry (x = g / scale): x², |x|, or 0.
template <class T>
FLATMIN_HD inline T score_term(T x, score_of what) {
  return what == score_of::square ? x * x : what == score_of::magnitude ? (x < T(0) ? -x : x) : T(0);
}

/// Element units: out[i] = from[i] + h(g_i / scale) on candidate entries (`from` null: h alone;
/// `from` may be `out`), −1 on the others (one element per call: no conflicts). Returns 1 for a
/// non-finite h, so that the pass that writes the scores also tells whether g had a NaN or Inf
/// (with `check_all`, also for an entry of a tensor that is not a candidate). A reduction of it is
/// a count, exact in any order.
template <class T>
struct element_scores {
  T* out;
  const T* from;
  T inv_scale;
  score_of what;
  bool check_all = false;
  template <class W, class G>
  FLATMIN_HD double operator()(const backend::elem<W, G>& e) const {
    if (!candidate_flags(e.flags)) {
      out[e.i] = T(-1);
      const T x = static_cast<T>(e.g) * inv_scale;
      return check_all && !(x - x == T(0)) ? 1.0 : 0.0;
    }
    if (what == score_of::zero) {
      out[e.i] = T(0);
      return 0;
    }
    const T h = score_term(static_cast<T>(e.g) * inv_scale, what);
    out[e.i] = from ? from[e.i] + h : h;
    return h - h == T(0) ? 0.0 : 1.0;  // false for NaN and ±inf
  }
};

}  // namespace flatmin::kernels
