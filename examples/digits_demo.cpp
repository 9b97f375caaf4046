// The main demo: SGD, SAM, ASAM and the sparse / efficient variants FSAM, SSAM-F, SSAM-D and ESAM
// train the same small MLP on the digits data set whose training labels are 30 % wrong (symmetric
// noise), and are compared on the clean held-out test split.
//
// Each seed fixes the split, the noisy labels, the initial weights and the batch order, and every
// optimizer sees exactly those: the comparison is paired. All three get the same budget in
// epochs (SAM and ASAM compute two gradients per step, so they cost about twice as much).
//
// The loop shows both step protocols: SAM uses ascend()/descend() around the caller's own backward
// passes, the others use step(closure). SSAM-F's closure also gives per-example gradients (its
// Fisher estimate), ESAM's gives per-sample losses and the gradient on a subset of the batch.
// The sparse variants use SAM's ρ with their papers' other defaults (FSAM: 90 % sparse, mask
// every 100 steps; SSAM: 50 % sparse, SSAM-F's mask every epoch from 16 examples, SSAM-D's every
// 5 epochs; ESAM: β = γ = 0.5, whole tensors).
//
// --family adds the rest of the family over the same SGD (step(closure), SAM's ρ where the method
// has a radius, the papers' other defaults): GSAM, WSAM, LookSAM, Friendly-SAM, Momentum-SAM, GCSAM,
// RWP and SAMPa; the table's ms/step column shows what each costs per step.
//
// --precision bf16 or fp16 trains the same model with 16-bit weights and gradients (the network
// computes in float from the 16-bit weights, common/low_precision.hpp) and the optimizer's float
// master weights; fp16 adds the optimizer's dynamic loss scaler. --check-precision runs fp32 and
// the 16-bit precision on the same seeds and fails when a mean accuracy differs by more than
// 0.5 points.
//
//   digits_demo [--seeds N] [--epochs N] [--noise p] [--precision fp32|bf16|fp16] [--quick]
//               [--family] [--data PATH] [--help]
//
// Run with --help for the tuning flags.

#include <Eigen/Core>
#include <flatmin/flatmin.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <numbers>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "common/digits.hpp"
#include "common/low_precision.hpp"
#include "common/mlp.hpp"

#ifndef FLATMIN_DIGITS_CSV
#define FLATMIN_DIGITS_CSV "examples/data/digits.csv.gz"
#endif

