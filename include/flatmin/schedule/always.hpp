#pragma once
/// @file always.hpp
/// `schedule::always` — every step perturbs: SAM as published, and the default schedule of every
/// composition.
///
/// A schedule decides, from the step number t alone (1-based: applied steps + 1), whether step t
/// perturbs. On a step that does not, `step(objective)` calls the objective once, `ascend()` does
/// nothing (`report.perturbed == false`) and `descend()` applies the base step to g, the gradient
/// at w. Because t is the only input, a checkpoint (which stores the step count) resumes the
/// schedule with no state of its own, and a skipped step, which does not advance t, is decided
/// again the same way when it is retried.

#include <cstddef>

namespace flatmin::schedule {

struct always {
  void validate() const {}
  constexpr bool perturbs_at(std::size_t /*step*/) const { return true; }
};

}  // namespace flatmin::schedule
