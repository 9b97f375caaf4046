#pragma once
/// @file sam_passes.hpp
/// The passes of a SAM step, generic over the policies' per-element pieces:
/// statistics of g (norms, finiteness), the ascent w ← w + ε (saving w), the exact restore, and
/// the fused restore + regularize + base update of the descent. The scalar math of each pass, one
/// path, run by every backend; backend::eigen's SIMD forms of some of them (groups of segments,
/// eight mask bits at a time) live in backend/host/ and must give the same bits.

#include "../backend/layout.hpp"
#include "math.hpp"
#include "perturb_terms.hpp"
#include "unit_scores.hpp"
#include "weight_store.hpp"

namespace flatmin::kernels {

using backend::elem;

/// Whether a mask view is 1 everywhere at compile time (mask::dense's `all`).
template <class Mask>
inline constexpr bool mask_is_all = requires {
  requires Mask::all;
};

/// Reduction over g alone: Σg² and the count of non-finite entries.
template <class T>
struct check_pass {
  T inv_scale;
  template <class W, class G>
  FLATMIN_HD grad_stats operator()(const elem<W, G>& e) const {
    const T g = static_cast<T>(e.g) * inv_scale;
    grad_stats s;
    s.bad = is_finite(g) ? 0.0 : 1.0;
    s.g2 = double(g) * double(g);
    return s;
  }
};

/// check_pass that also keeps the scaled gradient, out[i] = g · inv_scale, reading g once (SAMPa's
/// g̃ at the second point). The copy is written whatever the check finds: `out` must be scratch
/// that a skipped step does not read.
template <class T>
struct check_copy_pass {
  T inv_scale;
  T* out;
  template <class W, class G>
  FLATMIN_HD grad_stats operator()(const elem<W, G>& e) const {
    out[e.i] = static_cast<T>(e.g) * inv_scale;
    return check_pass<T>{inv_scale}(e);  // the same product, summed as the check sums it
  }
};

/// term.dir / term.norm for entry e (perturb_terms.hpp's call_dir / call_norm, with its tensor).
template <class Term, class T, class W, class G>
FLATMIN_HD T term_dir(const Term& term, T w, T g, const elem<W, G>& e) {
  return call_dir(term, w, g, e.i, e.flags, e.tensor);
}
template <class Term, class T, class W, class G>
FLATMIN_HD T term_norm(const Term& term, T w, T g, const elem<W, G>& e) {
  return call_norm(term, w, g, e.i, e.flags, e.tensor);
}

/// Reduction over g (scaled by 1/grad_scale): Σg², Σ(norm term)² over the norm's support,
/// Σ(direction)² and count over the perturbed support, and the count of non-finite entries.
template <class T, class Term, class Mask>
struct stats_pass {
  Term term;
  Mask mask;
  T inv_scale;
  bool norm_over_mask;  ///< the norm runs over the masked entries only (else over all perturbable)

  /// SAM's term (norm = dir = g): where the mask is 1, Σn² = Σd² = Σg² over the same entries in
  /// the same order (what backend/host/reduce_forms.hpp sums once for all three).
  static constexpr bool sam_term = requires { requires Term::is_gradient; };
  /// SAM's term with every entry masked in.
  static constexpr bool gradient_only = sam_term && mask_is_all<Mask>;
  /// A term that reads no gradient (Momentum-SAM's: the ascent comes before any gradient): no
  /// finiteness count and no ‖g‖ then, the views hold no gradient of this step.
  static constexpr bool reads_gradient = !requires { requires !Term::reads_gradient; };
  /// A term whose norm and dir are ±buffer[i] for a buffer `term.v` (Momentum-SAM's momentum):
  /// what backend/host/reduce_forms.hpp sums once for Σn² and Σd².
  static constexpr bool buffer_term = requires { requires Term::reads_buffer; };
  /// A term whose ε is not rescaled to a radius (perturb::gaussian's): no Σn², Σd² are taken.
  static constexpr bool normalised = !requires { requires !Term::normalised; };

