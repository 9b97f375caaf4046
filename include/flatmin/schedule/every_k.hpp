#pragma once
/// @file every_k.hpp
/// `schedule::every_k` — SAM every k steps, the base optimizer alone in between (about 1 + 1/k
/// gradients per step instead of 2):
///
///     step t perturbs  ⇔  t ≥ first  and  (t − first) mod k = 0      (t = 1, 2, …)
///
/// Options: k (1, ≥ 1; k = 1 is SAM on every step from `first` on), first (1, ≥ 1): the perturbed
/// steps are first, first + k, first + 2k, … The default first = 1 perturbs step 1 and puts the
/// perturbed steps on the same residue as the masks' refresh steps (1 + j·refresh_every, see
/// mask/fisher.hpp): with k dividing refresh_every every refresh step perturbs. A refresh that
/// falls on an unperturbed step does not happen: a step that does not perturb leaves the mask
/// alone (no refresh, no Fisher accumulation).
///
/// composer's SAM `interval` (mosaicml/composer, composer/algorithms/sam/sam.py at 0044af6, line
/// 70: SAM when (global_step + 1) % interval == 0) perturbs steps k, 2k, …: that is
/// `every_k{.k = k, .first = k}`. One departure: composer counts a step whose closure returned no
/// loss (line 83 advances global_step regardless); flatmin counts applied steps only, so a skipped
/// step is retried at the same position of the schedule.

#include <cstddef>

#include "../config.hpp"

namespace flatmin::schedule {

struct every_k {
  std::size_t k = 1;      ///< period in steps, ≥ 1
  std::size_t first = 1;  ///< the first perturbed step (1-based), ≥ 1

  void validate() const {
    flatmin::detail::check_option(k >= 1, "schedule::every_k", "k", static_cast<double>(k), ">= 1");
    flatmin::detail::check_option(first >= 1, "schedule::every_k", "first", static_cast<double>(first),
                                  ">= 1 (steps are numbered from 1)");
  }
  constexpr bool perturbs_at(std::size_t step) const {
    return k >= 1 && step >= first && (step - first) % k == 0;
  }
};

}  // namespace flatmin::schedule
