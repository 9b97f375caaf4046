#pragma once
/// @file from_step.hpp
/// `schedule::from_step` — late-phase SAM: the base optimizer alone before step s, SAM from step s
/// on (step t perturbs ⇔ t ≥ s, t = 1, 2, … the applied steps + 1). Late-phase SAM keeps most of
/// SAM's generalisation gain at a fraction of its cost when s falls in the last part of training
/// (Zhou et al., "Sharpness-Aware Minimization Efficiently Selects Flatter Minima Late in
/// Training", ICLR 2025).
///
/// Options: step (1, ≥ 1; 1 is SAM on every step). Skipped steps do not count (see always.hpp).
/// A mask refresh due before step s does not happen (a step that does not perturb leaves the
/// mask alone); the first refresh step at or after s does.

#include <cstddef>

#include "../config.hpp"

namespace flatmin::schedule {

struct from_step {
  std::size_t step = 1;  ///< first perturbed step (1-based), ≥ 1

  void validate() const {
    flatmin::detail::check_option(step >= 1, "schedule::from_step", "step", static_cast<double>(step),
                                  ">= 1 (steps are numbered from 1)");
  }
  constexpr bool perturbs_at(std::size_t t) const { return t >= step; }
};

}  // namespace flatmin::schedule
