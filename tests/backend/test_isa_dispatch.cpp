// backend::eigen's runtime instruction-set dispatch (backend/host/isa_clones.hpp): whole SAM, ASAM,
// FSAM and SAMPa steps over SGD (momentum) and Adam / AdamW give the same bits whichever clone runs. Each
// instruction set this CPU has is forced in turn and compared with the unforced run (the
// process's own choice), with the baseline clone, and, where the test is built with Thrust, with
// backend::thrust, whose element-by-element passes share no code with the clones. Weights, every
// state buffer (through save()) and the reported norms are compared as bytes. The same with
// streaming stores forced (backend/host/stream_stores.hpp), on the process's instruction set and
// on the baseline. Also: the
// FLATMIN_ISA parser and force_isa's refusals. Flat-LoRA's row kernel (an index pass with clones)
// likewise.
#include <doctest/doctest.h>
#include <flatmin/flatmin.hpp>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/backends.hpp"
#include "support/buffers.hpp"
#include "support/sine_problem.hpp"
#include "support/streaming.hpp"

namespace {

namespace fm = flatmin;
namespace host = fm::backend::host;

// Around the strand block (8), the reduction group (4 segments) and the segment (4096); the
// total (> 2^16) takes the parallel path.
const std::vector<std::size_t> sizes{1, 7, 63, 4097, 9000, 53000};
fm::tensor_options options_of(std::size_t t) {
  return {.weight_decay = t % 2 == 0, .perturb = t != 2, .adaptive = t % 3 != 1, .mask_eligible = t != 1};
}

// The loss of support/sine_problem.hpp over `sizes`, evaluated on the host in T.
template <class T>
struct problem : flatmin_test::sine_problem<T> {
  problem() : flatmin_test::sine_problem<T>(sizes, 1312) {}
};

std::string bytes(const void* p, std::size_t n) { return std::string(static_cast<const char*>(p), n); }

// "" when the two records are equal, else where they first differ (the records are bytes).
std::string difference(const std::string& a, const std::string& b) {
  if (a == b) return "";
  std::size_t k = 0;
  while (k < a.size() && k < b.size() && a[k] == b[k]) ++k;
  return "sizes " + std::to_string(a.size()) + " / " + std::to_string(b.size()) +
         ", first difference at byte " + std::to_string(k);
}

// Weights, save() blob and the reports' numbers of `steps` ascend / descend steps, as bytes.
template <class Backend, class T, class Make>
std::string run(const problem<T>& p, const Make& make, int steps) {
  using buf = flatmin_test::buffer_of<Backend, T>;
  std::vector<typename buf::type> w, g;
  w.reserve(sizes.size());
  g.reserve(sizes.size());
  fm::param_set<T> ps;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    w.push_back(buf::make(p.w0[t]));
    g.push_back(buf::make(std::vector<T>(sizes[t], T(0))));
    ps.add("t" + std::to_string(t), w.back(), g.back(), options_of(t));
  }
  auto opt = make(ps, Backend{});
  const auto gradient = [&] {
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      const std::vector<T> hw = buf::host(w[t]);
      std::vector<T> hg(hw.size());
      for (std::size_t j = 0; j < hw.size(); ++j)
        hg[j] = p.a[t][j] * (hw[j] - p.c[t][j]) + p.b[t][j] * std::cos(hw[j]);
      buf::assign(g[t], hg);
    }
  };
  std::string out;
  double density = 1;
  for (int s = 0; s < steps; ++s) {
    gradient();
    const fm::step_report a = opt.ascend();
    REQUIRE(!a.skipped);
    gradient();
    if constexpr (decltype(opt)::two_points) {  // SAMPa: the look-ahead point and its gradient
      REQUIRE(!opt.second_point().skipped);
      gradient();
    }
    const fm::step_report r = opt.descend();
    REQUIRE(!r.skipped);
    const double nums[] = {r.grad_norm, r.perturbed_grad_norm, r.perturbation_norm, r.mask_density};
    out += bytes(nums, sizeof nums);
    density = r.mask_density;
  }
  if (decltype(opt)::perturbs) CHECK(density > 0);
  std::vector<T> w_end;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    const std::vector<T> hw = buf::host(w[t]);
    out += bytes(hw.data(), hw.size() * sizeof(T));
    if (t == 5) w_end = hw;
  }
  CHECK(w_end != p.w0[5]);  // the steps moved the weights: equality below is not vacuous
  std::ostringstream os;
  opt.save(os);
  return out + os.str();
}

