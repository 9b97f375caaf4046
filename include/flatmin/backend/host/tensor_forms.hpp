#pragma once
/// @file tensor_forms.hpp
/// backend::eigen's per-tensor forms of a pass (layout.hpp's `for_tensor`), resolved once for each
/// run of consecutive segments that share one, rather than once per segment.

#include <cstddef>
#include <cstdint>

#include "../layout.hpp"
#include "../summation.hpp"

namespace flatmin::backend::host {

/// Runs `body(s, form)` for the segments s in [from, to), in order, with `form` pass f's form for
/// segment s's tensor (layout.hpp's `for_tensor`), resolved once per run of consecutive segments
/// that share it: the same tensor for a form by tensor, the same flags for a form by flags, the
/// whole range for a pass without one. A form is `for_tensor`'s result, so its bits are.
/// Resolving once per segment copied the pass onto the stack with wide stores and read its fields
/// back narrow at every segment's start: bench_passes' descend_adamw over 1000 tensors of 100 took
/// twice one tensor's time (CHANGELOG has the A/B).
template <class F, class W, class G, class Body>
FLATMIN_SUM_INLINE void for_each_form_run(const F& f, const tensor_rec<W, G>* tensors, const segment* segs,
                                          std::ptrdiff_t from, std::ptrdiff_t to, const Body& body) {
  const auto key = [&](std::ptrdiff_t s) -> std::uint32_t {
    if constexpr (form_by_tensor<F>)
      return segs[s].tensor;
    else if constexpr (form_by_flags<F>)
      return tensors[segs[s].tensor].flags;
    else
      return 0;
  };
  for (std::ptrdiff_t s = from; s < to;) {
    const std::uint32_t k = key(s);
    const F form = for_tensor(f, tensors[segs[s].tensor].flags, segs[s].tensor);  // a local: see run_segment
    do {
      body(s, form);
      ++s;
    } while (s < to && key(s) == k);
  }
}

}  // namespace flatmin::backend::host
