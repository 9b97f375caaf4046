// backend::eigen with OpenMP: 1, 2 and 8 threads give bitwise identical reports (‖g‖, ‖ε‖,
// ‖g_adv‖) and weights after 20 steps of SAM, ASAM and AdamW on ~300k parameters over several
// tensors — large enough that every pass takes the parallel path.
#include <doctest/doctest.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "support/problems.hpp"

using namespace flatmin_test;

namespace {
const layout_spec big_layout = {
    {"embed", {1000, 64}, {.weight_decay = false, .perturb = false}},
    {"fc1.weight", {256, 512}},
    {"fc1.bias", {256}, {.weight_decay = false, .adaptive = false}},
    {"fc2.weight", {300, 330}},
    {"odd", {12345}, {.adaptive = false}},
    {"fc2.bias", {300}, {.weight_decay = false, .adaptive = false}},
};

struct run_result {
  std::vector<float> w;
  std::vector<flatmin::step_report> reports;
};

template <class MakeOpt>
run_result run(int threads, MakeOpt make) {
#if defined(_OPENMP)
  omp_set_num_threads(threads);
  CHECK(omp_get_max_threads() == threads);
  CHECK(flatmin::backend::eigen::threads() == threads);
#else
  static_cast<void>(threads);
#endif
  model<float> m(big_layout);
  m.set_weights(random_vec(m.numel, 77));
  auto q = quadratic::random(m.numel, 77, 0.5, 2.0, 0.3);
  auto opt = make(m);
  run_result r;
  for (int s = 0; s < 20; ++s) r.reports.push_back(opt.step(q.objective(m)));
  r.w = m.raw_weights();
  return r;
}

template <class MakeOpt>
void same_for_any_thread_count(MakeOpt make) {
  const auto one = run(1, make);
  for (int threads : {2, 8}) {
    CAPTURE(threads);
    const auto many = run(threads, make);
    CHECK(bitwise_equal(many.w, one.w));
    for (std::size_t s = 0; s < one.reports.size(); ++s) {
      CAPTURE(s);
      CHECK(bitwise_equal(many.reports[s].grad_norm, one.reports[s].grad_norm));
      CHECK(bitwise_equal(many.reports[s].perturbation_norm, one.reports[s].perturbation_norm));
      CHECK(bitwise_equal(many.reports[s].perturbed_grad_norm, one.reports[s].perturbed_grad_norm));
      CHECK(bitwise_equal(many.reports[s].loss, one.reports[s].loss));
      CHECK(many.reports[s].mask_density == one.reports[s].mask_density);
    }
  }
#if defined(_OPENMP)
  omp_set_num_threads(1);
#endif
}
}  // namespace

TEST_CASE("threads: the problem is large enough for the parallel path") {
  model<float> m(big_layout);
  CHECK(m.numel > 4 * flatmin::backend::eigen::parallel_threshold);
  CHECK(m.numel >= 300000);
}

TEST_CASE("threads: SAM over SGD with momentum is bitwise identical for 1, 2 and 8 threads") {
  same_for_any_thread_count(
      [](model<float>& m) { return flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3}); });
}

TEST_CASE("threads: ASAM over Adam is bitwise identical for 1, 2 and 8 threads") {
  same_for_any_thread_count(
      [](model<float>& m) { return flatmin::asam(m.params, flatmin::base::adam{.lr = 0.01, .weight_decay = 1e-2}); });
}

TEST_CASE("threads: AdamW is bitwise identical for 1, 2 and 8 threads") {
  same_for_any_thread_count([](model<float>& m) { return flatmin::adamw(m.params, {.lr = 0.01}); });
}