// Every instruction set this CPU and build have, forced, against the unforced run and the
// baseline (and backend::thrust).
template <class T, class Make>
void same_bits(const std::string& name, const Make& make) {
  CAPTURE(name);
  CAPTURE(sizeof(T));
  const problem<T> p;
  const int steps = 3;
  host::unforce_isa();
  const std::string unforced = run<fm::backend::eigen>(p, make, steps);
  host::force_isa(host::isa::baseline);
  const std::string baseline = run<fm::backend::eigen>(p, make, steps);
  CHECK(difference(unforced, baseline) == "");
  for (host::isa i : {host::isa::avx2, host::isa::avx512}) {
    if (!host::isa_supported(i)) {
      MESSAGE("not on this CPU or build: " << std::string(host::isa_name(i)));
      continue;
    }
    const std::string isa = host::isa_name(i);
    CAPTURE(isa);
    host::force_isa(i);
    CHECK(host::active_isa() == i);
    CHECK(difference(run<fm::backend::eigen>(p, make, steps), baseline) == "");
  }
  host::unforce_isa();
  {
    const flatmin_test::forced_streaming on(host::stream_stores::on);
    CHECK(difference(run<fm::backend::eigen>(p, make, steps), baseline) == "");
    host::force_isa(host::isa::baseline);
    CHECK(difference(run<fm::backend::eigen>(p, make, steps), baseline) == "");
    host::unforce_isa();
  }
#if defined(FLATMIN_TEST_WITH_THRUST)
  CHECK(difference(run<fm::backend::thrust>(p, make, steps), baseline) == "");
#endif
}

}  // namespace

TEST_CASE("isa dispatch: SAM, ASAM and FSAM steps give the same bits on every instruction set") {
  using fm::base::adam;
  using fm::base::adamw;
  using fm::base::sgd;
  const sgd momentum{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3};
  const adam ad{.lr = 0.01, .weight_decay = 1e-3};
  const adamw adw{.lr = 0.01, .weight_decay = 0.05};
#define FLATMIN_SAME(T, name, ...) \
  same_bits<T>(name, [&](const fm::param_set<T>& ps, auto b) { return __VA_ARGS__; })
  FLATMIN_SAME(float, "sam-sgd", fm::sam<decltype(b)>(ps, momentum, {.rho = 0.1}));
  FLATMIN_SAME(float, "sam-adamw", fm::sam<decltype(b)>(ps, adw, {.rho = 0.1}));
  FLATMIN_SAME(double, "sam-adam", fm::sam<decltype(b)>(ps, ad, {.rho = 0.1}));
  FLATMIN_SAME(float, "asam-sgd", fm::asam<decltype(b)>(ps, momentum, {.rho = 0.5, .eta = 0.01}));
  FLATMIN_SAME(float, "asam-adam", fm::asam<decltype(b)>(ps, ad, {.rho = 0.5}));
  // element units (block 1): the masked statistics, ascent and restore forms; refreshed at step 3
  FLATMIN_SAME(float, "fsam-sgd", fm::fsam<decltype(b)>(ps, momentum, {.keep = 0.3, .refresh_every = 2}));
  FLATMIN_SAME(float, "fsam-adam", fm::fsam<decltype(b)>(ps, ad, {.keep = 0.3, .refresh_every = 2}));
  // SAMPa: the kept gradient's copy, the look-ahead pass and the mix in the descent
  FLATMIN_SAME(float, "sampa-sgd", fm::sampa<decltype(b)>(ps, momentum, {.rho = 0.1}));
  FLATMIN_SAME(double, "sampa-adamw", fm::sampa<decltype(b)>(ps, adw, {.rho = 0.1}));
  // RWP: the random ascent's row-by-row form and the mix
  FLATMIN_SAME(float, "rwp-sgd", fm::rwp<decltype(b)>(ps, momentum));
#undef FLATMIN_SAME
}