namespace {

struct config {
  std::string data = FLATMIN_DIGITS_CSV;
  int seeds = 5;
  int first_seed = 0;
  int epochs = 60;
  double noise = 0.3;
  int hidden = 256;
  int batch = 32;
  // Chosen with --tune (noisy validation split, seeds 100..104, never the test split) from the
  // same grid for all three: lr {0.02, 0.05, 0.1} x weight decay {5e-3, 1e-2, 2e-2}, plus
  // rho {0.05, 0.1, 0.2} for SAM and {0.25, 0.5, 1} for ASAM (within the papers' ranges).
  // A first grid with weight decay {5e-4, 5e-3} and lr up to 0.2 preferred 5e-3 for all three.
  // examples/tune_digits_demo.sh reruns the grid.
  double lr = 0.05;        // peak learning rate of SGD (cosine decay to 0), all three optimizers
  double momentum = 0.9;
  double weight_decay = 5e-3;
  double rho_sam = 0.1;    // SAM paper: rho in {0.01, 0.02, 0.05, 0.1, 0.2, 0.5}
  double rho_asam = 0.5;   // ASAM paper: 0.5 (CIFAR-10) ... 2.0
  double eta_asam = 0.01;
  bool tune = false;       // hold out 20 % of the (noisy) training split and report on it instead
  bool quick = false;
  std::string precision = "fp32";  // fp32, bf16 (master weights) or fp16 (master weights + loss scaling)
  bool check_precision = false;    // also run fp32 and compare (|Δ mean accuracy| ≤ 0.5 points)
  bool family = false;             // also the rest of the family (family_rows)
  std::vector<std::string> only;
};

/// The rows --family adds, in table order.
const std::vector<std::string> family_rows = {"gsam", "wsam", "looksam", "friendly", "msam", "gcsam", "rwp", "sampa"};
/// Every row name --only accepts.
bool known_row(const std::string& n) {
  for (const char* k : {"sgd", "sam", "asam", "fsam", "ssam_f", "ssam_d", "esam"})
    if (n == k) return true;
  return std::find(family_rows.begin(), family_rows.end(), n) != family_rows.end();
}

[[noreturn]] void usage(int rc) {
  std::fprintf(rc ? stderr : stdout,
      "usage: digits_demo [options]\n"
      "  --seeds N        number of seeds (default 5)\n"
      "  --first-seed N   seeds are N, N+1, ... (default 0)\n"
      "  --epochs N       epochs per run (default 60)\n"
      "  --noise p        fraction of training labels made wrong (default 0.3)\n"
      "  --quick          tiny run for a smoke test (1 seed, 8 epochs, 64 hidden units);\n"
      "                   exits non-zero unless every optimizer beats chance by a wide margin\n"
      "  --data PATH      digits.csv.gz (default: the copy in the source tree)\n"
      "  --precision P    fp32 (default), bf16 (16-bit weights and gradients, float master weights)\n"
      "                   or fp16 (the same with the optimizer's dynamic loss scaling)\n"
      "  --check-precision  run fp32 too on the same seeds; fail if a mean accuracy moves > 0.5 points\n"
      "  --family         also GSAM, WSAM, LookSAM, Friendly-SAM, Momentum-SAM, GCSAM, RWP and SAMPa\n"
      "tuning:\n"
      "  --hidden N --batch N --lr x --momentum x --weight-decay x --rho-sam x --rho-asam x --eta-asam x\n"
      "  --only a,b       run only these of sgd,sam,asam,fsam,ssam_f,ssam_d,esam (and, with --family,\n"
      "                   gsam,wsam,looksam,friendly,msam,gcsam,rwp,sampa)\n"
      "  --tune           train on 80 %% of the noisy training split, report accuracy on the other\n"
      "                   20 %% (noisy labels, as a practitioner would have): never looks at the test split\n");
  std::exit(rc);
}

config parse(int argc, char** argv) {
  config c;
  auto need = [&](int& i) -> const char* {
    if (i + 1 >= argc) {
      std::fprintf(stderr, "digits_demo: %s needs a value\n", argv[i]);
      usage(2);
    }
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") usage(0);
    else if (a == "--seeds") c.seeds = std::atoi(need(i));
    else if (a == "--first-seed") c.first_seed = std::atoi(need(i));
    else if (a == "--epochs") c.epochs = std::atoi(need(i));
    else if (a == "--noise") c.noise = std::atof(need(i));
    else if (a == "--data") c.data = need(i);
    else if (a == "--hidden") c.hidden = std::atoi(need(i));
    else if (a == "--batch") c.batch = std::atoi(need(i));
    else if (a == "--lr") c.lr = std::atof(need(i));
    else if (a == "--momentum") c.momentum = std::atof(need(i));
    else if (a == "--weight-decay") c.weight_decay = std::atof(need(i));
    else if (a == "--rho-sam") c.rho_sam = std::atof(need(i));
    else if (a == "--rho-asam") c.rho_asam = std::atof(need(i));
    else if (a == "--eta-asam") c.eta_asam = std::atof(need(i));
    else if (a == "--tune") c.tune = true;
    else if (a == "--quick") c.quick = true;
    else if (a == "--precision") c.precision = need(i);
    else if (a == "--check-precision") c.check_precision = true;
    else if (a == "--family") c.family = true;
    else if (a == "--only") {
      std::string s = need(i);
      for (std::size_t p = 0; p <= s.size();) {
        const std::size_t q = std::min(s.find(',', p), s.size());
        c.only.push_back(s.substr(p, q - p));
        p = q + 1;
      }
    } else {
      std::fprintf(stderr, "digits_demo: unknown argument %s\n", argv[i]);
      usage(2);
    }
  }
  for (const auto& n : c.only)
    if (!known_row(n)) {
      std::fprintf(stderr,
                   "digits_demo: --only takes sgd, sam, asam, fsam, ssam_f, ssam_d, esam, gsam, wsam, looksam, "
                   "friendly, msam, gcsam, rwp, sampa; got %s\n",
                   n.c_str());
      usage(2);
    }
  if (c.precision != "fp32" && c.precision != "bf16" && c.precision != "fp16") {
    std::fprintf(stderr, "digits_demo: --precision takes fp32, bf16 or fp16; got %s\n", c.precision.c_str());
    usage(2);
  }
  if (c.check_precision && c.precision == "fp32") {
    std::fprintf(stderr, "digits_demo: --check-precision needs --precision bf16 or fp16\n");
    usage(2);
  }
  if (c.quick) {
    c.seeds = 1;
    c.epochs = 8;
    c.hidden = 64;
  }
  if (c.seeds < 1 || c.first_seed < 0 || c.epochs < 1 || c.hidden < 1 || c.batch < 1 || !(c.noise >= 0 && c.noise < 0.9)) {
    std::fprintf(stderr, "digits_demo: need seeds, epochs, hidden, batch >= 1 and noise in [0, 0.9)\n");
    usage(2);
  }
  return c;
}

/// One seed's data: noisy training split (with the clean labels kept to measure memorisation) and
/// the evaluation split (clean test labels, or noisy validation labels under --tune).
struct problem {
  examples::dataset train, eval;
  std::vector<int> train_clean;
};

problem make_problem(const examples::dataset& all, const config& c, std::uint64_t seed) {
  auto sp = examples::stratified_split(all, 0.3, seed);
  problem p;
  p.train_clean = sp.train.y;
  examples::add_symmetric_label_noise(sp.train.y, c.noise, examples::digits_classes, seed);
  if (c.tune) {
    auto inner = examples::stratified_split(sp.train, 0.2, seed + 1000);  // stratified by noisy label
    p.train = std::move(inner.train);
    p.eval = std::move(inner.test);
    p.train_clean.clear();  // not tracked under --tune
  } else {
    p.train = std::move(sp.train);
    p.eval = std::move(sp.test);
  }
  return p;
}

struct run_result {
  double final_acc = 0;
  double seconds = 0;
};

/// Trains `net` with `opt` for c.epochs; `step(x, y)` performs one optimizer step on a batch and
/// returns the clean batch loss. Prints one line per epoch.
template <class Opt, class Glue, class Step>
run_result train(const char* name, Opt& opt, examples::mlp& net, Glue& glue, const problem& p, const config& c,
                 std::uint64_t seed, Step&& step) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::size_t n = p.train.size();
  const std::size_t batches = (n + static_cast<std::size_t>(c.batch) - 1) / static_cast<std::size_t>(c.batch);
  const double total_steps = static_cast<double>(batches) * c.epochs;
  examples::rng order_rng = examples::rng::stream(seed, 4);  // same batch order for every optimizer
  std::vector<std::size_t> order(n);
  for (std::size_t j = 0; j < n; ++j) order[j] = j;
  std::vector<std::size_t> flipped;
  for (std::size_t j = 0; j < p.train_clean.size(); ++j)
    if (p.train_clean[j] != p.train.y[j]) flipped.push_back(j);
  const examples::dataset train_flipped = p.train.subset(flipped);

