#pragma once
/// @file isa_clones.hpp
/// backend::eigen's hot passes (the statistics and finiteness reductions, the ascent, the restore
/// and the fused descent of kernels/sam_passes.hpp, over weights and gradients of float, double,
/// bfloat16 or half, written to nearest or through master weights) compiled three times in the
/// same header-only build, for the baseline, AVX2 and AVX-512 (F, BW, VL), and run on the
/// instruction set `active_isa()` names (isa.hpp): a plain -O2 build gets the wide kernels without
/// -march. The 16-bit conversions are integer code without branches (numeric/), which vectorises
/// in every clone and gives the same bits; the baseline's SSE2 has no 16-to-32-bit widening or
/// unsigned narrowing, so 16-bit passes gain the most from the wider clones.
///
/// Each clone is a function template with a `target` attribute and `flatten`, so that everything
/// it calls (the segment loop, the pass's functor and its policies' pieces) is inlined into it and
/// compiled for its target. Bits do not depend on the clone:
/// - no contraction: a·b + c fused into one FMA rounds once where the baseline rounds twice.
///   GCC: every clone has `optimize("fp-contract=off")` (GCC's default in GNU mode is `fast`).
///   Clang contracts within an expression (`-ffp-contract=on`) whenever the target has FMA, and a
///   function's target cannot drop FMA while keeping AVX-512: its AVX2 clone targets AVX2 without
///   FMA, and it compiles no AVX-512 clone (`avx512` runs the AVX2 clone there).
/// - the vector width cannot change a sum: the reductions' strands are written out (summation.hpp,
///   strands.hpp), and without -ffast-math no compiler reassociates; the elementwise passes have
///   no order. Division and square root are correctly rounded at any width.
/// The segment loops and host forms they run are always_inline (FLATMIN_SUM_INLINE): Clang's
/// `flatten` does not reach through a call its inliner declines, which then runs baseline code.
/// GCC clones also vectorise at -O2 (`vect-cost-model=dynamic`: GCC 12's -O2 model leaves loops
/// of unknown trip count scalar; `unswitch-loops` as at -O3, without which the SGD and Adam
/// descents stay scalar). A CUDA translation unit, another compiler or architecture, or
/// FLATMIN_NO_ISA_DISPATCH gets the baseline path alone, as before.

#include <cstdint>
#include <type_traits>

#include "../../kernels/descent_terms.hpp"
#include "../../kernels/sam_passes.hpp"
#include "../../kernels/sampa.hpp"
#include "../../numeric/bfloat16.hpp"
#include "../../numeric/half.hpp"
#include "isa.hpp"

#if FLATMIN_ISA_DISPATCH
#if defined(__clang__)
#define FLATMIN_CLONE_BASELINE __attribute__((flatten))
#define FLATMIN_CLONE_AVX2 __attribute__((target("avx2"), flatten))
#define FLATMIN_CLONE_AVX512 FLATMIN_CLONE_AVX2
#else
#define FLATMIN_CLONE_EXACT \
  optimize("fp-contract=off", "tree-vectorize", "vect-cost-model=dynamic", "unswitch-loops")
#define FLATMIN_CLONE_BASELINE __attribute__((flatten, FLATMIN_CLONE_EXACT))
#define FLATMIN_CLONE_AVX2 __attribute__((target("avx2"), flatten, FLATMIN_CLONE_EXACT))
#define FLATMIN_CLONE_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl"), flatten, FLATMIN_CLONE_EXACT))
#endif
#endif

namespace flatmin::backend::host {

/// The passes that are cloned.
template <class F>
inline constexpr bool hot_pass = false;
template <class T>
inline constexpr bool hot_pass<kernels::check_pass<T>> = true;
template <class T>
inline constexpr bool hot_pass<kernels::check_copy_pass<T>> = true;  // SAMPa's second point
template <class T, class Term, class Mask>
inline constexpr bool hot_pass<kernels::stats_pass<T, Term, Mask>> = true;
template <class Stats, class T>
inline constexpr bool hot_pass<kernels::stats_scores_pass<Stats, T>> = hot_pass<Stats>;  // FSAM's estimate
template <class T, class Term, class Mask, class W, class Store, bool Save>
inline constexpr bool hot_pass<kernels::ascend_pass<T, Term, Mask, W, Store, Save>> = !Store::stochastic;
template <class T, class Mask>
inline constexpr bool hot_pass<kernels::restore_pass<T, Mask>> = true;
template <class T, class Mask, class Adjust, class Base, int Restore, class W, class Store>
inline constexpr bool hot_pass<kernels::descend_pass<T, Mask, Adjust, Base, Restore, W, Store>> =
    !Store::stochastic;  // stochastic rounding draws and compares per entry: it stays scalar
template <class T>
inline constexpr bool hot_pass<kernels::copy_gradient_pass<T>> = true;  // a kept gradient (mix, SAMPa, ...)
template <class T, class Update, class W, class Store>
inline constexpr bool hot_pass<kernels::lookahead_pass<T, Update, W, Store>> = !Store::stochastic;  // SAMPa

/// Passes whose entry j reads and writes only entry j of every array it touches (w, g, the saved
/// copy at its slot, the base state, the descent's kept buffers at its index): the element loop
/// runs under FLATMIN_IVDEP. The descent reads up to six arrays and writes up to four (SAMPa over
/// SGD: saved, g, g̃, buf → buf, w, g_y), more pairs than GCC checks at run time, which left it
/// scalar.
template <class F>
inline constexpr bool independent_entries = false;
template <class T, class Mask, class Adjust, class Base, int Restore, class W, class Store>
inline constexpr bool independent_entries<kernels::descend_pass<T, Mask, Adjust, Base, Restore, W, Store>> =
    true;

/// The element types the clones are compiled for.
template <class T>
inline constexpr bool cloned_type = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                    std::is_same_v<T, bfloat16> || std::is_same_v<T, half>;

/// Index passes (`for_each_index`) that are cloned: a functor whose `static constexpr bool
/// isa_cloned` is true (kernels/flat_lora.hpp's rows: Flat-LoRA's draws vectorise in the wide
/// clones, about 4x the baseline's SSE2).
template <class F>
inline constexpr bool hot_index_pass = (FLATMIN_ISA_DISPATCH != 0) && requires { requires F::isa_cloned; };

/// Whether backend::eigen runs pass F over weights W and gradients G by the clones.
template <class F, class W, class G>
inline constexpr bool dispatched = (FLATMIN_ISA_DISPATCH != 0) && cloned_type<W> && cloned_type<G> &&
                                   hot_pass<std::remove_cvref_t<F>>;

#if FLATMIN_ISA_DISPATCH
template <class Body>
FLATMIN_CLONE_BASELINE void run_baseline(const Body& body) {
  body();
}
template <class Body>
FLATMIN_CLONE_AVX2 void run_avx2(const Body& body) {
  body();
}
#if !defined(__clang__)
template <class Body>
FLATMIN_CLONE_AVX512 void run_avx512(const Body& body) {
  body();
}
#endif
#endif

/// Runs `body()` (a segment's or a group's work) compiled for `which`.
template <class Body>
inline void run_on(isa which, const Body& body) {
#if FLATMIN_ISA_DISPATCH
  switch (which) {
    case isa::avx512:
#if !defined(__clang__)
      run_avx512(body);
      return;
#endif
    case isa::avx2:
      run_avx2(body);
      return;
    case isa::baseline:
      break;
  }
  run_baseline(body);
#else
  static_cast<void>(which);
  body();
#endif
}

}  // namespace flatmin::backend::host