/// Flat-LoRA's rows (kernels/flat_lora.hpp, an `isa_cloned` index pass): the bases after the
/// noise, after its removal, and the adapters after three steps, as bytes.
template <class Backend>
std::string flat_lora_run(bool exact) {
  const std::size_t out = 37, in = 300, r = 3;  // rows of 300: vector loops and their remainders
  std::vector<float> W(out * in), A(r * in), gA(r * in), B(out * r), gB(out * r);
  for (std::size_t i = 0; i < W.size(); ++i) W[i] = static_cast<float>(std::sin(0.37 * double(i)));
  for (std::size_t i = 0; i < A.size(); ++i) A[i] = static_cast<float>(0.3 * std::cos(0.11 * double(i)));
  for (std::size_t i = 0; i < B.size(); ++i) B[i] = static_cast<float>(0.2 * std::sin(1.3 * double(i)));
  fm::param_set<float> ps;
  ps.add_lora_pair("p", A.data(), gA.data(), {r, in}, B.data(), gB.data(), {out, r},
                   fm::lora_base<float>{W.data(), 0.75});
  auto opt = fm::flat_lora<Backend>(ps, fm::base::adamw{.lr = 0.01}, {.rho = 0.2, .exact_restore = exact});
  std::string bytes;
  const auto keep = [&](const std::vector<float>& v) {
    bytes.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  };
  for (int s = 0; s < 3; ++s) {
    opt.ascend();
    keep(W);
    for (std::size_t i = 0; i < gA.size(); ++i) gA[i] = static_cast<float>(std::sin(double(i) + s) * 0.1);
    for (std::size_t i = 0; i < gB.size(); ++i) gB[i] = W[i] * 0.01f;  // reads the perturbed base
    opt.descend();
    keep(W);
  }
  keep(A);
  keep(B);
  return bytes;
}

TEST_CASE("isa dispatch: Flat-LoRA's noise and its removal give the same bits on every instruction set") {
  for (bool exact : {false, true}) {
    CAPTURE(exact);
    host::force_isa(host::isa::baseline);
    const std::string baseline = flat_lora_run<fm::backend::eigen>(exact);
    for (host::isa i : {host::isa::avx2, host::isa::avx512}) {
      if (!host::isa_supported(i)) continue;
      const std::string isa = host::isa_name(i);
      CAPTURE(isa);
      host::force_isa(i);
      CHECK(flat_lora_run<fm::backend::eigen>(exact) == baseline);
    }
    host::unforce_isa();
#if defined(FLATMIN_TEST_WITH_THRUST)
    CHECK(flat_lora_run<fm::backend::thrust>(exact) == baseline);
#endif
  }
}

TEST_CASE("isa dispatch: FLATMIN_ISA and force_isa") {
  CHECK(host::isa_supported(host::isa::baseline));
  CHECK(host::isa_supported(host::best_isa()));
  const char* before = std::getenv("FLATMIN_ISA");
  const std::string saved = before ? before : "";
  const auto parse = [](const char* value) {
    ::setenv("FLATMIN_ISA", value, 1);
    return host::detail::read_isa_environment();
  };
  CHECK(parse("auto").value == host::best_isa());
  CHECK(parse("").value == host::best_isa());
  CHECK(parse("baseline").value == host::isa::baseline);
  CHECK(parse("baseline").error.empty());
  const auto bad = parse("sse9");
  CHECK(bad.error.find("FLATMIN_ISA") != std::string::npos);
  CHECK(bad.error.find("'sse9'") != std::string::npos);
  for (host::isa i : {host::isa::avx2, host::isa::avx512}) {
    const auto r = parse(host::isa_name(i));
    CHECK(r.value == i);
    CHECK(r.error.empty() == host::isa_supported(i));
    if (!host::isa_supported(i)) {
      // refused, and the choice in force is kept
      const host::isa active = host::active_isa();
      CHECK_THROWS_AS(host::force_isa(i), std::invalid_argument);
      CHECK(host::active_isa() == active);
    }
  }
  if (before)
    ::setenv("FLATMIN_ISA", saved.c_str(), 1);
  else
    ::unsetenv("FLATMIN_ISA");
  host::force_isa(host::isa::baseline);
  CHECK(host::active_isa() == host::isa::baseline);
  host::unforce_isa();
  CHECK(host::active_isa() == host::detail::environment_isa().value);
}
