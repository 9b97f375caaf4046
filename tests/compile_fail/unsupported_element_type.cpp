// expect: the weight and gradient types must each be float, double, flatmin::bfloat16 or flatmin::half
// An element type other than float, double or the 16-bit storage types (here long double) must not
// compile, naming the rule.
#include <flatmin/flatmin.hpp>

using opt = flatmin::sharpness_aware<long double, flatmin::backend::eigen, flatmin::perturb::l2,
                                     flatmin::mask::dense, flatmin::base::sgd>;
static_assert(sizeof(opt) > 0);

int main() {}
