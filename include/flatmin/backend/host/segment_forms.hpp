#pragma once
/// @file segment_forms.hpp
/// backend::eigen's segment forms of the ascent and the restore under an element bit mask
/// (kernels/sam_passes.hpp): the values of the element path, the mask read eight bits per lookup
/// and blended in by integer lanes (mask_lanes.hpp); and of RWP's random ascent, row by row. A
/// pass without a form here runs element by element.

#include <cstdint>
#include <type_traits>

#include "../../kernels/gaussian.hpp"
#include "../../kernels/sam_passes.hpp"
#include "mask_lanes.hpp"

namespace flatmin::backend::host {

/// `segment_form<F>::run(f, view, slot)` runs pass f over one segment (`slot`: the saved slot of
/// its first entry); none by default.
template <class F>
struct segment_form {};

/// Whether pass F has a segment form over segments of T (what backend::eigen::for_each asks).
template <class F, class T>
concept has_segment_form = requires(const F& f, const segment_view<T>& v, std::uint64_t slot) {
  segment_form<std::remove_cvref_t<F>>::run(f, v, slot);
};

/// What a segment form under an element bit mask leaves to the element path: a segment of an
/// unperturbed tensor (nothing to do), of a tensor the mask does not cover, or of units that are
/// not elements (entry by entry through `f`). True when it handled the segment.
template <class T, class Mask, class F>
FLATMIN_SUM_INLINE bool by_elements(const F& f, const Mask& mask, const segment_view<T>& v,
                                    std::uint64_t slot) {
  if (!(v.flags & tensor_flags::perturb)) return true;
  if ((v.flags & tensor_flags::mask_eligible) && mask.element_units()) return false;
  for (std::uint32_t j = 0; j < v.len; ++j)
    f(elem<T>{v.w[j], v.g[j], v.index + j, slot + j, v.tensor, v.flags});
  return true;
}

/// saved ← w (unless the caller has copied it: `Save`);  w ← w + scale · dir(w, g), blended in by
/// the mask's lanes.
template <class T, class Term, element_bit_mask Mask, bool Save>
struct segment_form<kernels::ascend_pass<T, Term, Mask, T, kernels::nearest_store<T, T>, Save>> {
  static FLATMIN_SUM_INLINE void run(
      const kernels::ascend_pass<T, Term, Mask, T, kernels::nearest_store<T, T>, Save>& p,
      const segment_view<T>& v, std::uint64_t slot) {
    if (by_elements(p, p.mask, v, slot)) return;
    const std::uint32_t flags = v.flags;
    const auto body = [&](std::uint32_t j0, std::uint32_t n, lanes_of<T> m) {
      T* FLATMIN_RESTRICT w = v.w + j0;
      const T* FLATMIN_RESTRICT g = v.g + j0;
      T* FLATMIN_RESTRICT sv = p.saved + slot + j0;
      const std::uint64_t i0 = v.index + j0;
      FLATMIN_IVDEP
      for (std::uint32_t k = 0; k < n; ++k) {
        const T x = w[k];
        if constexpr (Save) sv[k] = x;
        const T moved = x + p.scale * p.term.dir(x, g[k] * p.inv_scale, i0 + k, flags);
        w[k] = kernels::blend_lanes<T>(m[k], moved, x);
      }
    };
    for_each_mask_run<T>(v.len, v.index, flags, p.mask, body);
  }
};

/// RWP's ascent (kernels::gaussian_term, every entry masked in, the weights their own compute
/// type): the segment row by row, each row's norm read once, so that the inner loop is the draws
/// alone and vectorises (about 5× the element path on AVX2: bench_passes opt_rwp_sgd). The
/// operations per entry are the element path's, so are the bits. The term has been resolved for
/// the segment's tensor (`for_tensor`).
template <class T, class Mask, class Store, bool Save>
  requires(kernels::mask_is_all<Mask> && !Store::master)
struct segment_form<kernels::ascend_pass<T, kernels::gaussian_term<T>, Mask, T, Store, Save>> {
  using pass = kernels::ascend_pass<T, kernels::gaussian_term<T>, Mask, T, Store, Save>;
  static FLATMIN_SUM_INLINE void run(const pass& p, const segment_view<T>& v, std::uint64_t slot) {
    if (!(v.flags & tensor_flags::perturb)) return;
    const kernels::gaussian_term<T>& term = p.term;
    T* FLATMIN_RESTRICT w = v.w;
    T* FLATMIN_RESTRICT sv = p.saved + slot;
    const T scale = p.scale;
    const std::uint64_t seed = term.seed, stream = term.stream, index = v.index;
    std::uint32_t j = 0;
    const kernels::row_locator& at = term.at;
    while (j < v.len) {
      const std::uint64_t x = index + j - at.offset;  // the entry's place in its tensor
      const std::uint64_t row = x / at.row_length;
      const std::uint64_t left = (row + 1) * at.row_length - x;  // entries of this row from j on
      const std::uint32_t stop = left < v.len - j ? j + static_cast<std::uint32_t>(left) : v.len;
      const double n = static_cast<double>(term.norms[at.first_row + row]);
      for (; j < stop; ++j) {
        const T w0 = w[j];
        if constexpr (Save) sv[j] = w0;
        const double z = kernels::standard_normal(kernels::counter_hash(seed, stream, index + j));
        const T d = static_cast<T>(n * z);
        w[j] = w0 + scale * d;
      }
    }
  }
};

/// The descent under an element bit mask (FSAM's and SSAM's element units): the restore's select
/// by the mask's lanes, eight bits per lookup, written for a run of entries before the run's body
/// (`for_each_mask_run`), and the rest of the body the element path's (the pass's own
/// `operator()(e, lane)`). The element path looked a unit and a bit up per entry, which
/// kept the loop from vectorising: the descent was 44 % of an FSAM-SGD step at 10^7 (bench_passes
/// opt_fsam_sgd). Segments the lanes do not cover (no restore, a tensor that is not perturbed or not
/// eligible, units that are not elements) run the element path.
template <class T, element_bit_mask Mask, class Adjust, class Base, int Restore, class Store>
  requires(!Store::master)
struct segment_form<kernels::descend_pass<T, Mask, Adjust, Base, Restore, T, Store>> {
  using pass = kernels::descend_pass<T, Mask, Adjust, Base, Restore, T, Store>;
  static FLATMIN_SUM_INLINE void run(const pass& p, const segment_view<T>& v, std::uint64_t slot) {
    T* FLATMIN_RESTRICT w = v.w;
    T* FLATMIN_RESTRICT g = v.g;  // not written: an elem refers to it
    const std::uint64_t index = v.index;
    const std::uint32_t flags = v.flags, len = v.len, tensor = v.tensor;
    if (!p.restores() || !(flags & tensor_flags::perturb) || !(flags & tensor_flags::mask_eligible) ||
        !p.mask.element_units()) {
      FLATMIN_IVDEP
      for (std::uint32_t j = 0; j < len; ++j) p(elem<T>{w[j], g[j], index + j, slot + j, tensor, flags});
      return;
    }
    const auto body = [&](std::uint32_t j0, std::uint32_t n, lanes_of<T> m) {
      // the run's own pointers and indices, so that the loop's addresses are affine in k (with
      // j0 + k in 32 bits GCC could not rule out a wrap, and did not vectorise)
      T* FLATMIN_RESTRICT wr = w + j0;
      T* FLATMIN_RESTRICT gr = g + j0;
      const std::uint64_t i0 = index + j0, s0 = slot + j0;
      FLATMIN_IVDEP
      for (std::uint32_t k = 0; k < n; ++k) p(elem<T>{wr[k], gr[k], i0 + k, s0 + k, tensor, flags}, m[k]);
    };
    for_each_mask_run<T>(len, index, flags, p.mask, body);
  }
};

/// w ← saved, blended in by the mask's lanes.
template <class T, element_bit_mask Mask>
struct segment_form<kernels::restore_pass<T, Mask>> {
  static FLATMIN_SUM_INLINE void run(const kernels::restore_pass<T, Mask>& p, const segment_view<T>& v,
                                     std::uint64_t slot) {
    if (by_elements(p, p.mask, v, slot)) return;
    const auto body = [&](std::uint32_t j0, std::uint32_t n, lanes_of<T> m) {
      T* FLATMIN_RESTRICT w = v.w + j0;
      const T* FLATMIN_RESTRICT sv = p.saved + slot + j0;
      FLATMIN_IVDEP
      for (std::uint32_t k = 0; k < n; ++k) w[k] = kernels::blend_lanes<T>(m[k], sv[k], w[k]);
    };
    for_each_mask_run<T>(v.len, v.index, v.flags, p.mask, body);
  }
};

}  // namespace flatmin::backend::host
