#pragma once
// The compositions the load() fuzzer drives (one per mask kind and unit, and each base state),
// over a small layout with a tensor excluded from perturbation and one excluded from the masks,
// so that unit counts are not multiples of 32 and every kind of unit exists.
#include <cmath>
#include <cstdint>
#include <functional>
#include <istream>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <flatmin/flatmin.hpp>

namespace flatmin_fuzz {

struct model {
  std::vector<std::vector<float>> w, g;
  flatmin::param_set<float> params;
  model() {
    const std::size_t sizes[] = {120, 40, 5, 7};
    const char* names[] = {"w", "b", "frozen", "norm"};
    const flatmin::tensor_options opts[] = {
        {}, {.weight_decay = false}, {.perturb = false}, {.mask_eligible = false}};
    w.resize(4);
    g.resize(4);
    for (std::size_t t = 0; t < 4; ++t) {
      w[t].assign(sizes[t], 0.f);
      g[t].assign(sizes[t], 0.f);
      for (std::size_t i = 0; i < sizes[t]; ++i) w[t][i] = std::sin(0.37f * float(i + 11 * t));
      params.add(names[t], w[t].data(), g[t].data(), std::vector<std::size_t>{sizes[t]}, opts[t]);
    }
  }
  model(const model&) = delete;
  /// A deterministic gradient for step s (a non-finite one when `poison`).
  void gradient(std::size_t s, bool poison = false) {
    for (std::size_t t = 0; t < g.size(); ++t)
      for (std::size_t i = 0; i < g[t].size(); ++i)
        g[t][i] = w[t][i] - std::cos(0.11f * float(i * (t + 1) + 7 * s));
    if (poison) g[0][3] = NAN;
  }
};

/// One optimizer behind a type-erased face: save, load, and a step of the two-call protocol.
struct driver {
  virtual ~driver() = default;
  virtual void save(std::ostream&) = 0;
  virtual void load(std::istream&) = 0;
  /// ascend / descend with the gradient of step s (g_adv non-finite when `skip`).
  virtual void step(model& m, std::size_t s, bool skip) = 0;
};

template <class Opt>
struct driver_of final : driver {
  Opt opt;
  explicit driver_of(Opt&& o) : opt(std::move(o)) {}
  void save(std::ostream& os) override { opt.save(os); }
  void load(std::istream& is) override { opt.load(is); }
  void step(model& m, std::size_t s, bool skip) override {
    m.gradient(s);
    opt.ascend();
    m.gradient(s + 1000, skip);
    opt.descend();
  }
};

template <class Opt>
std::unique_ptr<driver> wrap(Opt&& o) {
  return std::make_unique<driver_of<std::decay_t<Opt>>>(std::move(o));
}

inline constexpr int composition_count = 11;

/// Composition k over m's parameters.
inline std::unique_ptr<driver> make(int k, model& m) {
  using namespace flatmin;
  using eigen = backend::eigen;
  switch (k) {
    case 0: return wrap(sam<eigen>(m.params, base::adamw{.lr = 0.01}));
    case 1:
      return wrap(
          fsam<eigen>(m.params, base::adamw{.lr = 0.01}, {.keep = 0.25, .refresh_every = 3, .block = 4}));
    case 2:
      return wrap(
          fsam<eigen>(m.params, base::sgd{.lr = 0.05, .momentum = 0.9}, {.keep = 0.2, .refresh_every = 2}));
    case 3: return wrap(ssam_f<eigen>(m.params, base::adam{.lr = 0.01}, {.refresh_every = 2, .block = 8}));
    case 4:
      return wrap(
          ssam_d<eigen>(m.params, base::sgd{.lr = 0.05}, {.refresh_every = 2, .block = 8, .seed = 1}));
    case 5:
      return wrap(ssam_d<eigen>(m.params, base::adamw{.lr = 0.01}, {.sparsity = 0.7, .refresh_every = 2}));
    case 6:
      return wrap(esam<eigen>(m.params, base::sgd{.lr = 0.05, .momentum = 0.5},
                              {.unit = mask::granularity::block, .block = 4, .seed = 2}));
    case 7: return wrap(preconditioned_sam<eigen>(m.params, base::adamw{.lr = 0.01}));
    case 9: {  // a random mask the user set: its bits are the optional checkpoint entry "random.bits"
      auto o = esam<eigen>(m.params, base::sgd{.lr = 0.05}, {.unit = mask::granularity::block, .block = 8});
      std::vector<std::uint8_t> w(120, 0);
      for (std::size_t i = 16; i < 48; ++i) w[i] = 1;
      o.set_mask("w", w);
      return wrap(std::move(o));
    }
    case 10:  // the dynamic loss scaler: its scale and growth tracker are checkpoint entries
      return wrap(sharpness_aware<float, eigen, perturb::l2, mask::dense, base::sgd>(
          m.params, {.base = {.lr = 0.05, .momentum = 0.9},
                     .options = {.loss_scale = {.enabled = true, .init_scale = 1024, .growth_interval = 2}}}));
    default: return wrap(asam<eigen>(m.params, base::sgd{.lr = 0.05, .momentum = 0.9}));
  }
}

}  // namespace flatmin_fuzz