  Eigen::MatrixXf xb;
  std::vector<int> yb;
  double step_index = 0, acc = 0;
  for (int e = 1; e <= c.epochs; ++e) {
    order_rng.shuffle(order);
    double loss_sum = 0;
    for (std::size_t b = 0; b < batches; ++b) {
      const std::size_t lo = b * static_cast<std::size_t>(c.batch), hi = std::min(n, lo + static_cast<std::size_t>(c.batch));
      xb.resize(p.train.features(), static_cast<Eigen::Index>(hi - lo));
      yb.resize(hi - lo);
      for (std::size_t j = lo; j < hi; ++j) {
        xb.col(static_cast<Eigen::Index>(j - lo)) = p.train.x.col(static_cast<Eigen::Index>(order[j]));
        yb[j - lo] = p.train.y[order[j]];
      }
      // Cosine learning-rate decay; options are mutable between steps and re-validated.
      opt.base().lr = c.lr * 0.5 * (1.0 + std::cos(std::numbers::pi * step_index / total_steps));
      step_index += 1;
      loss_sum += step(xb, yb) * static_cast<double>(hi - lo);
    }
    glue.to_model();  // the network evaluates the weights as the optimizer left them
    acc = net.accuracy(p.eval.x, p.eval.y);
    std::printf("%-5s seed %d  epoch %3d/%d  train_loss %.4f  %s %.4f", name, static_cast<int>(seed), e, c.epochs,
                loss_sum / static_cast<double>(n), c.tune ? "val_acc(noisy)" : "test_acc", acc);
    if (!flipped.empty())  // how many of the wrong labels the network has learnt to reproduce
      std::printf("  memorised %.3f", net.accuracy(train_flipped.x, train_flipped.y));
    std::printf("\n");
  }
  std::fflush(stdout);
  return {acc, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

std::size_t batches_per_epoch(const problem& p, const config& c) {
  return (p.train.size() + static_cast<std::size_t>(c.batch) - 1) / static_cast<std::size_t>(c.batch);
}

/// How the network meets the optimizer's memory: fp32 registers the network's float matrices
/// themselves; examples::low_precision keeps 16-bit weights and gradients (common/low_precision.hpp).
struct fp32_glue {
  flatmin::param_set<float> ps;
  explicit fp32_glue(examples::mlp& net) { net.register_params(ps); }
  const flatmin::param_set<float>& params() const { return ps; }
  void to_model() {}
  void from_model(double) {}
};

/// The gradient as the optimizer reads it: forward from the weights as stored, backward, and the
/// gradient written to the views times the loss scale (1 unless fp16's dynamic scaler is on).
template <class Glue>
struct gradient {
  examples::mlp& net;
  Glue& glue;
  std::function<double()> scale;
  double operator()(const Eigen::MatrixXf& x, const std::vector<int>& y) const {
    glue.to_model();
    const double loss = net.loss_and_gradient(x, y);
    glue.from_model(scale());
    return loss;
  }
};

/// SSAM-F's objective: the batch gradient, and the gradient of single examples (here the first
/// examples of the current batch, which is a random draw from the training split).
template <class Grad>
struct example_objective {
  const Grad& grad;
  const Eigen::MatrixXf& x;
  const std::vector<int>& y;
  double operator()() { return grad(x, y); }
  void example_gradient(std::size_t n) {
    const auto j = static_cast<Eigen::Index>(n % y.size());
    const Eigen::MatrixXf xj = x.col(j);
    grad(xj, std::vector<int>{y[static_cast<std::size_t>(j)]});
  }
};

/// ESAM's objective (flatmin::sample_objective): per-sample losses, forward-only losses at w + ε,
/// and the gradient on the selected samples.
template <class Grad>
struct sample_objective {
  const Grad& grad;
  const Eigen::MatrixXf& x;
  const std::vector<int>& y;
  std::size_t batch_size() const { return y.size(); }
  double losses_and_gradient(std::span<double> l) {
    losses(l);
    return grad(x, y);
  }
  void losses(std::span<double> l) {
    grad.glue.to_model();
    const auto v = grad.net.per_sample_losses(x, y);
    for (std::size_t i = 0; i < l.size(); ++i) l[i] = static_cast<double>(v[static_cast<Eigen::Index>(i)]);
  }
  void subset_gradient(std::span<const std::size_t> idx) {
    const auto s = examples::dataset::gather(x, y, idx);
    grad(s.x, s.y);
  }
};

/// One row of the table for one seed, with the network's weights and gradients held as Glue says.
template <class Glue>
run_result run_row(const std::string& name, examples::mlp& net, const problem& p, const config& c,
                   std::uint64_t seed, const flatmin::base::sgd& base) {
  Glue glue(net);
  // 16-bit weights: the optimizer keeps float master weights; fp16 gradients: and a loss scale.
  auto setup = [&](auto& opt) {
    if constexpr (!std::is_same_v<Glue, fp32_glue>) opt.options().master_weights = true;
    if (c.precision == "fp16") opt.options().loss_scale.enabled = true;
    return gradient<Glue>{net, glue, [&opt] { return opt.loss_scale(); }};
  };
  using xs = Eigen::MatrixXf;
  using ys = std::vector<int>;
  if (name == "sgd") {
    auto opt = flatmin::sgd(glue.params(), base);
    const auto grad = setup(opt);
    return train("sgd", opt, net, glue, p, c, seed,
                 [&](const xs& x, const ys& y) { return opt.step([&] { return grad(x, y); }).loss; });
  }
  if (name == "sam") {
    auto opt = flatmin::sam(glue.params(), base, {.rho = c.rho_sam});
    const auto grad = setup(opt);
    return train("sam", opt, net, glue, p, c, seed, [&](const xs& x, const ys& y) {
      const double loss = grad(x, y);  // g at w
      opt.ascend();                    // w ← w + ε
      grad(x, y);                      // g_adv at w + ε
      opt.descend();                   // w ← saved w, SGD step with g_adv
      return loss;
    });
  }
  if (name == "fsam") {
    auto opt = flatmin::fsam(glue.params(), base, {.rho = c.rho_sam});
    const auto grad = setup(opt);
    return train("fsam", opt, net, glue, p, c, seed,
                 [&](const xs& x, const ys& y) { return opt.step([&] { return grad(x, y); }).loss; });
  }
  if (name == "ssam_f") {
    auto opt = flatmin::ssam_f(glue.params(), base, {.rho = c.rho_sam, .refresh_every = batches_per_epoch(p, c)});
    const auto grad = setup(opt);
    return train("ssam_f", opt, net, glue, p, c, seed, [&](const xs& x, const ys& y) {
      return opt.step(example_objective<gradient<Glue>>{grad, x, y}).loss;
    });
  }
  if (name == "ssam_d") {
    const std::size_t per_epoch = batches_per_epoch(p, c);
    auto opt = flatmin::ssam_d(glue.params(), base,
                               {.rho = c.rho_sam,
                                .refresh_every = 5 * per_epoch,
                                .total_steps = per_epoch * static_cast<std::size_t>(c.epochs),
                                .seed = seed});
    const auto grad = setup(opt);
    return train("ssam_d", opt, net, glue, p, c, seed,
                 [&](const xs& x, const ys& y) { return opt.step([&] { return grad(x, y); }).loss; });
  }
  if (name == "esam") {
    auto opt = flatmin::esam(glue.params(), base, {.rho = c.rho_sam, .seed = seed});
    const auto grad = setup(opt);
    return train("esam", opt, net, glue, p, c, seed, [&](const xs& x, const ys& y) {
      return opt.step(sample_objective<gradient<Glue>>{grad, x, y}).loss;
    });
  }
  // The family (--family): one closure step each, SAM's ρ where the method has a radius.
  auto closure = [&](const std::string& n, auto& opt) {
    const auto grad = setup(opt);
    return train(n.c_str(), opt, net, glue, p, c, seed,
                 [&](const xs& x, const ys& y) { return opt.step([&] { return grad(x, y); }).loss; });
  };
  if (name == "gsam") {
    auto opt = flatmin::gsam(glue.params(), base, {.rho = c.rho_sam});
    return closure(name, opt);
  }
  if (name == "wsam") {
    auto opt = flatmin::wsam(glue.params(), base, {.rho = c.rho_sam});
    return closure(name, opt);
  }
  if (name == "looksam") {
    auto opt = flatmin::looksam(glue.params(), base, {.rho = c.rho_sam});
    return closure(name, opt);
  }
  if (name == "friendly") {
    auto opt = flatmin::friendly_sam(glue.params(), base, {.rho = c.rho_sam});
    return closure(name, opt);
  }
  if (name == "msam") {  // its official SGD radius (the momentum's direction, not the gradient's)
    auto opt = flatmin::msam(glue.params(), base);
    return closure(name, opt);
  }
  if (name == "gcsam") {
    auto opt = flatmin::gcsam(glue.params(), base, {.rho = c.rho_sam});
    return closure(name, opt);
  }
  if (name == "rwp") {  // σ and λ: the official defaults
    auto opt = flatmin::rwp(glue.params(), base, {.seed = seed});
    return closure(name, opt);
  }
  if (name == "sampa") {
    auto opt = flatmin::sampa(glue.params(), base, {.rho = c.rho_sam});
    return closure(name, opt);
  }
  auto opt = flatmin::asam(glue.params(), base, {.rho = c.rho_asam, .eta = c.eta_asam});
  const auto grad = setup(opt);
  return train("asam", opt, net, glue, p, c, seed,
               [&](const xs& x, const ys& y) { return opt.step([&] { return grad(x, y); }).loss; });
}

struct summary {
  std::string name, how;
  std::vector<double> acc;
  double seconds = 0;
  std::size_t steps = 0;
};

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}
double stddev(const std::vector<double>& v) {  // sample standard deviation (n − 1)
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

}  // namespace

int main(int argc, char** argv) try {
  const config c = parse(argc, argv);
  // The matrices are small: Eigen's own threads would cost more than they save.
  Eigen::setNbThreads(1);
  const examples::dataset all = examples::load_digits(c.data);
  auto wanted = [&](const std::string& n) { return c.only.empty() || std::find(c.only.begin(), c.only.end(), n) != c.only.end(); };

  std::printf("digits: %zu samples, 70/30 stratified split, %.0f %% symmetric label noise on the training split%s\n",
              all.size(), 100 * c.noise, c.tune ? " (--tune: 80/20 split of the noisy training split)" : "");
  std::printf("model: MLP 64-%d-10 ReLU, batch %d, %d epochs, SGD lr %g (cosine), momentum %g, weight decay %g\n",
              c.hidden, c.batch, c.epochs, c.lr, c.momentum, c.weight_decay);
  std::printf("SAM rho %g (two-call protocol), ASAM rho %g eta %g (closure protocol), SGD (closure protocol)\n",
              c.rho_sam, c.rho_asam, c.eta_asam);
  std::printf("FSAM, SSAM-F, SSAM-D, ESAM: rho %g (SAM's), their papers' sparsity and refresh defaults\n\n", c.rho_sam);

  const flatmin::base::sgd base{.lr = c.lr, .momentum = c.momentum, .weight_decay = c.weight_decay};
  // Every optimizer in `precision` (and, with --check-precision, in fp32 first on the same seeds).
  auto run_table = [&](const std::string& precision) {
    std::vector<summary> table = {{"sgd", "step(closure)", {}, 0},
                                  {"sam", "ascend/descend", {}, 0},
                                  {"asam", "step(closure)", {}, 0},
                                  {"fsam", "step(closure)", {}, 0},
                                  {"ssam_f", "step(examples)", {}, 0},
                                  {"ssam_d", "step(closure)", {}, 0},
                                  {"esam", "step(samples)", {}, 0}};
    if (c.family)
      for (const auto& n : family_rows) table.push_back({n, "step(closure)", {}, 0});
    config cp = c;
    cp.precision = precision;
    if (precision != "fp32")
      std::printf("precision %s: %s weights and gradients, float master weights in the optimizer%s\n",
                  precision.c_str(), precision.c_str(), precision == "fp16" ? ", dynamic loss scaling" : "");
    for (int s = 0; s < c.seeds; ++s) {
      const auto seed = static_cast<std::uint64_t>(c.first_seed + s);
      const problem p = make_problem(all, c, seed);
      for (auto& row : table) {
        if (!wanted(row.name)) continue;
        examples::mlp net({examples::digits_pixels, c.hidden, examples::digits_classes}, examples::activation::relu,
                          seed);
        const run_result r =
            precision == "bf16"   ? run_row<examples::low_precision<flatmin::bfloat16, flatmin::bfloat16>>(
                                      row.name, net, p, cp, seed, base)
            : precision == "fp16" ? run_row<examples::low_precision<flatmin::half, flatmin::half>>(row.name, net, p,
                                                                                                cp, seed, base)
                                  : run_row<fp32_glue>(row.name, net, p, cp, seed, base);
        row.acc.push_back(r.final_acc);
        row.seconds += r.seconds;
        row.steps += batches_per_epoch(p, cp) * static_cast<std::size_t>(cp.epochs);
      }
    }
    return table;
  };
  std::vector<summary> fp32_table;
  if (c.check_precision) fp32_table = run_table("fp32");
  const std::vector<summary> table = run_table(c.precision);

  const char* what = c.tune ? "val acc (noisy)" : "test acc";
  std::printf("\nfinal %s after %d epochs, %d seed%s (%d..%d), %.0f %% label noise\n", what, c.epochs, c.seeds,
              c.seeds > 1 ? "s" : "", c.first_seed, c.first_seed + c.seeds - 1, 100 * c.noise);
  std::printf("%-8s %-15s %-20s %-22s %-8s %s\n", "opt", "protocol", "mean ± std", "vs sgd (paired)", "time",
              "ms/step");
  const summary* ref = nullptr;
  for (const auto& row : table)
    if (row.name == "sgd" && !row.acc.empty()) ref = &row;
  bool ok = true;
  for (const auto& row : table) {
    if (row.acc.empty()) continue;
    char vs[64] = "";
    if (ref && &row != ref) {
      std::vector<double> d;
      int wins = 0;
      for (std::size_t i = 0; i < row.acc.size(); ++i) {
        d.push_back(row.acc[i] - ref->acc[i]);
        wins += row.acc[i] > ref->acc[i];
      }
      std::snprintf(vs, sizeof vs, "%+.4f ± %.4f (%d/%zu)", mean(d), stddev(d), wins, d.size());
    }
    std::printf("%-8s %-15s %.4f ± %.4f      %-22s %5.1f s  %6.3f   per seed:", row.name.c_str(), row.how.c_str(),
                mean(row.acc), stddev(row.acc), vs, row.seconds,
                row.steps ? 1e3 * row.seconds / static_cast<double>(row.steps) : 0.0);
    for (double a : row.acc) std::printf(" %.4f", a);
    std::printf("\n");
    for (double a : row.acc) ok = ok && std::isfinite(a);
    if (c.quick && mean(row.acc) < 0.5) {
      std::printf("FAIL: %s reached %.4f, chance is 0.1 and the smoke test requires 0.5\n", row.name.c_str(), mean(row.acc));
      ok = false;
    }
  }
  std::printf("(std: sample standard deviation over seeds; paired: per-seed difference to sgd, and on how many seeds it won)\n");
  if (c.check_precision) {
    std::printf("\n%s against fp32, same seeds: mean %s (points)\n", c.precision.c_str(), what);
    for (std::size_t k = 0; k < table.size(); ++k) {
      if (table[k].acc.empty()) continue;
      const double d = 100 * (mean(table[k].acc) - mean(fp32_table[k].acc));
      const bool close = std::abs(d) <= 0.5;
      std::printf("%-6s fp32 %.4f  %s %.4f  difference %+.2f  %s\n", table[k].name.c_str(), mean(fp32_table[k].acc),
                  c.precision.c_str(), mean(table[k].acc), d, close ? "ok (within 0.5)" : "FAIL (more than 0.5)");
      ok = ok && close;
    }
  }
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "digits_demo: %s\n", e.what());
  return 1;
}