  template <class W, class G>
  FLATMIN_HD grad_stats operator()(const elem<W, G>& e) const {
    const T g = reads_gradient ? static_cast<T>(e.g) * inv_scale : T(0);
    grad_stats s;
    if constexpr (reads_gradient) {
      s.bad = is_finite(g) ? 0.0 : 1.0;
      s.g2 = double(g) * double(g);
    }
    if constexpr (normalised) {
      if (e.flags & tensor_flags::perturb) {
        const bool in = mask(e.i, e.flags);
        if (in || !norm_over_mask) {
          const double n = term_norm(term, static_cast<T>(e.w), g, e);
          s.n2 = n * n;
        }
        if (in) {
          const double d = term_dir(term, static_cast<T>(e.w), g, e);
          s.d2 = d * d;
          s.kept = 1.0;
        }
      }
    } else if (e.flags & tensor_flags::perturb) {
      s.kept = mask(e.i, e.flags) ? 1.0 : 0.0;
    }
    return s;
  }
};

/// A statistics pass that also writes a sparse mask's element scores as it reads g (mask::fisher's
/// estimate F' = F + (g / scale)², unit_scores.hpp): one read of g for both, 4 B per parameter
/// fewer than the two passes. The scores are written whatever the statistics find: `scores.out` is
/// the mask's pending buffer, which a skipped step drops. The scores' own count of non-finite
/// entries is not kept (the statistics count every entry's g).
template <class Stats, class T>
struct stats_scores_pass {
  Stats stats;
  element_scores<T> scores;
  template <class W, class G>
  FLATMIN_HD grad_stats operator()(const elem<W, G>& e) const {
    static_cast<void>(scores(e));
    return stats(e);
  }
};

/// saved ← w;  w ← w + scale · dir(w, g)   on perturbed, masked entries. Computed in T, rounded
/// once to the weight type W; the saved weights are W (an exact copy). With master weights
/// (`Store`, weight_store.hpp) the move starts from the master copy, while dir() reads the weights
/// the model reads, as the statistics did.
/// `Save = false`: the same move without the save, for a backend that has copied w to `saved`
/// itself (backend::eigen's streaming stores, backend/host/stream_stores.hpp: `without_save`).
template <class T, class Term, class Mask, class W = T, class Store = nearest_store<W, T>, bool Save = true>
struct ascend_pass {
  Term term;
  Mask mask;
  T scale;
  T inv_scale;
  W* saved;
  Store store{};
  /// Per-tensor multipliers by the slot in the flags (backend/layout.hpp's scales(): the third of
  /// each triple is `tensor_options::rho_scale`); null when every tensor has (1, 1, 1), and in the
  /// copy `for_tensor` makes, whose `scale` is then that tensor's.
  const T* scales = nullptr;

  /// Without a branch on the mask inside a perturbed tensor: w is saved for every entry the range
  /// holds (each has a slot: dense storage, or a compact range of masked-in entries; the restore
  /// selects by the same mask) and the move is blended in by the mask bit.
  /// For one tensor's elements: the same pass with its term's per-tensor form
  /// (backend/layout.hpp's `for_tensor`: perturb::gaussian's row table entry) and its scale.
  FLATMIN_HD ascend_pass for_tensor(std::uint32_t flags, std::uint32_t tensor) const {
    ascend_pass r = *this;
    r.term = backend::for_tensor(term, flags, tensor);
    r.scale = scale_of(flags);
    r.scales = nullptr;
    return r;
  }

  /// This pass without the save: w's entries of perturbed tensors are to be copied to their slots
  /// of `saved` by the caller, before the move.
  FLATMIN_HD ascend_pass<T, Term, Mask, W, Store, false> without_save() const {
    return {term, mask, scale, inv_scale, saved, store, scales};
  }

  /// ρ's share of this tensor: scale · rho_scale (scale itself when every tensor has 1).
  FLATMIN_HD T scale_of(std::uint32_t flags) const {
    return scales == nullptr ? scale : scale * scales[3 * (flags >> tensor_flags::scale_shift) + 2];
  }

