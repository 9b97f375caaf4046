// The conformance suite: every composition of compositions.hpp on every backend of
// FLATMIN_TEST_BACKENDS goes through the same checks:
//  - converges on an ill-conditioned convex quadratic (condition number 100);
//  - restores the weights bit-exactly: after ascend() + cancel(), and descend() equals the base
//    optimizer alone (run alongside) applied to the saved w with g_adv, bitwise, step after step
//    (the latter where the descent is the base step on g_adv: not for GSAM, WSAM, LookSAM);
//  - respects its mask: entries whose mask bit is 0 (or whose tensor is not perturbed) are not
//    touched by ascend(), and the report's mask density counts the entries the mask keeps;
//  - never writes non-finite values: a NaN / Inf in g or in g_adv leaves the weights bitwise
//    unchanged and the step reported as skipped;
//  - gives the same result, bitwise, for 1 and 2 threads.
#include <doctest/doctest.h>

#include <cxxabi.h>

#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <typeinfo>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "conformance/checks.hpp"
#include "conformance/compositions.hpp"
#include "support/backends.hpp"

using namespace flatmin_test;
namespace fc = flatmin_test::conformance;

namespace {

template <class X>
std::string type_name() {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(abi::__cxa_demangle(typeid(X).name(), nullptr, nullptr, &status), std::free);
  return status == 0 && p ? std::string(p.get()) : typeid(X).name();
}

/// A small network-like layout: a weight matrix, a bias (no decay, no ASAM scaling, dense under
/// sparse masks), a tensor that is not perturbed, a second weight matrix.
const layout_spec conf_layout = {
    {"fc1.weight", {16, 12}},
    {"fc1.bias", {16}, {.weight_decay = false, .adaptive = false, .mask_eligible = false}},
    {"frozen", {10}, {.weight_decay = false, .perturb = false}},
    {"fc2.weight", {4, 16}},
};

/// Large enough (> backend::eigen::parallel_threshold) for the parallel path.
const layout_spec wide_layout = {
    {"fc1.weight", {256, 300}},
    {"fc1.bias", {256}, {.weight_decay = false, .adaptive = false, .mask_eligible = false}},
    {"frozen", {1000}, {.perturb = false}},
    {"fc2.weight", {40000}},
};

template <class TC>
struct types {
  using comp = typename TC::composition;
  using backend = typename TC::backend;
  using hooks = typename comp::hooks;
  template <class T>
  using opt = typename comp::template optimizer<T, backend>;
};

/// Checks, right after ascend(), that only entries the mask keeps (in perturbed tensors) moved, and
/// that the report's mask density counts them.
template <class Opt, class T>
void check_mask(const Opt& opt, const model<T>& m, const std::vector<T>& before, const flatmin::step_report& r) {
  const auto view = opt.mask_state().get_view();
  const auto now = m.raw_weights();
  std::size_t on = 0, perturbable = 0, moved_outside = 0;
  for (const auto& t : opt.layout().host_tensors())
    for (std::size_t j = 0; j < t.size; ++j) {
      const std::size_t i = t.offset + j;
      const bool perturbed_tensor = (t.flags & flatmin::tensor_flags::perturb) != 0;
      const bool in = perturbed_tensor && view(i, t.flags);
      perturbable += perturbed_tensor;
      on += in;
      if (!in && std::memcmp(&now[i], &before[i], sizeof(T)) != 0) ++moved_outside;
    }
  CHECK(moved_outside == 0);
  if constexpr (Opt::perturbs) {  // a step the schedule leaves unperturbed perturbs no entry
    // a perturbation outside the trained tensors (Flat-LoRA's) perturbs none of them
    const double kept = r.perturbed && perturbable && Opt::perturbs_layout ? double(on) / double(perturbable) : 0.0;
    CHECK(r.mask_density == doctest::Approx(kept).epsilon(1e-12));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST_CASE_TEMPLATE_DEFINE("conformance: converges on an ill-conditioned convex quadratic", TC, conformance_converges) {
  using X = types<TC>;
  INFO(type_name<typename X::comp>() << " on " << std::string(X::backend::name));
  auto run = [](auto tag) {
    using T = decltype(tag);
    CAPTURE(type_name<T>());
    model<T> m(conf_layout, test_space<typename X::backend>);
    auto q = quadratic::ill_conditioned(m.numel, 100.0, 5);
    m.set_weights(random_vec(m.numel, 6));
    auto opt = X::comp::template make<T, typename X::backend>(m.params);
    const double l0 = q.loss(m.weights());
    int skipped = 0;
    for (int s = 0; s < 400; ++s) skipped += opt.step(X::hooks::objective(q, m)).skipped;
    const double l1 = q.loss(m.weights());
    CAPTURE(l0);
    CAPTURE(l1);
    CHECK(skipped == 0);
    CHECK(all_finite(m.raw_weights()));
    CHECK(l1 < 1e-3 * l0);
  };
  run(float{});
  run(double{});
}

TEST_CASE_TEMPLATE_DEFINE("conformance: restores bit-exactly; descend() is the base step at the saved w with g_adv",
                          TC, conformance_restores) {
  using X = types<TC>;
  using T = float;
  INFO(type_name<typename X::comp>() << " on " << std::string(X::backend::name));
  model<T> m(conf_layout, test_space<typename X::backend>), b(conf_layout, test_space<typename X::backend>);
  m.set_weights(random_vec(m.numel, 7));
  b.set_raw_weights(m.raw_weights());
  auto q = quadratic::random(m.numel, 7, 1.0, 10.0, 0.2);
  auto opt = X::comp::template make<T, typename X::backend>(m.params);
  auto alone = X::comp::template make_base_alone<T, typename X::backend>(b.params);
  for (int s = 1; s <= 8; ++s) {
    CAPTURE(s);
    X::hooks::first_gradient(q, m);
    const auto before = m.raw_weights();
    const auto g = m.raw_grads();

    // ascend + cancel leaves no trace: the weights are back, and ascending again gives the same ε
    const auto r0 = opt.ascend();
    const auto perturbed = m.raw_weights();
    check_mask(opt, m, before, r0);
    opt.cancel();
    CHECK(bitwise_equal(m.raw_weights(), before));
    CHECK(bitwise_equal(m.raw_grads(), g));
    CHECK(opt.steps() == static_cast<std::size_t>(s - 1));

    const auto r1 = opt.ascend();
    CHECK_FALSE(r1.skipped);
    if constexpr (X::hooks::cancel_leaves_no_trace) CHECK(bitwise_equal(m.raw_weights(), perturbed));
    check_mask(opt, m, before, r1);
    // (a perturbation outside the trained tensors, Flat-LoRA's, moves none of them: check_mask)
    if (X::template opt<T>::perturbs && X::template opt<T>::perturbs_layout && r1.perturbation_norm > 0)
      CHECK_FALSE(bitwise_equal(m.raw_weights(), before));

    X::hooks::second_gradient(q, m);
    fc::second_point<typename X::hooks>(opt, q, m);
    b.set_raw_grads(m.raw_grads());
    CHECK_FALSE(opt.descend().skipped);
    CHECK_FALSE(alone.descend().skipped);
    if constexpr (X::hooks::descent_is_base_on_g_adv) CHECK(bitwise_equal(m.raw_weights(), b.raw_weights()));
  }
}

TEST_CASE_TEMPLATE_DEFINE("conformance: never writes non-finite values", TC, conformance_nonfinite) {
  using X = types<TC>;
  INFO(type_name<typename X::comp>() << " on " << std::string(X::backend::name));
  fc::check_never_writes_nonfinite<typename X::comp, typename X::backend, float>(conf_layout);
}

TEST_CASE_TEMPLATE_DEFINE("conformance: the same result for 1 and 2 threads", TC, conformance_threads) {
  using X = types<TC>;
  using T = float;
  INFO(type_name<typename X::comp>() << " on " << std::string(X::backend::name));
  struct result {
    std::vector<T> w;
    std::vector<flatmin::step_report> reports;
  };
  auto run = [](int threads) {
#if defined(_OPENMP)
    omp_set_num_threads(threads);
#else
    static_cast<void>(threads);
#endif
    model<T> m(wide_layout, test_space<typename X::backend>);
    m.set_weights(random_vec(m.numel, 9));
    auto q = quadratic::random(m.numel, 9);
    auto opt = X::comp::template make<T, typename X::backend>(m.params);
    result r;
    for (int s = 0; s < 6; ++s) r.reports.push_back(opt.step(X::hooks::objective(q, m)));
    r.w = m.raw_weights();
    return r;
  };
  const auto one = run(1);
  const auto two = run(2);
#if defined(_OPENMP)
  omp_set_num_threads(1);
#endif
  CHECK(one.w.size() > flatmin::backend::eigen::parallel_threshold);
  CHECK(bitwise_equal(one.w, two.w));
  for (std::size_t s = 0; s < one.reports.size(); ++s) {
    CAPTURE(s);
    CHECK(bitwise_equal(one.reports[s].grad_norm, two.reports[s].grad_norm));
    CHECK(bitwise_equal(one.reports[s].perturbation_norm, two.reports[s].perturbation_norm));
    CHECK(bitwise_equal(one.reports[s].perturbed_grad_norm, two.reports[s].perturbed_grad_norm));
    CHECK(one.reports[s].mask_density == two.reports[s].mask_density);
    CHECK(one.reports[s].skipped == two.reports[s].skipped);
  }
}

using conformance_cases = fc::cross<fc::compositions, std::tuple<FLATMIN_TEST_BACKENDS>>::type;
TEST_CASE_TEMPLATE_APPLY(conformance_converges, conformance_cases);
TEST_CASE_TEMPLATE_APPLY(conformance_restores, conformance_cases);
TEST_CASE_TEMPLATE_APPLY(conformance_nonfinite, conformance_cases);
TEST_CASE_TEMPLATE_APPLY(conformance_threads, conformance_cases);
