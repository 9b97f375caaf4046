#pragma once
/// @file pass_target.hpp
/// What the mask-dependent passes of a step run over, read off a mask state: its range (the
/// segments the ascent and the restore visit) and the view the passes read the mask through, so
/// that the optimizer calls each pass once whatever the mask.
///
/// A compact range holds masked-in entries only (every compact mask's invariant: its range is its
/// active units plus the ineligible tensors, where the mask is 1), so over it the all-true view of
/// mask::dense replaces the per-entry unit and bit lookup, which would otherwise cost more than the
/// pass's memory traffic, and lets backend::eigen use its group form for SAM's statistics (blocks
/// of 128 at 10 % kept, N = 10^7: ascend() + cancel() 37 → 6.3 ms, bench_masks in
/// bench/RESULTS.md). The saved weights of a compact mask are compact too (a slot per entry of
/// the range), so its restore is a pass of its own before the descent instead of fused into it.

#include <type_traits>
#include <utility>

#include "../../backend/layout.hpp"
#include "../../kernels/math.hpp"
#include "../dense.hpp"

namespace flatmin::mask::detail {

template <class T, class Backend, class State>
class pass_target {
 public:
  using mask_view = decltype(std::declval<const State&>().get_view());
  using all_view = typename mask::dense::template state<T, Backend>::view;  ///< m ≡ 1

  pass_target(const State& s, const backend::layout<T, Backend>& l)
      : state_(s), layout_(l), compact_(compact_now(s)) {}

  /// Runs the pass `make(view)` over the mask's range.
  template <class Make>
  void for_each(const Make& make) const {
    const auto range = state_.range(layout_);
    if (compact_)
      Backend::for_each(range, make(all_view{}));
    else
      Backend::for_each(range, make(state_.get_view()));
  }

  /// The step's statistics from the reduction pass `make(view, norm_over_mask)`: one pass over the
  /// layout with the mask's view, or, for a compact mask, the sums over every entry (Σg², the
  /// non-finite count, Σn² unless the norm runs over the mask) over the layout and the masked sums
  /// over the range, both with the all-true view: one extra pass, over the range only, its sums
  /// added in the range's segment order (deterministic, the same on every backend). Each reduction
  /// is `reduce(range, pass)` (default: Backend::reduce; a sharded run's sums over every process).
  template <class Make>
  kernels::grad_stats stats(const Make& make) const {
    return stats(make, [](const auto& range, const auto& pass) {
      return Backend::template reduce<kernels::grad_stats>(range, pass);
    });
  }
  template <class Make, class Reduce>
  kernels::grad_stats stats(const Make& make, const Reduce& reduce) const {
    if (!compact_) return reduce(layout_.full(), make(state_.get_view(), State::norm_over_mask));
    const auto pass = make(all_view{}, true);
    kernels::grad_stats s = reduce(layout_.full(), pass);
    const kernels::grad_stats m = reduce(state_.range(layout_), pass);
    if (State::norm_over_mask) s.n2 = m.n2;
    s.d2 = m.d2;
    s.kept = m.kept;
    return s;
  }

  /// The descent over the whole layout, undoing the ascent first when `restore`: fused into the
  /// descent pass `descend(std::integral_constant<int, R>)` (R = 1: restore, fixed at compile time
  /// so that the host loop vectorises) where the saved weights have a slot per entry, else the
  /// pass `restore(view)` over the range, then the descent with R = 0.
  template <class Restore, class Descend>
  void descend(bool restore, const Restore& restore_pass, const Descend& descend_pass) const {
    if (restore && compact_) for_each(restore_pass);
    if (restore && !compact_)
      descend_pass(std::integral_constant<int, 1>{});
    else
      descend_pass(std::integral_constant<int, 0>{});
  }

 private:
  /// The mask's static `compact`, refined at run time by its `is_compact()` when it has one.
  static bool compact_now(const State& s) {
    if constexpr (!State::compact)
      return false;
    else if constexpr (requires { s.is_compact(); })
      return s.is_compact();
    else
      return true;
  }

  const State& state_;
  const backend::layout<T, Backend>& layout_;
  bool compact_;
};

}  // namespace flatmin::mask::detail