  template <class G>
  FLATMIN_HD void operator()(const elem<W, G>& e) const {
    if (!(e.flags & tensor_flags::perturb)) return;  // per tensor: predictable
    const W x = e.w;
    if constexpr (Save) saved[e.k] = x;
    const T w = static_cast<T>(x);
    const T from = Store::master ? store.read(e) : w;
    const T moved = from + scale_of(e.flags) * term_dir(term, w, static_cast<T>(e.g) * inv_scale, e);
    if constexpr (Store::master)  // unmasked entries keep their bits (not round(master))
      e.w = blend(mask(e.i, e.flags), static_cast<W>(moved), x);
    else
      e.w = static_cast<W>(mask_is_all<Mask> ? moved : blend(mask(e.i, e.flags), moved, w));
  }
};

/// w ← saved   on perturbed, masked entries (bit-exact). T: the weight type (no arithmetic).
template <class T, class Mask>
struct restore_pass {
  Mask mask;
  const T* saved;
  template <class G>
  FLATMIN_HD void operator()(const elem<T, G>& e) const {
    if (!(e.flags & tensor_flags::perturb)) return;  // per tensor: predictable
    e.w = mask_is_all<Mask> ? saved[e.k] : blend(mask(e.i, e.flags), saved[e.k], e.w);
  }
};

/// w ← saved (if `restore` and the entry was perturbed);  g ← adjust(w, g / grad_scale);
/// base(w, g)   — one pass, reading saved w, g_adv and the base state, writing w and the state.
/// `Restore`: −1 reads the `restore` member at run time; 0 / 1 fix it at compile time, which the
/// optimizer does (a run-time flag guarding the read of `saved` is control flow that keeps the
/// host loop from vectorising once the body is too large for the compiler to unswitch).
/// Computed in T; w is written through `Store` (weight_store.hpp): rounded once to the weight
/// type W, stochastically, or into the master copy and from it to W. With master weights the
/// step starts from the master copy, which the ascent never moved: nothing to restore.
template <class T, class Mask, class Adjust, class Base, int Restore = -1, class W = T,
          class Store = nearest_store<W, T>>
struct descend_pass {
  Mask mask;
  Adjust adjust;
  Base base;
  T inv_scale;
  const W* saved;
  bool restore;  ///< needs `saved` to hold a slot for every element of the range (dense storage)
  Store store{};

  /// For one tensor's elements: the same pass with the base update's per-tensor form
  /// (backend/layout.hpp's `for_tensor`).
  FLATMIN_HD descend_pass for_tensor(std::uint32_t flags) const {
    return {mask, adjust, backend::for_tensor(base, flags, 0u), inv_scale, saved, restore, store};
  }

  /// Whether the pass restores w from `saved` first.
  FLATMIN_HD bool restores() const { return !Store::master && (Restore < 0 ? restore : Restore == 1); }
  /// Whether it writes every entry of a tensor with these flags without using w's old value (the
  /// restore replaces it: a perturbed tensor, every entry masked in), so that a backend may hand
  /// it entries whose w holds anything (backend::eigen's streaming stores).
  FLATMIN_HD bool overwrites_weights(std::uint32_t flags) const {
    return mask_is_all<Mask> && restores() && (flags & tensor_flags::perturb) != 0;
  }

  template <class G>
  FLATMIN_HD void operator()(const elem<W, G>& e) const {
    T w = store.read(e);
    if (restores()) {
      // read unconditionally and select, so that the host loop vectorises (see `restore`)
      const T s = static_cast<T>(saved[e.k]);
      w = ((e.flags & tensor_flags::perturb) && mask(e.i, e.flags)) ? s : w;
    }
    update(e, w);
  }
  /// The same with the entry's restore decided by the caller: `in` is all ones where the entry is
  /// perturbed and masked in, else zero (backend::eigen's segment form under an element bit mask
  /// reads eight mask bits at a time, backend/host/segment_forms.hpp).
  template <class G>
  FLATMIN_HD void operator()(const elem<W, G>& e, lane_t<T> in) const {
    T w = store.read(e);
    if (restores()) w = blend_lanes<T>(in, static_cast<T>(saved[e.k]), w);
    update(e, w);
  }

 private:
  /// g ← adjust(w, g / grad_scale); base(w, g); w written through the store.
  template <class G>
  FLATMIN_HD void update(const elem<W, G>& e, T w) const {
    const T g = adjust(w, static_cast<T>(e.g) * inv_scale, e);
    base(w, g, e.i, e.flags);
    store.write(e, w);
  }
};

}  // namespace flatmin::kernels
