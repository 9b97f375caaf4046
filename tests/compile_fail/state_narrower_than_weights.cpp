// expect: the state type must be at least as wide as the weight type
// Double weights with float state and arithmetic would round every weight to float at every step.
#include <flatmin/flatmin.hpp>

using opt = flatmin::sharpness_aware<flatmin::precision<double, double, float>, flatmin::backend::eigen,
                                     flatmin::perturb::l2, flatmin::mask::dense, flatmin::base::sgd>;
static_assert(sizeof(opt) > 0);

int main() {}
