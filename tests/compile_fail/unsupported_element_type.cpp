// expect: the weight, gradient and state types must each be float or double
// An element type other than float or double (here long double) must not compile, naming the rule.
#include <flatmin/flatmin.hpp>

using opt = flatmin::sharpness_aware<long double, flatmin::backend::eigen, flatmin::perturb::l2,
                                     flatmin::mask::dense, flatmin::base::sgd>;
static_assert(sizeof(opt) > 0);

int main() {}
